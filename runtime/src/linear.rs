//! `QuantLinear`: one FP4-quantized linear layer `y[M, N] = x[M, K] · dequant(W[N, K])ᵀ (· t) (+ bias)`, built from
//! a checkpoint layer and the kernels a bundle has for its shape, run through a [`Backend`].
//!
//! [`QuantLinear::from_checkpoint`] reads and checks the layer ([`Checkpoint::layer`]), takes every kernel of the
//! bundle for `(N, K, format, arch)`, checks that they agree with the checkpoint (activation/output dtypes, bias
//! presence and dtype), and repacks the weight and scales once per distinct `(weight_layout, scale_layout)` of those
//! kernels ([`crate::numerics::repack`]). The repacked buffers are kept in the [`PreparedLayer`]: they are what a GPU
//! backend uploads. At each call, the kernel is chosen by M with the bundle's rule ([`crate::bundle::choose`]), so a
//! backend runs exactly the kernel (and layout) the bundle would.
//!
//! This file holds only the backend-independent part and [`CpuReference`], the CPU backend with the same API (for
//! tests and as a correctness fallback). The HIP backend lives in `crate::hip`, not here.
//!
//! [`CpuReference`] computes what the kernels compute (docs/NUMERICS.md): the weight is dequantized once, at
//! construction, with [`reference::dequant_weight`] (each element `round_X(code * block_scale)`, in the activation
//! type X); each output is an f32-accumulated dot product (8 interleaved partial sums, then their sum), times the
//! f32 tensor scale, plus the f32 bias, rounded once to the output type (round-to-nearest-even). Its results are
//! within the error bound of [`crate::numerics::compare`]. Rows are computed in parallel with rayon.

use rayon::prelude::*;
use thiserror::Error;

use crate::bundle::{self, BundleError, BundleKernel, KernelBundle};
use crate::checkpoint::{Checkpoint, CheckpointError, LayerData, QuantScheme};
use crate::manifest::{Format, ScaleLayout, WeightLayout};
use crate::numerics::reference::{self, RefError};
use crate::numerics::repack::{repack_scales_for, repack_weight, RepackError, RepackedScales};
use crate::numerics::DType;

#[derive(Debug, Error)]
pub enum LinearError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("layer `{layer}`: repacking for {manifest}: {source}")]
    Repack {
        layer: String,
        manifest: String,
        #[source]
        source: RepackError,
    },
    #[error("layer `{layer}`: dequantizing: {source}")]
    Dequant {
        layer: String,
        #[source]
        source: RefError,
    },
    #[error("layer `{layer}`: {what}")]
    Mismatch { layer: String, what: String },
    #[error("layer `{layer}`: {what} has {got} elements, expected {expected}")]
    Shape {
        layer: String,
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("layer `{layer}`: {what}")]
    Input { layer: String, what: String },
    #[error("layer `{layer}`: {message}")]
    Backend { layer: String, message: String },
    #[error("layer `{layer}`: no kernel accepts M={m} (M ranges: {ranges})")]
    NoKernelForM {
        layer: String,
        m: usize,
        ranges: String,
    },
}

/// 16-bit activations on the host: `[M, K]` bit patterns of `dtype`, row-major.
#[derive(Debug, Clone, Copy)]
pub struct Half16Host<'a> {
    pub dtype: DType,
    pub bits: &'a [u16],
}

/// Weight and scales repacked for one `(weight_layout, scale_layout)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Packing {
    pub weight_layout: WeightLayout,
    pub scale_layout: ScaleLayout,
    /// `N*K/8` words of `nibble.mfma_pairs.v1` or `nibble.mma_sync_a.v1`.
    pub weight: Vec<u32>,
    /// f32 `[N, K/group]` of `nibble.scales_f32.v1`, or the u16 values of `nibble.scales_mma_sync_a.v1`.
    pub scales: RepackedScales,
}

