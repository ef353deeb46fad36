//! The NVIDIA dequantization route on its own: the fragment bit recipe (shifted, masked pieces of a weight word
//! placed straight into bf16/f16 halves, one packed multiply by the row's scale) executed through the interpreter
//! for every code at every fragment position and every scale the layout accepts, against a table reference built
//! from the manifest's layout contract (not from the compiler's helpers).

use nibble_compiler::arch::Arch;
use nibble_compiler::dequant;
use nibble_compiler::interp::{self, ElemType, Scalar};
use nibble_compiler::plan::{plan, Plan};
use nibble_compiler::spec::*;

use crate::dequant::spec;

fn nv_plan(elem: (u8, u8, i32), scale: ScaleType, group: u32, x: DType) -> Plan {
    let mut s = spec(elem, scale, group, x, MmaAtom::M16N16K16);
    s.targets = vec![Arch::Sm90];
    plan(&s, Arch::Sm90).expect("plans for sm_90")
}

/// The word holding fragment codes `codes[f]`, from the layout contract in docs/MANIFEST.md: in register f/2, half
/// f%2, the sign goes to bit 16h+15 and code bits 0..2 to 16h+mag_shift.., and the piece providing output bit p
/// takes it from word bit p - shift.
fn word_for(p: &Plan, codes: [u8; 8]) -> u32 {
    let wl = &p.weight_layout;
    let frag = wl.fragment.as_ref().expect("fragment layout");
    let mut w = 0u32;
    for (f, code) in codes.iter().enumerate() {
        let (reg, h) = (f / 2, (f % 2) as u32);
        let targets = [
            (0, 16 * h + wl.mag_shift),
            (1, 16 * h + wl.mag_shift + 1),
            (2, 16 * h + wl.mag_shift + 2),
            (3, 16 * h + 15),
        ];
        for (cbit, obit) in targets {
            let piece = frag.outputs[reg]
                .iter()
                .find(|pc| pc.mask >> obit & 1 == 1)
                .expect("a piece provides every element bit");
            let src = (obit as i32 - piece.shift) as u32;
            w |= u32::from(code >> cbit & 1) << src;
        }
    }
    w
}

fn operand_bits(x: DType, v: f64) -> u16 {
    match x {
        DType::Bf16 => half::bf16::from_f64(v).to_bits(),
        DType::F16 => half::f16::from_f64(v).to_bits(),
    }
}

fn operand_value(x: DType, bits: u16) -> f64 {
    match x {
        DType::Bf16 => half::bf16::from_bits(bits).to_f64(),
        DType::F16 => half::f16::from_bits(bits).to_f64(),
    }
}

/// Checkpoint scales of the format, as values.
fn scale_values(p: &Plan) -> Vec<f64> {
    match p.format.scale {
        ScaleType::E8m0 => (0..255).map(|e| 2f64.powi(e - 127)).collect(),
        ScaleType::E4m3 => (1..0x7Fu32)
            .map(|code| {
                let (e, m) = ((code >> 3) & 0xF, code & 7);
                if e == 0 {
                    f64::from(m) / 8.0 * 2f64.powi(-6)
                } else {
                    (1.0 + f64::from(m) / 8.0) * 2f64.powi(e as i32 - 7)
                }
            })
            .collect(),
        _ => (-20..8)
            .flat_map(|e| {
                [1.0, 1.1875, 1.5, 1.9921875]
                    .map(|m| half::bf16::from_f64(m * 2f64.powi(e)).to_f64())
            })
            .collect(),
    }
}

/// The scales the layout accepts (what the runtime's repacker checks): the repacked scale is exact in the operand
/// type and the kernel's operand, times 2^epilogue_exp, equals the reference operand round(v * s) for every code.
/// Returns (scale, repacked scale bits).
fn accepted(p: &Plan) -> Vec<(f64, u16)> {
    let f = p.fragment.as_ref().expect("fragment plan");
    let e = p.scale_layout.exp_offset;
    scale_values(p)
        .into_iter()
        .filter_map(|s| {
            let big = s * 2f64.powi(e);
            let bits = operand_bits(p.x, big);
            if operand_value(p.x, bits) != big {
                return None;
            }
            let ok = (0..16u8).all(|c| {
                let v = p.format.element.value(c);
                let kernel =
                    operand_value(p.x, operand_bits(p.x, v * s * 2f64.powi(-f.epilogue_exp)));
                kernel * 2f64.powi(f.epilogue_exp) == operand_value(p.x, operand_bits(p.x, v * s))
            });
            ok.then_some((s, bits))
        })
        .collect()
}

