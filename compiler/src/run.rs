//! Running a compiled kernel bundle on the interpreter ("virtual CDNA"): load `<kernel>.<arch>.json` and the kernel IR
//! next to it, validate host inputs in checkpoint layout against the manifest, repack them as the manifest's layouts
//! say (the runtime's repacker, the same code a GPU runtime uses), launch, and return `y`.

use std::path::{Path, PathBuf};

use melior::ir::Module;
use nibble_runtime::manifest::{ArgRole, Manifest, ManifestError};
use nibble_runtime::numerics::{repack, ScaleData};
use thiserror::Error;

use crate::interp::{self, InterpError, KernelArg, LaunchOptions, LaunchStats};
use crate::ir;

#[derive(Debug, Error)]
pub enum RunError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{path}: the kernel IR was not loaded or does not parse as MLIR")]
    KernelIr { path: String },
    #[error("input `{name}`: {message}")]
    Input { name: String, message: String },
    #[error("repacking: {0}")]
    Repack(String),
    #[error("interpreter: {0}")]
    Interp(#[from] InterpError),
}

/// A compiled kernel as the compiler wrote it: manifest plus the kernel IR it names.
pub struct Bundle {
    pub manifest_path: PathBuf,
    pub manifest: Manifest,
    /// The kernel IR, which only the interpreter executes: `None` when loaded for a GPU ([`Bundle::load_manifest`]).
    pub kernel_ir: Option<String>,
}

fn read_text(p: &Path) -> Result<String, RunError> {
    std::fs::read_to_string(p).map_err(|source| RunError::Io {
        path: p.display().to_string(),
        source,
    })
}

impl Bundle {
    /// The manifest and the kernel IR it names (what the interpreter runs).
    pub fn load(manifest_path: &Path) -> Result<Bundle, RunError> {
        let mut b = Bundle::load_manifest(manifest_path)?;
        let dir = manifest_path.parent().unwrap_or(Path::new("."));
        b.kernel_ir = Some(read_text(&dir.join(&b.manifest.kernel_ir))?);
        Ok(b)
    }

    /// The manifest alone: a GPU run needs it and the code object, not the kernel IR (a directory copied to a GPU
    /// machine may hold only `<kernel>.<arch>.{json,ptx|hsaco}`).
    pub fn load_manifest(manifest_path: &Path) -> Result<Bundle, RunError> {
        let text = read_text(manifest_path)?;
        let manifest = Manifest::from_json(&manifest_path.display().to_string(), &text)?;
        Ok(Bundle {
            manifest_path: manifest_path.to_path_buf(),
            manifest,
            kernel_ir: None,
        })
    }
}

/// A 16-bit float tensor as raw bit patterns, with its dtype name (`bf16` or `f16`).
#[derive(Debug, Clone, PartialEq)]
pub struct Half16 {
    pub dtype: String,
    pub bits: Vec<u16>,
}

/// One linear layer's inputs in checkpoint layout (docs/MANIFEST.md, shared/reference fp4-formats).
#[derive(Debug, Clone)]
pub struct LayerInputs {
    pub m: u32,
    /// Activations `[M, K]`, row-major.
    pub x: Half16,
    /// Packed elements `[N, K/2]`, low nibble = even K.
    pub weight: Vec<u8>,
    /// Block scales `[N, K/group]` in the format's scale type.
    pub scales: ScaleData,
    pub tensor_scale: Option<f32>,
    /// Bias `[N]`.
    pub bias: Option<Half16>,
}

pub struct RunOutput {
    /// `y [M, N]` bit patterns in the manifest's output dtype.
    pub y: Vec<u16>,
    pub stats: LaunchStats,
}

fn input_err(name: &str, message: String) -> RunError {
    RunError::Input {
        name: name.to_string(),
        message,
    }
}

