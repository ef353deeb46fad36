//! The CUDA backend of [`crate::linear::QuantLinear`], and the launch of one sm_80/sm_90 GEMM kernel that every
//! CUDA caller shares (`QuantLinear<CudaBackend>`, `nibble run/bench --device cuda`, `nibble-rt run/check/bench`).
//!
//! - [`GemmArgs`] binds device buffers and values to the manifest's argument roles and launches a [`CudaKernel`];
//!   it is the one place that does so.
//! - [`SplitKScratch`] is a split-K kernel's workspace (partials, any contents) and arrival counters (zeroed; the
//!   kernel leaves them at zero), sized by [`Manifest::split_k_bytes`] for M.
//! - [`KernelCase`] is one kernel's inputs in device memory for one M (x, repacked weight and scales, bias, y,
//!   scratch): what a single-kernel run or benchmark uploads once.
//! - [`CudaBackend`]: the layer's repacked weights, scales and bias live in device memory, every bundle kernel of the
//!   layer is JIT-loaded once (capability, PTX and launch geometry checked), and a forward selects the kernel by M
//!   with the bundle's rule and launches it on the layer's stream.
//!
//! Everything that can be checked without a device is checked before the device is touched: [`check_layer`] (CUDA
//! archs, each kernel's PTX against its manifest, the scale dtypes of the packings) runs first in
//! [`Backend::prepare`], and [`check_io`] (M, element types and sizes of x and y) first in
//! [`CudaBackend::forward_device`]. Without a driver or device, [`CudaBackend::open`] fails with
//! [`CudaError::NoDevice`] ("no NVIDIA GPU: ...").
//!
//! Status: compiled and tested here up to the no-driver path (no NVIDIA GPU on this project's build machine).

use crate::bundle;
use crate::checkpoint::LayerData;
use crate::cuda::{self, CudaError, CudaKernel, Device, DeviceBuffer, Stream};
use crate::launch::{ArgValue, LaunchError};
use crate::linear::{Backend, Half16Host, LinearError, PreparedLayer, QuantLinear};
use crate::manifest::{ArgRole, Manifest};
use crate::numerics::repack::RepackedScales;
use crate::numerics::DType;

/// Runs layers on one CUDA device.
#[derive(Debug, Clone)]
pub struct CudaBackend {
    device: Device,
}

impl CudaBackend {
    /// Opens CUDA device `index`.
    pub fn open(index: usize) -> Result<CudaBackend, CudaError> {
        Ok(CudaBackend {
            device: Device::open(index)?,
        })
    }