fn run_probe(module: &melior::ir::Module, p: &Plan, word: u32, s: [u16; 2]) -> Vec<u64> {
    let et = match p.x {
        DType::Bf16 => ElemType::Bf16,
        DType::F16 => ElemType::F16,
    };
    let out = interp::call(
        module,
        dequant::PROBE_FN,
        &[
            Scalar::I32(word),
            Scalar::Vec(et, vec![u64::from(s[0]), u64::from(s[1])]),
        ],
    )
    .expect("the probe runs");
    out[0].bits()
}

/// Mismatches against round(v * s * 2^-epilogue_exp) over every code at every fragment position, with the two
/// rows' scales taken from different points of the accepted sweep.
fn mismatches(
    p: &Plan,
    module: &melior::ir::Module,
    sweep: &[(f64, u16)],
    limit: usize,
) -> Vec<String> {
    let f = p.fragment.as_ref().expect("fragment plan");
    let mut bad = vec![];
    for (i, (s0, b0)) in sweep.iter().enumerate() {
        let (s1, b1) = sweep[(i * 7 + 3) % sweep.len()];
        for shift in 0..16u8 {
            let codes: [u8; 8] = std::array::from_fn(|t| (shift + 5 * t as u8) % 16);
            let got = run_probe(module, p, word_for(p, codes), [*b0, b1]);
            for (t, c) in codes.iter().enumerate() {
                let s = if (t / 2) % 2 == 0 { *s0 } else { s1 };
                let v = p.format.element.value(*c);
                let want = u64::from(operand_bits(p.x, v * s * 2f64.powi(-f.epilogue_exp)));
                // -0 and +0 both multiply to zero.
                let same = got[t] == want || (got[t] & 0x7FFF == 0 && want & 0x7FFF == 0);
                if !same && bad.len() < limit {
                    bad.push(format!(
                        "code {c:#x} at {t}, scale {s:e}: got {:#06x}, want {want:#06x}",
                        got[t]
                    ));
                }
            }
        }
    }
    bad
}

fn cases() -> Vec<(&'static str, Plan)> {
    vec![
        (
            "mxfp4 bf16",
            nv_plan((2, 1, 1), ScaleType::E8m0, 32, DType::Bf16),
        ),
        (
            "nvfp4 bf16",
            nv_plan((2, 1, 1), ScaleType::E4m3, 16, DType::Bf16),
        ),
        (
            "mxfp4 f16",
            nv_plan((2, 1, 1), ScaleType::E8m0, 32, DType::F16),
        ),
        (
            "nvfp4 f16",
            nv_plan((2, 1, 1), ScaleType::E4m3, 16, DType::F16),
        ),
        (
            "e1m2 bf16 scales",
            nv_plan((1, 2, 1), ScaleType::Bf16, 64, DType::Bf16),
        ),
        (
            "e1m2 f16",
            nv_plan((1, 2, 1), ScaleType::E8m0, 128, DType::F16),
        ),
    ]
}

#[test]
fn fragment_recipe_matches_the_table_reference_for_every_code_and_accepted_scale() {
    for (name, p) in cases() {
        let sweep = accepted(&p);
        // The accepted range must cover realistic checkpoints, not just a corner.
        let need = match (p.format.scale, p.x) {
            (ScaleType::E8m0, DType::Bf16) => 134, // 2^-127 ..= 2^6
            (ScaleType::E8m0, DType::F16) => 40,   // 2^-38 ..= 2^1
            (ScaleType::E4m3, _) => 126,           // every positive e4m3 code
            _ => 100,
        };
        assert!(
            sweep.len() >= need,
            "{name}: only {} scales accepted",
            sweep.len()
        );
        let module = dequant::build_probe(&p).expect("builds");
        let before = mismatches(&p, &module, &sweep, 5);
        assert!(before.is_empty(), "{name}: reference function: {before:#?}");
        assert_eq!(dequant::run(&module, &p).expect("pass"), 1);
        let after = mismatches(&p, &module, &sweep, 5);
        assert!(after.is_empty(), "{name}: lowered sequence: {after:#?}");
        let text = module.as_operation().to_string();
        assert!(
            !text.contains("f4E2M1FN"),
            "{name}: element-wise decode left"
        );
    }
}

