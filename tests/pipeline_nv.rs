//! The NVIDIA target through the whole pipeline: every example compiles for sm_90 from the same .nib text (only
//! the target line changed), and the PTX agrees with the plan and the manifest.

use std::collections::BTreeSet;

use nibble_compiler::arch::Arch;
use nibble_compiler::driver::{compile_kernel, Stage};
use nibble_compiler::plan::plan;
use nibble_compiler::spec::{DType, KernelSpec};

fn check_file(path: &str, src: &str) -> Vec<KernelSpec> {
    nibble_compiler::dsl::check_source(path, src)
        .unwrap_or_else(|d| panic!("{path} does not check:\n{}", d.render()))
        .kernels
}

/// The examples with `target gfx942, gfx90a` replaced by `target gfx942, sm_90`: nothing else changes.
fn retargeted_examples() -> Vec<KernelSpec> {
    let mut files: Vec<_> = std::fs::read_dir("dsl-examples")
        .expect("dsl-examples")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "nib"))
        .collect();
    files.sort();
    let mut out = vec![];
    for f in files {
        let src = std::fs::read_to_string(&f).expect("readable");
        let retargeted = src.replace("gfx942, gfx90a", "gfx942, sm_90");
        assert_ne!(src, retargeted, "{}: no target line found", f.display());
        // Nothing but the target names differs.
        assert_eq!(
            src.replace("gfx90a", "sm_90").replace("sm_90", "X"),
            retargeted.replace("sm_90", "X")
        );
        out.extend(check_file(&f.display().to_string(), &retargeted));
    }
    assert!(out.len() >= 12, "expected the example set");
    out
}

/// Parameter byte sizes of the PTX entry `symbol`, in order.
fn ptx_params(ptx: &str, symbol: &str) -> Vec<u32> {
    let start = ptx
        .find(&format!(".entry {symbol}("))
        .unwrap_or_else(|| panic!("no .entry {symbol}"));
    let body = &ptx[start..];
    let end = body.find(')').expect("closing parenthesis");
    body[..end]
        .lines()
        .filter(|l| l.contains(".param"))
        .map(|l| {
            if l.contains(".u64") || l.contains(".b64") {
                8
            } else {
                4
            }
        })
        .collect()
}

fn shared_bytes(ptx: &str) -> u32 {
    ptx.lines()
        .filter(|l| l.trim_start().starts_with(".shared"))
        .filter_map(|l| {
            let open = l.rfind('[')?;
            let close = l.rfind(']')?;
            l[open + 1..close].parse::<u32>().ok()
        })
        .sum()
}

/// `count` instructions of which the K loop body holds `per_iter`: one body, or with `unroll U` U copies plus the
/// remainder loop's where LLVM cannot rule one out.
fn loop_copies(count: u32, per_iter: u32, unroll: u32, what: &str) {
    if unroll > 1 {
        assert!(
            count >= unroll * per_iter && count.is_multiple_of(per_iter),
            "{what}: {count} with unroll {unroll} ({per_iter} per K step)"
        );
    } else {
        assert_eq!(count, per_iter, "{what}");
    }
}