/// A layer ready to run: the checkpoint's per-layer values, the kernels for its shape and their repacked buffers.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedLayer {
    pub prefix: String,
    pub scheme: QuantScheme,
    pub format: Format,
    pub arch: String,
    pub n: usize,
    pub k: usize,
    pub x_dtype: DType,
    pub y_dtype: DType,
    pub tensor_scale: Option<f32>,
    /// `[N]` bit patterns, in the kernels' bias dtype.
    pub bias: Option<(DType, Vec<u16>)>,
    /// The bundle's kernels for this shape and arch.
    pub kernels: Vec<BundleKernel>,
    /// For each of `kernels`, the index of its packing in `packings`.
    pub kernel_packing: Vec<usize>,
    pub packings: Vec<Packing>,
}

impl PreparedLayer {
    /// The kernel to run for M (the bundle's rule) and its repacked buffers.
    pub fn kernel_for(&self, m: usize) -> Result<(&BundleKernel, &Packing), LinearError> {
        let none = || LinearError::NoKernelForM {
            layer: self.prefix.clone(),
            m,
            ranges: bundle::ranges(&self.kernels),
        };
        let i = bundle::choose(&self.kernels, m).ok_or_else(none)?;
        let p = self
            .kernel_packing
            .get(i)
            .and_then(|&p| self.packings.get(p))
            .ok_or_else(none)?;
        Ok((&self.kernels[i], p))
    }
}

/// Where a layer runs. `Layer` is the backend's per-layer state, built once (the CPU reference keeps the
/// dequantized weight; a GPU backend its device buffers).
pub trait Backend: Send + Sync {
    type Layer: Send + Sync;

    fn name(&self) -> &'static str;

    /// Builds the per-layer state from the prepared layer and the checked checkpoint data.
    fn prepare(
        &self,
        layer: &PreparedLayer,
        data: &LayerData<'_>,
    ) -> Result<Self::Layer, LinearError>;

    /// `y[M, N]` (bit patterns of `layer.y_dtype`) for `x[M, K]`. Callers go through [`QuantLinear::forward_host`],
    /// which has checked the shapes and that a kernel accepts M.
    fn linear(
        &self,
        layer: &PreparedLayer,
        state: &Self::Layer,
        x: &Half16Host<'_>,
        m: usize,
    ) -> Result<Vec<u16>, LinearError>;
}

/// The CPU reference backend (see the module doc).
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuReference;

/// [`CpuReference`]'s per-layer state.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuLayer {
    /// Dequantized weight `[N, K]`, each value exact in the activation type.
    pub w: Vec<f32>,
    /// Bias `[N]` as f32 (exact).
    pub bias: Option<Vec<f32>>,
}

fn decode(bits: u16, dtype: DType) -> f32 {
    match dtype {
        DType::Bf16 => half::bf16::from_bits(bits).to_f32(),
        DType::F16 => half::f16::from_bits(bits).to_f32(),
    }
}

/// Round-to-nearest-even to `dtype`.
fn encode(v: f32, dtype: DType) -> u16 {
    match dtype {
        DType::Bf16 => half::bf16::from_f32(v).to_bits(),
        DType::F16 => half::f16::from_f32(v).to_bits(),
    }
}

/// `Σ a_i b_i` in f32 with 8 interleaved partial sums.
fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    for (i, (x, y)) in ar.iter().zip(br).enumerate() {
        acc[i] += x * y;
    }
    acc.iter().sum()
}

impl Backend for CpuReference {
    type Layer = CpuLayer;