    /// Opens the device named by `$NIBBLE_CUDA_DEVICE` (0 when unset).
    pub fn open_default() -> Result<CudaBackend, CudaError> {
        CudaBackend::open(cuda::default_index()?)
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A device copy of 16-bit floats (`bits` of `dtype`).
    pub fn upload_half(&self, dtype: DType, bits: &[u16]) -> Result<DeviceBuffer, CudaError> {
        self.device.upload_u16(bits, dtype.name())
    }

    /// `len` zeros of `dtype` in device memory.
    pub fn zeros_half(&self, dtype: DType, len: usize) -> Result<DeviceBuffer, CudaError> {
        zeros(&self.device, len.checked_mul(2), dtype.name())
    }
}

fn zeros(
    device: &Device,
    bytes: Option<usize>,
    elem: &'static str,
) -> Result<DeviceBuffer, CudaError> {
    let bytes = bytes.ok_or_else(|| {
        CudaError::InvalidArgument(format!("a buffer of {elem} overflows the address space"))
    })?;
    device.upload(&vec![0u8; bytes], elem)
}

/// Device copies of one packing: the repacked weight words and scales.
pub struct CudaPacking {
    pub weight: DeviceBuffer,
    pub scales: DeviceBuffer,
}

impl CudaPacking {
    /// Uploads `words` (u32) and `scales` (in their repacked element type).
    pub fn upload(
        device: &Device,
        words: &[u32],
        scales: &RepackedScales,
    ) -> Result<CudaPacking, CudaError> {
        Ok(CudaPacking {
            weight: device.upload_u32(words, "u32")?,
            scales: device.upload(&scales.to_le_bytes(), scales.elem())?,
        })
    }
}

/// A split-K kernel's scratch for one M: the workspace (f32 partials, any contents) and the arrival counters
/// (i32, zeroed here; the kernel leaves them at zero, so one allocation serves every launch with that M or less).
pub struct SplitKScratch {
    pub workspace: DeviceBuffer,
    pub counters: DeviceBuffer,
}

impl SplitKScratch {
    /// The scratch `manifest`'s kernel needs for `m` rows; `None` for kernels without split-K.
    pub fn alloc(
        device: &Device,
        manifest: &Manifest,
        m: u32,
    ) -> Result<Option<SplitKScratch>, CudaError> {
        let (ws, cs) = manifest.split_k_bytes(m);
        if ws == 0 {
            return Ok(None);
        }
        let size = |b: u64| {
            usize::try_from(b).map_err(|_| {
                CudaError::InvalidArgument(format!(
                    "kernel {}: split-K scratch of {b} bytes does not fit this host",
                    manifest.kernel
                ))
            })
        };
        Ok(Some(SplitKScratch {
            workspace: device.alloc(size(ws)?, "f32")?,
            counters: zeros(device, Some(size(cs)?), "i32")?,
        }))
    }
}

/// The buffers and values of one GEMM launch, bound to the manifest's argument roles.
#[derive(Clone, Copy)]
pub struct GemmArgs<'a> {
    pub x: &'a DeviceBuffer,
    pub weight: &'a DeviceBuffer,
    pub scales: &'a DeviceBuffer,
    pub y: &'a DeviceBuffer,
    pub bias: Option<&'a DeviceBuffer>,
    pub tensor_scale: Option<f32>,
    pub scratch: Option<&'a SplitKScratch>,
}

impl<'a> GemmArgs<'a> {
    /// The launch values by role (M is filled in by [`CudaKernel::launch`]).
    pub fn values(&self) -> Vec<(ArgRole, ArgValue<'a>)> {
        let mut v = vec![
            (ArgRole::X, ArgValue::Buffer(self.x.as_arg())),
            (ArgRole::Weight, ArgValue::Buffer(self.weight.as_arg())),
            (ArgRole::Scales, ArgValue::Buffer(self.scales.as_arg())),
            (ArgRole::Y, ArgValue::Buffer(self.y.as_arg())),
        ];
        if let Some(b) = self.bias {
            v.push((ArgRole::Bias, ArgValue::Buffer(b.as_arg())));
        }
        if let Some(t) = self.tensor_scale {
            v.push((ArgRole::TensorScale, ArgValue::F32(t)));
        }
        if let Some(s) = self.scratch {
            v.push((ArgRole::Workspace, ArgValue::Buffer(s.workspace.as_arg())));
            v.push((ArgRole::Counters, ArgValue::Buffer(s.counters.as_arg())));
        }
        v
    }

    /// Enqueues `kernel` for `m` rows on `stream` (every check of [`CudaKernel::launch`] first).
    pub fn launch(&self, kernel: &CudaKernel, stream: &Stream, m: u32) -> Result<(), LaunchError> {
        kernel.launch(stream, m, &self.values())
    }
}

/// One kernel's inputs and output in device memory for one M.
pub struct KernelCase {
    pub x: DeviceBuffer,
    pub packing: CudaPacking,
    pub y: DeviceBuffer,
    pub bias: Option<DeviceBuffer>,
    pub scratch: Option<SplitKScratch>,
    pub tensor_scale: Option<f32>,
    pub rows: u32,
}

fn manifest_dtype(m: &Manifest, what: &str, s: &str) -> Result<DType, CudaError> {
    DType::parse(s).ok_or_else(|| {
        CudaError::InvalidArgument(format!(
            "kernel {}: {what} dtype {s:?} is not bf16 or f16",
            m.kernel
        ))
    })
}