/// Negative controls: a wrong piece shift, rows' scales swapped, and a scale off by one binade are all detected.
#[test]
fn broken_fragment_recipes_are_detected() {
    let good = nv_plan((2, 1, 1), ScaleType::E8m0, 32, DType::Bf16);
    let sweep = accepted(&good);

    let mut bad_shift = good.clone();
    if let Some(f) = bad_shift.fragment.as_mut() {
        f.outputs[2][0].shift += 1;
    }
    let module = dequant::build_probe(&bad_shift).expect("builds");
    dequant::run(&module, &bad_shift).expect("pass");
    assert!(
        !mismatches(&good, &module, &sweep, 1).is_empty(),
        "wrong shift undetected"
    );

    let module = dequant::build_probe(&good).expect("builds");
    dequant::run(&module, &good).expect("pass");
    let swapped: Vec<(f64, u16)> = sweep.iter().map(|(s, b)| (*s, *b)).collect();
    let mut bad = 0;
    for (i, (_, b0)) in swapped.iter().enumerate().take(30) {
        let (_, b1) = swapped[(i + 11) % swapped.len()];
        let codes = [1u8, 2, 3, 4, 5, 6, 7, 9];
        let straight = run_probe(&module, &good, word_for(&good, codes), [*b0, b1]);
        let crossed = run_probe(&module, &good, word_for(&good, codes), [b1, *b0]);
        if straight != crossed {
            bad += 1;
        }
    }
    assert!(bad > 0, "swapping the two rows' scales changed nothing");

    let shifted: Vec<(f64, u16)> = sweep
        .iter()
        .take(60)
        .map(|(s, _)| {
            (
                *s,
                operand_bits(DType::Bf16, s * 2f64.powi(good.scale_layout.exp_offset + 1)),
            )
        })
        .collect();
    assert!(
        !mismatches(&good, &module, &shifted, 1).is_empty(),
        "scale off by one binade undetected"
    );
}

/// The fragment route as the pass emits it, for review: shifts, masks and ORs per register, one packed multiply each.
#[test]
fn fragment_route_ir_snapshot() {
    let p = nv_plan((2, 1, 1), ScaleType::E8m0, 32, DType::Bf16);
    let mut module = dequant::build_probe(&p).expect("builds");
    dequant::run(&module, &p).expect("pass");
    nibble_compiler::codegen::run_pipeline(
        &mut module,
        "builtin.module(func.func(canonicalize,cse))",
    )
    .expect("cleanup");
    insta::assert_snapshot!(
        "dequant_nv__mxfp4_bf16_probe",
        module.as_operation().to_string()
    );
}

/// The terms the pass emits (a register's pieces `(s, hi)` and `(s - 32, lo)` merged into one rotation) form the
/// same registers as the pieces do under the manifest's contract, for every table nibble uses; the e2m1-into-bf16
/// table costs 9 logic instructions per word (it was 11 before rotations), e1m2 into f16 7.
#[test]
fn rotation_terms_form_the_same_registers_as_the_pieces() {
    use nibble_runtime::manifest::BitPiece;
    use nibble_runtime::numerics::repack_mma::{fragment_pieces, registers};
    let eval = |terms: &[dequant::FragmentTerm], w: u32| {
        terms.iter().fold(0u32, |acc, t| {
            let moved = match (t.rotate, t.shift) {
                (true, s) => w.rotate_left(s as u32),
                (false, s) if s >= 0 => w << s,
                (false, s) => w >> -s,
            };
            acc | (moved & t.mask)
        })
    };
    let mut state = 0x1234_5678_9abc_def0u64;
    for (l, ops, rotations) in [(6u32, 9usize, 1usize), (5, 11, 0), (9, 11, 0), (8, 7, 1)] {
        let table = fragment_pieces(l).expect("a table");
        let terms: Vec<Vec<dequant::FragmentTerm>> =
            table.iter().map(|r| dequant::fragment_terms(r)).collect();
        assert_eq!(dequant::fragment_logic_ops(&table), ops, "mag_shift {l}");
        let rot = terms.iter().flatten().filter(|t| t.rotate).count();
        assert_eq!(rot, rotations, "mag_shift {l}");
        for _ in 0..2000 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let w = (state >> 32) as u32;
            let want = registers(&table, w);
            for (r, t) in terms.iter().enumerate() {
                assert_eq!(
                    eval(t, w),
                    want[r],
                    "mag_shift {l}, register {r}, word {w:#010x}"
                );
            }
        }
    }
    // Negative control: a low piece reaching at or above the rotation's bit is not a rotation (merging it would
    // OR the shifted word's bits into the mask), so it stays two shifts and two masks.
    let p = |shift, mask| BitPiece { shift, mask };
    let split = dequant::fragment_terms(&[p(26, 0x8000_0000), p(-6, 0x0400_0000)]);
    assert_eq!(split.len(), 2);
    assert!(split.iter().all(|t| !t.rotate));
    let merged = dequant::fragment_terms(&[p(-6, 0x0200_0000), p(26, 0x8000_0000)]);
    assert_eq!(
        merged,
        vec![dequant::FragmentTerm {
            shift: 26,
            rotate: true,
            mask: 0x8200_0000
        }]
    );
}