    fn name(&self) -> &'static str {
        "cpu-reference"
    }

    fn prepare(
        &self,
        layer: &PreparedLayer,
        data: &LayerData<'_>,
    ) -> Result<CpuLayer, LinearError> {
        let w = reference::dequant_weight(
            &layer.format,
            data.weight,
            &data.scales,
            data.tensor_scale,
            layer.n,
            layer.k,
            layer.x_dtype,
        )
        .map_err(|source| LinearError::Dequant {
            layer: layer.prefix.clone(),
            source,
        })?;
        let bias = layer
            .bias
            .as_ref()
            .map(|(dt, bits)| bits.iter().map(|&b| decode(b, *dt)).collect());
        Ok(CpuLayer { w, bias })
    }

    fn linear(
        &self,
        layer: &PreparedLayer,
        state: &CpuLayer,
        x: &Half16Host<'_>,
        m: usize,
    ) -> Result<Vec<u16>, LinearError> {
        let (n, k) = (layer.n, layer.k);
        check_input(layer, x, m)?;
        if state.w.len() != n * k {
            return Err(LinearError::Shape {
                layer: layer.prefix.clone(),
                what: "dequantized weight",
                expected: n * k,
                got: state.w.len(),
            });
        }
        if let Some(b) = &state.bias {
            if b.len() != n {
                return Err(LinearError::Shape {
                    layer: layer.prefix.clone(),
                    what: "bias",
                    expected: n,
                    got: b.len(),
                });
            }
        }
        let xf: Vec<f32> = x.bits.par_iter().map(|&b| decode(b, x.dtype)).collect();
        let t = layer.tensor_scale;
        let bias = state.bias.as_deref();
        let y_dtype = layer.y_dtype;
        let mut y = vec![0u16; m * n];
        y.par_chunks_mut(n)
            .zip(xf.par_chunks(k))
            .for_each(|(yrow, xrow)| {
                yrow.par_iter_mut().enumerate().for_each(|(j, out)| {
                    let mut v = dot_f32(xrow, &state.w[j * k..(j + 1) * k]);
                    if let Some(t) = t {
                        v *= t;
                    }
                    if let Some(b) = bias {
                        v += b[j];
                    }
                    *out = encode(v, y_dtype);
                });
            });
        Ok(y)
    }
}

/// Checks `x` against the layer before any work: dtype, `M >= 1`, length `M*K`.
fn check_input(layer: &PreparedLayer, x: &Half16Host<'_>, m: usize) -> Result<(), LinearError> {
    if x.dtype != layer.x_dtype {
        return Err(LinearError::Input {
            layer: layer.prefix.clone(),
            what: format!(
                "activations are {}, the layer's kernels take {}",
                x.dtype.name(),
                layer.x_dtype.name()
            ),
        });
    }
    if m == 0 {
        return Err(LinearError::Input {
            layer: layer.prefix.clone(),
            what: "M must be at least 1".into(),
        });
    }
    let expected = m.checked_mul(layer.k).ok_or_else(|| LinearError::Input {
        layer: layer.prefix.clone(),
        what: format!("M={m} times K={} overflows", layer.k),
    })?;
    if x.bits.len() != expected {
        return Err(LinearError::Shape {
            layer: layer.prefix.clone(),
            what: "x",
            expected,
            got: x.bits.len(),
        });
    }
    Ok(())
}

/// One quantized linear layer on a backend.
#[derive(Debug)]
pub struct QuantLinear<B: Backend = CpuReference> {
    backend: B,
    layer: PreparedLayer,
    state: B::Layer,
}

// `QuantLinear` is shared between threads (one layer object, many requests).
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<QuantLinear<CpuReference>>();
};

fn parse_dtype(layer: &str, k: &BundleKernel, what: &str, s: &str) -> Result<DType, LinearError> {
    DType::parse(s).ok_or_else(|| LinearError::Mismatch {
        layer: layer.to_string(),
        what: format!(
            "{}: {what} {s:?} is not bf16 or f16",
            k.manifest_path.display()
        ),
    })
}