fn check_ptx(spec: &KernelSpec, arch: Arch) {
    let emit: BTreeSet<Stage> = BTreeSet::new();
    let out = compile_kernel(spec, arch, &emit)
        .unwrap_or_else(|e| panic!("{} for {}: {e}", spec.name, arch.name()));
    let ptx = String::from_utf8(out.hsaco.clone()).expect("PTX is text");
    let p = &out.plan;
    let name = format!("{} {}", spec.name, arch.name());
    assert!(ptx.contains(&format!(".target {}", arch.name())), "{name}");
    assert!(ptx.contains(".version 8.0"), "{name}");
    assert_eq!(
        out.manifest.code_object,
        format!("{}.{}.ptx", spec.name, arch.name())
    );
    let sizes: Vec<u32> = out.manifest.args.iter().map(|a| a.size).collect();
    assert_eq!(
        ptx_params(&ptx, &p.symbol),
        sizes,
        "{name}: PTX parameters vs manifest"
    );
    if p.dynamic_lds {
        // Above 48 KiB the buffer is dynamic shared memory, declared extern and sized by the launch.
        assert_eq!(shared_bytes(&ptx), 0, "{name}: no static shared memory");
        assert!(
            ptx.contains(".extern .shared .align 16 .b8 __dynamic_shmem__0[];"),
            "{name}: dynamic shared memory"
        );
        assert_eq!(out.manifest.launch.lds_bytes, 0, "{name}");
        assert_eq!(out.manifest.launch.dynamic_lds_bytes, p.lds_bytes, "{name}");
    } else {
        assert_eq!(
            shared_bytes(&ptx),
            p.lds_bytes,
            "{name}: static shared memory vs plan"
        );
        assert!(!ptx.contains(".extern .shared"), "{name}");
        assert_eq!(out.manifest.launch.dynamic_lds_bytes, 0, "{name}");
    }
    // The runtime accepts the PTX for its manifest, and notices a manifest that disagrees about dynamic memory.
    nibble_runtime::ptx::check_against_manifest(&out.hsaco, &out.manifest)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut wrong = out.manifest.clone();
    wrong.launch.dynamic_lds_bytes = if p.dynamic_lds { 0 } else { 1024 };
    assert!(
        nibble_runtime::ptx::check_against_manifest(&out.hsaco, &wrong).is_err(),
        "{name}: a dynamic shared memory mismatch goes unnoticed"
    );
    assert!(
        ptx.contains("nibble_source_hash"),
        "{name}: source hash constant"
    );
    assert!(
        ptx.contains(&format!(".maxntid {}, 1, 1", p.threads)),
        "{name}"
    );
    match p.max_regs {
        Some(r) => assert!(ptx.contains(&format!(".maxnreg {r}\n")), "{name}"),
        None => assert!(!ptx.contains(".maxnreg"), "{name}"),
    }
    let mma = match p.x {
        DType::Bf16 => "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32",
        DType::F16 => "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32",
    };
    // One mma per token atom, weight atom and 16-K step of an iteration (the loop is not unrolled); on the wgmma
    // route one warpgroup-wide wgmma per 16-K step instead, behind a fence, committed and waited for.
    let mmas = ptx.matches(mma).count() as u32;
    if p.wgmma {
        assert_eq!(mmas, 0, "{name}: no mma.sync on the wgmma route");
        let wgmma = format!(
            "wgmma.mma_async.sync.aligned.m64n{}k16.f32.bf16.bf16",
            p.tiling.tile_m
        );
        assert_eq!(
            ptx.matches(&wgmma).count() as u32,
            p.pairs_per_iter,
            "{name}: wgmma count"
        );
        for op in [
            "wgmma.fence.sync.aligned",
            "wgmma.commit_group.sync.aligned",
            "wgmma.wait_group.sync.aligned 0",
            "fence.proxy.async.shared::cta",
        ] {
            assert!(ptx.contains(op), "{name}: {op}");
        }
    } else {
        assert!(!ptx.contains("wgmma"), "{name}");
        let per_iter = p.m_tiles * p.n_tiles * p.pairs_per_iter;
        loop_copies(mmas, per_iter, p.unroll, &format!("{name}: mma count"));
    }
    // The scale is applied by packed 16-bit multiplies, four per weight word.
    let mul = match p.x {
        DType::Bf16 => "mul.rn.bf16x2",
        DType::F16 => "mul.rn.f16x2",
    };
    let muls = ptx.matches(mul).count() as u32;
    let per_iter = 4 * p.n_tiles * p.pairs_per_iter;
    loop_copies(
        muls,
        per_iter,
        p.unroll,
        &format!("{name}: packed scale multiplies"),
    );
    // Weights arrive as 16-byte loads.
    assert!(ptx.matches("ld.global.v4.b32").count() as u32 >= p.n_tiles * p.wchunks_per_iter);
    assert_eq!(p.weight_layout.id, "nibble.mma_sync_a.v1");
    assert_eq!(p.scale_layout.dtype.as_deref(), Some(p.x.name()));
    // Deterministic output.
    let again = compile_kernel(spec, arch, &emit).expect("recompiles");
    assert!(again.hsaco == out.hsaco, "{name}: recompilation differs");
}

