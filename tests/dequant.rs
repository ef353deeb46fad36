//! The dequantization pass on its own: what it leaves in the IR, and (through the interpreter) what the lowered
//! sequence computes for every element code and a sweep of scale codes, against a table-based reference.

use melior::ir::operation::OperationLike;
use nibble_compiler::arch::Arch;
use nibble_compiler::plan::{plan, Plan};
use nibble_compiler::spec::*;
use nibble_compiler::{dequant, kernel};

pub fn spec(
    elem: (u8, u8, i32),
    scale: ScaleType,
    group: u32,
    x: DType,
    mma: MmaAtom,
) -> KernelSpec {
    KernelSpec {
        name: "dq".into(),
        targets: vec![Arch::Gfx942, Arch::Gfx90a],
        x,
        y: DType::Bf16,
        n: 256,
        k: 512,
        format: FormatSpec {
            name: "f".into(),
            element: MiniFloat {
                name: format!("e{}m{}", elem.0, elem.1),
                exp_bits: elem.0,
                man_bits: elem.1,
                bias: elem.2,
            },
            scale,
            group,
            tensor_scale: scale == ScaleType::E4m3,
        },
        bias: None,
        schedule: Schedule::Manual(Tiling {
            tile_m: 32,
            tile_n: 64,
            tile_k: 256,
            waves_m: 1,
            waves_n: 2,
            waves_k: 1,
            mma,
            stages: 2,
            split_k: None,
        }),
        staging: None,
        unroll: None,
        scales: None,
        source_hash: "h".into(),
    }
}

fn count_ops(module: &melior::ir::Module, name: &str) -> usize {
    let mut n = 0;
    module
        .as_operation()
        .walk(melior::ir::operation::WalkOrder::PreOrder, |op| {
            if op.name().as_string_ref().as_str() == Ok(name) {
                n += 1;
            }
            melior::ir::operation::WalkResult::Advance
        });
    n
}

fn plans() -> Vec<Plan> {
    let mut out = vec![];
    for arch in [Arch::Gfx942, Arch::Gfx90a] {
        for (elem, scale, group) in [
            ((2, 1, 1), ScaleType::E8m0, 32),
            ((2, 1, 1), ScaleType::E4m3, 16),
            ((1, 2, 1), ScaleType::Bf16, 64),
            ((2, 1, 2), ScaleType::F32, 128),
        ] {
            for mma in [MmaAtom::M16N16K16, MmaAtom::M32N32K8] {
                out.push(plan(&spec(elem, scale, group, DType::Bf16, mma), arch).expect("plans"));
            }
        }
    }
    out
}

#[test]
fn the_pass_replaces_every_call_and_removes_the_reference() {
    for p in plans() {
        let module = kernel::build(&p).expect("builds");
        let calls = count_ops(&module, "func.call");
        // One call per weight word: pairs per iteration x n-tiles per wave.
        assert_eq!(calls as u32, p.pairs_per_iter * p.n_tiles);
        assert_eq!(
            count_ops(&module, "func.func"),
            1,
            "the reference function is there before the pass"
        );
        let rewritten = dequant::run(&module, &p).expect("pass runs");
        assert_eq!(rewritten, calls);
        assert_eq!(count_ops(&module, "func.call"), 0);
        assert_eq!(
            count_ops(&module, "func.func"),
            0,
            "reference function erased"
        );
        let second_half = match p.dequant.second_half {
            nibble_compiler::plan::SecondHalf::Bitreverse => "llvm.intr.bitreverse",
            nibble_compiler::plan::SecondHalf::Rotl4 => "llvm.intr.fshl",
        };
        // One second-half transform per word: 8 nibbles per bit-reverse.
        assert_eq!(count_ops(&module, second_half), calls);
        // No element-by-element decoding survives: the MX types and the table are gone.
        let text = module.as_operation().to_string();
        assert!(
            !text.contains("f4E2M1FN"),
            "element-wise f4 decode left behind"
        );
        match p.dequant.convert {
            nibble_compiler::plan::Bf8Convert::Hardware => {
                assert_eq!(count_ops(&module, "amdgpu.ext_packed_fp8"), 4 * calls)
            }
            nibble_compiler::plan::Bf8Convert::ViaF16
            | nibble_compiler::plan::Bf8Convert::Direct => {
                assert_eq!(count_ops(&module, "amdgpu.ext_packed_fp8"), 0)
            }
        }
        // Two f32 per packed multiply: 4 multiplies per word.
        assert_eq!(
            count_ops(&module, "arith.mulf"),
            4 * calls + mulf_outside_dequant(&p)
        );
    }
}

