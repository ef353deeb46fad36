//! `nibble quantize` and `nibble run` end to end through `cli::run`: float weights quantized by the CLI, kernels
//! compiled by the CLI, run on the interpreter and checked against the independent reference within the error bound
//! of docs/NUMERICS.md; and every input error reported in one line before any work.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use nibble_compiler::cli;
use nibble_compiler::tensors::{write_atomic, Dtype, OwnedTensor, TensorFile};
use nibble_runtime::manifest::Format;
use nibble_runtime::numerics::compare::compare;
use nibble_runtime::numerics::quantize::e2m1;
use nibble_runtime::numerics::reference::dequant_weight;
use nibble_runtime::numerics::{DType, ScaleData};

/// Two small kernels: MXFP4 with bf16 activations and bias; NVFP4 (tensor scale) with f16 activations and bias;
/// and an MXFP4 kernel without bias.
const NIB: &str = "
kernel mx_bf16 {
  target  gfx942
  x       bf16[M, 256]
  w       mxfp4[128, 256]
  y       bf16[M, 128]
  bias    bf16[128]
  tile    m=16 n=64 k=128
  waves   m=1 n=2
  mma     16x16x16
  stages  2
}
kernel nv_f16 {
  target  gfx942
  x       f16[M, 256]
  w       nvfp4[128, 256]
  y       f16[M, 128]
  bias    f16[128]
  tile    m=16 n=64 k=128
  waves   m=1 n=2
  mma     16x16x16
  stages  2
}
kernel mx_nobias {
  target  gfx942
  x       bf16[M, 256]
  w       mxfp4[128, 256]
  y       bf16[M, 128]
  tile    m=16 n=64 k=128
  waves   m=1 n=2
  mma     16x16x16
  stages  2
}
";

const N: usize = 128;
const K: usize = 256;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn nibble<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Out {
    let mut argv: Vec<OsString> = vec!["nibble".into()];
    argv.extend(args.iter().map(|a| a.as_ref().to_os_string()));
    let (mut o, mut e) = (vec![], vec![]);
    let code = cli::run(argv, &mut o, &mut e);
    Out {
        code,
        stdout: String::from_utf8_lossy(&o).into_owned(),
        stderr: String::from_utf8_lossy(&e).into_owned(),
    }
}

