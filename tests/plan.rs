//! The plan: layout and launch decisions for hand-built specs, checked against hand-computed values.

use nibble_compiler::arch::Arch;
use nibble_compiler::plan::{plan, Bf8Convert, PlanError, SecondHalf};
use nibble_compiler::spec::*;
use nibble_runtime::manifest::{ArgRole, GridDim};

fn spec(elem: (u8, u8, i32), scale: ScaleType, group: u32, ts: bool, mma: MmaAtom) -> KernelSpec {
    KernelSpec {
        name: "k".into(),
        targets: vec![Arch::Gfx942, Arch::Gfx90a],
        x: DType::Bf16,
        y: DType::Bf16,
        n: 1024,
        k: 2048,
        format: FormatSpec {
            name: "f".into(),
            element: MiniFloat {
                name: "e".into(),
                exp_bits: elem.0,
                man_bits: elem.1,
                bias: elem.2,
            },
            scale,
            group,
            tensor_scale: ts,
        },
        bias: Some(DType::Bf16),
        schedule: Schedule::Manual(Tiling {
            tile_m: 32,
            tile_n: 128,
            tile_k: 256,
            waves_m: 1,
            waves_n: 4,
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

#[test]
fn mxfp4_16x16_plan_matches_hand_computation() {
    let p = plan(
        &spec((2, 1, 1), ScaleType::E8m0, 32, false, MmaAtom::M16N16K16),
        Arch::Gfx942,
    )
    .expect("plans");
    assert_eq!(p.threads, 256);
    assert_eq!((p.wave_m, p.wave_n, p.m_tiles, p.n_tiles), (32, 32, 2, 2));
    // 256 K per iteration = 8 MFMA pairs of 32 K; two 16-byte weight loads per lane and n-tile.
    assert_eq!((p.pairs_per_iter, p.wchunks_per_iter, p.k_iters), (8, 2, 8));
    // Sign to bit 7, e1 e0 m to bits 3..1: 0x8e per byte; the other half is bit-reversed.
    assert_eq!(p.dequant.mask, 0x8E8E_8E8E);
    assert_eq!(p.dequant.mag_shift, 1);
    assert_eq!(p.dequant.second_half, SecondHalf::Bitreverse);
    assert_eq!(p.dequant.convert, Bf8Convert::Hardware);
    assert!(p.dequant.exact_pack, "e2m1 x e8m0 is exact in bf16");
    assert_eq!(p.scale_layout.exp_offset, 15);
    // LDS: 2 stages x 32 rows x 256 bf16, rows XOR-swizzled: padded to 264 they would take 33792 bytes and leave
    // one workgroup (4 waves) per CU; at 32768 two fit.
    assert!(p.x_swizzle);
    assert_eq!(p.lds_row, 256);
    assert_eq!(p.lds_bytes, 2 * 32 * 256 * 2);
    assert_eq!(
        p.grid,
        [
            GridDim::Const { value: 8 },
            GridDim::CeilDivM { divisor: 32 },
            // 8 N tiles leave MI300X's 304 CUs idle: K is split, keeping two of the 8 K iterations per split.
            GridDim::Const { value: 4 }
        ]
    );
    assert_eq!((p.split_k, p.iters_per_split), (4, 2));
    let roles: Vec<_> = p.args.iter().map(|a| (a.role, a.offset, a.size)).collect();
    assert_eq!(
        roles,
        vec![
            (ArgRole::X, 0, 8),
            (ArgRole::Weight, 8, 8),
            (ArgRole::Scales, 16, 8),
            (ArgRole::Bias, 24, 8),
            (ArgRole::Y, 32, 8),
            (ArgRole::Workspace, 40, 8),
            (ArgRole::Counters, 48, 8),
            (ArgRole::M, 56, 4)
        ]
    );
    // 32 columns per wave x 256 K / 64 lanes.
    assert_eq!(p.elements_per_lane_iter, 128);
    // Scale slots: group 32 = one pair each.
    assert_eq!((p.scale_slot(0), p.scale_slot(7)), (0, 7));
    assert_eq!(p.lane_scale_offset(3), 0);
}

#[test]
fn gfx90a_uses_the_f16_route_and_its_exponent_offset() {
    let p = plan(
        &spec((2, 1, 1), ScaleType::E8m0, 32, false, MmaAtom::M16N16K16),
        Arch::Gfx90a,
    )
    .expect("plans");
    assert_eq!(p.dequant.convert, Bf8Convert::ViaF16);
    assert_eq!(p.scale_layout.exp_offset, 14);
}

#[test]
fn e1m2_elements_rotate_instead_of_reversing() {
    let p = plan(
        &spec((1, 2, 1), ScaleType::F16, 64, false, MmaAtom::M32N32K8),
        Arch::Gfx942,
    )
    .expect("plans");
    assert_eq!(p.dequant.mask, 0x8787_8787);
    assert_eq!(p.dequant.mag_shift, 0);
    assert_eq!(p.dequant.second_half, SecondHalf::Rotl4);
    // f16 scales have 11 significant bits: their products need a rounding conversion.
    assert!(!p.dequant.exact_pack);
    // 32x32x8: pairs of 16 K; a 64-group spans 4 pairs.
    assert_eq!(p.pairs_per_iter, 16);
    assert_eq!((p.scale_slot(3), p.scale_slot(4)), (0, 1));
}

#[test]
fn nvfp4_groups_finer_than_a_pair_offset_lanes() {
    let p = plan(
        &spec((2, 1, 1), ScaleType::E4m3, 16, true, MmaAtom::M16N16K16),
        Arch::Gfx942,
    )
    .expect("plans");
    // Lane groups q = 0..3 cover K offsets 8q..8q+7 of a 32-K pair: groups 0,0,1,1 of the pair.
    let offsets: Vec<u32> = (0..4).map(|q| p.lane_scale_offset(q)).collect();
    assert_eq!(offsets, vec![0, 0, 1, 1]);
    assert_eq!((p.scale_slot(0), p.scale_slot(1)), (0, 2));
    assert!(
        p.dequant.exact_pack,
        "e2m1 x e4m3 has 2 + 4 significant bits"
    );
    assert_eq!(p.args.last().map(|a| a.role), Some(ArgRole::TensorScale));
}

#[test]
fn an_arch_outside_the_targets_is_refused() {
    let mut s = spec((2, 1, 1), ScaleType::E8m0, 32, false, MmaAtom::M16N16K16);
    s.targets = vec![Arch::Gfx942];
    assert!(matches!(
        plan(&s, Arch::Gfx90a),
        Err(PlanError::NotATarget { .. })
    ));
}

#[test]
fn split_k_fills_the_cus_only_for_decode_tiles_with_few_n_tiles() {
    use nibble_compiler::plan::choose_split_k;
    // Llama-3-70B QKV decode on MI300X: 80 N tiles of 128, 32 K iterations: 4 splits reach 320 workgroups.
    assert_eq!(choose_split_k(80, 32, 16, 1, Arch::Gfx942), 4);
    // The divisor rule: 128 tiles want 3 splits, 32 iterations allow 2.
    assert_eq!(choose_split_k(128, 32, 16, 1, Arch::Gfx942), 2);
    // Enough N tiles already (224 >= 152), or a prefill tile, or a single K iteration: no split.
    assert_eq!(choose_split_k(224, 32, 16, 1, Arch::Gfx942), 1);
    assert_eq!(choose_split_k(8, 32, 64, 1, Arch::Gfx942), 1);
    assert_eq!(choose_split_k(8, 1, 16, 1, Arch::Gfx942), 1);
    // At least two K iterations per split: 8 tiles want 38 splits, 8 iterations allow 4, 3 iterations none.
    assert_eq!(choose_split_k(8, 8, 16, 1, Arch::Gfx942), 4);
    assert_eq!(choose_split_k(8, 3, 16, 1, Arch::Gfx942), 1);
    // MI250X has 110 CUs: 80 N tiles are enough there.
    assert_eq!(choose_split_k(80, 32, 16, 1, Arch::Gfx90a), 1);
    // H100 (132 SMs, 4 blocks per SM): 64 tiles of 8192x8192 split 8 ways; with 4 warps along K a block already
    // carries 4 slices, so 132 blocks are the aim: 256 tiles need no split, 128 tiles split in 2.
    assert_eq!(choose_split_k(64, 32, 16, 1, Arch::Sm90), 8);
    assert_eq!(choose_split_k(256, 16, 16, 4, Arch::Sm90), 1);
    assert_eq!(choose_split_k(128, 16, 16, 4, Arch::Sm90), 2);
}

/// How many distinct 4-bank groups the 16-byte chunks `chunks` of rows starting on bank 0 touch: LDS has 32 banks of
/// 4 bytes, so chunk p covers banks 4(p % 8)..+3 and 8 chunks with distinct p % 8 cover all 32 once.
fn bank_groups(chunks: &[u32]) -> usize {
    let mut seen: Vec<u32> = chunks.iter().map(|p| p % 8).collect();
    seen.sort_unstable();
    seen.dedup();
    seen.len()
}

#[test]
fn bf16_swizzle_spreads_reads_and_staging_stores_over_all_banks() {
    use nibble_compiler::plan::Plan;
    // 16-byte chunks (8 bf16) of an unpadded row of 128 or 256 elements, whose rows start on bank 0.
    let banks = bank_groups;
    for chunk in 0..32u32 {
        // Operand reads: 8 consecutive lanes read one logical chunk of 8 consecutive rows.
        for r0 in [0u32, 8, 16, 24] {
            let phys: Vec<u32> = (r0..r0 + 8).map(|r| Plan::x_chunk(r, chunk)).collect();
            assert_eq!(banks(&phys), 8, "reads of chunk {chunk}");
            assert!(
                phys.iter().all(|p| p / 8 == chunk / 8),
                "stays in its 8-chunk block"
            );
        }
        // Without the swizzle the 8 rows hit the same four banks.
        assert_eq!(banks(&[chunk; 8]), 1);
    }
    for row in 0..32u32 {
        // Staging stores: 8 consecutive lanes write chunks j0..j0+8 of one row.
        for j0 in (0..32u32).step_by(8) {
            let phys: Vec<u32> = (j0..j0 + 8).map(|j| Plan::x_chunk(row, j)).collect();
            assert_eq!(banks(&phys), 8, "stores of row {row} from chunk {j0}");
        }
    }
}

#[test]
fn xf32_swizzle_spreads_reads_and_staging_stores_over_all_banks() {
    use nibble_compiler::plan::Plan;
    // 16-byte chunks of a 256-f32 row.
    let banks = bank_groups;
    for chunk in 0..64u32 {
        // A-operand reads: 8 consecutive lanes read one logical chunk of 8 consecutive rows.
        for r0 in [0u32, 8] {
            let phys: Vec<u32> = (r0..r0 + 8).map(|r| Plan::xf32_chunk(r, chunk)).collect();
            assert_eq!(banks(&phys), 8, "reads of chunk {chunk}");
            assert!(
                phys.iter().all(|p| p / 8 == chunk / 8),
                "stays in its 8-chunk block"
            );
        }
    }
    for row in 0..16u32 {
        // Staging stores: 8 consecutive lanes write vectors j..j+8 of one row, as chunks 2j (then 2j + 1).
        for j0 in (0..32u32).step_by(8) {
            for h in 0..2 {
                let phys: Vec<u32> = (j0..j0 + 8)
                    .map(|j| Plan::xf32_chunk(row, 2 * j + h))
                    .collect();
                assert_eq!(
                    banks(&phys),
                    8,
                    "stores of row {row} from vector {j0}, half {h}"
                );
            }
        }
    }
    // Without the chunk-bit-3 term the stores would collide two by two.
    let plain: Vec<u32> = (0..8u32).map(|j| (2 * j) ^ 3).collect();
    assert_eq!(banks(&plain), 4);
}

#[test]
fn schedule_auto_without_a_fitting_tiling_is_an_error_that_says_why() {
    let mut s = spec((2, 1, 1), ScaleType::E8m0, 32, false, MmaAtom::M16N16K16);
    s.schedule = Schedule::Auto { m: 16 };
    // The same spec with a divisible N plans.
    assert!(plan(&s, Arch::Gfx942).is_ok());
    for (n, k, want) in [
        (1000, 2048, "N must be a multiple of 32; pad N to 1024"),
        (1024, 2080, "K tiles are multiples of 128; pad K to 2176"),
    ] {
        s.n = n;
        s.k = k;
        assert!(nibble_compiler::plan::auto_tiling(&s, Arch::Gfx942).is_none());
        match plan(&s, Arch::Gfx942) {
            Err(PlanError::Unsupported { message, .. }) => {
                assert!(message.contains(want), "{message}")
            }
            other => panic!(
                "N={n} K={k}: expected an error, got {:?}",
                other.map(|p| p.tiling)
            ),
        }
    }
}