impl KernelCase {
    /// Uploads x `[rows, K]` (in the manifest's x dtype), the repacked weight and scales, the bias `[N]` if the
    /// kernel takes one, a zeroed y `[rows, N]` and the split-K scratch. The host lengths are checked first.
    #[allow(clippy::too_many_arguments)]
    pub fn upload(
        device: &Device,
        manifest: &Manifest,
        rows: u32,
        x: &[u16],
        words: &[u32],
        scales: &RepackedScales,
        bias: Option<&[u16]>,
        tensor_scale: Option<f32>,
    ) -> Result<KernelCase, CudaError> {
        let s = &manifest.shapes;
        let (n, k) = (s.n as usize, s.k as usize);
        let xd = manifest_dtype(manifest, "x", &s.x_dtype)?;
        let yd = manifest_dtype(manifest, "y", &s.y_dtype)?;
        let bad = |what: String| {
            CudaError::InvalidArgument(format!("kernel {}: {what}", manifest.kernel))
        };
        if Some(x.len()) != (rows as usize).checked_mul(k) {
            return Err(bad(format!(
                "x has {} elements, M={rows} K={k} needs {}",
                x.len(),
                rows as usize * k
            )));
        }
        let bias = match (&s.bias_dtype, bias) {
            (Some(d), Some(b)) => {
                if b.len() != n {
                    return Err(bad(format!("the bias has {} elements, N={n}", b.len())));
                }
                Some(device.upload_u16(b, manifest_dtype(manifest, "bias", d)?.name())?)
            }
            (None, None) => None,
            (Some(_), None) => return Err(bad("the kernel needs a bias".into())),
            (None, Some(_)) => return Err(bad("the kernel takes no bias".into())),
        };
        Ok(KernelCase {
            x: device.upload_u16(x, xd.name())?,
            packing: CudaPacking::upload(device, words, scales)?,
            y: zeros(
                device,
                (rows as usize)
                    .checked_mul(n)
                    .and_then(|e| e.checked_mul(2)),
                yd.name(),
            )?,
            bias,
            scratch: SplitKScratch::alloc(device, manifest, rows)?,
            tensor_scale,
            rows,
        })
    }

    pub fn args(&self) -> GemmArgs<'_> {
        GemmArgs {
            x: &self.x,
            weight: &self.packing.weight,
            scales: &self.packing.scales,
            y: &self.y,
            bias: self.bias.as_ref(),
            tensor_scale: self.tensor_scale,
            scratch: self.scratch.as_ref(),
        }
    }

    /// Enqueues the kernel on `stream` for this case's M.
    pub fn launch(&self, kernel: &CudaKernel, stream: &Stream) -> Result<(), LaunchError> {
        self.args().launch(kernel, stream, self.rows)
    }

    /// y's bit patterns (synchronous copy).
    pub fn read_y(&self) -> Result<Vec<u16>, CudaError> {
        self.y.read_u16()
    }
}

/// [`CudaBackend`]'s per-layer state: loaded kernels and device copies of each packing and the bias.
pub struct CudaLayer {
    kernels: Vec<CudaKernel>,
    packings: Vec<CudaPacking>,
    bias: Option<DeviceBuffer>,
    stream: Stream,
}

impl CudaLayer {
    pub fn kernels(&self) -> &[CudaKernel] {
        &self.kernels
    }
}

fn backend_err(layer: &PreparedLayer, e: impl std::fmt::Display) -> LinearError {
    LinearError::Backend {
        layer: layer.prefix.clone(),
        message: e.to_string(),
    }
}

