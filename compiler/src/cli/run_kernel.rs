//! `nibble quantize` and `nibble run`: checkpoint tensors in, a kernel run on the interpreter or a GPU, `y` out.

use std::io::Write;
use std::path::Path;

use crate::tensors::{self, QuantFormat, TensorFile};

use super::device::cuda_device;

pub(super) fn quantize(
    input: &Path,
    output: &Path,
    format: QuantFormat,
    tensor: Option<&str>,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> i32 {
    match tensors::quantize_file(input, output, format, tensor) {
        Ok(q) => {
            let group = format.group();
            let scale_dtype = match format {
                QuantFormat::Mxfp4 => "U8 (E8M0)",
                QuantFormat::Nvfp4 => "F8_E4M3",
            };
            let _ = write!(
                stdout,
                "quantized `{}` {} [{}, {}] to {format}: weight U8 [{}, {}], weight_scale {scale_dtype} [{}, {}]",
                q.source,
                q.source_dtype,
                q.n,
                q.k,
                q.n,
                q.k / 2,
                q.n,
                q.k / group
            );
            if let Some(t) = q.tensor_scale {
                let _ = write!(stdout, ", weight_scale_2 F32 [] = {t:e}");
            }
            if let Some(b) = &q.bias {
                let _ = write!(stdout, ", bias (copied from `{b}`)");
            }
            let _ = writeln!(stdout, " -> {}", output.display());
            0
        }
        Err(e) => {
            let _ = writeln!(stderr, "error: {}", e.in_file(input));
            1
        }
    }
}

/// Arguments of `nibble run`.
pub(super) struct RunArgs<'a> {
    pub(super) manifest: &'a Path,
    pub(super) device: &'a str,
    pub(super) inputs: Inputs<'a>,
    pub(super) output: Option<&'a Path>,
    pub(super) reference: bool,
    pub(super) profile: bool,
}

pub(super) enum Inputs<'a> {
    File(&'a Path),
    Random { rows: u32, seed: u64 },
}

/// Devices `nibble run` knows.
const DEVICES: &[&str] = &["interpret", "hip", "cuda"];

pub(super) fn run_kernel(
    args: &RunArgs<'_>,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> i32 {
    match run_kernel_inner(args, stdout) {
        Ok(code) => code,
        Err(message) => {
            let _ = writeln!(stderr, "error: {message}");
            1
        }
    }
}

/// Runs `nibble run`; `Err` is the one-line error to print. Everything is checked before the kernel runs, and `y`
/// is written (atomically) before the reference comparison is reported.
fn run_kernel_inner(args: &RunArgs<'_>, stdout: &mut dyn Write) -> Result<i32, String> {
    use nibble_runtime::numerics::reference::dequant_weight;
    use nibble_runtime::numerics::DType;

    match args.device {
        "interpret" | "hip" | "cuda" => {}
        "rocm" | "gpu" => {
            return Err(format!(
                "device {} is not available in this build (devices: {})",
                args.device,
                DEVICES.join(", ")
            ))
        }
        other => {
            return Err(format!(
                "unknown device `{other}` (devices: {})",
                DEVICES.join(", ")
            ))
        }
    }
    if let Some(output) = args.output {
        if let Inputs::File(inputs) = args.inputs {
            if tensors::same_file(inputs, output) {
                return Err(format!(
                    "refusing to write {}: it is the inputs file",
                    output.display()
                ));
            }
        }
        if tensors::same_file(args.manifest, output) {
            return Err(format!(
                "refusing to write {}: it is the manifest",
                output.display()
            ));
        }
        let out_dir = match output.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if !out_dir.is_dir() {
            return Err(format!(
                "cannot write {}: directory {} does not exist",
                output.display(),
                out_dir.display()
            ));
        }
    }
    // The interpreter executes the kernel IR; a GPU runs the code object alone.
    let bundle = if args.device == "interpret" {
        crate::run::Bundle::load(args.manifest)
    } else {
        crate::run::Bundle::load_manifest(args.manifest)
    }
    .map_err(|e| e.to_string())?;
    let m = &bundle.manifest;
    if args.device == "cuda" && nibble_runtime::ptx::parse_sm(&m.arch).is_none() {
        return Err(crate::run::CudaRunError::NotCuda {
            manifest: args.manifest.display().to_string(),
            arch: m.arch.clone(),
        }
        .to_string());
    }
    if args.device != "cuda" && nibble_runtime::ptx::parse_sm(&m.arch).is_some() {
        return Err(format!(
            "{} is compiled for {}: the interpreter and HIP run AMD (gfx) kernels; use --device cuda on a machine \
             with an NVIDIA GPU (or nibble-rt there)",
            args.manifest.display(),
            m.arch
        ));
    }
    let dir = args.manifest.parent().unwrap_or(Path::new("."));
    if let Some(output) = args.output {
        for (file, what) in [(&m.kernel_ir, "kernel IR"), (&m.code_object, "code object")] {
            if tensors::same_file(&dir.join(file), output) {
                return Err(format!(
                    "refusing to write {}: it is the kernel's {what}",
                    output.display()
                ));
            }
        }
    }
    let dtype = |which: &str, name: &str| {
        DType::parse(name).ok_or_else(|| {
            format!(
                "{}: {which} dtype {name:?} is not bf16 or f16",
                args.manifest.display()
            )
        })
    };
    let y_dtype = dtype("y", &m.shapes.y_dtype)?;
    let x_dtype = dtype("x", &m.shapes.x_dtype)?;
    let inputs = match args.inputs {
        Inputs::File(path) => {
            let file = TensorFile::open(path).map_err(|e| e.to_string())?;
            let inputs = tensors::load_layer_inputs(&file, m).map_err(|e| e.in_file(path))?;
            crate::run::validate(m, &inputs).map_err(|e| format!("{}: {e}", path.display()))?;
            inputs
        }
        Inputs::Random { rows, seed } => {
            let inputs = crate::run::random_inputs(m, rows, seed).map_err(|e| e.to_string())?;
            crate::run::validate(m, &inputs).map_err(|e| e.to_string())?;
            inputs
        }
    };
    let (rows, n, k) = (inputs.m as usize, m.shapes.n as usize, m.shapes.k as usize);
    // The reference's dequantization also checks the scales; do it before the (slower) kernel run.
    let w_deq = if args.reference {
        Some(
            dequant_weight(
                &m.format,
                &inputs.weight,
                &inputs.scales,
                inputs.tensor_scale,
                n,
                k,
                x_dtype,
            )
            .map_err(|e| format!("reference: {e}"))?,
        )
    } else {
        None
    };
    if args.device == "hip" || args.device == "cuda" {
        // The GPU paths: the same validation and the manifest's layouts, then the code object on the first HIP
        // device, or the PTX on the CUDA device (`$NIBBLE_CUDA_DEVICE`).
        let code = std::fs::read(dir.join(&m.code_object))
            .map_err(|e| format!("{}: {e}", dir.join(&m.code_object).display()))?;
        let (y, times_ms, vendor, device) = if args.device == "cuda" {
            let out = crate::run::run_cuda(&bundle, &code, &inputs, cuda_device()?, 1, 1)
                .map_err(|e| e.to_string())?;
            (out.y, out.times_ms, "CUDA", out.device)
        } else {
            let out =
                crate::run::run_hip(&bundle, &code, &inputs, 0, 1, 1).map_err(|e| e.to_string())?;
            (out.y, out.times_ms, "HIP", out.device_arch)
        };
        let _ = writeln!(
            stdout,
            "ran {} ({}) on {vendor} device {device}: M={rows} N={n} K={k}, {:.1} us",
            m.kernel,
            m.arch,
            times_ms.first().copied().unwrap_or(0.0) * 1e3
        );
        return finish_run(
            args, stdout, &y, rows, n, k, y_dtype, x_dtype, m, &inputs, w_deq,
        );
    }
    let start = std::time::Instant::now();
    let out = crate::run::run_interpreted(&bundle, &inputs, &Default::default())
        .map_err(|e| e.to_string())?;
    let seconds = start.elapsed().as_secs_f64();
    let _ = writeln!(
        stdout,
        "ran {} ({}) on the interpreter: M={rows} N={n} K={k}, {} workgroups, {} MFMAs, {seconds:.2} s",
        m.kernel, m.arch, out.stats.workgroups, out.stats.mfma
    );
    if args.profile {
        let _ = writeln!(
            stdout,
            "LDS bank conflicts (32 banks x 4 bytes, 128 bytes per cycle):"
        );
        for (op, st) in &out.stats.lds_ops {
            let _ = writeln!(
                stdout,
                "  {op}: {} wave executions, {} conflict cycles ({:.3} per execution)",
                st.executions,
                st.conflict_cycles,
                st.conflict_cycles as f64 / st.executions.max(1) as f64
            );
        }
    }
    finish_run(
        args, stdout, &out.y, rows, n, k, y_dtype, x_dtype, m, &inputs, w_deq,
    )
}

