//! `nibble_compiler::inspect` on the committed code-object fixtures (runtime/tests-data, built by
//! regen.sh with LLVM 22).
//!
//! Cross-checked against `llvm-objdump -d` of the fixtures (LLVM 22.1.8): mfma_loop_gfx942.hsaco has
//! 2 `v_mfma` lines, both in the loop 0x1a78..=0x1ae4 closed by `s_cbranch_scc1 65508` at 0x1ae4
//! (objdump annotates the target as `<mfma_loop+0x78>` = 0x1a78); the loop is 20 instructions: 2
//! global_load, 2 ds_, 2 v_mfma, 4 v_accvgpr_mov, 2 other v_ (v_lshl_add_u64) and 8 s_.
//! straight_gfx90a.hsaco has 1 `v_mfma` and no branch at all.

use nibble_compiler::inspect::{
    classify, disassemble, find_loops, inspect, loop_listing, main_loop, InspectError, Inst,
    InstClass,
};
use nibble_runtime::codeobj;

const GFX942: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/runtime/tests-data/mfma_loop_gfx942.hsaco"
));
const GFX90A: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/runtime/tests-data/straight_gfx90a.hsaco"
));

#[test]
fn disassembles_gfx942_fixture() {
    let obj = codeobj::parse(GFX942).unwrap();
    let insts = disassemble(&obj).unwrap();
    assert_eq!(
        insts[0],
        Inst {
            addr: 0x1a00,
            size: 8,
            text: "s_load_dword s6, s[4:5], 0x18".into()
        }
    );
    // Covers .text exactly (0x540 bytes, padded with s_nop 0 after the kernel).
    let covered: u64 = insts.iter().map(|i| u64::from(i.size)).sum();
    assert_eq!(covered, 0x540);
    let mfma = insts.iter().find(|i| i.addr == 0x1ac0).unwrap();
    assert_eq!(
        mfma.text,
        "v_mfma_f32_16x16x16_bf16 a[0:3], v[10:11], v[12:13], a[0:3]"
    );
    let branch = insts.iter().find(|i| i.addr == 0x1ae4).unwrap();
    assert_eq!(branch.text, "s_cbranch_scc1 65508");
    assert_eq!(branch.branch_target(), Some(0x1a78));
    // The forward branch at 0x1a24 (`s_cbranch_scc1 60`) goes to 0x1a28 + 240 = 0x1b18.
    let fwd = insts.iter().find(|i| i.addr == 0x1a24).unwrap();
    assert_eq!(fwd.branch_target(), Some(0x1b18));
    // Deterministic.
    assert_eq!(disassemble(&obj).unwrap(), insts);
}

#[test]
fn inspects_mfma_loop() {
    let report = inspect(GFX942, Some(4)).unwrap();
    assert_eq!(report.arch, "gfx942");
    let k = &report.kernels[0];
    assert_eq!(k.name, "mfma_loop");
    assert_eq!((k.vgprs, k.agprs, k.sgprs), (24, 8, 18));
    assert_eq!((k.lds_bytes, k.scratch_bytes), (2048, 0));
    assert_eq!((k.vgpr_spills, k.sgpr_spills), (0, 0));
    assert_eq!(k.occupancy_waves_per_simd, Some(8));
    assert_eq!(k.mfma_total, 2);
    let lp = k.main_loop.as_ref().unwrap();
    assert_eq!((lp.start, lp.end), (0x1a78, 0x1ae4));
    assert_eq!(lp.instructions, 20);
    assert_eq!(lp.mfma, 2);
    assert_eq!(lp.valu, 2, "v_accvgpr_mov and v_mfma are not VALU");
    assert_eq!(lp.salu, 8);
    assert_eq!(lp.vmem, 2);
    assert_eq!(lp.lds, 2);
    assert_eq!(k.valu_per_weight_element, Some(0.5));

    let text = report.render_text();
    assert!(text.contains("mfma_loop"), "{text}");
    assert!(text.contains("main loop 0x1a78..=0x1ae4"), "{text}");
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["kernels"][0]["main_loop"]["mfma"], 2);

    let without = inspect(GFX942, None).unwrap();
    assert_eq!(without.kernels[0].valu_per_weight_element, None);
}

#[test]
fn loop_listing_is_address_free() {
    let obj = codeobj::parse(GFX942).unwrap();
    let insts = disassemble(&obj).unwrap();
    let lp = main_loop(&insts).unwrap();
    let listing = loop_listing(&insts, &lp);
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 20);
    assert_eq!(lines[0], "global_load_dwordx2 v[8:9], v[0:1], off");
    assert_eq!(lines[19], "s_cbranch_scc1 65508");
    assert!(!listing.contains("0x1a"), "{listing}");
}

#[test]
fn loop_free_kernel_has_no_main_loop() {
    let report = inspect(GFX90A, Some(4)).unwrap();
    assert_eq!(report.arch, "gfx90a");
    let k = &report.kernels[0];
    assert_eq!(k.name, "straight");
    assert_eq!(k.mfma_total, 1);
    assert_eq!(k.main_loop, None);
    assert_eq!(k.valu_per_weight_element, None);
    assert!(report.render_text().contains("main loop: none"));
}

#[test]
fn invalid_code_object_is_an_error() {
    let err = inspect(b"not an object", None).unwrap_err();
    assert!(matches!(
        err,
        InspectError::CodeObject(codeobj::CodeObjectError::NotElf)
    ));
}