#[test]
fn every_example_compiles_for_sm_90_from_the_same_source() {
    for spec in retargeted_examples() {
        assert!(spec.targets.contains(&Arch::Sm90));
        check_ptx(&spec, Arch::Sm90);
    }
}

#[test]
fn gpu_matrix_and_benchmark_kernels_compile_for_sm_90() {
    for path in [
        "tests/gpu/matrix.nib",
        "bench/kernels/decode.nib",
        "bench/kernels/decode_nv.nib",
        "bench/kernels/prefill.nib",
        "bench/kernels/prefill_wgmma.nib",
    ] {
        let src = std::fs::read_to_string(path).expect("readable");
        let kernels = check_file(path, &src);
        assert!(!kernels.is_empty());
        // decode.nib and prefill.nib are the same text for both vendors (the front end has checked every target's
        // budgets); the *_nv and wgmma files hold NVIDIA-only tilings.
        if path.ends_with("decode.nib") || path.ends_with("prefill.nib") {
            assert!(
                kernels.iter().all(|k| k.targets.contains(&Arch::Gfx942)),
                "{path}: every kernel names gfx942 too"
            );
        }
        for spec in kernels
            .iter()
            .step_by(if path.starts_with("bench") { 4 } else { 1 })
        {
            let nv = spec
                .targets
                .iter()
                .copied()
                .find(|a| a.is_nvidia())
                .expect("an NVIDIA target");
            check_ptx(spec, nv);
        }
    }
}