/// Multiplies outside the dequantization: the epilogue's tensor scale, once per accumulator element.
fn mulf_outside_dequant(p: &Plan) -> usize {
    if p.format.tensor_scale {
        (p.m_tiles * p.n_tiles * p.atom.m() * p.atom.n() / 64) as usize
    } else {
        0
    }
}

// ---- execution through the interpreter ----

use nibble_compiler::interp::{self, ElemType, Scalar};
use nibble_compiler::plan::SecondHalf;

/// The repacked word for eight element codes, built from the layout contract (docs/MANIFEST.md) independently of
/// the runtime's repacker: `A(c0..c3) | T^-1(A(c4..c7))`, -0 stored as +0.
fn word_for(p: &Plan, codes: [u8; 8]) -> u32 {
    let byte = |c: u8| -> u32 {
        let c = if c == 8 { 0 } else { c };
        (u32::from(c & 8) << 4) | (u32::from(c & 7) << p.dequant.mag_shift)
    };
    let a = |cs: &[u8]| -> u32 {
        cs.iter()
            .enumerate()
            .map(|(i, c)| byte(*c) << (8 * i))
            .sum()
    };
    let lo = a(&codes[..4]);
    let hi = a(&codes[4..]);
    lo | match p.dequant.second_half {
        SecondHalf::Bitreverse => hi.reverse_bits(),
        SecondHalf::Rotl4 => hi.rotate_right(4),
    }
}

/// Every accepted scale of the format: (checkpoint scale value, the f32 the kernel receives).
fn scale_sweep(p: &Plan) -> Vec<(f64, f32)> {
    let off = 2f64.powi(p.scale_layout.exp_offset);
    let normal =
        |v: f64| v == 0.0 || (v.abs() >= f64::from(f32::MIN_POSITIVE) && v <= f64::from(f32::MAX));
    let mut out = vec![];
    match p.format.scale {
        ScaleType::E8m0 => {
            for e in 0..255u32 {
                let v = 2f64.powi(e as i32 - 127);
                if normal(v * off) {
                    out.push((v, (v * off) as f32));
                }
            }
        }
        ScaleType::E4m3 => {
            for code in 0..0x7Fu32 {
                let (e, m) = ((code >> 3) & 0xF, code & 7);
                let v = if e == 0 {
                    f64::from(m) / 8.0 * 2f64.powi(-6)
                } else {
                    (1.0 + f64::from(m) / 8.0) * 2f64.powi(e as i32 - 7)
                };
                out.push((v, (v * off) as f32));
            }
        }
        // Wider scales: a spread of magnitudes and significands.
        _ => {
            for e in -20..20 {
                for m in [1.0, 1.1875, 1.5, 1.9990234375] {
                    let v = m * 2f64.powi(e);
                    let v = match p.format.scale {
                        ScaleType::Bf16 => half::bf16::from_f64(v).to_f64(),
                        ScaleType::F16 => half::f16::from_f64(v).to_f64(),
                        _ => f64::from(v as f32),
                    };
                    out.push((v, (v * off) as f32));
                }
            }
        }
    }
    out
}

/// The table-based reference for one element: value x scale in f32 (the kernel's definition), rounded to the
/// operand type, as bits. -0 is +0 (the repack stores it so).
fn reference_bits(p: &Plan, code: u8, scale: f64) -> u64 {
    let v = if code == 8 {
        0.0
    } else {
        p.format.element.value(code)
    };
    let prod = (v as f32) * (scale as f32);
    match p.x {
        DType::Bf16 => u64::from(half::bf16::from_f32(prod).to_bits()),
        DType::F16 => u64::from(half::f16::from_f32(prod).to_bits()),
    }
}

fn run_probe(module: &melior::ir::Module, word: u32, scale: f32) -> Vec<u64> {
    let out = interp::call(
        module,
        dequant::PROBE_FN,
        &[
            Scalar::I32(word),
            Scalar::Vec(ElemType::F32, vec![u64::from(scale.to_bits()); 2]),
        ],
    )
    .expect("the probe runs");
    out[0].bits()
}

/// Mismatches of the probe (reference function or rewritten) against the table, over all codes in all 8 positions
/// and the whole scale sweep.
fn mismatches(p: &Plan, module: &melior::ir::Module, limit: usize) -> Vec<String> {
    let mut bad = vec![];
    for (scale, kernel_scale) in scale_sweep(p) {
        for shift in 0..16u8 {
            // Position t holds code (shift + 5t) mod 16: over the 16 shifts, every code visits every position.
            let codes: [u8; 8] = std::array::from_fn(|t| (shift + 5 * t as u8) % 16);
            let got = run_probe(module, word_for(p, codes), kernel_scale);
            for (t, c) in codes.iter().enumerate() {
                let want = reference_bits(p, *c, scale);
                if got[t] != want && bad.len() < limit {
                    bad.push(format!(
                        "code {c:#x} at {t}, scale {scale:e}: got {:#06x}, want {want:#06x}",
                        got[t]
                    ));
                }
            }
        }
    }
    bad
}

