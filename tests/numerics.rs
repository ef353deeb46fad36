//! Numerical acceptance (docs/NUMERICS.md): compiled kernels executed lane by lane in the interpreter, compared
//! element by element with the independent f64 reference against the derived error bound, over formats x MFMA
//! atoms x archs x M tails x shapes x bias x activation types, on random and adversarial data; and negative controls
//! that must make the comparison fail.

use std::collections::BTreeSet;

use half::{bf16, f16};
use nibble_compiler::arch::Arch;
use nibble_compiler::driver::compile_kernel;
use nibble_compiler::interp::LaunchOptions;
use nibble_compiler::run::{run_interpreted, Bundle, Half16, LayerInputs};
use nibble_compiler::spec::*;
use nibble_runtime::numerics::compare::{compare, Comparison};
use nibble_runtime::numerics::{quantize, reference, DType as NDType, ScaleData};

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Roughly normal (sum of uniforms).
    fn normal(&mut self) -> f64 {
        (0..4).map(|_| self.unit()).sum::<f64>() - 2.0
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fmt {
    Mxfp4,
    Nvfp4,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Data {
    /// Weights from a quantizer run on random floats, as real checkpoints are made.
    Quantized,
    /// Uniform over all 16 codes (so -0 and the subnormal appear) and extreme scales.
    Adversarial,
}

fn format(f: Fmt) -> FormatSpec {
    let e2m1 = MiniFloat {
        name: "e2m1".into(),
        exp_bits: 2,
        man_bits: 1,
        bias: 1,
    };
    match f {
        Fmt::Mxfp4 => FormatSpec {
            name: "mxfp4".into(),
            element: e2m1,
            scale: ScaleType::E8m0,
            group: 32,
            tensor_scale: false,
        },
        Fmt::Nvfp4 => FormatSpec {
            name: "nvfp4".into(),
            element: e2m1,
            scale: ScaleType::E4m3,
            group: 16,
            tensor_scale: true,
        },
    }
}

/// A manual tiling: tile `[m, n, k]` over waves `[m, n, k]`.
fn tiling(
    tile: [u32; 3],
    waves: [u32; 3],
    mma: MmaAtom,
    stages: u32,
    split_k: Option<u32>,
) -> Tiling {
    Tiling {
        tile_m: tile[0],
        tile_n: tile[1],
        tile_k: tile[2],
        waves_m: waves[0],
        waves_n: waves[1],
        waves_k: waves[2],
        mma,
        stages,
        split_k,
    }
}

fn kernel(f: Fmt, atom: MmaAtom, n: u32, k: u32, x: DType, bias: bool) -> KernelSpec {
    let tile_m = atom.m();
    KernelSpec {
        name: "t".into(),
        targets: vec![Arch::Gfx942, Arch::Gfx90a],
        x,
        y: x,
        n,
        k,
        format: format(f),
        bias: bias.then_some(x),
        schedule: Schedule::Manual(tiling([tile_m, 64, 128], [1, 2, 1], atom, 2, None)),
        staging: None,
        unroll: None,
        scales: None,
        source_hash: "test".into(),
    }
}

fn to_half(v: f64, t: DType) -> u16 {
    match t {
        DType::Bf16 => bf16::from_f64(v).to_bits(),
        DType::F16 => f16::from_f64(v).to_bits(),
    }
}

fn from_half(b: u16, t: DType) -> f32 {
    match t {
        DType::Bf16 => bf16::from_bits(b).to_f32(),
        DType::F16 => f16::from_bits(b).to_f32(),
    }
}

fn ndtype(t: DType) -> NDType {
    match t {
        DType::Bf16 => NDType::Bf16,
        DType::F16 => NDType::F16,
    }
}

/// Checkpoint-layout inputs for one case.
fn inputs(spec: &KernelSpec, m: u32, data: Data, rng: &mut Rng) -> LayerInputs {
    let (n, k) = (spec.n as usize, spec.k as usize);
    let f = if spec.format.tensor_scale {
        Fmt::Nvfp4
    } else {
        Fmt::Mxfp4
    };
    let (weight, scales, tensor_scale) = match data {
        Data::Quantized => {
            let w: Vec<f32> = (0..n * k).map(|_| rng.normal() as f32 * 0.05).collect();
            match f {
                Fmt::Mxfp4 => {
                    let q = quantize::quantize_mxfp4(&w, n, k).expect("quantizes");
                    (q.weight, ScaleData::Bytes(q.scale), None)
                }
                Fmt::Nvfp4 => {
                    let q = quantize::quantize_nvfp4(&w, n, k).expect("quantizes");
                    (q.weight, ScaleData::Bytes(q.scale), Some(q.tensor_scale))
                }
            }
        }
        Data::Adversarial => {
            let weight: Vec<u8> = (0..n * k / 2).map(|_| rng.next() as u8).collect();
            let groups = n * k / spec.format.group as usize;
            // Extremes of the accepted range at fixed places, moderate random codes elsewhere. With f16 activations
            // the dequantized weights must be representable in f16 (|w| <= 65504), which bounds the scales.
            let (lo, hi) = match spec.x {
                DType::Bf16 => (0u8, 239u8),
                DType::F16 => (127 - 20, 127 + 13),
            };
            let scales: Vec<u8> = (0..groups)
                .map(|i| match f {
                    Fmt::Mxfp4 => match i % 17 {
                        0 => lo,
                        1 => hi,
                        _ => 127 - 12 + (rng.next() % 24) as u8,
                    },
                    // Every finite positive E4M3 code is possible, including subnormals and zero.
                    Fmt::Nvfp4 => (rng.next() % 0x7F) as u8,
                })
                .collect();
            let ts = (f == Fmt::Nvfp4).then_some(0.75f32);
            (weight, ScaleData::Bytes(scales), ts)
        }
    };
    let x = Half16 {
        dtype: spec.x.name().into(),
        bits: (0..m as usize * k)
            .map(|_| to_half(rng.normal(), spec.x))
            .collect(),
    };
    let bias = spec.bias.map(|b| Half16 {
        dtype: b.name().into(),
        bits: (0..n).map(|_| to_half(rng.normal() * 4.0, b)).collect(),
    });
    LayerInputs {
        m,
        x,
        weight,
        scales,
        tensor_scale,
        bias,
    }
}

fn bundle(spec: &KernelSpec, arch: Arch) -> Bundle {
    let out = compile_kernel(spec, arch, &BTreeSet::new()).expect("compiles");
    Bundle {
        manifest_path: "in-memory.json".into(),
        manifest: out.manifest,
        kernel_ir: Some(out.kernel_ir),
    }
}

/// Runs one case and compares with the reference; `perturb` may alter the inputs the kernel sees (not the ones the
/// reference sees) for negative controls.
fn check(
    b: &Bundle,
    spec: &KernelSpec,
    inp: &LayerInputs,
    options: &LaunchOptions,
    perturb: impl FnOnce(&mut LayerInputs),
) -> Comparison {
    let (n, k, m) = (spec.n as usize, spec.k as usize, inp.m as usize);
    let fmt = &b.manifest.format;
    let w = reference::dequant_weight(
        fmt,
        &inp.weight,
        &inp.scales,
        inp.tensor_scale,
        n,
        k,
        ndtype(spec.x),
    )
    .expect("reference dequantizes");
    let x: Vec<f32> = inp.x.bits.iter().map(|v| from_half(*v, spec.x)).collect();
    let bias: Option<Vec<f32>> = inp
        .bias
        .as_ref()
        .map(|bb| bb.bits.iter().map(|v| from_half(*v, spec.x)).collect());
    let mut kin = inp.clone();
    perturb(&mut kin);
    let out = run_interpreted(b, &kin, options).expect("runs in the interpreter");
    compare(
        &out.y,
        ndtype(spec.y),
        &x,
        &w,
        m,
        n,
        k,
        inp.tensor_scale,
        bias.as_deref(),
    )
    .expect("comparable")
}

#[test]
fn the_matrix_passes_within_the_derived_bound() {
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    let mut cases = 0;
    let mut worst = 0f64;
    // Every combination of format x atom x arch x bias x activation type; for each, the M sweep (tails included)
    // on the main shape with quantized data, adversarial data at a ragged M, and a second shape.
    for f in [Fmt::Mxfp4, Fmt::Nvfp4] {
        for atom in [MmaAtom::M16N16K16, MmaAtom::M32N32K8] {
            for arch in [Arch::Gfx942, Arch::Gfx90a] {
                for bias in [true, false] {
                    for x in [DType::Bf16, DType::F16] {
                        // K = 512 spans four K iterations of 128 with a two-stage ring; N = 128 is two
                        // workgroups, so the planner splits K in two (two iterations each): the split-K protocol
                        // is part of every case of this shape.
                        let runs: [((u32, u32), &[u32], Data); 3] = [
                            ((128, 512), &[1, 7, 16, 33, 128], Data::Quantized),
                            ((128, 512), &[33], Data::Adversarial),
                            ((64, 256), &[7], Data::Quantized),
                        ];
                        let mut bundles: Vec<((u32, u32), Bundle)> = vec![];
                        for ((n, k), ms, data) in runs {
                            let spec = kernel(f, atom, n, k, x, bias);
                            if k == 512 {
                                let p = nibble_compiler::plan::plan(&spec, arch).expect("plans");
                                assert_eq!(p.split_k, 2, "the main shape exercises split-K");
                            }
                            if !bundles.iter().any(|(s, _)| *s == (n, k)) {
                                bundles.push(((n, k), bundle(&spec, arch)));
                            }
                            let b = &bundles
                                .iter()
                                .find(|(s, _)| *s == (n, k))
                                .expect("compiled")
                                .1;
                            for &m in ms {
                                let inp = inputs(&spec, m, data, &mut rng);
                                let c = check(b, &spec, &inp, &LaunchOptions::default(), |_| {});
                                let what = format!(
                                    "{f:?} {} {} N={n} K={k} M={m} x={} bias={bias} {data:?}",
                                    atom.name(),
                                    arch.name(),
                                    spec.x.name()
                                );
                                assert_eq!(c.violations, 0, "{what}: {c:?}");
                                worst = worst.max(c.max_ratio);
                                cases += 1;
                            }
                        }
                    }
                }
            }
        }
    }
    assert_eq!(cases, 2 * 2 * 2 * 2 * 2 * 7, "{cases} cases");
    // The bound is not vacuous: real rounding error shows up as a visible fraction of it.
    assert!(
        worst > 1e-3,
        "largest error/bound ratio {worst} suspiciously small"
    );
}

/// Shrinks `spec` to a reduced-size run of tiling `t`: `n_tiles` workgroup columns and three K iterations, or, when
/// the tiling names a cross-workgroup split, that split (at most 4, so the interpreter need not run 32 K tiles) with
/// two K iterations per workgroup, so the split protocol itself is exercised.
pub fn reduce(spec: &mut KernelSpec, mut t: Tiling, n_tiles: u32) {
    t.split_k = t.split_k.map(|s| s.min(4));
    spec.n = t.tile_n * n_tiles;
    spec.k = t.tile_k * t.split_k.filter(|&s| s > 1).map_or(3, |s| 2 * s);
    spec.schedule = Schedule::Manual(t);
}

#[test]
fn every_example_passes_at_reduced_size() {
    let mut rng = Rng(0x0DD5_EED5);
    let mut seen = 0;
    for (_, mut spec) in crate::pipeline::examples() {
        // Same tiling, smaller problem: two workgroups along N, few K iterations.
        let tiling = nibble_compiler::plan::plan(&spec, spec.targets[0])
            .expect("plans")
            .tiling;
        reduce(&mut spec, tiling, 2);
        for &arch in &spec.targets.clone() {
            let b = bundle(&spec, arch);
            let m = tiling.tile_m + 3;
            let inp = if spec.format.scale == ScaleType::E8m0 && spec.format.group == 32
                || spec.format.scale == ScaleType::E4m3 && spec.format.group == 16
            {
                inputs(&spec, m, Data::Quantized, &mut rng)
            } else {
                // User formats: random codes and moderate scales of the format's own scale type.
                custom_inputs(&spec, m, &mut rng)
            };
            let c = check(&b, &spec, &inp, &LaunchOptions::default(), |_| {});
            assert_eq!(c.violations, 0, "{} {}: {c:?}", spec.name, arch.name());
            seen += 1;
        }
    }
    assert!(seen >= 20, "{seen} example kernels checked");
}

fn custom_inputs(spec: &KernelSpec, m: u32, rng: &mut Rng) -> LayerInputs {
    let (n, k) = (spec.n as usize, spec.k as usize);
    let groups = n * k / spec.format.group as usize;
    let scale_value = |rng: &mut Rng| 2f64.powi((rng.next() % 16) as i32 - 8) * (1.0 + rng.unit());
    let scales = match spec.format.scale {
        ScaleType::E8m0 => {
            ScaleData::Bytes((0..groups).map(|_| 120 + (rng.next() % 16) as u8).collect())
        }
        ScaleType::E4m3 => {
            ScaleData::Bytes((0..groups).map(|_| (rng.next() % 0x7F) as u8).collect())
        }
        ScaleType::F16 => ScaleData::F16(
            (0..groups)
                .map(|_| f16::from_f64(scale_value(rng)).to_bits())
                .collect(),
        ),
        ScaleType::Bf16 => ScaleData::Bf16(
            (0..groups)
                .map(|_| bf16::from_f64(scale_value(rng)).to_bits())
                .collect(),
        ),
        ScaleType::F32 => ScaleData::F32((0..groups).map(|_| scale_value(rng) as f32).collect()),
    };
    LayerInputs {
        m,
        x: Half16 {
            dtype: spec.x.name().into(),
            bits: (0..m as usize * k)
                .map(|_| to_half(rng.normal(), spec.x))
                .collect(),
        },
        weight: (0..n * k / 2).map(|_| rng.next() as u8).collect(),
        scales,
        tensor_scale: spec.format.tensor_scale.then_some(1.25),
        bias: spec.bias.map(|b| Half16 {
            dtype: b.name().into(),
            bits: (0..n).map(|_| to_half(rng.normal(), b)).collect(),
        }),
    }
}

/// Negative controls: each deliberate fault must make the comparison fail.
#[test]
fn broken_layouts_nibble_orders_and_scales_are_detected() {
    let mut rng = Rng(0xBAD_C0DE);
    for arch in [Arch::Gfx942, Arch::Gfx90a] {
        for atom in [MmaAtom::M16N16K16, MmaAtom::M32N32K8] {
            let spec = kernel(Fmt::Mxfp4, atom, 128, 256, DType::Bf16, true);
            let b = bundle(&spec, arch);
            let inp = inputs(&spec, 33, Data::Quantized, &mut rng);
            let what = format!("{} {}", arch.name(), atom.name());
            // The controls cover the xf32 route too: gfx942's 16x16 decode tile takes it.
            let xf32 = nibble_compiler::plan::plan(&spec, arch)
                .expect("plans")
                .dequant
                .xf32;
            assert_eq!(
                xf32,
                arch == Arch::Gfx942 && atom == MmaAtom::M16N16K16,
                "{what}"
            );

            // Sanity: the unperturbed run passes.
            assert_eq!(
                check(&b, &spec, &inp, &LaunchOptions::default(), |_| {}).violations,
                0,
                "{what}"
            );

            // The MFMA B operand gathered with the wrong lane layout.
            let faulty = LaunchOptions {
                fault_mfma_b_layout: true,
                ..LaunchOptions::default()
            };
            let c = check(&b, &spec, &inp, &faulty, |_| {});
            assert!(
                c.violations > 0,
                "{what}: MFMA layout fault undetected: {c:?}"
            );

            // The two nibbles of every byte swapped (high nibble read as the even K element).
            let c = check(&b, &spec, &inp, &LaunchOptions::default(), |k| {
                for byte in &mut k.weight {
                    *byte = byte.rotate_left(4);
                }
            });
            assert!(
                c.violations > 0,
                "{what}: nibble order fault undetected: {c:?}"
            );

            // One scale exponent off by one.
            let c = check(&b, &spec, &inp, &LaunchOptions::default(), |k| {
                if let ScaleData::Bytes(s) = &mut k.scales {
                    s[5] += 1;
                }
            });
            assert!(
                c.violations > 0,
                "{what}: scale exponent fault undetected: {c:?}"
            );
        }
    }
}

/// gfx90a's MFMA flushes denormal inputs (docs/NUMERICS.md): with per-element scaling, weights below 2^-126 (E8M0
/// scale code 0 times an element of at most 1) become zero there, while gfx942 keeps them. Per-group accumulation
/// (16x16x16 decode tiles) feeds the MFMA unscaled elements and applies the scale to f32 partial sums, so it keeps
/// them on both. The interpreter models all of it.
#[test]
fn gfx90a_flushes_denormal_weights_and_gfx942_keeps_them() {
    let mut rng = Rng(0xDE40);
    for atom in [MmaAtom::M32N32K8, MmaAtom::M16N16K16] {
        for arch in [Arch::Gfx942, Arch::Gfx90a] {
            let spec = kernel(Fmt::Mxfp4, atom, 64, 256, DType::Bf16, false);
            let b = bundle(&spec, arch);
            let group_acc = nibble_compiler::plan::plan(&spec, arch)
                .expect("plans")
                .dequant
                .group_accumulate;
            assert_eq!(group_acc, atom == MmaAtom::M16N16K16, "{}", arch.name());
            let flushes = arch == Arch::Gfx90a && !group_acc;
            let mut inp = inputs(&spec, 16, Data::Quantized, &mut rng);
            // Every scale 2^-127 and every element code 1 (0.5): weights 2^-128, bf16 denormals.
            inp.scales = ScaleData::Bytes(vec![0; 64 * 256 / 32]);
            inp.weight = vec![0x11; 64 * 256 / 2];
            let y = run_interpreted(&b, &inp, &LaunchOptions::default())
                .expect("runs")
                .y;
            let zeros = y.iter().filter(|v| **v & 0x7fff == 0).count();
            let what = format!("{} {}", arch.name(), atom.name());
            if flushes {
                assert_eq!(zeros, y.len(), "{what}: denormal weights must be flushed");
            } else {
                assert!(zeros < y.len() / 2, "{what}: denormal weights must be kept");
                let c = check(&b, &spec, &inp, &LaunchOptions::default(), |_| {});
                assert_eq!(c.violations, 0, "{what}: {c:?}");
            }
        }
    }
}

/// Issue 6's static criteria for the plans `schedule auto` picks for the Llama-3-70B layers (docs/llama70b_auto.nib)
/// at M = 1, 16, 256 and 4096 on both AMD targets: at full size no scratch and no spills; at reduced size (same
/// tiling, one workgroup column, few K iterations: `reduce`) no LDS bank conflicts under the interpreter's model and
/// results within the error bound of the reference.
#[test]
fn llama_plan_choices_have_no_spills_no_lds_bank_conflicts_and_pass() {
    let mut rng = Rng(0x11A3A);
    let src = std::fs::read_to_string("docs/llama70b_auto.nib").expect("readable");
    let checked =
        nibble_compiler::dsl::check_source("docs/llama70b_auto.nib", &src).expect("checks");
    let mut seen = std::collections::BTreeSet::new();
    for spec in &checked.kernels {
        for &arch in &spec.targets {
            for m in [1u32, 16, 256, 4096] {
                let best = nibble_compiler::costmodel::rank(spec, arch, m, false);
                let t = best.first().expect("a candidate fits").tiling;
                if !seen.insert((spec.name.clone(), arch.name(), format!("{t:?}"))) {
                    continue;
                }
                let what = format!("{} {} M={m} {t:?}", spec.name, arch.name());
                let mut full = spec.clone();
                full.schedule = nibble_compiler::spec::Schedule::Manual(t);
                let out = nibble_compiler::driver::compile_kernel(&full, arch, &Default::default())
                    .expect("compiles");
                let report = nibble_compiler::inspect::inspect(&out.hsaco, None).expect("inspects");
                let k = &report.kernels[0];
                assert_eq!(
                    (k.scratch_bytes, k.vgpr_spills, k.sgpr_spills),
                    (0, 0, 0),
                    "{what}: scratch or spills"
                );
                let mut small = full.clone();
                reduce(&mut small, t, 1);
                let b = bundle(&small, arch);
                let inp = inputs(&small, t.tile_m + 3, Data::Quantized, &mut rng);
                let r = run_interpreted(&b, &inp, &LaunchOptions::default()).expect("runs");
                for (op, s) in &r.stats.lds_ops {
                    assert_eq!(s.conflict_cycles, 0, "{what}: {op} has bank conflicts");
                }
                let c = check(&b, &small, &inp, &LaunchOptions::default(), |_| {});
                assert_eq!(c.violations, 0, "{what}: {c:?}");
            }
        }
    }
    assert!(seen.len() >= 8, "{} distinct plans", seen.len());
}

/// Passes the reference at M = 1 and at a ragged M past one tile, with every LDS op (main loop and epilogue) free
/// of bank conflicts.
fn passes_without_bank_conflicts(
    b: &Bundle,
    spec: &KernelSpec,
    tile_m: u32,
    rng: &mut Rng,
    what: &str,
) {
    for m in [1, tile_m + 3] {
        let inp = inputs(spec, m, Data::Quantized, rng);
        let c = check(b, spec, &inp, &LaunchOptions::default(), |_| {});
        assert_eq!(c.violations, 0, "{what} M={m}: {c:?}");
        let r = run_interpreted(b, &inp, &LaunchOptions::default()).expect("runs");
        for (op, s) in &r.stats.lds_ops {
            assert_eq!(s.conflict_cycles, 0, "{what}: {op} has bank conflicts");
        }
    }
}

/// `split S` (an explicit cross-workgroup split-K) on both AMD archs, each against the planner's rule: one K
/// iteration per workgroup on the xf32 decode route (the rule would split 2 ways), `split 1` where the rule would
/// split (no workspace, one workgroup along z), and a prefill tile (the rule splits only tiles of up to 32 rows).
/// Each must launch `S` workgroups along z and pass the reference at M = 1 and a ragged M. Negative control:
/// launching only the first of several splits (grid z = 1) leaves every output tile waiting for partial sums that
/// never come, and must fail the comparison.
#[test]
fn explicit_splits_pass_and_a_missing_split_is_detected() {
    use nibble_runtime::manifest::GridDim;
    let mut rng = Rng(0x5B117);
    // (tile m, n, k, waves m, n, atom, split, K)
    let cases = [
        (16, 64, 256, 1, 4, MmaAtom::M16N16K16, 4, 1024),
        (16, 128, 128, 1, 2, MmaAtom::M16N16K16, 1, 512),
        (64, 64, 128, 2, 2, MmaAtom::M32N32K8, 2, 512),
    ];
    for (tile_m, tile_n, tile_k, waves_m, waves_n, mma, split, k) in cases {
        let mut spec = kernel(Fmt::Mxfp4, mma, 256, k, DType::Bf16, true);
        spec.schedule = Schedule::Manual(tiling(
            [tile_m, tile_n, tile_k],
            [waves_m, waves_n, 1],
            mma,
            2,
            Some(split),
        ));
        for arch in [Arch::Gfx942, Arch::Gfx90a] {
            let what = format!(
                "{tile_m}x{tile_n}x{tile_k} w{waves_m}x{waves_n} split {split} K={k} on {}",
                arch.name()
            );
            let b = bundle(&spec, arch);
            assert_eq!(
                b.manifest.launch.grid[2],
                GridDim::Const { value: split },
                "{what}"
            );
            let rule =
                nibble_compiler::plan::choose_split_k(256 / tile_n, k / tile_k, tile_m, 1, arch);
            assert_ne!(
                rule, split,
                "{what}: the planner's rule would choose it too"
            );
            assert_eq!(
                b.manifest.args.iter().any(|a| a.name == "workspace"),
                split > 1,
                "{what}"
            );
            passes_without_bank_conflicts(&b, &spec, tile_m, &mut rng, &what);
            if split == 1 {
                continue;
            }
            let mut cut = bundle(&spec, arch);
            cut.manifest.launch.grid[2] = GridDim::Const { value: 1 };
            let inp = inputs(&spec, tile_m + 3, Data::Quantized, &mut rng);
            let c = check(&cut, &spec, &inp, &LaunchOptions::default(), |_| {});
            assert!(c.violations > 0, "{what}: one split of {split} passed");
        }
    }
}

/// The xf32 route's variants beyond the decode examples: two waves along M (rows 16-31 of the swizzled f32 tile),
/// a single LDS stage (the barrier-guarded ring path), and more threads than activation vectors (ragged staging).
/// Each must take the route, pass the numerical comparison (with split-K where the planner splits) and keep the
/// f32 tile free of bank conflicts.
#[test]
fn xf32_route_variants_pass() {
    let mut rng = Rng(0x0F32_0F32);
    let tilings = [
        (32, 128, 128, 2, 2, 2),
        (16, 128, 128, 1, 4, 1),
        (16, 128, 128, 1, 8, 2),
    ];
    for (tile_m, tile_n, tile_k, waves_m, waves_n, stages) in tilings {
        let mut spec = kernel(Fmt::Mxfp4, MmaAtom::M16N16K16, 256, 1024, DType::Bf16, true);
        spec.schedule = Schedule::Manual(tiling(
            [tile_m, tile_n, tile_k],
            [waves_m, waves_n, 1],
            MmaAtom::M16N16K16,
            stages,
            None,
        ));
        let what = format!("{tile_m}x{tile_n}x{tile_k} w{waves_m}x{waves_n} stages {stages}");
        let p = nibble_compiler::plan::plan(&spec, Arch::Gfx942).expect("plans");
        assert!(p.dequant.xf32, "{what}: takes the xf32 route");
        let b = bundle(&spec, Arch::Gfx942);
        passes_without_bank_conflicts(&b, &spec, tile_m, &mut rng, &what);
    }
}

/// In-workgroup split-K (`waves k=`): wave groups take K slices of every tile and are summed through LDS before
/// the epilogue. Variants: the xf32 route with cross-workgroup split-K on top (N = 256 gives 4 N tiles, so the
/// planner also splits over the grid), a single LDS stage, two MFMA tiles along M (bf16 route), the 32x32x8 atom
/// with four slices, and NVFP4 (16-element groups, tensor scale) with bias. Each passes the reference on both archs
/// at M = 1 and a ragged M, and keeps every LDS op (the reduction's included) free of bank conflicts. Negative
/// control: running only wave group 0 (the block cut to its threads) drops the other slices' products and must fail
/// the comparison.
#[test]
fn k_wave_variants_pass_and_a_missing_slice_is_detected() {
    let mut rng = Rng(0x0C0F_FEE5);
    // (format, tile m, n, k, waves m, n, k, atom, stages)
    let tilings = [
        (Fmt::Mxfp4, 16, 64, 256, 1, 1, 2, MmaAtom::M16N16K16, 2),
        (Fmt::Mxfp4, 16, 128, 256, 1, 2, 2, MmaAtom::M16N16K16, 1),
        (Fmt::Mxfp4, 32, 64, 256, 1, 2, 2, MmaAtom::M16N16K16, 2),
        (Fmt::Mxfp4, 32, 64, 512, 1, 1, 4, MmaAtom::M32N32K8, 1),
        (Fmt::Nvfp4, 16, 64, 256, 1, 2, 2, MmaAtom::M16N16K16, 2),
    ];
    for (fmt, tile_m, tile_n, tile_k, waves_m, waves_n, waves_k, mma, stages) in tilings {
        let mut spec = kernel(fmt, mma, 256, 1024, DType::Bf16, true);
        spec.schedule = Schedule::Manual(tiling(
            [tile_m, tile_n, tile_k],
            [waves_m, waves_n, waves_k],
            mma,
            stages,
            None,
        ));
        for arch in [Arch::Gfx942, Arch::Gfx90a] {
            let what = format!(
                "{fmt:?} {tile_m}x{tile_n}x{tile_k} w{waves_m}x{waves_n}x{waves_k} {} stages {stages} on {}",
                mma.name(),
                arch.name()
            );
            let p = nibble_compiler::plan::plan(&spec, arch).expect("plans");
            assert_eq!(p.k_slice, tile_k / waves_k, "{what}");
            let b = bundle(&spec, arch);
            passes_without_bank_conflicts(&b, &spec, tile_m, &mut rng, &what);
            // Negative control: only wave group 0 runs (the launch and the kernel's known block size both cut).
            let mut cut = bundle(&spec, arch);
            let full = cut.manifest.launch.block[0];
            cut.manifest.launch.block[0] = full / waves_k;
            let known = format!("known_block_size = array<i32: {full}, 1, 1>");
            let ir = cut.kernel_ir.take().expect("bundle() loads the kernel IR");
            assert!(ir.contains(&known), "{what}: {known}");
            cut.kernel_ir = Some(ir.replace(
                &known,
                &format!("known_block_size = array<i32: {}, 1, 1>", full / waves_k),
            ));
            let inp = inputs(&spec, tile_m, Data::Quantized, &mut rng);
            // Either the comparison fails or the interpreter stops on what the missing waves left unwritten (the
            // xf32 MFMA rejects the NaN pattern of LDS nobody staged).
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                check(&cut, &spec, &inp, &LaunchOptions::default(), |_| {}).violations
            }));
            assert!(
                caught.map_or(true, |v| v > 0),
                "{what}: a missing K slice went undetected"
            );
        }
    }
}