/// The wgmma route is the planner's choice on sm_90a for warpgroups of 16-row warps; every other tiling, and every
/// sm_90 kernel, keeps mma.sync. Above 48 KiB the tile is dynamic shared memory, on either path.
#[test]
fn sm_90a_plans_take_wgmma_where_warpgroups_fit_and_dynamic_shared_memory_above_48_kib() {
    let src = |target: &str, tile: &str, waves: &str, stages: u32| {
        format!(
            "kernel k {{ target {target}; x bf16[M, 1024]; w mxfp4[512, 1024]; y bf16[M, 512]; \
             tile {tile}; waves {waves}; mma 16x16x16; stages {stages} }}"
        )
    };
    let plan_of = |text: String, arch: Arch| {
        let kernels = check_file("k.nib", &text);
        nibble_compiler::plan::plan(&kernels[0], arch).expect("plans")
    };
    let wg = plan_of(src("sm_90a", "m=64 n=128 k=128", "m=1 n=8", 2), Arch::Sm90a);
    assert!(wg.wgmma && !wg.dynamic_lds);
    // The core-matrix layout needs no padding: 2 stages x 64 tokens x 128 of K.
    assert_eq!(wg.lds_bytes, 2 * 64 * 128 * 2);
    let big = plan_of(
        src("sm_90a", "m=128 n=256 k=128", "m=1 n=16", 2),
        Arch::Sm90a,
    );
    assert!(big.wgmma && big.dynamic_lds && big.lds_bytes == 65536);
    // 32 rows per warp, or sm_90: mma.sync.
    assert!(!plan_of(src("sm_90a", "m=64 n=128 k=128", "m=1 n=4", 2), Arch::Sm90a).wgmma);
    let sync = plan_of(src("sm_90", "m=64 n=128 k=128", "m=1 n=8", 2), Arch::Sm90);
    assert!(!sync.wgmma && !sync.dynamic_lds);
    let deep = plan_of(src("sm_90", "m=80 n=128 k=128", "m=1 n=4", 3), Arch::Sm90);
    assert!(!deep.wgmma && deep.dynamic_lds && deep.lds_bytes == 3 * 80 * 136 * 2);
    // cp.async fills every wgmma ring of two or more stages; a single stage, and mma.sync, stage through registers.
    let one = plan_of(src("sm_90a", "m=64 n=128 k=128", "m=1 n=8", 1), Arch::Sm90a);
    assert!(wg.async_x && big.async_x && one.wgmma && !one.async_x);
    assert!(!sync.async_x && !deep.async_x);
    // `staging` overrides the route's default either way; AMD plans never stage asynchronously.
    let staged = |target: &str, tiling: &str, staging: &str, arch: Arch| {
        plan_of(
            format!(
                "kernel k {{ target {target}; x bf16[M, 1024]; w mxfp4[512, 1024]; y bf16[M, 512]; \
                 {tiling}; mma 16x16x16; stages 2; staging {staging} }}"
            ),
            arch,
        )
    };
    for (target, waves, staging, arch, routes) in [
        ("sm_90", "m=1 n=8", "async", Arch::Sm90, (false, true)),
        ("sm_90a", "m=1 n=8", "registers", Arch::Sm90a, (true, false)),
        (
            "gfx942, sm_90",
            "m=1 n=4",
            "async",
            Arch::Gfx942,
            (false, false),
        ),
    ] {
        let p = staged(
            target,
            &format!("tile m=64 n=128 k=128; waves {waves}"),
            staging,
            arch,
        );
        assert_eq!((p.wgmma, p.async_x), routes, "{target}, staging {staging}");
    }
    let ptx_of = |text: String, arch: Arch| {
        let kernels = check_file("k.nib", &text);
        let out = compile_kernel(&kernels[0], arch, &BTreeSet::new()).expect("compiles");
        String::from_utf8(out.hsaco).expect("PTX is text")
    };
    let ptx = ptx_of(src("sm_90a", "m=64 n=128 k=128", "m=1 n=8", 3), Arch::Sm90a);
    // Two tiles in flight from the prologue plus one per K step; each K step waits for all but one group.
    assert_eq!(ptx.matches("cp.async.commit_group").count(), 3, "{ptx}");
    assert!(ptx.contains("cp.async.wait_group 1;") && ptx.contains("cp.async.wait_group 0;"));
    // wgmma blocks bypass L1; mma.sync blocks, which share SMs and activation rows, cache the copies there.
    assert!(ptx.contains("cp.async.cg.shared.global") && !ptx.contains("cp.async.ca"));
    let sync_ptx = ptx_of(
        "kernel k { target sm_90; x bf16[M, 1024]; w mxfp4[512, 1024]; y bf16[M, 512]; \
         tile m=64 n=128 k=128; waves m=1 n=4; mma 16x16x16; stages 2; staging async }"
            .to_string(),
        Arch::Sm90,
    );
    assert!(sync_ptx.contains("cp.async.ca.shared.global") && !sync_ptx.contains("cp.async.cg"));
    assert!(
        !ptx_of(src("sm_90a", "m=64 n=128 k=128", "m=1 n=8", 1), Arch::Sm90a).contains("cp.async")
    );
    // The core-matrix offsets: 8 tokens x 8 of K per 128 bytes, K chunks adjacent, 8-token groups tile_k * 16
    // bytes apart; every element of a stage has its own place.
    let mut seen = std::collections::HashSet::new();
    for row in 0..64 {
        for k in 0..128 {
            assert!(
                seen.insert(wg.wgmma_x_offset(row, k)),
                "({row}, {k}) collides"
            );
        }
    }
    assert_eq!(wg.wgmma_x_offset(0, 8), 64);
    assert_eq!(wg.wgmma_x_offset(1, 0), 8);
    assert_eq!(wg.wgmma_x_offset(8, 0), 128 * 8);
    assert_eq!(seen.len(), 64 * 128);
    assert!(seen.iter().all(|&o| o < 64 * 128));
}