fn exec_cases() -> Vec<(&'static str, KernelSpec)> {
    vec![
        (
            "mxfp4",
            spec(
                (2, 1, 1),
                ScaleType::E8m0,
                32,
                DType::Bf16,
                MmaAtom::M16N16K16,
            ),
        ),
        (
            "nvfp4",
            spec(
                (2, 1, 1),
                ScaleType::E4m3,
                16,
                DType::Bf16,
                MmaAtom::M16N16K16,
            ),
        ),
        (
            "mxfp4 f16 activations",
            spec(
                (2, 1, 1),
                ScaleType::E8m0,
                32,
                DType::F16,
                MmaAtom::M32N32K8,
            ),
        ),
        (
            "e1m2 bias 1, bf16 scales",
            spec(
                (1, 2, 1),
                ScaleType::Bf16,
                64,
                DType::Bf16,
                MmaAtom::M16N16K16,
            ),
        ),
        (
            "e2m1 bias 3, f32 scales",
            spec(
                (2, 1, 3),
                ScaleType::F32,
                32,
                DType::Bf16,
                MmaAtom::M16N16K16,
            ),
        ),
    ]
}

#[test]
fn every_code_and_scale_matches_the_table_reference_through_the_lowered_ir() {
    for (name, s) in exec_cases() {
        for arch in [Arch::Gfx942, Arch::Gfx90a] {
            let p = plan(&s, arch).expect("plans");
            let module = dequant::build_probe(&p).expect("builds");
            // The reference function itself (MX types / table) defines the semantics...
            let before = mismatches(&p, &module, 5);
            assert!(
                before.is_empty(),
                "{name} {}: reference function: {before:#?}",
                arch.name()
            );
            // ...and the bit-trick sequence the pass substitutes must agree with it everywhere.
            assert_eq!(dequant::run(&module, &p).expect("pass"), 1);
            let after = mismatches(&p, &module, 5);
            assert!(
                after.is_empty(),
                "{name} {}: lowered sequence: {after:#?}",
                arch.name()
            );
        }
    }
}

/// Negative controls: a broken layout or format must make the comparison fail.
#[test]
fn broken_layouts_and_formats_are_detected() {
    let s = spec(
        (2, 1, 1),
        ScaleType::E8m0,
        32,
        DType::Bf16,
        MmaAtom::M16N16K16,
    );
    for arch in [Arch::Gfx942, Arch::Gfx90a] {
        let good = plan(&s, arch).expect("plans");

        // The pass emits a mask missing the top mantissa bit.
        let mut bad_mask = good.clone();
        bad_mask.dequant.mask &= !0x0202_0202;
        let module = dequant::build_probe(&bad_mask).expect("builds");
        dequant::run(&module, &bad_mask).expect("pass");
        assert!(
            !mismatches(&good, &module, 1).is_empty(),
            "{}: wrong mask undetected",
            arch.name()
        );

        // The second half is transformed the wrong way (rotate instead of reverse).
        let mut bad_half = good.clone();
        bad_half.dequant.second_half = SecondHalf::Rotl4;
        let module = dequant::build_probe(&bad_half).expect("builds");
        dequant::run(&module, &bad_half).expect("pass");
        assert!(
            !mismatches(&good, &module, 1).is_empty(),
            "{}: wrong half undetected",
            arch.name()
        );

        // Scales off by one binade (a wrong exponent offset in the repacking).
        let mut bad_scale = good.clone();
        bad_scale.scale_layout.exp_offset += 1;
        let module = dequant::build_probe(&good).expect("builds");
        dequant::run(&module, &good).expect("pass");
        assert!(!mismatches_with_sweep(&good, &bad_scale, &module).is_empty());
    }
}

/// Like `mismatches`, but feeds the kernel scales repacked under `repacked`'s layout.
fn mismatches_with_sweep(p: &Plan, repacked: &Plan, module: &melior::ir::Module) -> Vec<String> {
    let mut bad = vec![];
    for ((scale, _), (_, kernel_scale)) in scale_sweep(p)
        .into_iter()
        .zip(scale_sweep(repacked))
        .take(40)
    {
        let codes = [1u8, 2, 3, 4, 5, 6, 7, 9];
        let got = run_probe(module, word_for(p, codes), kernel_scale);
        for (t, c) in codes.iter().enumerate() {
            if got[t] != reference_bits(p, *c, scale) {
                bad.push(format!("code {c} scale {scale:e}"));
            }
        }
    }
    bad
}