impl<B: Backend> QuantLinear<B> {
    /// Builds layer `layer_prefix` of `ckpt` for the kernels `bundle` has for its shape on `arch` (see the module
    /// doc).
    pub fn from_checkpoint(
        backend: B,
        bundle: &KernelBundle,
        ckpt: &Checkpoint,
        layer_prefix: &str,
        arch: &str,
    ) -> Result<QuantLinear<B>, LinearError> {
        let data = ckpt.layer(layer_prefix)?;
        let (n, k, scheme) = (data.n, data.k, data.scheme);
        let kernels = bundle.candidates(n, k, scheme, arch)?.to_vec();
        let mismatch = |what: String| LinearError::Mismatch {
            layer: layer_prefix.to_string(),
            what,
        };
        // `candidates` never returns an empty group; keep this panic-free anyway.
        let first = kernels
            .first()
            .ok_or_else(|| mismatch(format!("no kernel for {arch}")))?;
        let s0 = &first.manifest.shapes;
        let x_dtype = parse_dtype(layer_prefix, first, "x_dtype", &s0.x_dtype)?;
        let y_dtype = parse_dtype(layer_prefix, first, "y_dtype", &s0.y_dtype)?;
        let kbias = match &s0.bias_dtype {
            None => None,
            Some(b) => Some(parse_dtype(layer_prefix, first, "bias_dtype", b)?),
        };
        for kn in &kernels[1..] {
            let s = &kn.manifest.shapes;
            if (&s.x_dtype, &s.y_dtype, &s.bias_dtype) != (&s0.x_dtype, &s0.y_dtype, &s0.bias_dtype)
            {
                return Err(mismatch(format!(
                    "kernels {} and {} for this shape differ in x/y/bias dtypes; one layer needs one set",
                    first.manifest_path.display(),
                    kn.manifest_path.display()
                )));
            }
        }
        match (&data.bias, kbias) {
            (Some((dt, _)), Some(kdt)) if *dt != kdt => {
                return Err(mismatch(format!(
                    "the checkpoint bias is {}, the kernels ({}) take a {} bias",
                    dt.name(),
                    first.manifest_path.display(),
                    kdt.name()
                )))
            }
            (Some(_), None) => {
                return Err(mismatch(format!(
                    "the checkpoint has a bias, the kernels ({}) take none",
                    first.manifest_path.display()
                )))
            }
            (None, Some(_)) => {
                return Err(mismatch(format!(
                    "the kernels ({}) take a bias, the checkpoint has none",
                    first.manifest_path.display()
                )))
            }
            _ => {}
        }

        let mut packings: Vec<Packing> = vec![];
        let mut kernel_packing = Vec::with_capacity(kernels.len());
        for kn in &kernels {
            let mf = &kn.manifest;
            if let Some(i) = packings.iter().position(|p| {
                p.weight_layout == mf.weight_layout && p.scale_layout == mf.scale_layout
            }) {
                kernel_packing.push(i);
                continue;
            }
            let rerr = |source| LinearError::Repack {
                layer: layer_prefix.to_string(),
                manifest: kn.manifest_path.display().to_string(),
                source,
            };
            let weight = repack_weight(&mf.weight_layout, &mf.format.element, data.weight, n, k)
                .map_err(rerr)?;
            let scales = repack_scales_for(
                &mf.weight_layout,
                &mf.scale_layout,
                &mf.format,
                &data.scales,
                n,
                k,
            )
            .map_err(rerr)?;
            kernel_packing.push(packings.len());
            packings.push(Packing {
                weight_layout: mf.weight_layout.clone(),
                scale_layout: mf.scale_layout.clone(),
                weight,
                scales,
            });
        }
        let layer = PreparedLayer {
            prefix: layer_prefix.to_string(),
            scheme,
            format: first.manifest.format.clone(),
            arch: arch.to_string(),
            n,
            k,
            x_dtype,
            y_dtype,
            tensor_scale: data.tensor_scale,
            bias: data.bias.clone(),
            kernels,
            kernel_packing,
            packings,
        };
        let state = backend.prepare(&layer, &data)?;
        Ok(QuantLinear {
            backend,
            layer,
            state,
        })
    }