/// `Plan::slice_sync`: `staging async` on mma.sync with waves along K stages each K slice within its own warps,
/// which meet at a named barrier of the slice's size (barrier 1 + slice) at every K step; the block barrier stays
/// only outside the loop (the K-wave reduction). Without waves along K or with register staging the whole block
/// meets at barrier 0. (Its correctness is the GPU matrix's `mx_kwaves_async` and
/// `nv_slices_async`: docs/PERFORMANCE.md.)
#[test]
fn waves_along_k_with_async_staging_sync_per_slice() {
    let compile = |tiling: &str, staging: &str, arch: Arch| {
        let src = format!(
            "kernel k {{ target {}; x bf16[M, 2048]; w mxfp4[512, 2048]; y bf16[M, 512]; {tiling}; \
             mma 16x16x16; {staging} }}",
            arch.name()
        );
        let kernels = check_file("k.nib", &src);
        let p = nibble_compiler::plan::plan(&kernels[0], arch).expect("plans");
        let out = compile_kernel(&kernels[0], arch, &BTreeSet::new()).expect("compiles");
        (p, String::from_utf8(out.hsaco).expect("PTX is text"))
    };
    // 2 x 4 warps: slices of 2 warps (64 threads); 2 x 2 x 2: slices of 4 warps (128 threads).
    for (tiling, slice_threads) in [
        ("tile m=16 n=32 k=512; waves m=1 n=2 k=4; stages 2", 64),
        ("tile m=32 n=64 k=256; waves m=2 n=2 k=2; stages 3", 128),
    ] {
        let (p, ptx) = compile(tiling, "staging async", Arch::Sm90);
        assert!(p.async_x && p.slice_sync, "{tiling}");
        // One named barrier whose id is computed (1 + the slice) and whose count is the slice's threads.
        let bars: Vec<&str> = ptx.lines().filter(|l| l.contains("bar.sync")).collect();
        let named: Vec<&&str> = bars.iter().filter(|l| l.contains("bar.sync %r")).collect();
        assert_eq!(named.len(), 1, "{tiling}: {bars:?}");
        assert!(
            named[0]
                .trim_end()
                .ends_with(&format!(", {slice_threads};")),
            "{tiling}: {bars:?}"
        );
        let (p, ptx) = compile(tiling, "staging registers", Arch::Sm90);
        assert!(!p.async_x && !p.slice_sync, "{tiling}");
        assert!(!ptx.contains("bar.sync %r"), "{tiling}");
    }
    let (p, _) = compile(
        "tile m=16 n=64 k=256; waves m=1 n=4; stages 2",
        "staging async",
        Arch::Sm90,
    );
    assert!(p.async_x && !p.slice_sync);
    // sm_90a: waves along K keep a tile off the wgmma route (its warpgroups read the whole tile), so it syncs per
    // slice like sm_90.
    let (p, _) = compile(
        "tile m=64 n=128 k=256; waves m=1 n=8 k=2; stages 2",
        "staging async",
        Arch::Sm90a,
    );
    assert!(!p.wgmma && p.async_x && p.slice_sync);
}

#[test]
fn token_tiles_of_eight_on_nvidia_targets_only() {
    let src = |target: &str, tiling: &str| {
        format!(
            "kernel k {{ target {target}; x bf16[M, 2048]; w mxfp4[512, 2048]; y bf16[M, 512]; {tiling}; \
             mma 16x16x16; stages 2; staging async }}"
        )
    };
    // (tiling, token atoms per warp, ldmatrix.x4 and .x2 loads per 16-K step)
    for (tiling, m_tiles, x4, x2) in [
        ("tile m=8 n=32 k=512; waves m=1 n=2 k=4", 1, 0, 1),
        ("tile m=16 n=64 k=256; waves m=2 n=2", 1, 0, 1),
        ("tile m=24 n=64 k=256; waves m=1 n=2", 3, 1, 1),
        ("tile m=16 n=64 k=256; waves m=1 n=2", 2, 1, 0),
    ] {
        let kernels = check_file("k.nib", &src("sm_90", tiling));
        let p = nibble_compiler::plan::plan(&kernels[0], Arch::Sm90).expect("plans");
        assert_eq!(p.m_tiles, m_tiles, "{tiling}");
        let out = compile_kernel(&kernels[0], Arch::Sm90, &BTreeSet::new()).expect("compiles");
        let ptx = String::from_utf8(out.hsaco).expect("PTX is text");
        let count = |what: &str| ptx.matches(what).count() as u32;
        // Unrolled: one load of each kind per 16-K step of the warp's K slice.
        let steps = p.pairs_per_iter;
        assert_eq!(
            count("ldmatrix.sync.aligned.m8n8.x4"),
            x4 * steps,
            "{tiling}"
        );
        assert_eq!(
            count("ldmatrix.sync.aligned.m8n8.x2"),
            x2 * steps,
            "{tiling}"
        );
    }
    // A kernel that also targets AMD keeps the MFMA's 16 tokens.
    let text = nibble_compiler::dsl::check_source(
        "k.nib",
        &src("gfx942, sm_90", "tile m=8 n=32 k=512; waves m=1 n=2 k=4"),
    )
    .expect_err("an 8-token tile must not check for gfx942")
    .render();
    assert!(
        text.contains("tile m=8 is not a multiple of waves m (1) x MFMA m (16) = 16"),
        "{text}"
    );
}