fn inst(addr: u64, size: u32, text: &str) -> Inst {
    Inst {
        addr,
        size,
        text: text.into(),
    }
}

#[test]
fn classification() {
    assert_eq!(classify("v_mfma_f32_16x16x16_bf16"), InstClass::Mfma);
    assert_eq!(classify("v_mfma_f32_32x32x8f16"), InstClass::Mfma);
    assert_eq!(classify("v_smfmac_f32_16x16x32_bf16"), InstClass::Mfma);
    assert_eq!(classify("v_accvgpr_write_b32"), InstClass::AccVgpr);
    assert_eq!(classify("v_accvgpr_read_b32"), InstClass::AccVgpr);
    assert_eq!(classify("v_accvgpr_mov_b32"), InstClass::AccVgpr);
    assert_eq!(classify("v_and_b32_e32"), InstClass::Valu);
    assert_eq!(classify("v_cvt_pk_f32_fp8"), InstClass::Valu);
    assert_eq!(classify("s_waitcnt"), InstClass::Salu);
    assert_eq!(classify("global_load_dwordx4"), InstClass::Vmem);
    assert_eq!(classify("buffer_load_dword"), InstClass::Vmem);
    assert_eq!(classify("flat_store_dword"), InstClass::Vmem);
    assert_eq!(classify("ds_read_b128"), InstClass::Lds);
    assert_eq!(classify(".long"), InstClass::Other);
}

#[test]
fn synthetic_loops() {
    // Two loops: [0x10, 0x20] with one MFMA and [0x28, 0x40] with two.
    let insts = vec![
        inst(0x00, 4, "s_mov_b32 s0, 0"),
        inst(
            0x04,
            8,
            "v_mfma_f32_16x16x16_bf16 a[0:3], v[0:1], v[2:3], a[0:3]",
        ), // outside loops
        inst(0x0c, 4, "s_nop 0"),
        inst(0x10, 4, "v_add_f32_e32 v0, v1, v0"),
        inst(
            0x14,
            8,
            "v_mfma_f32_16x16x16_bf16 a[0:3], v[0:1], v[2:3], a[0:3]",
        ),
        inst(0x1c, 4, "v_accvgpr_read_b32 v0, a0"),
        inst(0x20, 4, "s_cbranch_scc1 65531"), // 0x24 - 5*4 = 0x10
        inst(0x24, 4, "s_nop 0"),
        inst(
            0x28,
            8,
            "v_mfma_f32_16x16x16_bf16 a[0:3], v[0:1], v[2:3], a[0:3]",
        ),
        inst(
            0x30,
            8,
            "v_mfma_f32_16x16x16_bf16 a[4:7], v[0:1], v[2:3], a[4:7]",
        ),
        inst(0x38, 4, "v_accvgpr_write_b32 a0, v0"),
        inst(0x3c, 4, "ds_read_b64 v[0:1], v2"),
        inst(0x40, 4, "s_branch -7"), // signed form: 0x44 - 28 = 0x28
        inst(0x44, 4, "s_cbranch_execz 2"), // forward: not a loop
        inst(0x48, 4, "s_endpgm"),
    ];
    assert_eq!(find_loops(&insts), vec![(0x10, 0x20), (0x28, 0x40)]);
    let lp = main_loop(&insts).unwrap();
    assert_eq!((lp.start, lp.end), (0x28, 0x40));
    assert_eq!(
        (lp.instructions, lp.mfma, lp.valu, lp.salu, lp.lds),
        (5, 2, 0, 1, 1)
    );
    assert_eq!(
        loop_listing(&insts, &lp).lines().next(),
        Some("v_mfma_f32_16x16x16_bf16 a[0:3], v[0:1], v[2:3], a[0:3]")
    );

    // The first loop alone: VALU counts v_add but neither v_mfma nor v_accvgpr.
    let first = main_loop(&insts[..7]).unwrap();
    assert_eq!((first.start, first.end), (0x10, 0x20));
    assert_eq!(
        (first.instructions, first.mfma, first.valu, first.salu),
        (4, 1, 1, 1)
    );

    // Tie on MFMA count: the larger loop wins (a nested loop loses to its enclosing loop).
    let nested = vec![
        inst(
            0x00,
            8,
            "v_mfma_f32_16x16x16_bf16 a[0:3], v[0:1], v[2:3], a[0:3]",
        ),
        inst(0x08, 4, "s_cbranch_scc0 65533"),  // -> 0x00
        inst(0x0c, 4, "s_cbranch_vccnz 65532"), // -> 0x00
    ];
    let lp = main_loop(&nested).unwrap();
    assert_eq!((lp.start, lp.end, lp.mfma), (0, 0x0c, 1));

    // No backward branch, no loop; a branch before the listing start is ignored.
    assert_eq!(main_loop(&insts[..3]), None);
    assert_eq!(main_loop(&insts[7..12]), None);
    assert_eq!(main_loop(&[]), None);
    // Not a branch with an offset operand.
    assert_eq!(inst(0, 4, "s_setpc_b64 s[0:1]").branch_target(), None);
    assert_eq!(inst(0, 4, "s_cbranch_join s0").branch_target(), None);
    assert_eq!(inst(0, 4, "s_branch 70000").branch_target(), None);
    assert_eq!(inst(0, 4, "s_branch 65535").branch_target(), Some(0));
}