/// What [`Backend::prepare`] checks before touching the device; returns each kernel's PTX. Every kernel must be
/// for an `sm_*` arch, its PTX must match its manifest ([`crate::ptx::check_against_manifest`]), and every packing's
/// scales must have the element type the kernels using it read.
pub fn check_layer(layer: &PreparedLayer) -> Result<Vec<Vec<u8>>, LinearError> {
    let mut ptx = Vec::with_capacity(layer.kernels.len());
    for (i, k) in layer.kernels.iter().enumerate() {
        let name = k.manifest_path.display();
        if crate::ptx::parse_sm(&k.manifest.arch).is_none() {
            return Err(backend_err(
                layer,
                format!(
                    "{name}: the CUDA backend runs sm_80/sm_90 kernels, this one is for {}",
                    k.manifest.arch
                ),
            ));
        }
        let code = k.code_object().map_err(|e| backend_err(layer, e))?;
        crate::ptx::check_against_manifest(&code, &k.manifest)
            .map_err(|e| backend_err(layer, format!("{name}: {e}")))?;
        let packing = layer
            .kernel_packing
            .get(i)
            .and_then(|&p| layer.packings.get(p))
            .ok_or_else(|| backend_err(layer, format!("{name}: no packing")))?;
        if let Some(want) = k
            .manifest
            .arg(ArgRole::Scales)
            .and_then(|a| a.elem.as_deref())
        {
            let got = packing.scales.elem();
            if want != got {
                return Err(backend_err(
                    layer,
                    format!(
                        "{name}: the kernel reads {want} scales, the {} packing holds {got}",
                        packing.scale_layout.id
                    ),
                ));
            }
        }
        ptx.push(code);
    }
    Ok(ptx)
}

/// What [`CudaBackend::forward_device`] checks before the launch: M, and the element type and size of x `[M, K]`
/// and y `[M, N]` (each given as `(elem, bytes)`); returns the index of the kernel for M (the bundle's rule).
pub fn check_io(
    layer: &PreparedLayer,
    m: usize,
    x: (&str, usize),
    y: (&str, usize),
) -> Result<usize, LinearError> {
    let input = |what: String| LinearError::Input {
        layer: layer.prefix.clone(),
        what,
    };
    if m == 0 {
        return Err(input("M must be at least 1".into()));
    }
    for (what, (elem, bytes), dtype, width) in [
        ("x", x, layer.x_dtype, layer.k),
        ("y", y, layer.y_dtype, layer.n),
    ] {
        if elem != dtype.name() {
            return Err(input(format!(
                "{what} is a buffer of {elem}, the layer's {what} is {}",
                dtype.name()
            )));
        }
        let need = m
            .checked_mul(width)
            .and_then(|e| e.checked_mul(2))
            .ok_or_else(|| input(format!("M={m} times {width} overflows")))?;
        if bytes != need {
            return Err(input(format!(
                "{what} has {bytes} bytes; M={m} needs {need} ([{m}, {width}] {})",
                dtype.name()
            )));
        }
    }
    bundle::choose(&layer.kernels, m).ok_or_else(|| LinearError::NoKernelForM {
        layer: layer.prefix.clone(),
        m,
        ranges: bundle::ranges(&layer.kernels),
    })
}

impl CudaBackend {
    /// `y = layer(x)` on device buffers: `x` `[M, K]` and `y` `[M, N]` in the layer's dtypes. The kernel for M is
    /// chosen by the bundle's rule; [`check_io`] runs before anything else. Enqueued on the layer's stream and
    /// waited for.
    pub fn forward_device(
        &self,
        layer: &PreparedLayer,
        state: &CudaLayer,
        x: &DeviceBuffer,
        y: &DeviceBuffer,
        m: usize,
    ) -> Result<(), LinearError> {
        let i = check_io(
            layer,
            m,
            (x.elem(), x.len_bytes()),
            (y.elem(), y.len_bytes()),
        )?;
        let (kernel, packing) = layer
            .kernel_packing
            .get(i)
            .and_then(|&p| Some((state.kernels.get(i)?, state.packings.get(p)?)))
            .ok_or_else(|| backend_err(layer, "the layer state does not match its kernels"))?;
        let m32 = u32::try_from(m)
            .map_err(|_| backend_err(layer, format!("M={m} does not fit 32 bits")))?;
        let scratch = SplitKScratch::alloc(&self.device, kernel.manifest(), m32)
            .map_err(|e| backend_err(layer, e))?;
        GemmArgs {
            x,
            weight: &packing.weight,
            scales: &packing.scales,
            y,
            bias: state.bias.as_ref(),
            tensor_scale: layer.tensor_scale,
            scratch: scratch.as_ref(),
        }
        .launch(kernel, &state.stream, m32)
        .map_err(|e| backend_err(layer, e))?;
        state
            .stream
            .synchronize()
            .map_err(|e| backend_err(layer, e))
    }
}