#[test]
fn scale_storage_follows_the_scales_statement() {
    use nibble_runtime::numerics::repack::{MMA_SCALE_EXP_LAYOUT_ID, MMA_SCALE_LAYOUT_ID};
    let plan = |target: &str, x: &str, fmt: &str, line: &str, arch: Arch| {
        let src = format!(
            "kernel k {{ target {target}; x {x}[M, 1024]; w {fmt}[256, 1024]; y {x}[M, 256]; {line} }}"
        );
        let kernels = check_file("k.nib", &src);
        let p = nibble_compiler::plan::plan(&kernels[0], arch).expect("plans");
        let elem = p
            .args
            .iter()
            .find(|a| a.name == "scales")
            .and_then(|a| a.elem.clone());
        (p.scale_layout.id.clone(), elem.unwrap_or_default())
    };
    let exp = (MMA_SCALE_EXP_LAYOUT_ID.to_string(), "u8".to_string());
    let wide = |t: &str| (MMA_SCALE_LAYOUT_ID.to_string(), t.to_string());
    for (x, fmt, line, want) in [
        // MXFP4 with bf16 activations: exponent bytes unless the kernel says otherwise.
        ("bf16", "mxfp4", "", exp.clone()),
        ("bf16", "mxfp4", "scales bytes", exp.clone()),
        ("bf16", "mxfp4", "scales widened", wide("bf16")),
        // Scales that are not powers of two, or f16 operands, keep the 16-bit layout.
        ("bf16", "nvfp4", "", wide("bf16")),
        ("f16", "mxfp4", "", wide("f16")),
        ("f16", "mxfp4", "scales widened", wide("f16")),
    ] {
        for arch in [Arch::Sm90, Arch::Sm90a] {
            assert_eq!(
                plan(arch.name(), x, fmt, line, arch),
                want,
                "{x} {fmt} `{line}` on {}",
                arch.name()
            );
        }
    }
    // AMD targets read f32 scales whatever the line says.
    let (id, elem) = plan(
        "gfx942, sm_90",
        "bf16",
        "mxfp4",
        "scales widened",
        Arch::Gfx942,
    );
    assert_eq!(
        (id.as_str(), elem.as_str()),
        ("nibble.scales_f32.v1", "f32")
    );
}

#[test]
fn schedule_auto_takes_the_measured_nvidia_decode_tilings() {
    let plan = |n: u32, k: u32, m: u32, staging: &str| {
        let src = format!(
            "kernel k {{ target gfx942, sm_90; x bf16[M, {k}]; w mxfp4[{n}, {k}]; y bf16[M, {n}]; \
             schedule auto m={m}; {staging} }}"
        );
        let kernels = check_file("k.nib", &src);
        (
            nibble_compiler::plan::plan(&kernels[0], Arch::Sm90).expect("plans"),
            nibble_compiler::plan::plan(&kernels[0], Arch::Gfx942).expect("plans"),
        )
    };
    // (N, K, M) -> (tile m, tile n, tile k, waves n, waves k) of the Llama-3-70B layers, with cp.async staging.
    for ((n, k, m), want) in [
        ((10240, 8192, 1), (8, 32, 512, 2, 4)),
        ((8192, 8192, 1), (8, 32, 1024, 2, 8)),
        ((57344, 8192, 8), (8, 64, 256, 4, 1)),
        ((57344, 8192, 16), (16, 64, 256, 4, 1)),
        ((8192, 28672, 1), (8, 32, 1024, 2, 8)),
        ((10240, 8192, 16), (16, 32, 512, 2, 4)),
        ((8192, 8192, 32), (16, 32, 1024, 2, 8)),
    ] {
        let (nv, amd) = plan(n, k, m, "");
        let t = &nv.tiling;
        let got = (t.tile_m, t.tile_n, t.tile_k, t.waves_n, t.waves_k);
        assert_eq!(got, want, "{n}x{k} at M = {m}");
        assert!(nv.async_x, "{n}x{k} at M = {m}");
        // Each K slice's warps meet at a barrier of their own where there are several slices.
        assert_eq!(nv.slice_sync, t.waves_k > 1, "{n}x{k} at M = {m}");
        // The AMD plan of the same kernel is the cost model's (16 tokens: the MFMA's).
        assert_eq!(amd.tiling.tile_m % 16, 0);
        // `staging registers` still decides the staging.
        let (nv, _) = plan(n, k, m, "staging registers");
        assert_eq!(nv.tiling, *t);
        assert!(!nv.async_x);
    }
    // Prefill: the cost model's tiling, register staging by default (no wgmma on sm_90).
    let (nv, _) = plan(8192, 8192, 4096, "");
    assert!(nv.tiling.tile_m >= 32 && nv.tiling.waves_k == 1 && !nv.async_x);
}