/// Checks every input against the manifest before any work.
pub fn validate(m: &Manifest, inp: &LayerInputs) -> Result<(), RunError> {
    let s = &m.shapes;
    let (n, k) = (s.n as usize, s.k as usize);
    if inp.m < s.m_min || inp.m > s.m_max {
        return Err(input_err(
            "x",
            format!(
                "M = {} is outside the kernel's range {}..={}",
                inp.m, s.m_min, s.m_max
            ),
        ));
    }
    if inp.x.dtype != s.x_dtype {
        return Err(input_err(
            "x",
            format!("dtype {} but the kernel takes {}", inp.x.dtype, s.x_dtype),
        ));
    }
    if inp.x.bits.len() != inp.m as usize * k {
        return Err(input_err(
            "x",
            format!(
                "{} elements, expected [M={}, K={k}]",
                inp.x.bits.len(),
                inp.m
            ),
        ));
    }
    if inp.weight.len() != n * k / 2 {
        return Err(input_err(
            "weight",
            format!(
                "{} bytes, expected [N={n}, K/2={}] u8",
                inp.weight.len(),
                k / 2
            ),
        ));
    }
    let groups = n * (k / m.format.group as usize);
    if inp.scales.len() != groups {
        return Err(input_err(
            "weight_scale",
            format!(
                "{} scales, expected [N={n}, K/{}={}]",
                inp.scales.len(),
                m.format.group,
                k / m.format.group as usize
            ),
        ));
    }
    match (m.format.tensor_scale, inp.tensor_scale) {
        (true, None) => {
            return Err(input_err(
                "weight_scale_2",
                "the format needs a per-tensor f32 scale".into(),
            ))
        }
        (false, Some(_)) => {
            return Err(input_err(
                "weight_scale_2",
                format!("format {} has no per-tensor scale", m.format.name),
            ))
        }
        (true, Some(t)) if !(t.is_finite() && t > 0.0) => {
            return Err(input_err(
                "weight_scale_2",
                format!("{t} is not a positive finite scale"),
            ))
        }
        _ => {}
    }
    match (&s.bias_dtype, &inp.bias) {
        (None, Some(_)) => return Err(input_err("bias", "the kernel takes no bias".into())),
        (Some(_), None) => return Err(input_err("bias", "the kernel needs a bias".into())),
        (Some(dt), Some(b)) => {
            if &b.dtype != dt {
                return Err(input_err(
                    "bias",
                    format!("dtype {} but the kernel takes {dt}", b.dtype),
                ));
            }
            if b.bits.len() != n {
                return Err(input_err(
                    "bias",
                    format!("{} elements, expected [N={n}]", b.bits.len()),
                ));
            }
        }
        (None, None) => {}
    }
    Ok(())
}

/// Validates the inputs against the manifest, then repacks weights and scales into the manifest's layouts (the
/// runtime's repacker): everything every device path does before touching a device.
pub fn validate_and_repack(
    m: &Manifest,
    inp: &LayerInputs,
) -> Result<(Vec<u32>, Vec<f32>), RunError> {
    validate(m, inp)?;
    let (n, k) = (m.shapes.n as usize, m.shapes.k as usize);
    let words = repack::repack_weight(&m.weight_layout, &m.format.element, &inp.weight, n, k)
        .map_err(|e| RunError::Repack(e.to_string()))?;
    let scales = repack::repack_scales(&m.scale_layout, &m.format, &inp.scales, n, k)
        .map_err(|e| RunError::Repack(e.to_string()))?;
    Ok((words, scales))
}