    pub fn layer(&self) -> &PreparedLayer {
        &self.layer
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    pub fn backend_state(&self) -> &B::Layer {
        &self.state
    }

    /// `y[M, N]` (bit patterns of the layer's output dtype) for `x[M, K]` (bit patterns of its activation dtype).
    /// Checks the shape and that a kernel of the bundle accepts M before doing any work.
    pub fn forward_host(&self, x: &[u16], m: usize) -> Result<Vec<u16>, LinearError> {
        let l = &self.layer;
        let xh = Half16Host {
            dtype: l.x_dtype,
            bits: x,
        };
        check_input(l, &xh, m)?;
        l.kernel_for(m)?;
        let y = self.backend.linear(l, &self.state, &xh, m)?;
        if y.len() != m * l.n {
            return Err(LinearError::Shape {
                layer: l.prefix.clone(),
                what: "backend output",
                expected: m * l.n,
                got: y.len(),
            });
        }
        Ok(y)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use safetensors::tensor::Dtype;

    use super::*;
    use crate::bundle::testutil::{fixture, manifest, write_kernel};
    use crate::checkpoint::testutil::*;
    use crate::manifest::Manifest;
    use crate::numerics::compare::compare;
    use crate::numerics::fp8::{e4m3fn_decode, e8m0_decode};
    use crate::numerics::repack::unpack_weight;
    use crate::numerics::ScaleData;

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().expect("tempdir")
    }

    fn activations(m: usize, k: usize, dtype: DType, seed: u64) -> Vec<u16> {
        weights(m, k, seed)
            .into_iter()
            .map(|v| encode(4.0 * v, dtype))
            .collect()
    }

    struct Setup {
        _ck: tempfile::TempDir,
        _kb: tempfile::TempDir,
        ckpt: Checkpoint,
        bundle: KernelBundle,
    }

    fn setup(
        config: serde_json::Value,
        tensors: &BTreeMap<String, T>,
        kernels: &[Manifest],
    ) -> Setup {
        let (ck, kb) = (tmp(), tmp());
        write_checkpoint(ck.path(), &config, tensors, 2);
        for m in kernels {
            write_kernel(kb.path(), m, fixture(&m.arch));
        }
        Setup {
            ckpt: Checkpoint::open(ck.path()).expect("checkpoint"),
            bundle: KernelBundle::load(kb.path()).expect("bundle"),
            _ck: ck,
            _kb: kb,
        }
    }

    /// Checks `y` against the f64 reference with the error bound of `numerics::compare`.
    fn check(q: &QuantLinear, data: &LayerData<'_>, x: &[u16], m: usize, y: &[u16]) {
        let l = q.layer();
        let w = reference::dequant_weight(
            &l.format,
            data.weight,
            &data.scales,
            data.tensor_scale,
            l.n,
            l.k,
            l.x_dtype,
        )
        .expect("dequant");
        let xf: Vec<f32> = x.iter().map(|&b| decode(b, l.x_dtype)).collect();
        let bias: Option<Vec<f32>> = l
            .bias
            .as_ref()
            .map(|(dt, b)| b.iter().map(|&v| decode(v, *dt)).collect());
        let c = compare(
            y,
            l.y_dtype,
            &xf,
            &w,
            m,
            l.n,
            l.k,
            l.tensor_scale,
            bias.as_deref(),
        )
        .expect("compare");
        assert!(c.passes(), "{c:?}");
        assert_eq!(c.elements, m * l.n);
        assert!(
            c.max_abs_err > 0.0 || m * l.n < 8,
            "suspiciously exact: {c:?}"
        );
    }

    #[test]
    fn mxfp4_forward_matches_reference_and_repacks_per_layout() {
        let (n, k) = (64, 256);
        let mut t = BTreeMap::new();
        mxfp4_layer(&mut t, "model.layers.0.mlp.down_proj", n, k, 11, false);
        let q4 = QuantScheme::Mxfp4;
        let s = setup(
            quark_config(),
            &t,
            &[
                manifest("small", "gfx942", 64, 256, q4, 16, (1, 32), None, (16, 16)),
                manifest("big", "gfx942", 64, 256, q4, 64, (1, 4096), None, (32, 8)),
                manifest("mid", "gfx942", 64, 256, q4, 32, (1, 64), None, (16, 16)),
                manifest("old", "gfx90a", 64, 256, q4, 32, (1, 4096), None, (16, 16)),
            ],
        );
        let prefix = "model.layers.0.mlp.down_proj";
        let q = QuantLinear::from_checkpoint(CpuReference, &s.bundle, &s.ckpt, prefix, "gfx942")
            .expect("builds");
        let l = q.layer();
        assert_eq!((l.n, l.k, l.kernels.len()), (64, 256, 3));
        // Two distinct weight layouts (16x16 and 32x8 atoms) -> two packings; "mid" shares "small"'s.
        assert_eq!(l.packings.len(), 2);
        assert_eq!(l.kernel_for(3).expect("m=3").0.manifest.kernel, "small");
        assert_eq!(l.kernel_for(40).expect("m=40").0.manifest.kernel, "mid");
        assert_eq!(l.kernel_for(65).expect("m=65").0.manifest.kernel, "big");

        let data = s.ckpt.layer(prefix).expect("layer");
        for p in &l.packings {
            let back = unpack_weight(&p.weight_layout, &l.format.element, &p.weight, n, k)
                .expect("unpacks");
            let want: Vec<u8> = data
                .weight
                .iter()
                .map(|&b| {
                    let lo = if b & 0xF == 8 { 0 } else { b & 0xF };
                    let hi = if b >> 4 == 8 { 0 } else { b >> 4 };
                    lo | hi << 4
                })
                .collect();
            assert_eq!(back, want);
            let ScaleData::Bytes(codes) = &data.scales else {
                panic!("bytes")
            };
            for (c, &v) in codes.iter().zip(p.scales.as_f32().expect("f32 scales")) {
                assert_eq!(v, e8m0_decode(*c) * 2f32.powi(p.scale_layout.exp_offset));
            }
        }

        for m in [1, 3, 40, 100] {
            let x = activations(m, k, DType::Bf16, m as u64);
            let y = q.forward_host(&x, m).expect("forward");
            check(&q, &data, &x, m, &y);
        }

        // gfx90a gets its own kernel and exp_offset.
        let q90 = QuantLinear::from_checkpoint(CpuReference, &s.bundle, &s.ckpt, prefix, "gfx90a")
            .expect("gfx90a");
        assert_eq!(q90.layer().packings[0].scale_layout.exp_offset, 14);
        let x = activations(5, k, DType::Bf16, 77);
        assert_eq!(
            q90.forward_host(&x, 5).expect("f"),
            q.forward_host(&x, 5).expect("f")
        );
    }

    #[test]
    fn nvfp4_with_bias_and_f16_matches_reference() {
        let (n, k) = (64, 128);
        let mut t = BTreeMap::new();
        nvfp4_layer(&mut t, "attn.o_proj", n, k, 5);
        bias(&mut t, "attn.o_proj", n, Dtype::F16);
        let mut km = manifest(
            "o",
            "gfx942",
            64,
            128,
            QuantScheme::Nvfp4,
            16,
            (1, 1024),
            Some("f16"),
            (16, 16),
        );
        km.shapes.x_dtype = "f16".into();
        km.shapes.y_dtype = "f16".into();
        let s = setup(modelopt_config(), &t, &[km]);
        let q =
            QuantLinear::from_checkpoint(CpuReference, &s.bundle, &s.ckpt, "attn.o_proj", "gfx942")
                .expect("builds");
        let l = q.layer();
        assert!(l.tensor_scale.is_some() && l.bias.is_some());
        assert_eq!((l.x_dtype, l.y_dtype), (DType::F16, DType::F16));
        let data = s.ckpt.layer("attn.o_proj").expect("layer");
        let ScaleData::Bytes(codes) = &data.scales else {
            panic!("bytes")
        };
        for (c, &v) in codes
            .iter()
            .zip(l.packings[0].scales.as_f32().expect("f32 scales"))
        {
            assert_eq!(v, e4m3fn_decode(*c) * 2f32.powi(15));
        }
        for m in [1, 7, 33] {
            let x = activations(m, k, DType::F16, 100 + m as u64);
            let y = q.forward_host(&x, m).expect("forward");
            check(&q, &data, &x, m, &y);
        }
    }

    #[test]
    fn shared_between_threads() {
        let mut t = BTreeMap::new();
        mxfp4_layer(&mut t, "l", 64, 256, 3, true);
        let s = setup(
            quark_config(),
            &t,
            &[manifest(
                "k",
                "gfx942",
                64,
                256,
                QuantScheme::Mxfp4,
                16,
                (1, 64),
                None,
                (16, 16),
            )],
        );
        let q = QuantLinear::from_checkpoint(CpuReference, &s.bundle, &s.ckpt, "l", "gfx942")
            .expect("builds");
        let x = activations(9, 256, DType::Bf16, 1);
        let want = q.forward_host(&x, 9).expect("f");
        std::thread::scope(|sc| {
            let hs: Vec<_> = (0..4)
                .map(|_| sc.spawn(|| q.forward_host(&x, 9).expect("f")))
                .collect();
            for h in hs {
                assert_eq!(h.join().expect("join"), want);
            }
        });
    }

    #[test]
    fn errors_are_checked_before_work() {
        let mut t = BTreeMap::new();
        mxfp4_layer(&mut t, "l", 64, 256, 3, false);
        mxfp4_layer(&mut t, "b", 64, 256, 4, false);
        bias(&mut t, "b", 64, Dtype::BF16);
        let q4 = QuantScheme::Mxfp4;
        let s = setup(
            quark_config(),
            &t,
            &[manifest(
                "k",
                "gfx942",
                64,
                256,
                q4,
                16,
                (1, 64),
                None,
                (16, 16),
            )],
        );
        let q = QuantLinear::from_checkpoint(CpuReference, &s.bundle, &s.ckpt, "l", "gfx942")
            .expect("builds");
        let x = activations(2, 256, DType::Bf16, 1);
        let e = q.forward_host(&x, 3).expect_err("short x").to_string();
        assert!(
            e.contains("layer `l`: x has 512 elements, expected 768"),
            "{e}"
        );
        let e = q.forward_host(&[], 0).expect_err("m=0").to_string();
        assert!(e.contains("M must be at least 1"), "{e}");
        let big = activations(65, 256, DType::Bf16, 1);
        let e = q.forward_host(&big, 65).expect_err("m too big").to_string();
        assert!(
            e.contains("no kernel accepts M=65") && e.contains("k 1..=64"),
            "{e}"
        );
        let e = CpuReference
            .linear(
                q.layer(),
                q.backend_state(),
                &Half16Host {
                    dtype: DType::F16,
                    bits: &x,
                },
                2,
            )
            .expect_err("f16 x")
            .to_string();
        assert!(e.contains("activations are f16"), "{e}");

        let e = QuantLinear::from_checkpoint(CpuReference, &s.bundle, &s.ckpt, "b", "gfx942")
            .expect_err("bias")
            .to_string();
        assert!(
            e.contains("layer `b`") && e.contains("has a bias") && e.contains("k.gfx942.json"),
            "{e}"
        );
        let e = QuantLinear::from_checkpoint(CpuReference, &s.bundle, &s.ckpt, "l", "gfx90a")
            .expect_err("arch")
            .to_string();
        assert!(e.contains("no kernel") && e.contains("gfx90a"), "{e}");
        let e = QuantLinear::from_checkpoint(CpuReference, &s.bundle, &s.ckpt, "nope", "gfx942")
            .expect_err("layer")
            .to_string();
        assert!(e.contains("no linear layer `nope`"), "{e}");

        // A bundle for the other format does not match.
        let mut t = BTreeMap::new();
        nvfp4_layer(&mut t, "l", 64, 256, 3);
        let s2 = setup(
            modelopt_config(),
            &t,
            &[manifest(
                "k",
                "gfx942",
                64,
                256,
                q4,
                16,
                (1, 64),
                None,
                (16, 16),
            )],
        );
        let e = QuantLinear::from_checkpoint(CpuReference, &s2.bundle, &s2.ckpt, "l", "gfx942")
            .expect_err("format")
            .to_string();
        assert!(
            e.contains("N=64 K=256 nvfp4 on gfx942") && e.contains("N=64 K=256 mxfp4"),
            "{e}"
        );

        // An E8M0 scale the gfx942 layout cannot hold (code 240: 2^113 * 2^15 overflows f32) fails at repack,
        // naming the layer and the manifest.
        let mut t = BTreeMap::new();
        mxfp4_layer(&mut t, "l", 64, 256, 3, false);
        let mut sc = vec![127u8; 64 * 8];
        sc[9] = 240;
        t.insert("l.weight_scale".into(), T(Dtype::U8, vec![64, 8], sc));
        let s3 = setup(
            quark_config(),
            &t,
            &[manifest(
                "k",
                "gfx942",
                64,
                256,
                q4,
                16,
                (1, 64),
                None,
                (16, 16),
            )],
        );
        let e = QuantLinear::from_checkpoint(CpuReference, &s3.bundle, &s3.ckpt, "l", "gfx942")
            .expect_err("repack")
            .to_string();
        assert!(
            e.contains("layer `l`: repacking for")
                && e.contains("k.gfx942.json")
                && e.contains("row 1, group 1"),
            "{e}"
        );
    }
}
