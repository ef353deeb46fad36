//! `QuantLinear<CudaBackend>` end to end on a real GPU, with the checked-in sm_90 bundle
//! `tests/fixtures/cuda_bundle/` (two kernels for one MXFP4 bf16 layer with a bias, N=256 K=1024: `cuda_decode`,
//! tile M 16 with split-K, for M 1..=16, and `cuda_prefill`, tile M 64, for M 17..=4096; the top-level
//! tests/fixtures.rs checks that the files are exactly what the compiler produces from
//! `tests/fixtures/cuda_bundle_{decode,prefill}.nib`).
//!
//! This file is its own test binary without MLIR or LLVM, so it can be built here and copied to a GPU machine:
//! - The fixture directory is `$NIBBLE_FIXTURES` when set (relative paths are taken from the working directory),
//!   else this crate's `tests/fixtures`.
//! - Without an NVIDIA driver or device, the GPU tests check that opening the backend fails with the typed one-line
//!   "no NVIDIA GPU: ..." error, print "skipped: no NVIDIA GPU" and pass; with `NIBBLE_REQUIRE_GPU` set they fail
//!   instead (use it on the GPU machine, so a missing driver cannot pass as a skip).
//! - The device is `$NIBBLE_CUDA_DEVICE` (0 when unset).
//!
//! Everything that does not need a device (the bundle loads and its PTX matches its manifests, selection by M, the
//! CPU reference within the error bound, the tampered bundle of the negative control really changes the uploaded
//! scales) is checked on every machine.

use std::path::{Path, PathBuf};

use nibble_runtime::bundle::KernelBundle;
use nibble_runtime::checkpoint::{Checkpoint, QuantScheme};
use nibble_runtime::cuda::CudaError;
use nibble_runtime::linear::{Backend, CpuReference, QuantLinear};
use nibble_runtime::linear_cuda::{check_layer, CudaBackend};
use nibble_runtime::manifest::Manifest;
use nibble_runtime::numerics::compare::{compare, decode, Comparison};
use nibble_runtime::numerics::inputs::{half_bits, random_inputs, Rng};
use nibble_runtime::numerics::reference::dequant_weight;
use nibble_runtime::numerics::{DType, ScaleData};
use safetensors::tensor::{Dtype, TensorView};

const PREFIX: &str = "model.layers.0.mlp.down_proj";
const ARCH: &str = "sm_90";
const N: usize = 256;
const K: usize = 1024;
const DECODE: &str = "cuda_decode";
const PREFILL: &str = "cuda_prefill";
/// M values on both sides of the bundle's M ranges (decode 1..=16, prefill 17..=4096), with partial M tiles.
const MS: [usize; 5] = [1, 5, 16, 40, 100];

fn fixtures() -> PathBuf {
    match std::env::var_os("NIBBLE_FIXTURES") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"),
    }
}

fn bundle_dir() -> PathBuf {
    fixtures().join("cuda_bundle")
}

fn load_bundle(dir: &Path) -> KernelBundle {
    KernelBundle::load(dir).unwrap_or_else(|e| {
        panic!(
            "loading the fixture bundle {} (set NIBBLE_FIXTURES to the runtime/tests/fixtures directory): {e}",
            dir.display()
        )
    })
}

/// The kernel `M` selects in the fixture bundle.
fn expected_kernel(m: usize) -> &'static str {
    if m <= 16 {
        DECODE
    } else {
        PREFILL
    }
}

/// One random MXFP4 layer with a bf16 bias, written as a checkpoint (quark config, one safetensors file).
struct Layer {
    _dir: tempfile::TempDir,
    ckpt: Checkpoint,
    /// The dequantized weight `[N, K]` (the reference's, in bf16 values).
    w_deq: Vec<f32>,
    /// The bias as f32.
    bias: Vec<f32>,
}