fn le16(v: &[u16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Runs the bundle's kernel on the interpreter.
pub fn run_interpreted(
    bundle: &Bundle,
    inp: &LayerInputs,
    options: &LaunchOptions,
) -> Result<RunOutput, RunError> {
    let m = &bundle.manifest;
    let (words, scales) = validate_and_repack(m, inp)?;
    let n = m.shapes.n as usize;
    let module = bundle
        .kernel_ir
        .as_deref()
        .and_then(|text| Module::parse(ir::context(), text))
        .ok_or_else(|| RunError::KernelIr {
            path: bundle.manifest.kernel_ir.clone(),
        })?;
    let mut args = vec![];
    for a in &m.args {
        args.push(match a.role {
            ArgRole::X => KernelArg::Buffer(le16(&inp.x.bits)),
            ArgRole::Weight => {
                KernelArg::Buffer(words.iter().flat_map(|w| w.to_le_bytes()).collect())
            }
            ArgRole::Scales => {
                KernelArg::Buffer(scales.iter().flat_map(|s| s.to_le_bytes()).collect())
            }
            ArgRole::Bias => KernelArg::Buffer(le16(
                &inp.bias
                    .as_ref()
                    .map(|b| b.bits.clone())
                    .unwrap_or_default(),
            )),
            ArgRole::Y => KernelArg::Buffer(vec![0; inp.m as usize * n * 2]),
            // Split-K scratch: partials (any contents) and zeroed arrival counters.
            ArgRole::Workspace => KernelArg::Buffer(vec![0; m.split_k_bytes(inp.m).0 as usize]),
            ArgRole::Counters => KernelArg::Buffer(vec![0; m.split_k_bytes(inp.m).1 as usize]),
            ArgRole::M => KernelArg::I32(inp.m as i32),
            ArgRole::TensorScale => KernelArg::F32(inp.tensor_scale.unwrap_or(1.0)),
        });
    }
    let grid = m.launch.grid_for(inp.m);
    // The MFMA denormal behaviour is the target arch's, whatever the caller's options say.
    let options = LaunchOptions {
        mfma_flushes_denormals: m.arch == "gfx90a",
        ..options.clone()
    };
    let stats = interp::launch_with(
        &module,
        &m.symbol,
        grid,
        m.launch.block,
        &mut args,
        &options,
    )?;
    let y_index = m
        .args
        .iter()
        .position(|a| a.role == ArgRole::Y)
        .ok_or_else(|| {
            RunError::Manifest(ManifestError::Invalid {
                path: bundle.manifest_path.display().to_string(),
                what: "no y argument".into(),
            })
        })?;
    let y = match &args[y_index] {
        KernelArg::Buffer(b) => b
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect(),
        _ => vec![],
    };
    Ok(RunOutput { y, stats })
}

/// The deterministic generator of [`random_inputs`] (the runtime's, shared with `nibble-rt`).
pub use nibble_runtime::numerics::inputs::Rng;

/// Random inputs for a bundle, made the way real checkpoints are: normal activations, and normal weights quantized
/// by the format's quantizer (MXFP4, NVFP4); other formats get uniformly random element codes and block scales of
/// moderate magnitude in their own scale type. The runtime's generator
/// ([`nibble_runtime::numerics::inputs::random_inputs`], shared with `nibble-rt`), in this module's types.
pub fn random_inputs(m: &Manifest, rows: u32, seed: u64) -> Result<LayerInputs, RunError> {
    layer_inputs(nibble_runtime::numerics::inputs::random_inputs(
        m, rows, seed,
    ))
}

/// Inputs for timing (`nibble bench`, `nibble tune`): random codes and scales drawn directly, without the
/// quantizer ([`nibble_runtime::numerics::inputs::timing_inputs`]), in this module's types.
pub fn timing_inputs(m: &Manifest, rows: u32) -> Result<LayerInputs, RunError> {
    layer_inputs(nibble_runtime::numerics::inputs::timing_inputs(m, rows, 7))
}

fn layer_inputs(
    h: Result<
        nibble_runtime::numerics::inputs::HostInputs,
        nibble_runtime::numerics::inputs::InputsError,
    >,
) -> Result<LayerInputs, RunError> {
    use nibble_runtime::numerics::inputs::InputsError;
    let h = h.map_err(|e| {
        let name = match e {
            InputsError::DType { what, .. } => what,
            InputsError::ScaleType { .. } => "weight_scale",
            _ => "weight",
        };
        input_err(name, e.to_string())
    })?;
    Ok(LayerInputs {
        m: h.rows,
        x: Half16 {
            dtype: h.x_dtype.name().to_string(),
            bits: h.x,
        },
        weight: h.weight,
        scales: h.scales,
        tensor_scale: h.tensor_scale,
        bias: h.bias.map(|(d, bits)| Half16 {
            dtype: d.name().to_string(),
            bits,
        }),
    })
}

// ---- HIP execution (written against the real HIP API; not run on an AMD GPU) ----

/// What a HIP run produced.
pub struct HipOutput {
    pub y: Vec<u16>,
    /// Kernel times of the timed runs, in milliseconds (HIP events around each launch).
    pub times_ms: Vec<f32>,
    /// The device's arch, as HIP reports it.
    pub device_arch: String,
}

#[derive(Debug, Error)]
pub enum HipRunError {
    #[error(transparent)]
    Hip(#[from] nibble_runtime::hip::HipError),
    #[error(transparent)]
    Launch(#[from] nibble_runtime::launch::LaunchError),
    #[error(transparent)]
    Run(#[from] RunError),
}

fn halves(h: &Half16) -> Vec<half::bf16> {
    h.bits.iter().map(|b| half::bf16::from_bits(*b)).collect()
}

fn halves_f16(h: &Half16) -> Vec<half::f16> {
    h.bits.iter().map(|b| half::f16::from_bits(*b)).collect()
}

/// Runs the bundle's code object on HIP device `device` for the given inputs: `warmup` untimed launches, then
/// `timed` launches each bracketed by events. Every input is validated and repacked before the device is touched;
/// the device's arch is checked against the manifest before the code object is loaded. Not run on hardware.
pub fn run_hip(
    bundle: &Bundle,
    code_object: &[u8],
    inp: &LayerInputs,
    device: usize,
    warmup: usize,
    timed: usize,
) -> Result<HipOutput, HipRunError> {
    use nibble_runtime::hip::{Device, DeviceBuffer};
    use nibble_runtime::launch::{ArgValue, Kernel};
    let m = &bundle.manifest;
    let (words, scales) = validate_and_repack(m, inp)?;
    let n = m.shapes.n as usize;

    let dev = Device::open(device)?;
    let kernel = Kernel::load(&dev, m, code_object)?;
    let stream = dev.stream()?;
    // Activations, bias and output in their manifest element type (bf16 or f16).
    enum Buf {
        Bf16(DeviceBuffer<half::bf16>),
        F16(DeviceBuffer<half::f16>),
    }
    let up = |h: &Half16| -> Result<Buf, nibble_runtime::hip::HipError> {
        Ok(if h.dtype == "f16" {
            Buf::F16(dev.upload(&halves_f16(h))?)
        } else {
            Buf::Bf16(dev.upload(&halves(h))?)
        })
    };
    fn arg(b: &Buf) -> nibble_runtime::launch::BufferArg<'_> {
        match b {
            Buf::Bf16(d) => d.as_arg(),
            Buf::F16(d) => d.as_arg(),
        }
    }
    let x = up(&inp.x)?;
    let bias = inp.bias.as_ref().map(&up).transpose()?;
    let y = up(&Half16 {
        dtype: m.shapes.y_dtype.clone(),
        bits: vec![0; inp.m as usize * n],
    })?;
    let w = dev.upload(&words)?;
    let s = dev.upload(&scales)?;
    let mut values = vec![
        (ArgRole::X, ArgValue::Buffer(arg(&x))),
        (ArgRole::Weight, ArgValue::Buffer(w.as_arg())),
        (ArgRole::Scales, ArgValue::Buffer(s.as_arg())),
        (ArgRole::Y, ArgValue::Buffer(arg(&y))),
    ];
    if let Some(b) = &bias {
        values.push((ArgRole::Bias, ArgValue::Buffer(arg(b))));
    }
    if let Some(t) = inp.tensor_scale {
        values.push((ArgRole::TensorScale, ArgValue::F32(t)));
    }
    // Split-K scratch: the kernel leaves the counters at zero, so one zeroed allocation serves every launch.
    let (ws_bytes, counter_bytes) = m.split_k_bytes(inp.m);
    let scratch = if ws_bytes > 0 {
        Some((
            dev.alloc::<f32>((ws_bytes / 4) as usize)?,
            dev.upload(&vec![0i32; (counter_bytes / 4) as usize])?,
        ))
    } else {
        None
    };
    if let Some((workspace, counters)) = &scratch {
        values.push((ArgRole::Workspace, ArgValue::Buffer(workspace.as_arg())));
        values.push((ArgRole::Counters, ArgValue::Buffer(counters.as_arg())));
    }
    for _ in 0..warmup {
        kernel.launch(&stream, inp.m, &values)?;
    }
    let mut times_ms = vec![];
    for _ in 0..timed.max(1) {
        let (start, end) = (dev.event()?, dev.event()?);
        start.record(&stream)?;
        kernel.launch(&stream, inp.m, &values)?;
        end.record(&stream)?;
        end.synchronize()?;
        times_ms.push(start.elapsed_ms(&end)?);
    }
    stream.synchronize()?;
    let y = match &y {
        Buf::Bf16(d) => d.to_vec()?.into_iter().map(|v| v.to_bits()).collect(),
        Buf::F16(d) => d.to_vec()?.into_iter().map(|v| v.to_bits()).collect(),
    };
    Ok(HipOutput {
        y,
        times_ms,
        device_arch: dev.arch().to_string(),
    })
}

// ---- CUDA execution (sm_80/sm_90 kernels; the runtime's CUDA launch path, shared with QuantLinear and nibble-rt) --

/// What a CUDA run produced.
pub struct CudaOutput {
    pub y: Vec<u16>,
    /// Kernel times of the timed runs, in milliseconds (CUDA events around each launch).
    pub times_ms: Vec<f32>,
    /// The device's name and compute capability, e.g. `NVIDIA H100 80GB HBM3 (sm_90)`.
    pub device: String,
}

#[derive(Debug, Error)]
pub enum CudaRunError {
    #[error(
        "{manifest}: the kernel is compiled for {arch}; --device cuda runs sm_80/sm_90 kernels"
    )]
    NotCuda { manifest: String, arch: String },
    #[error(transparent)]
    Cuda(#[from] nibble_runtime::cuda::CudaError),
    #[error(transparent)]
    Launch(#[from] nibble_runtime::launch::LaunchError),
    #[error(transparent)]
    Run(#[from] RunError),
}

/// Validates the inputs against the manifest, then repacks weights and scales into the manifest's layouts, whichever
/// they are (AMD f32 scales or the sm_80/sm_90 16-bit ones).
pub fn validate_and_repack_any(
    m: &Manifest,
    inp: &LayerInputs,
) -> Result<(Vec<u32>, repack::RepackedScales), RunError> {
    validate(m, inp)?;
    let (n, k) = (m.shapes.n as usize, m.shapes.k as usize);
    let words = repack::repack_weight(&m.weight_layout, &m.format.element, &inp.weight, n, k)
        .map_err(|e| RunError::Repack(e.to_string()))?;
    let scales = repack::repack_scales_for(
        &m.weight_layout,
        &m.scale_layout,
        &m.format,
        &inp.scales,
        n,
        k,
    )
    .map_err(|e| RunError::Repack(e.to_string()))?;
    Ok((words, scales))
}

/// Runs the bundle's PTX on CUDA device `device` for the given inputs: `warmup` untimed launches, then `timed`
/// launches each bracketed by events. The kernel must be for an `sm_*` arch; every input is validated and repacked
/// before the device is touched; the device's capability, the PTX and the launch geometry are checked before the
/// PTX is loaded. Not run on hardware yet.
pub fn run_cuda(
    bundle: &Bundle,
    ptx: &[u8],
    inp: &LayerInputs,
    device: usize,
    warmup: usize,
    timed: usize,
) -> Result<CudaOutput, CudaRunError> {
    let (dev, kernel, case) = cuda_case(bundle, ptx, inp, device)?;
    let stream = dev.stream()?;
    for _ in 0..warmup {
        case.launch(&kernel, &stream)?;
    }
    let (start, end) = (dev.event()?, dev.event()?);
    let mut times_ms = vec![];
    for _ in 0..timed.max(1) {
        start.record(&stream)?;
        case.launch(&kernel, &stream)?;
        end.record(&stream)?;
        end.synchronize()?;
        times_ms.push(start.elapsed_ms(&end)?);
    }
    stream.synchronize()?;
    Ok(CudaOutput {
        y: case.read_y()?,
        times_ms,
        device: device_name(&dev),
    })
}

/// What [`time_cuda`] measured.
pub struct CudaTiming {
    /// Flushed launch times (the benchmark's method, `nibble_runtime::cuda::timing`), one per M asked for.
    pub times: Vec<nibble_runtime::cuda::timing::FlushedTimes>,
    /// As in [`CudaOutput::device`].
    pub device: String,
}

/// Times the bundle's kernel on CUDA device `device` exactly as `nibble-rt bench` does, at each M of `ms`:
/// `warmup` untimed launches, then `iters` launches each after a 256 MB L2 flush. The inputs are uploaded once for
/// their `inp.m` rows and smaller M launch on the same buffers, as in `nibble-rt bench`; they are validated and
/// repacked before the device is touched.
pub fn time_cuda(
    bundle: &Bundle,
    ptx: &[u8],
    inp: &LayerInputs,
    device: usize,
    ms: &[u32],
    warmup: u32,
    iters: u32,
) -> Result<CudaTiming, CudaRunError> {
    use nibble_runtime::cuda::timing::Timer;
    if let Some(&bad) = ms.iter().find(|&&m| m == 0 || m > inp.m) {
        return Err(input_err(
            "x",
            format!("M = {bad} is outside the {} rows uploaded", inp.m),
        )
        .into());
    }
    let (dev, kernel, case) = cuda_case(bundle, ptx, inp, device)?;
    let timer = Timer::new(&dev)?;
    let mut times = vec![];
    for &m in ms {
        let launch = |st: &nibble_runtime::cuda::Stream| case.args().launch(&kernel, st, m);
        timer.warm_up(warmup, &launch)?;
        times.push(timer.flushed(iters, &launch)?);
    }
    Ok(CudaTiming {
        times,
        device: device_name(&dev),
    })
}

/// The device's name and compute capability, e.g. `NVIDIA H100 80GB HBM3 (sm_90)`.
pub fn device_name(dev: &nibble_runtime::cuda::Device) -> String {
    let info = dev.info();
    format!("{} (sm_{}{})", info.name, info.major, info.minor)
}

/// Checks that the bundle is an sm_* kernel, validates and repacks the inputs, then opens the device, loads the PTX
/// and uploads the case.
fn cuda_case(
    bundle: &Bundle,
    ptx: &[u8],
    inp: &LayerInputs,
    device: usize,
) -> Result<
    (
        nibble_runtime::cuda::Device,
        nibble_runtime::cuda::CudaKernel,
        nibble_runtime::linear_cuda::KernelCase,
    ),
    CudaRunError,
> {
    use nibble_runtime::cuda::{CudaKernel, Device};
    use nibble_runtime::linear_cuda::KernelCase;
    let m = &bundle.manifest;
    if nibble_runtime::ptx::parse_sm(&m.arch).is_none() {
        return Err(CudaRunError::NotCuda {
            manifest: bundle.manifest_path.display().to_string(),
            arch: m.arch.clone(),
        });
    }
    let (words, scales) = validate_and_repack_any(m, inp)?;
    let dev = Device::open(device)?;
    let kernel = CudaKernel::load(&dev, m, ptx)?;
    let case = KernelCase::upload(
        &dev,
        m,
        inp.m,
        &inp.x.bits,
        &words,
        &scales,
        inp.bias.as_ref().map(|b| b.bits.as_slice()),
        inp.tensor_scale,
    )?;
    Ok((dev, kernel, case))
}