fn rng(seed: u64) -> impl FnMut() -> f32 {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        // Uniform in [-1, 1).
        (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

fn half_bits(v: &[f32], dt: Dtype) -> Vec<u16> {
    v.iter()
        .map(|&x| match dt {
            Dtype::BF16 => half::bf16::from_f32(x).to_bits(),
            _ => half::f16::from_f32(x).to_bits(),
        })
        .collect()
}

fn dtype_of(dt: Dtype) -> DType {
    if dt == Dtype::BF16 {
        DType::Bf16
    } else {
        DType::F16
    }
}

/// A temp dir with the kernels compiled by `nibble compile`.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let nib = dir.path().join("k.nib");
        std::fs::write(&nib, NIB).expect("write .nib");
        let out = dir.path().join("out");
        let r = nibble(&[
            OsString::from("compile"),
            nib.into(),
            "-o".into(),
            out.into(),
        ]);
        assert_eq!(r.code, 0, "compile failed: {}", r.stderr);
        Fixture { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn manifest(&self, kernel: &str) -> PathBuf {
        self.dir
            .path()
            .join("out")
            .join(format!("{kernel}.gfx942.json"))
    }
}

/// Random float weights (rows of different magnitudes, some exact zeros) and a bias, written as `weight` F32 and
/// `bias` in `bias_dt`; then `nibble quantize`. Returns the quantized file.
fn quantized_layer(fx: &Fixture, format: &str, bias_dt: Option<Dtype>, seed: u64) -> PathBuf {
    let mut next = rng(seed);
    let w: Vec<f32> = (0..N * K)
        .map(|i| {
            let row = i / K;
            if i % 97 == 0 {
                0.0
            } else {
                next() * (1 + row % 5) as f32 * 0.25
            }
        })
        .collect();
    let mut tensors = vec![("weight".to_string(), OwnedTensor::f32s(vec![N, K], &w))];
    if let Some(dt) = bias_dt {
        let b: Vec<f32> = (0..N).map(|_| next() * 4.0).collect();
        tensors.push((
            "bias".into(),
            OwnedTensor::u16s(dt, vec![N], &half_bits(&b, dt)),
        ));
    }
    let src = fx.path(&format!("{format}-float.safetensors"));
    write_atomic(&src, &tensors).expect("write float weights");
    let dst = fx.path(&format!("{format}.safetensors"));
    let r = nibble(&[
        "quantize".as_ref(),
        "--format".as_ref(),
        format.as_ref(),
        src.as_os_str(),
        dst.as_os_str(),
    ]);
    assert_eq!(r.code, 0, "quantize failed: {}", r.stderr);
    assert!(r.stdout.contains(&format!("to {format}")), "{}", r.stdout);
    dst
}

/// Tensors of a file as owned copies.
fn read_all(path: &Path) -> Vec<(String, OwnedTensor)> {
    let f = TensorFile::open(path).expect("readable safetensors");
    f.names()
        .into_iter()
        .map(|n| {
            let t = f.require(&n).expect("listed tensor");
            (
                n,
                OwnedTensor {
                    dtype: t.dtype,
                    shape: t.shape.clone(),
                    data: t.data.to_vec(),
                },
            )
        })
        .collect()
}

/// The layer file plus `x [m, K]` in `x_dt`.
fn inputs_file(fx: &Fixture, layer: &Path, m: usize, x_dt: Dtype, seed: u64) -> PathBuf {
    let mut next = rng(seed);
    let x: Vec<f32> = (0..m * K).map(|_| next() * 2.0).collect();
    let mut tensors = read_all(layer);
    tensors.push((
        "x".into(),
        OwnedTensor::u16s(x_dt, vec![m, K], &half_bits(&x, x_dt)),
    ));
    let p = fx.path(&format!("inputs-{seed}.safetensors"));
    write_atomic(&p, &tensors).expect("write inputs");
    p
}

fn run_args(manifest: &Path, inputs: &Path, output: &Path, extra: &[&str]) -> Out {
    let mut args: Vec<OsString> = vec![
        "run".into(),
        manifest.into(),
        "--device".into(),
        "interpret".into(),
        "--inputs".into(),
        inputs.into(),
        "--output".into(),
        output.into(),
    ];
    args.extend(extra.iter().map(OsString::from));
    nibble(&args)
}

/// The `max error/bound R` the CLI printed.
fn printed_ratio(stdout: &str) -> f64 {
    let key = "max error/bound ";
    let at = stdout
        .find(key)
        .unwrap_or_else(|| panic!("no ratio in {stdout}"));
    stdout[at + key.len()..]
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unparsable ratio in {stdout}"))
}

/// Runs `kernel` with `--reference` and re-checks OUT's `y` independently.
fn run_and_check(
    kernel: &str,
    format: &str,
    x_dt: Dtype,
    bias_dt: Option<Dtype>,
    m: usize,
    seed: u64,
) {
    let fx = Fixture::new();
    let layer = quantized_layer(&fx, format, bias_dt, seed);
    let inputs = inputs_file(&fx, &layer, m, x_dt, seed + 1);
    let out = fx.path("y.safetensors");
    let r = run_args(&fx.manifest(kernel), &inputs, &out, &["--reference"]);
    assert_eq!(r.code, 0, "run failed: {}{}", r.stdout, r.stderr);
    let ratio = printed_ratio(&r.stdout);
    assert!(ratio <= 1.0, "{}", r.stdout);
    assert!(r.stdout.contains(" 0 of "), "{}", r.stdout);

    // OUT's y, compared here with the library's reference and bound.
    let yf = TensorFile::open(&out).expect("y written");
    assert_eq!(yf.names(), vec!["y".to_string()]);
    let y = yf.require("y").expect("y");
    assert_eq!(y.dtype, x_dt);
    assert_eq!(y.shape, vec![m, N]);
    let y_bits = y.u16s();
    let inf = TensorFile::open(&inputs).expect("inputs");
    let x = inf.require("x").expect("x").floats().expect("float x");
    let w = inf.require("weight").expect("weight");
    let ws = inf.require("weight_scale").expect("weight_scale");
    let (fmt, scales, ts) = if format == "mxfp4" {
        assert_eq!((ws.dtype, ws.shape.clone()), (Dtype::U8, vec![N, K / 32]));
        (
            Format {
                name: "mxfp4".into(),
                element: e2m1(),
                scale: "e8m0".into(),
                group: 32,
                tensor_scale: false,
            },
            ScaleData::Bytes(ws.data.to_vec()),
            None,
        )
    } else {
        assert_eq!(
            (ws.dtype, ws.shape.clone()),
            (Dtype::F8_E4M3, vec![N, K / 16])
        );
        let t = inf.require("weight_scale_2").expect("weight_scale_2");
        assert_eq!((t.dtype, t.shape.clone()), (Dtype::F32, vec![]));
        (
            Format {
                name: "nvfp4".into(),
                element: e2m1(),
                scale: "e4m3".into(),
                group: 16,
                tensor_scale: true,
            },
            ScaleData::Bytes(ws.data.to_vec()),
            Some(t.f32s()[0]),
        )
    };
    assert_eq!((w.dtype, w.shape.clone()), (Dtype::U8, vec![N, K / 2]));
    let w_deq = dequant_weight(&fmt, w.data, &scales, ts, N, K, dtype_of(x_dt)).expect("dequant");
    let bias = inf.get("bias").expect("parses").map(|b| {
        assert_eq!(Some(b.dtype), bias_dt);
        b.floats().expect("float bias")
    });
    let c = compare(
        &y_bits,
        dtype_of(x_dt),
        &x,
        &w_deq,
        m,
        N,
        K,
        ts,
        bias.as_deref(),
    )
    .expect("lengths");
    assert!(c.passes() && c.max_ratio <= 1.0, "{c}");
    assert_eq!(c.elements, m * N);
    // Not vacuous: the outputs are far from zero.
    let ymax = y_bits
        .iter()
        .map(|&b| nibble_runtime::numerics::compare::decode(b, dtype_of(x_dt)).abs())
        .fold(0f32, f32::max);
    assert!(ymax > 1.0, "outputs suspiciously small: {ymax}");
}

#[test]
fn mxfp4_bf16_with_bias_matches_the_reference() {
    run_and_check("mx_bf16", "mxfp4", Dtype::BF16, Some(Dtype::BF16), 20, 11);
}

#[test]
fn nvfp4_f16_with_tensor_scale_and_bias_matches_the_reference() {
    // M = 5: a partial M tile.
    run_and_check("nv_f16", "nvfp4", Dtype::F16, Some(Dtype::F16), 5, 21);
}

#[test]
fn mxfp4_without_bias_matches_the_reference() {
    run_and_check("mx_nobias", "mxfp4", Dtype::BF16, None, 16, 31);
}

#[test]
fn a_wrong_result_fails_the_reference_check() {
    // Negative control: the manifest's scale exponent offset doubled the kernel's scales, so y is 2x the reference.
    let fx = Fixture::new();
    let layer = quantized_layer(&fx, "mxfp4", None, 41);
    let inputs = inputs_file(&fx, &layer, 16, Dtype::BF16, 42);
    let mpath = fx.manifest("mx_nobias");
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&mpath).expect("manifest")).expect("json");
    let off = m["scale_layout"]["exp_offset"]
        .as_i64()
        .expect("exp_offset");
    m["scale_layout"]["exp_offset"] = (off + 1).into();
    std::fs::write(&mpath, m.to_string()).expect("rewrite manifest");
    let out = fx.path("y.safetensors");
    let r = run_args(&mpath, &inputs, &out, &["--reference"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(printed_ratio(&r.stdout) > 1.0, "{}", r.stdout);
    assert!(
        r.stderr.contains("outputs exceed the error bound"),
        "{}",
        r.stderr
    );
    // y is still written (for inspection).
    assert!(out.exists());
}

/// Asserts a one-line error on stderr containing `want`, exit code 1, nothing on stdout, and no OUT file.
fn assert_error(r: &Out, want: &str, out: &Path) {
    assert_eq!(r.code, 1, "stdout: {} stderr: {}", r.stdout, r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(r.stderr.starts_with("error: "), "{}", r.stderr);
    assert!(r.stderr.contains(want), "want {want:?} in {}", r.stderr);
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    assert!(!out.exists(), "{} was written", out.display());
}

/// The layer's tensors with `edit` applied, written next to the fixture as a new inputs file.
fn edited(
    fx: &Fixture,
    base: &Path,
    name: &str,
    edit: impl FnOnce(&mut Vec<(String, OwnedTensor)>),
) -> PathBuf {
    let mut t = read_all(base);
    edit(&mut t);
    let p = fx.path(name);
    write_atomic(&p, &t).expect("write edited inputs");
    p
}

fn replace(t: &mut [(String, OwnedTensor)], name: &str, new: OwnedTensor) {
    let slot = t
        .iter_mut()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no {name}"));
    slot.1 = new;
}

#[test]
fn run_input_errors_are_one_line_and_name_the_tensor() {
    let fx = Fixture::new();
    let nv = quantized_layer(&fx, "nvfp4", Some(Dtype::F16), 51);
    let good = inputs_file(&fx, &nv, 4, Dtype::F16, 52);
    let manifest = fx.manifest("nv_f16");
    let out = fx.path("y.safetensors");
    let run = |inputs: &Path| run_args(&manifest, inputs, &out, &["--reference"]);

    // A missing tensor lists what the file has.
    let p = edited(&fx, &good, "no-x.safetensors", |t| {
        t.iter_mut().for_each(|(n, _)| {
            if n == "x" {
                *n = "input".into();
            }
        })
    });
    assert_error(
        &run(&p),
        "no tensor `x` (tensors: bias, input, weight",
        &out,
    );
    let p = edited(&fx, &good, "no-ts.safetensors", |t| {
        t.retain(|(n, _)| n != "weight_scale_2")
    });
    assert_error(&run(&p), "no tensor `weight_scale_2`", &out);
    let p = edited(&fx, &good, "no-bias.safetensors", |t| {
        t.retain(|(n, _)| n != "bias")
    });
    assert_error(&run(&p), "no tensor `bias`", &out);

    // Wrong dtypes.
    let p = edited(&fx, &good, "x-bf16.safetensors", |t| {
        replace(
            t,
            "x",
            OwnedTensor::u16s(Dtype::BF16, vec![4, K], &vec![0; 4 * K]),
        )
    });
    assert_error(&run(&p), "tensor `x`: dtype BF16, expected F16", &out);
    let p = edited(&fx, &good, "ws-f32.safetensors", |t| {
        replace(
            t,
            "weight_scale",
            OwnedTensor::f32s(vec![N, K / 16], &vec![1.0; N * K / 16]),
        )
    });
    assert_error(
        &run(&p),
        "tensor `weight_scale`: dtype F32, expected F8_E4M3 or U8",
        &out,
    );
    let p = edited(&fx, &good, "ts-f16.safetensors", |t| {
        replace(
            t,
            "weight_scale_2",
            OwnedTensor::u16s(Dtype::F16, vec![], &[0x3C00]),
        )
    });
    assert_error(
        &run(&p),
        "tensor `weight_scale_2`: dtype F16, expected F32",
        &out,
    );

    // Wrong shapes.
    let p = edited(&fx, &good, "w-shape.safetensors", |t| {
        replace(
            t,
            "weight",
            OwnedTensor {
                dtype: Dtype::U8,
                shape: vec![N, K / 4],
                data: vec![0; N * K / 4],
            },
        )
    });
    assert_error(
        &run(&p),
        "tensor `weight`: shape [128, 64], expected [N=128, K/2=128]",
        &out,
    );
    let p = edited(&fx, &good, "x-shape.safetensors", |t| {
        replace(
            t,
            "x",
            OwnedTensor::u16s(Dtype::F16, vec![4, 128], &vec![0; 4 * 128]),
        )
    });
    assert_error(
        &run(&p),
        "tensor `x`: shape [4, 128], expected [M, K=256]",
        &out,
    );
    let p = edited(&fx, &good, "bias-shape.safetensors", |t| {
        replace(t, "bias", OwnedTensor::u16s(Dtype::F16, vec![64], &[0; 64]))
    });
    assert_error(
        &run(&p),
        "tensor `bias`: shape [64], expected [N=128]",
        &out,
    );
    let p = edited(&fx, &good, "m0.safetensors", |t| {
        replace(t, "x", OwnedTensor::u16s(Dtype::F16, vec![0, K], &[]))
    });
    assert_error(&run(&p), "M = 0 is outside the kernel's range", &out);

    // Bad values: a NaN block scale (E4M3 0x7F) and a zero tensor scale.
    let p = edited(&fx, &good, "nan-scale.safetensors", |t| {
        let (_, ws) = t
            .iter_mut()
            .find(|(n, _)| n == "weight_scale")
            .expect("weight_scale");
        ws.data[3 * (K / 16) + 5] = 0x7F;
    });
    assert_error(
        &run(&p),
        "tensor `weight_scale`: block scale at row 3, group 5 (e4m3 0x7f) is NaN",
        &out,
    );
    let p = edited(&fx, &good, "zero-ts.safetensors", |t| {
        replace(t, "weight_scale_2", OwnedTensor::f32s(vec![1], &[0.0]))
    });
    assert_error(
        &run(&p),
        "input `weight_scale_2`: 0 is not a positive finite scale",
        &out,
    );
    let r = run_args(&manifest, &good, &fx.path("no/such/dir/y.safetensors"), &[]);
    assert_error(&r, "directory", &fx.path("no"));

    // The f16 inputs for a bf16 kernel; for the MXFP4 kernel without bias, a bias and a tensor scale are
    // mismatches; E8M0 scales stored as F8_E4M3 too.
    let mx_manifest = fx.manifest("mx_nobias");
    let r = run_args(&mx_manifest, &good, &out, &[]);
    assert_error(&r, "tensor `x`: dtype F16, expected BF16", &out);
    let mx = quantized_layer(&fx, "mxfp4", Some(Dtype::BF16), 53);
    let mx_good = inputs_file(&fx, &mx, 4, Dtype::BF16, 54);
    let r = run_args(&mx_manifest, &mx_good, &out, &[]);
    assert_error(
        &r,
        "tensor `bias`: kernel mx_nobias takes no bias, but the file has one",
        &out,
    );
    let p = edited(&fx, &mx_good, "mx-ts.safetensors", |t| {
        t.retain(|(n, _)| n != "bias");
        t.push(("weight_scale_2".into(), OwnedTensor::f32s(vec![], &[1.0])));
    });
    assert_error(
        &run_args(&mx_manifest, &p, &out, &[]),
        "format mxfp4 has no per-tensor scale",
        &out,
    );
    let p = edited(&fx, &mx_good, "mx-e4m3.safetensors", |t| {
        t.retain(|(n, _)| n != "bias");
        let (_, ws) = t
            .iter_mut()
            .find(|(n, _)| n == "weight_scale")
            .expect("weight_scale");
        ws.dtype = Dtype::F8_E4M3;
    });
    assert_error(
        &run_args(&mx_manifest, &p, &out, &[]),
        "tensor `weight_scale`: dtype F8_E4M3, expected U8 or F8_E8M0",
        &out,
    );
    // An E8M0 NaN (0xFF) scale.
    let p = edited(&fx, &mx_good, "mx-nan.safetensors", |t| {
        t.retain(|(n, _)| n != "bias");
        let (_, ws) = t
            .iter_mut()
            .find(|(n, _)| n == "weight_scale")
            .expect("weight_scale");
        ws.data[N * K / 32 - 1] = 0xFF;
    });
    assert_error(
        &run_args(&mx_manifest, &p, &out, &[]),
        "block scale at row 127, group 7 (e8m0 0xff) is NaN",
        &out,
    );

    // Paths and devices.
    let r = run_args(&manifest, &good, &good, &[]);
    assert_error(&r, "it is the inputs file", &fx.path("never"));
    let r = run_args(&manifest, &good, &manifest, &[]);
    assert_error(&r, "it is the manifest", &fx.path("never"));
    for dev in ["hip", "cuda"] {
        let r = nibble(&[
            "run".as_ref(),
            manifest.as_os_str(),
            "--device".as_ref(),
            dev.as_ref(),
            "--inputs".as_ref(),
            good.as_os_str(),
            "--output".as_ref(),
            out.as_os_str(),
        ]);
        // HIP opens the device (none here); CUDA refuses the gfx942 kernel before touching any device.
        assert_error(
            &r,
            if dev == "hip" {
                "no HIP device found"
            } else {
                "compiled for gfx942; --device cuda runs sm_80/sm_90 kernels"
            },
            &out,
        );
    }
    let r = nibble(&[
        "run".as_ref(),
        manifest.as_os_str(),
        "--device".as_ref(),
        "tpu".as_ref(),
        "--inputs".as_ref(),
        good.as_os_str(),
        "--output".as_ref(),
        out.as_os_str(),
    ]);
    assert_error(&r, "unknown device `tpu`", &out);
    let r = run_args(&fx.path("missing.json"), &good, &out, &[]);
    assert_error(&r, "missing.json", &out);

    // The good file does run.
    let r = run(&good);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn quantize_writes_checkpoint_tensors_and_rejects_bad_input() {
    let fx = Fixture::new();
    let mut next = rng(61);
    let (n, k) = (8, 64);
    let w: Vec<f32> = (0..n * k).map(|_| next()).collect();
    let bias: Vec<f32> = (0..n).map(|_| next()).collect();
    // A named layer with a bf16 weight, its bias and an unrelated 2-D float tensor.
    let src = fx.path("layer.safetensors");
    write_atomic(
        &src,
        &[
            (
                "mlp.up.weight".into(),
                OwnedTensor::u16s(Dtype::BF16, vec![n, k], &half_bits(&w, Dtype::BF16)),
            ),
            (
                "mlp.up.bias".into(),
                OwnedTensor::u16s(Dtype::BF16, vec![n], &half_bits(&bias, Dtype::BF16)),
            ),
            ("other".into(), OwnedTensor::f32s(vec![2, 2], &[0.0; 4])),
        ],
    )
    .expect("write");
    let dst = fx.path("q.safetensors");
    let q = |args: &[&std::ffi::OsStr]| {
        let mut v: Vec<&std::ffi::OsStr> = vec!["quantize".as_ref()];
        v.extend_from_slice(args);
        nibble(&v)
    };

    // Without --tensor the choice is ambiguous.
    let r = q(&[
        "--format".as_ref(),
        "nvfp4".as_ref(),
        src.as_os_str(),
        dst.as_os_str(),
    ]);
    assert_error(&r, "several 2-D float tensors (mlp.up.weight, other)", &dst);
    // With it, the layer's bias comes along.
    let r = q(&[
        "--format".as_ref(),
        "nvfp4".as_ref(),
        "--tensor".as_ref(),
        "mlp.up.weight".as_ref(),
        src.as_os_str(),
        dst.as_os_str(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("bias (copied from `mlp.up.bias`)"),
        "{}",
        r.stdout
    );
    let f = TensorFile::open(&dst).expect("written");
    assert_eq!(
        f.names(),
        vec!["bias", "weight", "weight_scale", "weight_scale_2"]
    );
    let t = |name: &str| {
        let t = f.require(name).expect("tensor");
        (t.dtype, t.shape.clone())
    };
    assert_eq!(t("weight"), (Dtype::U8, vec![n, k / 2]));
    assert_eq!(t("weight_scale"), (Dtype::F8_E4M3, vec![n, k / 16]));
    assert_eq!(t("weight_scale_2"), (Dtype::F32, vec![]));
    assert_eq!(t("bias"), (Dtype::BF16, vec![n]));
    assert_eq!(
        f.require("bias").expect("bias").u16s(),
        half_bits(&bias, Dtype::BF16)
    );
    // Same bytes as the library quantizer on the same (bf16-rounded) values.
    let wq: Vec<f32> = half_bits(&w, Dtype::BF16)
        .iter()
        .map(|&b| half::bf16::from_bits(b).to_f32())
        .collect();
    let lib = nibble_runtime::numerics::quantize::quantize_nvfp4(&wq, n, k).expect("quantizes");
    assert_eq!(f.require("weight").expect("w").data, &lib.weight[..]);
    assert_eq!(f.require("weight_scale").expect("s").data, &lib.scale[..]);
    assert_eq!(
        f.require("weight_scale_2").expect("t").f32s(),
        vec![lib.tensor_scale]
    );
    // Overwriting an existing output is allowed; the input is not.
    let r = q(&[
        "--format".as_ref(),
        "mxfp4".as_ref(),
        "--tensor".as_ref(),
        "mlp.up.weight".as_ref(),
        src.as_os_str(),
        dst.as_os_str(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let before = std::fs::read(&src).expect("src");
    let r = q(&[
        "--format".as_ref(),
        "mxfp4".as_ref(),
        src.as_os_str(),
        src.as_os_str(),
    ]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("it is the input file"), "{}", r.stderr);
    assert_eq!(std::fs::read(&src).expect("src"), before);

    // K not a multiple of the group; a NaN weight; a missing tensor; not a safetensors file.
    let bad = fx.path("bad.safetensors");
    let out = fx.path("bad-out.safetensors");
    write_atomic(
        &bad,
        &[("weight".into(), OwnedTensor::f32s(vec![2, 48], &[0.5; 96]))],
    )
    .expect("write");
    let r = q(&[
        "--format".as_ref(),
        "mxfp4".as_ref(),
        bad.as_os_str(),
        out.as_os_str(),
    ]);
    assert_error(&r, "tensor `weight`: shape [2, 48], expected [N, K] with N > 0 and K a positive multiple of the mxfp4 group size 32", &out);
    let r = q(&[
        "--format".as_ref(),
        "nvfp4".as_ref(),
        bad.as_os_str(),
        out.as_os_str(),
    ]);
    assert_eq!(r.code, 0, "48 is a multiple of 16: {}", r.stderr);
    std::fs::remove_file(&out).expect("rm");
    let mut v = vec![0.5f32; 64];
    v[37] = f32::NAN;
    write_atomic(
        &bad,
        &[("weight".into(), OwnedTensor::f32s(vec![2, 32], &v))],
    )
    .expect("write");
    let r = q(&[
        "--format".as_ref(),
        "mxfp4".as_ref(),
        bad.as_os_str(),
        out.as_os_str(),
    ]);
    assert_error(
        &r,
        "tensor `weight`: weight[1][5] = NaN is not finite",
        &out,
    );
    let r = q(&[
        "--format".as_ref(),
        "mxfp4".as_ref(),
        "--tensor".as_ref(),
        "w2".as_ref(),
        bad.as_os_str(),
        out.as_os_str(),
    ]);
    assert_error(&r, "no tensor `w2` (tensors: weight)", &out);
    std::fs::write(&bad, b"not safetensors").expect("write");
    let r = q(&[
        "--format".as_ref(),
        "mxfp4".as_ref(),
        bad.as_os_str(),
        out.as_os_str(),
    ]);
    assert_error(&r, "not a valid safetensors file", &out);
    // No temporary files are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(fx.dir.path())
        .expect("dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn random_inputs_run_against_the_reference() {
    // The README's main job: compile, then run on random data and report the error against the bound.
    let fx = Fixture::new();
    let mpath = fx.manifest("mx_nobias");
    let r = nibble(&[
        OsString::from("run"),
        mpath.clone().into(),
        "--random".into(),
        "7".into(),
        "--seed".into(),
        "3".into(),
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("M=7"), "{}", r.stdout);
    let ratio = printed_ratio(&r.stdout);
    assert!(ratio <= 1.0 && ratio > 0.0, "{}", r.stdout);
    // --random and --inputs are exclusive; one of them is required.
    let both = nibble(&[
        OsString::from("run"),
        mpath.clone().into(),
        "--random".into(),
        "7".into(),
        "--inputs".into(),
        "x.safetensors".into(),
    ]);
    assert_eq!(both.code, 2, "{}", both.stderr);
    let neither = nibble(&[OsString::from("run"), mpath.into()]);
    assert_eq!(neither.code, 2, "{}", neither.stderr);
}

#[test]
fn hip_device_paths_fail_with_one_line_without_a_gpu() {
    // CI has no AMD GPU (and may lack libamdhip64 entirely): both must be the same single clear line.
    let fx = Fixture::new();
    let mpath = fx.manifest("mx_nobias");
    for args in [
        vec![
            OsString::from("run"),
            mpath.clone().into(),
            "--device".into(),
            "hip".into(),
            "--random".into(),
            "4".into(),
        ],
        vec![
            OsString::from("bench"),
            mpath.clone().into(),
            "--device".into(),
            "hip".into(),
        ],
    ] {
        let r = nibble(&args);
        assert_eq!(r.code, 1, "{:?}: {}{}", args, r.stdout, r.stderr);
        assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
        assert!(r.stderr.contains("no HIP device found"), "{}", r.stderr);
    }
}

/// An sm_90 MXFP4 kernel (split-K at this shape) compiled by `nibble compile`; returns its manifest.
fn sm90_kernel(dir: &Path) -> PathBuf {
    let nib = dir.join("nv.nib");
    std::fs::write(
        &nib,
        "kernel nv_mx {\n  target sm_90\n  x bf16[M, 256]\n  w mxfp4[128, 256]\n  y bf16[M, 128]\n  \
         bias bf16[128]\n  tile m=16 n=64 k=128\n  waves m=1 n=2\n  mma 16x16x16\n  stages 2\n}\n",
    )
    .expect("write .nib");
    let out = dir.join("out");
    let r = nibble(&[
        OsString::from("compile"),
        nib.into(),
        "-o".into(),
        out.clone().into(),
    ]);
    assert_eq!(r.code, 0, "compile failed: {}", r.stderr);
    out.join("nv_mx.sm_90.json")
}

#[test]
fn cuda_device_paths_fail_with_one_line_without_an_nvidia_gpu() {
    // This machine (and CI) has no NVIDIA driver: `run`, `bench` and `tune` with --device cuda say so in one line
    // and exit 1. On a machine with an NVIDIA GPU, `run` must instead pass the reference check.
    let dir = tempfile::tempdir().expect("temp dir");
    let mpath = sm90_kernel(dir.path());
    let y = dir.path().join("y.safetensors");
    let run = nibble(&[
        OsString::from("run"),
        mpath.clone().into(),
        "--device".into(),
        "cuda".into(),
        "--random".into(),
        "4".into(),
    ]);
    let no_gpu = run.stderr.contains("no NVIDIA GPU: ");
    if !no_gpu {
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
        assert!(run.stdout.contains("on CUDA device"), "{}", run.stdout);
        assert!(printed_ratio(&run.stdout) <= 1.0, "{}", run.stdout);
        return;
    }
    assert_error(&run, "no NVIDIA GPU: ", &y);
    let bench = nibble(&[
        OsString::from("bench"),
        mpath.clone().into(),
        "--device".into(),
        "cuda".into(),
    ]);
    assert_error(&bench, "no NVIDIA GPU: ", &y);
    // `bench` reads every manifest and checks --m before it looks for a device.
    let missing = dir.path().join("missing.sm_90.json");
    let two = nibble(&[
        OsString::from("bench"),
        mpath.clone().into(),
        missing.into(),
        "--device".into(),
        "cuda".into(),
        "--m".into(),
        "1,16".into(),
    ]);
    assert_error(&two, "missing.sm_90.json", &y);
    let zero = nibble(&[
        OsString::from("bench"),
        mpath.clone().into(),
        "--device".into(),
        "cuda".into(),
        "--m".into(),
        "16,0".into(),
    ]);
    assert_error(&zero, "--m 0: M is at least 1", &y);
    // A GPU run needs the manifest and the code object, not the kernel IR: a copy without it gets as far as the
    // device.
    let bare = dir.path().join("bare");
    std::fs::create_dir(&bare).expect("mkdir");
    for ext in ["json", "ptx"] {
        let from = mpath.with_extension(ext);
        std::fs::copy(&from, bare.join(from.file_name().expect("name"))).expect("copy");
    }
    let bare_manifest = bare.join(mpath.file_name().expect("name"));
    for cmd in ["run", "bench"] {
        let mut args = vec![
            OsString::from(cmd),
            bare_manifest.clone().into(),
            "--device".into(),
            "cuda".into(),
        ];
        if cmd == "run" {
            args.extend(["--random".into(), "2".into()]);
        }
        assert_error(&nibble(&args), "no NVIDIA GPU: ", &y);
    }
    let tune = nibble(&[
        "tune",
        "dsl-examples/auto.nib",
        "--device",
        "cuda",
        "--target",
        "sm_90",
        "-o",
        "/nonexistent-tune-out-cuda",
    ]);
    assert_error(&tune, "no NVIDIA GPU: ", &y);
    assert!(!Path::new("/nonexistent-tune-out-cuda").exists());

    // An sm_90 kernel on the interpreter (the default device) is refused with the way out, and `inspect` on PTX says
    // what it reads instead of failing on the ELF header.
    let interp = nibble(&[
        OsString::from("run"),
        mpath.clone().into(),
        "--random".into(),
        "2".into(),
    ]);
    assert_error(&interp, "use --device cuda", &y);
    let ptx = mpath.with_extension("ptx");
    assert!(ptx.exists(), "{}", ptx.display());
    let inspect = nibble(&[OsString::from("inspect"), ptx.into()]);
    assert_eq!(inspect.code, 1);
    assert!(inspect.stderr.contains("is PTX"), "{}", inspect.stderr);

    // Input errors are still found first: a wrong-dtype bias fails before the device is looked for.
    let bad = dir.path().join("bad.safetensors");
    let bits = |n: usize| vec![0u16; n];
    let u8s = |shape: Vec<usize>, v: u8| OwnedTensor {
        dtype: Dtype::U8,
        data: vec![v; shape.iter().product()],
        shape,
    };
    write_atomic(
        &bad,
        &[
            (
                "x".into(),
                OwnedTensor::u16s(Dtype::BF16, vec![2, K], &bits(2 * K)),
            ),
            ("weight".into(), u8s(vec![N, K / 2], 0)),
            ("weight_scale".into(), u8s(vec![N, K / 32], 127)),
            (
                "bias".into(),
                OwnedTensor::u16s(Dtype::F16, vec![N], &bits(N)),
            ),
        ],
    )
    .expect("write inputs");
    let r = nibble(&[
        OsString::from("run"),
        mpath.into(),
        "--device".into(),
        "cuda".into(),
        "--inputs".into(),
        bad.into(),
        "--output".into(),
        y.clone().into(),
    ]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("bias") && !r.stderr.contains("NVIDIA"),
        "{}",
        r.stderr
    );
    assert!(!y.exists());
}

#[test]
fn tune_needs_a_gpu_and_says_so_in_one_line() {
    let r = nibble(&[
        "tune",
        "dsl-examples/auto.nib",
        "--target",
        "gfx942",
        "-o",
        "/nonexistent-tune-out",
    ]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(r.stderr.contains("no HIP device found"), "{}", r.stderr);
    assert!(!std::path::Path::new("/nonexistent-tune-out").exists());
}