impl Layer {
    fn new(manifest: &Manifest, seed: u64) -> Layer {
        // Weights quantized by the format's quantizer, the way real checkpoints are made (rows = 0: the
        // activations are made per M below).
        let inputs = random_inputs(manifest, 0, seed).expect("random inputs");
        let ScaleData::Bytes(codes) = &inputs.scales else {
            panic!("MXFP4 scales are E8M0 bytes")
        };
        let Some((DType::Bf16, bias_bits)) = &inputs.bias else {
            panic!("the fixture kernels take a bf16 bias")
        };
        let bias_bytes: Vec<u8> = bias_bits.iter().flat_map(|b| b.to_le_bytes()).collect();
        let tensors: Vec<(String, TensorView<'_>)> = vec![
            (
                format!("{PREFIX}.weight"),
                TensorView::new(Dtype::U8, vec![N, K / 2], &inputs.weight).expect("weight"),
            ),
            (
                format!("{PREFIX}.weight_scale"),
                TensorView::new(Dtype::U8, vec![N, K / 32], codes).expect("scales"),
            ),
            (
                format!("{PREFIX}.bias"),
                TensorView::new(Dtype::BF16, vec![N], &bias_bytes).expect("bias"),
            ),
        ];
        let dir = tempfile::tempdir().expect("temp dir");
        let st = safetensors::serialize(tensors, None).expect("serializes");
        std::fs::write(dir.path().join("model.safetensors"), st).expect("writes weights");
        let config = serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "hidden_size": K, "intermediate_size": N, "num_attention_heads": 8, "num_key_value_heads": 8,
            "num_hidden_layers": 1,
            "quantization_config": {
                "quant_method": "quark",
                "global_quant_config": {"weight": {
                    "dtype": "fp4", "qscheme": "per_group", "group_size": 32, "scale_format": "e8m0",
                    "ch_axis": -1, "is_dynamic": false
                }},
                "exclude": ["lm_head"]
            }
        });
        std::fs::write(dir.path().join("config.json"), config.to_string()).expect("writes config");
        let ckpt = Checkpoint::open(dir.path()).expect("opens the checkpoint");
        let w_deq = dequant_weight(
            &manifest.format,
            &inputs.weight,
            &inputs.scales,
            None,
            N,
            K,
            DType::Bf16,
        )
        .expect("dequantizes");
        let bias = bias_bits.iter().map(|&b| decode(b, DType::Bf16)).collect();
        Layer {
            _dir: dir,
            ckpt,
            w_deq,
            bias,
        }
    }

    /// `y` against the f64 reference with the error bound of `numerics::compare`.
    fn compare(&self, x: &[u16], m: usize, y: &[u16]) -> Comparison {
        let xf: Vec<f32> = x.iter().map(|&b| decode(b, DType::Bf16)).collect();
        compare(
            y,
            DType::Bf16,
            &xf,
            &self.w_deq,
            m,
            N,
            K,
            None,
            Some(&self.bias),
        )
        .expect("compares")
    }

    fn build<B: Backend>(&self, backend: B, bundle: &KernelBundle) -> QuantLinear<B> {
        QuantLinear::from_checkpoint(backend, bundle, &self.ckpt, PREFIX, ARCH)
            .unwrap_or_else(|e| panic!("building the layer on {ARCH}: {e}"))
    }
}

/// Normal activations `[m, K]` in bf16.
fn activations(m: usize, seed: u64) -> Vec<u16> {
    let mut rng = Rng::new(seed);
    (0..m * K)
        .map(|_| half_bits(rng.normal(), DType::Bf16))
        .collect()
}

fn decode_manifest(bundle: &KernelBundle) -> Manifest {
    bundle
        .candidates(N, K, QuantScheme::Mxfp4, ARCH)
        .expect("the fixture's kernels")
        .iter()
        .find(|k| k.manifest.kernel == DECODE)
        .expect("cuda_decode")
        .manifest
        .clone()
}

/// The CUDA backend, or `None` (after checking the typed error) where there is no NVIDIA GPU or driver.
fn open_gpu() -> Option<CudaBackend> {
    match CudaBackend::open_default() {
        Ok(b) => Some(b),
        Err(e) => {
            let t = e.to_string();
            assert!(
                matches!(e, CudaError::NoDevice { .. }),
                "opening the CUDA device: {t}"
            );
            assert!(t.starts_with("no NVIDIA GPU: "), "{t}");
            assert_eq!(t.lines().count(), 1, "{t}");
            assert!(
                std::env::var_os("NIBBLE_REQUIRE_GPU").is_none(),
                "NIBBLE_REQUIRE_GPU is set, but {t}"
            );
            println!("skipped: {t}");
            None
        }
    }
}