#[test]
fn nvidia_plans_reject_what_they_cannot_apply_exactly() {
    let src = "format f32s { element e2m1; scale f32 per 32 }\n\
               kernel k { target sm_90; x bf16[M, 1024]; w f32s[256, 1024]; y bf16[M, 256]; \
               tile m=16 n=64 k=256; waves m=1 n=4; mma 16x16x16; stages 2 }";
    let kernels = check_file("f32s.nib", src);
    let err =
        nibble_compiler::plan::plan(&kernels[0], Arch::Sm90).expect_err("f32 scales rejected");
    assert!(
        err.to_string().contains("cannot be applied exactly"),
        "{err}"
    );
}

/// Decode grids that need several blocks per SM to run in one wave cap ptxas's registers at what lets them
/// (`.maxnreg`): the H100 measured `gate_up_t` (896 blocks of 128 threads, 7 per SM) at 110 us with the 80
/// registers ptxas took and 91 us with 72 (docs/PERFORMANCE.md).
#[test]
fn decode_grids_cap_registers_to_run_in_one_wave() {
    use nibble_compiler::plan::nv_max_regs;
    let path = "bench/kernels/decode_nv.nib";
    let src = std::fs::read_to_string(path).expect("readable");
    let kernels = check_file(path, &src);
    let find = |name: &str| {
        kernels
            .iter()
            .find(|k| k.name == name)
            .unwrap_or_else(|| panic!("{name} in {path}"))
    };
    // 57344 / 64 = 896 blocks: ceil(896 / 132) = 7 per SM, 65536 / (7 * 128) = 73 -> 72 (whole units of 8).
    let gate_up_t = plan(find("gate_up_t"), Arch::Sm90).expect("plans");
    assert_eq!(gate_up_t.max_regs, Some(72));
    check_ptx(find("gate_up_t"), Arch::Sm90);
    // o_ka: 256 blocks of 512 threads, 2 per SM, would leave 64 registers: under the floor, no cap.
    let o_ka = plan(find("o_ka"), Arch::Sm90).expect("plans");
    assert_eq!(o_ka.max_regs, None);
    check_ptx(find("o_ka"), Arch::Sm90);
    // Hand-computed cases of the rule itself.
    assert_eq!(nv_max_regs(Arch::Sm90, 16, 320, 256, 33_280), Some(80));
    assert_eq!(
        nv_max_regs(Arch::Sm90, 16, 132, 256, 33_280),
        None,
        "one per SM"
    );
    assert_eq!(
        nv_max_regs(Arch::Sm90, 16, 896, 128, 64 * 1024),
        None,
        "shared memory"
    );
    assert_eq!(
        nv_max_regs(Arch::Sm90, 8, 2640, 128, 8192),
        None,
        "thread limit"
    );
    assert_eq!(
        nv_max_regs(Arch::Sm90, 96, 896, 128, 16_896),
        None,
        "prefill tile"
    );
    assert_eq!(nv_max_regs(Arch::Gfx942, 16, 896, 128, 16_896), None, "AMD");
}