/// Writes `y` (if asked) and checks it against the reference (if computed): the part of `nibble run` shared by
/// every device.
#[allow(clippy::too_many_arguments)]
fn finish_run(
    args: &RunArgs<'_>,
    stdout: &mut dyn Write,
    y: &[u16],
    rows: usize,
    n: usize,
    k: usize,
    y_dtype: nibble_runtime::numerics::DType,
    x_dtype: nibble_runtime::numerics::DType,
    m: &nibble_runtime::manifest::Manifest,
    inputs: &crate::run::LayerInputs,
    w_deq: Option<Vec<f32>>,
) -> Result<i32, String> {
    use nibble_runtime::numerics::compare::{compare, decode};
    use nibble_runtime::numerics::DType;
    if let Some(output) = args.output {
        let y_st = tensors::half_dtype(y_dtype.name()).ok_or("y dtype is not bf16 or f16")?;
        tensors::write_atomic(
            output,
            &[(
                "y".to_string(),
                tensors::OwnedTensor::u16s(y_st, vec![rows, n], y),
            )],
        )
        .map_err(|e| e.to_string())?;
        let _ = writeln!(
            stdout,
            "wrote y {} [{rows}, {n}] to {}",
            y_dtype.name(),
            output.display()
        );
    }
    let Some(w_deq) = w_deq else {
        return Ok(0);
    };
    let x: Vec<f32> = inputs.x.bits.iter().map(|&b| decode(b, x_dtype)).collect();
    let bias: Option<Vec<f32>> = match (&inputs.bias, &m.shapes.bias_dtype) {
        (Some(b), Some(dt)) => {
            let dt = DType::parse(dt).ok_or("bias dtype is not bf16 or f16")?;
            Some(b.bits.iter().map(|&v| decode(v, dt)).collect())
        }
        _ => None,
    };
    let c = compare(
        y,
        y_dtype,
        &x,
        &w_deq,
        rows,
        n,
        k,
        inputs.tensor_scale,
        bias.as_deref(),
    )
    .map_err(|e| format!("reference: {e}"))?;
    let _ = writeln!(stdout, "reference: {c}");
    if c.passes() {
        Ok(0)
    } else {
        Err(format!(
            "{} of {} outputs exceed the error bound of docs/NUMERICS.md (max error/bound {:.4} at [{}, {}])",
            c.violations, c.elements, c.max_ratio, c.worst.0, c.worst.1
        ))
    }
}