/// A copy of the fixture bundle in which every manifest's scale `exp_offset` is one larger: the PTX still matches
/// the manifests (the offset is applied when the scales are repacked), so only running the kernels can tell.
fn tampered_bundle() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut edited = 0;
    for e in std::fs::read_dir(bundle_dir()).expect("fixture bundle") {
        let p = e.expect("entry").path();
        let name = p.file_name().expect("file name").to_owned();
        let bytes = std::fs::read(&p).expect("reads");
        let out = if p.extension().is_some_and(|x| x == "json") {
            let mut v: serde_json::Value = serde_json::from_slice(&bytes).expect("manifest JSON");
            let off = &mut v["scale_layout"]["exp_offset"];
            let old = off.as_i64().expect("an integer exp_offset");
            *off = (old + 1).into();
            edited += 1;
            serde_json::to_vec_pretty(&v).expect("serializes")
        } else {
            bytes
        };
        std::fs::write(dir.path().join(name), out).expect("writes");
    }
    assert_eq!(edited, 2, "two manifests in the fixture bundle");
    dir
}

#[test]
fn fixture_bundle_loads_selects_by_m_and_the_cpu_reference_passes() {
    let bundle = load_bundle(&bundle_dir());
    let layer = Layer::new(&decode_manifest(&bundle), 7);
    let cpu = layer.build(CpuReference, &bundle);
    let l = cpu.layer();
    assert_eq!((l.n, l.k, l.kernels.len()), (N, K, 2));
    assert!(l.bias.is_some() && l.tensor_scale.is_none());
    // Both kernels read the same packing (same mma_sync layouts).
    assert_eq!(l.packings.len(), 1);
    // Every kernel's PTX matches its manifest: what the CUDA backend checks before touching the device.
    assert_eq!(check_layer(l).expect("the fixture passes").len(), 2);
    // The decode kernel splits K across blocks (its scratch is allocated per forward); the prefill one does not.
    for k in &l.kernels {
        let ws = k.manifest.split_k_bytes(16).0;
        assert_eq!(ws > 0, k.manifest.kernel == DECODE, "{}", k.manifest.kernel);
    }
    for m in MS {
        assert_eq!(
            l.kernel_for(m).expect("a kernel").0.manifest.kernel,
            expected_kernel(m),
            "M={m}"
        );
        let x = activations(m, 1000 + m as u64);
        let y = cpu.forward_host(&x, m).expect("cpu forward");
        let c = layer.compare(&x, m, &y);
        assert!(c.passes(), "cpu reference, M={m}: {c}");
        assert!(c.max_abs_err > 0.0, "suspiciously exact: {c}");
    }
    let e = cpu
        .forward_host(&activations(4097, 1), 4097)
        .expect_err("M above both ranges");
    assert!(e.to_string().contains("no kernel accepts M=4097"), "{e}");
}

#[test]
fn tampered_bundle_changes_the_repacked_scales() {
    // The negative control of the GPU test must be a real change: the layer still builds from the tampered bundle
    // (nothing before the launch can see the edit), and its repacked scales differ from the fixture's.
    let bundle = load_bundle(&bundle_dir());
    let layer = Layer::new(&decode_manifest(&bundle), 7);
    let good = layer.build(CpuReference, &bundle);
    let t = tampered_bundle();
    let bad = layer.build(CpuReference, &load_bundle(t.path()));
    check_layer(bad.layer()).expect("the tampered bundle's PTX still matches its manifests");
    let (g, b) = (&good.layer().packings[0], &bad.layer().packings[0]);
    assert_eq!(g.weight, b.weight);
    assert_eq!(g.scale_layout.exp_offset + 1, b.scale_layout.exp_offset);
    let (gs, bs) = (g.scales.to_le_bytes(), b.scales.to_le_bytes());
    assert_eq!(gs.len(), bs.len());
    assert_ne!(
        gs, bs,
        "the exp_offset edit left the uploaded scales unchanged"
    );
}