impl QuantLinear<CudaBackend> {
    /// `y = layer(x)` on device buffers (`x` `[M, K]`, `y` `[M, N]` in the layer's dtypes); see
    /// [`CudaBackend::forward_device`].
    pub fn forward_device(
        &self,
        x: &DeviceBuffer,
        y: &DeviceBuffer,
        m: usize,
    ) -> Result<(), LinearError> {
        self.backend()
            .forward_device(self.layer(), self.backend_state(), x, y, m)
    }
}

impl Backend for CudaBackend {
    type Layer = CudaLayer;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn prepare(
        &self,
        layer: &PreparedLayer,
        _data: &LayerData<'_>,
    ) -> Result<CudaLayer, LinearError> {
        let ptx = check_layer(layer)?;
        let mut kernels = Vec::with_capacity(ptx.len());
        for (k, code) in layer.kernels.iter().zip(&ptx) {
            kernels.push(
                CudaKernel::load(&self.device, &k.manifest, code)
                    .map_err(|e| backend_err(layer, e))?,
            );
        }
        let mut packings = Vec::with_capacity(layer.packings.len());
        for p in &layer.packings {
            packings.push(
                CudaPacking::upload(&self.device, &p.weight, &p.scales)
                    .map_err(|e| backend_err(layer, e))?,
            );
        }
        let bias = match &layer.bias {
            Some((dt, bits)) => Some(
                self.upload_half(*dt, bits)
                    .map_err(|e| backend_err(layer, e))?,
            ),
            None => None,
        };
        let stream = self.device.stream().map_err(|e| backend_err(layer, e))?;
        Ok(CudaLayer {
            kernels,
            packings,
            bias,
            stream,
        })
    }

