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
            mma,
            stages: 2,
        }),
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
            nibble_compiler::plan::Bf8Convert::ViaF16 => {
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