#[test]
fn quant_linear_on_the_gpu_matches_the_reference() {
    let bundle = load_bundle(&bundle_dir());
    let layer = Layer::new(&decode_manifest(&bundle), 7);
    let cpu = layer.build(CpuReference, &bundle);
    let Some(backend) = open_gpu() else {
        return;
    };
    let info = backend.device().info().clone();
    println!("device: {info:?}");
    let gpu = layer.build(backend, &bundle);
    assert_eq!(gpu.backend().name(), "cuda");
    assert_eq!(gpu.backend_state().kernels().len(), 2);
    for m in MS {
        let kernel = &gpu
            .layer()
            .kernel_for(m)
            .expect("a kernel")
            .0
            .manifest
            .kernel;
        assert_eq!(kernel, expected_kernel(m), "M={m}");
        let x = activations(m, 1000 + m as u64);
        let y = gpu.forward_host(&x, m).expect("gpu forward");
        let c = layer.compare(&x, m, &y);
        assert!(c.passes(), "{kernel}, M={m}: {c}");
        assert!(
            c.max_abs_err > 0.0,
            "{kernel}, M={m}: suspiciously exact: {c}"
        );
        let y_cpu = cpu.forward_host(&x, m).expect("cpu forward");
        let differ = y.iter().zip(&y_cpu).filter(|(a, b)| a != b).count();
        println!(
            "{kernel} M={m}: {c}; {differ} of {} elements differ from the CPU reference backend",
            y.len()
        );
        // Both are within the bound of the f64 reference; rounding differences are rare, not the rule.
        assert!(
            differ * 4 <= y.len(),
            "{kernel}, M={m}: {differ} of {} elements differ from the CPU backend",
            y.len()
        );
    }

    // Device buffers in and out, once per kernel (M=5: split-K scratch per call; M=40: none).
    let b = gpu.backend();
    for m in [5, 40] {
        let x = activations(m, 2000 + m as u64);
        let xd = b.upload_half(DType::Bf16, &x).expect("uploads x");
        let yd = b.zeros_half(DType::Bf16, m * N).expect("allocates y");
        gpu.forward_device(&xd, &yd, m).expect("forward_device");
        let y = yd.read_u16().expect("reads y");
        let c = layer.compare(&x, m, &y);
        assert!(c.passes(), "forward_device, M={m}: {c}");
        assert_eq!(
            y,
            gpu.forward_host(&x, m).expect("forward_host"),
            "forward_device and forward_host disagree at M={m}"
        );
        // A y of the wrong size is refused before the launch.
        let short = b.zeros_half(DType::Bf16, m * N - 1).expect("allocates");
        let e = gpu
            .forward_device(&xd, &short, m)
            .expect_err("short y")
            .to_string();
        assert!(e.contains("y has"), "{e}");
    }
}

#[test]
fn a_wrong_exp_offset_fails_on_the_gpu() {
    let bundle = load_bundle(&bundle_dir());
    let layer = Layer::new(&decode_manifest(&bundle), 7);
    let t = tampered_bundle();
    let tampered = load_bundle(t.path());
    let Some(backend) = open_gpu() else {
        return;
    };
    let q = match QuantLinear::from_checkpoint(backend, &tampered, &layer.ckpt, PREFIX, ARCH) {
        Ok(q) => q,
        Err(e) => {
            // Refused before running: also not a silent pass.
            println!("the tampered bundle is refused: {e}");
            return;
        }
    };
    for m in [5, 40] {
        let x = activations(m, 3000 + m as u64);
        match q.forward_host(&x, m) {
            Err(e) => println!("M={m}: the tampered bundle fails: {e}"),
            Ok(y) => {
                let c = layer.compare(&x, m, &y);
                println!("M={m} with the tampered bundle: {c}");
                assert!(
                    !c.passes(),
                    "M={m}: a kernel whose scales are off by a factor of 2 passed the comparison: {c}"
                );
            }
        }
    }
}