    fn linear(
        &self,
        layer: &PreparedLayer,
        state: &CudaLayer,
        x: &Half16Host<'_>,
        m: usize,
    ) -> Result<Vec<u16>, LinearError> {
        let xd = self
            .upload_half(x.dtype, x.bits)
            .map_err(|e| backend_err(layer, e))?;
        let yd = self
            .zeros_half(layer.y_dtype, m.saturating_mul(layer.n))
            .map_err(|e| backend_err(layer, e))?;
        self.forward_device(layer, state, &xd, &yd, m)?;
        yd.read_u16().map_err(|e| backend_err(layer, e))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::bundle::testutil::{fixture, manifest, sm90_manifest, write_kernel};
    use crate::bundle::KernelBundle;
    use crate::checkpoint::testutil::*;
    use crate::checkpoint::{Checkpoint, QuantScheme};
    use crate::linear::CpuReference;

    #[test]
    fn without_a_driver_open_is_the_typed_no_device_error() {
        // This machine has no NVIDIA driver; on one with a GPU the test checks that the backend opens.
        match CudaBackend::open(0) {
            Err(e) => {
                let t = e.to_string();
                assert!(matches!(e, CudaError::NoDevice { .. }), "{t}");
                assert!(t.starts_with("no NVIDIA GPU: "), "{t}");
                assert_eq!(t.lines().count(), 1, "{t}");
            }
            Ok(b) => assert!(b.device().info().major >= 8),
        }
    }

    struct Setup {
        _ck: tempfile::TempDir,
        _kb: tempfile::TempDir,
        ckpt: Checkpoint,
        bundle: KernelBundle,
    }

    /// A 64x256 MXFP4 layer `l` and a bundle with one sm_90 kernel for it (PTX matching the manifest) and one
    /// gfx942 kernel.
    fn setup() -> Setup {
        let mut t = BTreeMap::new();
        mxfp4_layer(&mut t, "l", 64, 256, 3, false);
        let (ck, kb) = (
            tempfile::tempdir().expect("tmp"),
            tempfile::tempdir().expect("tmp"),
        );
        write_checkpoint(ck.path(), &quark_config(), &t, 2);
        let base = manifest(
            "k",
            "gfx942",
            64,
            256,
            QuantScheme::Mxfp4,
            16,
            (1, 64),
            None,
            (16, 16),
        );
        write_kernel(kb.path(), &base, fixture("gfx942"));
        let (m, ptx) = sm90_manifest(&base);
        write_kernel(kb.path(), &m, ptx.as_bytes());
        Setup {
            ckpt: Checkpoint::open(ck.path()).expect("checkpoint"),
            bundle: KernelBundle::load(kb.path()).expect("bundle"),
            _ck: ck,
            _kb: kb,
        }
    }

    /// The layer as the CUDA backend would receive it (built with the CPU backend: no device here).
    fn prepared(s: &Setup, arch: &str) -> PreparedLayer {
        QuantLinear::from_checkpoint(CpuReference, &s.bundle, &s.ckpt, "l", arch)
            .expect("builds")
            .layer()
            .clone()
    }

    #[test]
    fn layer_checks_run_before_the_device() {
        let s = setup();
        let l = prepared(&s, "sm_90");
        let ptx = check_layer(&l).expect("an sm_90 layer passes");
        assert_eq!(ptx.len(), 1);
        assert!(String::from_utf8_lossy(&ptx[0]).contains(".target sm_90"));

        // An AMD layer is refused, naming the manifest and its arch.
        let e = check_layer(&prepared(&s, "gfx942"))
            .expect_err("gfx942")
            .to_string();
        assert!(
            e.contains("k.gfx942.json")
                && e.contains("sm_80/sm_90 kernels")
                && e.contains("gfx942"),
            "{e}"
        );

        // Scales of another element type than the kernel reads.
        let mut bad = l.clone();
        bad.packings[0].scales = RepackedScales::F32(vec![1.0; 8]);
        let e = check_layer(&bad).expect_err("f32 scales").to_string();
        assert!(
            e.contains("reads bf16 scales") && e.contains("holds f32"),
            "{e}"
        );

        // A PTX that does not match the manifest (another entry name) fails at bundle load already; one whose
        // file changed after loading fails here.
        std::fs::write(&l.kernels[0].code_object_path, b"garbage").expect("write");
        let e = check_layer(&l).expect_err("changed PTX").to_string();
        assert!(e.contains("k.sm_90.json"), "{e}");
    }

    #[test]
    fn io_checks_name_the_bad_buffer() {
        let s = setup();
        let l = prepared(&s, "sm_90");
        let (xb, yb) = (3 * 256 * 2, 3 * 64 * 2);
        assert_eq!(check_io(&l, 3, ("bf16", xb), ("bf16", yb)).expect("ok"), 0);
        let e = check_io(&l, 0, ("bf16", 0), ("bf16", 0)).expect_err("m=0");
        assert!(e.to_string().contains("M must be at least 1"), "{e}");
        let e = check_io(&l, 3, ("f16", xb), ("bf16", yb)).expect_err("x dtype");
        assert!(
            e.to_string()
                .contains("x is a buffer of f16, the layer's x is bf16"),
            "{e}"
        );
        let e = check_io(&l, 3, ("bf16", xb), ("u8", yb)).expect_err("y dtype");
        assert!(e.to_string().contains("y is a buffer of u8"), "{e}");
        let e = check_io(&l, 3, ("bf16", xb - 2), ("bf16", yb)).expect_err("x size");
        assert!(
            e.to_string().contains("x has 1534 bytes; M=3 needs 1536"),
            "{e}"
        );
        let e = check_io(&l, 3, ("bf16", xb), ("bf16", yb + 2)).expect_err("y size");
        assert!(e.to_string().contains("y has 386 bytes"), "{e}");
        let e = check_io(&l, 65, ("bf16", 65 * 512), ("bf16", 65 * 128)).expect_err("M range");
        assert!(matches!(e, LinearError::NoKernelForM { m: 65, .. }), "{e}");
        let e = check_io(&l, usize::MAX, ("bf16", 0), ("bf16", 0)).expect_err("overflow");
        assert!(e.to_string().contains("overflows"), "{e}");
    }

    // `QuantLinear<CudaBackend>` is shared across threads like the CPU one.
    const _: () = {
        const fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<QuantLinear<CudaBackend>>();
    };
}
