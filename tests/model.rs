//! compile-model's generation and parallel compilation, from a list of layer shapes.

use nibble_compiler::arch::Arch;
use nibble_compiler::model::{
    compile_model, distinct_shapes, kernels_for, DECODE8_MAX_M, DECODE_MAX_M,
};
use nibble_runtime::manifest::Manifest;

#[test]
fn shapes_are_grouped_and_every_generated_kernel_compiles() {
    let layers = vec![
        (
            "model.layers.0.self_attn.q_proj".to_string(),
            256,
            512,
            None,
        ),
        (
            "model.layers.1.self_attn.q_proj".to_string(),
            256,
            512,
            None,
        ),
        ("model.layers.0.mlp.down_proj".to_string(), 128, 1024, None),
        (
            "model.layers.0.mlp.up_proj".to_string(),
            1024,
            256,
            Some("bf16".to_string()),
        ),
    ];
    let shapes = distinct_shapes(&layers);
    assert_eq!(shapes.len(), 3);
    assert_eq!(
        shapes.iter().find(|s| s.n == 256).map(|s| s.layers.len()),
        Some(2)
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let out = compile_model(
        &shapes,
        "mxfp4",
        &[Arch::Gfx942, Arch::Gfx90a],
        dir.path(),
        true,
        2,
        &|done, total, _| {
            assert!(done <= total);
            calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        },
    )
    .expect("compiles");
    // A decode and a prefill kernel per shape, for each target.
    assert_eq!(out.written.len(), 3 * 2 * 2);
    assert_eq!(calls.into_inner(), 12);
    assert_eq!(out.nib_files.len(), 6);
    for w in &out.written {
        let m = Manifest::from_json(
            "m",
            &std::fs::read_to_string(&w.manifest).expect("manifest"),
        )
        .expect("valid");
        if w.kernel.ends_with("_decode") {
            assert_eq!((m.shapes.m_min, m.shapes.m_max), (1, DECODE_MAX_M));
            assert_eq!(m.tiling.tile_m, 16);
        } else {
            assert_eq!(m.shapes.m_min, DECODE_MAX_M + 1);
            assert_eq!(m.tiling.mma, "32x32x8");
        }
    }
    // The emitted .nib files are what was compiled, and check on their own.
    for f in &out.nib_files {
        let src = std::fs::read_to_string(f).expect("nib");
        nibble_compiler::dsl::check_source(&f.display().to_string(), &src).expect("checks");
    }
}

/// Mixed vendors: each gets its own decode and prefill kernels (NVIDIA also an 8-token decode kernel, and prefill with
/// one warp along M), and every generated kernel plans for its targets.
#[test]
fn nvidia_targets_get_their_own_prefill_tiling() {
    let layers = vec![("model.layers.0.mlp.down_proj".to_string(), 256, 1024, None)];
    let shapes = distinct_shapes(&layers);
    let ks = kernels_for(&shapes[0], "mxfp4", &[Arch::Gfx942, Arch::Sm90]).expect("kernels");
    let names: Vec<&str> = ks.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "l256x1024_decode",
            "l256x1024_prefill",
            "l256x1024_decode8_nv",
            "l256x1024_decode_nv",
            "l256x1024_prefill_nv"
        ]
    );
    for k in &ks {
        let checked = nibble_compiler::dsl::check_source(&k.name, &k.source)
            .unwrap_or_else(|d| panic!("{}:\n{}", k.name, d.render()));
        let spec = &checked.kernels[0];
        let nv = k.name.ends_with("_nv");
        assert_eq!(
            spec.targets,
            if nv {
                vec![Arch::Sm90]
            } else {
                vec![Arch::Gfx942]
            }
        );
        let p = nibble_compiler::plan::plan(spec, spec.targets[0]).expect("plans");
        if k.name.contains("prefill") {
            assert_eq!(
                (p.tiling.waves_m, p.tiling.tile_m),
                if nv { (1, 80) } else { (2, 64) }
            );
        } else if nv {
            // NVIDIA decode: 32 rows over 2 x 8 warps along a 1024-K tile with cp.async, 8 tokens up to M = 8.
            let t = &p.tiling;
            let got = (t.tile_n, t.tile_k, t.waves_n, t.waves_k, p.async_x);
            assert_eq!(got, (32, 1024, 2, 8, true));
            let eight = k.name.contains("decode8");
            assert_eq!(t.tile_m, if eight { 8 } else { 16 });
            let m_max = if eight { DECODE8_MAX_M } else { DECODE_MAX_M };
            assert_eq!(k.m_range, (1, m_max));
        } else {
            // AMD decode: the cost model's tiling and split for the arch.
            assert_eq!(
                spec.schedule,
                nibble_compiler::spec::Schedule::Auto { m: 16 }
            );
            assert_eq!(
                p.tiling,
                nibble_compiler::plan::auto_tiling(spec, spec.targets[0]).expect("a tiling")
            );
            assert_eq!(p.tiling.tile_m, 16);
        }
    }
    // The NVIDIA decode tiling by shape (the 8- and 16-token kernels alike): (N, K) -> (tile n, tile k, waves k).
    let nv_decode = |n: u32, k: u32| {
        let shape = distinct_shapes(&[("l".to_string(), n, k, None)]);
        let ks = kernels_for(&shape[0], "mxfp4", &[Arch::Sm90]).expect("kernels");
        let tilings: Vec<_> = ks
            .iter()
            .filter(|g| g.name.contains("_decode"))
            .map(|g| {
                let checked =
                    nibble_compiler::dsl::check_source(&g.name, &g.source).expect("checks");
                let p =
                    nibble_compiler::plan::plan(&checked.kernels[0], Arch::Sm90).expect("plans");
                (
                    p.tiling.tile_m,
                    p.tiling.tile_n,
                    p.tiling.tile_k,
                    p.tiling.waves_k,
                )
            })
            .collect();
        assert_eq!(tilings.len(), 2, "{n}x{k}");
        assert_eq!((tilings[0].0, tilings[1].0), (8, 16), "{n}x{k}");
        let rest = |t: &(u32, u32, u32, u32)| (t.1, t.2, t.3);
        assert_eq!(rest(&tilings[0]), rest(&tilings[1]), "{n}x{k}");
        rest(&tilings[0])
    };
    // Llama-3-70B's O and down: 2 x 8 warps.
    for (n, k) in [(8192, 8192), (8192, 28672)] {
        assert_eq!(nv_decode(n, k), (32, 1024, 8), "{n}x{k}");
    }
    // gate/up: 896 64-row blocks on 132 SMs, four warps along N each.
    assert_eq!(nv_decode(57344, 8192), (64, 256, 1));
    // QKV: 320 blocks of 512 threads on 132 SMs would run a half-empty second wave, so 2 x 4 warps.
    assert_eq!(nv_decode(10240, 8192), (32, 512, 4));
    // K above 8192 without a 1024-K tile (2 x 4 warps measured slower there): the 16xN tiling without warps along K.
    assert_eq!(nv_decode(256, 8704), (128, 256, 1));
    // NVIDIA alone keeps the plain names.
    let only = kernels_for(&shapes[0], "mxfp4", &[Arch::Sm90]).expect("kernels");
    assert!(only.iter().all(|k| !k.name.ends_with("_nv")));
}

/// sm_90a gets a prefill kernel of its own that takes the wgmma route; its decode kernel is shared with the other
/// NVIDIA targets, and sm_90 keeps the mma.sync prefill.
#[test]
fn sm_90a_gets_a_wgmma_prefill_kernel() {
    let layers = vec![("model.layers.0.mlp.down_proj".to_string(), 256, 1024, None)];
    let shapes = distinct_shapes(&layers);
    let plan_of = |k: &nibble_compiler::model::GeneratedKernel, arch: Arch| {
        let checked = nibble_compiler::dsl::check_source(&k.name, &k.source)
            .unwrap_or_else(|d| panic!("{}:\n{}", k.name, d.render()));
        nibble_compiler::plan::plan(&checked.kernels[0], arch).expect("plans")
    };
    let ks = kernels_for(&shapes[0], "mxfp4", &[Arch::Sm90, Arch::Sm90a]).expect("kernels");
    let names: Vec<&str> = ks.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "l256x1024_decode8",
            "l256x1024_decode",
            "l256x1024_prefill_wg",
            "l256x1024_prefill"
        ]
    );
    let ks = &ks[1..];
    let wg = plan_of(&ks[1], Arch::Sm90a);
    assert!(wg.wgmma, "the sm_90a prefill takes the wgmma route");
    assert!(
        wg.async_x && wg.dynamic_lds,
        "three cp.async stages in dynamic shared memory"
    );
    assert_eq!(
        (
            wg.tiling.tile_m,
            wg.tiling.tile_n,
            wg.tiling.waves_n,
            wg.tiling.stages
        ),
        (96, 256, 16, 3)
    );
    assert!(!plan_of(&ks[2], Arch::Sm90).wgmma);
    assert!(
        !plan_of(&ks[0], Arch::Sm90a).wgmma,
        "decode stays on mma.sync"
    );
    assert!(ks[1].source.contains("target sm_90a\n") && !ks[2].source.contains("sm_90a"));
    // sm_90a alone: the plain prefill name, on the wgmma route.
    let only = kernels_for(&shapes[0], "mxfp4", &[Arch::Sm90a]).expect("kernels");
    let names: Vec<&str> = only.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(
        names,
        ["l256x1024_decode8", "l256x1024_decode", "l256x1024_prefill"]
    );
    assert!(plan_of(&only[2], Arch::Sm90a).wgmma);
}

#[test]
fn impossible_shapes_are_explained() {
    let shapes = distinct_shapes(&[("odd".to_string(), 100, 512, None)]);
    let e = kernels_for(&shapes[0], "mxfp4", &[Arch::Gfx942]).expect_err("N = 100");
    assert!(e.contains("N = 100"), "{e}");
    let shapes = distinct_shapes(&[("short".to_string(), 128, 96, None)]);
    let e = kernels_for(&shapes[0], "mxfp4", &[Arch::Gfx942]).expect_err("K = 96");
    assert!(e.contains("K = 96"), "{e}");
}

// ---- compile-model on a synthetic checkpoint, and the runtime reading it back ----

use std::ffi::OsString;

use nibble_compiler::run::{run_interpreted, Bundle, Half16, LayerInputs};
use nibble_compiler::tensors::{write_atomic, Dtype, OwnedTensor};
use nibble_runtime::bundle::KernelBundle;
use nibble_runtime::checkpoint::{Checkpoint, QuantScheme};
use nibble_runtime::linear::{CpuReference, QuantLinear};
use nibble_runtime::numerics::compare::{compare, decode};
use nibble_runtime::numerics::{quantize, reference, DType};

/// A two-layer Llama-shaped MXFP4 checkpoint (Quark layout) with hidden 128 and MLP 512.
fn write_quark_checkpoint(dir: &std::path::Path) {
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 128, "intermediate_size": 512, "num_attention_heads": 4, "num_key_value_heads": 2,
        "num_hidden_layers": 2,
        "quantization_config": {
            "quant_method": "quark",
            "global_quant_config": {"weight": {"dtype": "fp4", "qscheme": "per_group", "group_size": 32,
                                               "scale_format": "e8m0", "ch_axis": -1, "is_dynamic": false}},
            "exclude": ["lm_head"]
        }
    });
    std::fs::write(dir.join("config.json"), config.to_string()).expect("config");
    let mut tensors = vec![];
    let mut seed = 7u32;
    for layer in 0..2 {
        for (name, n, k) in [
            ("self_attn.q_proj", 128usize, 128usize),
            ("self_attn.k_proj", 64, 128),
            ("self_attn.v_proj", 64, 128),
            ("self_attn.o_proj", 128, 128),
            ("mlp.gate_proj", 512, 128),
            ("mlp.up_proj", 512, 128),
            ("mlp.down_proj", 128, 512),
        ] {
            let w: Vec<f32> = (0..n * k)
                .map(|_| {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (f64::from(seed >> 8) / f64::from(1u32 << 24) - 0.5) as f32 * 0.1
                })
                .collect();
            let q = quantize::quantize_mxfp4(&w, n, k).expect("quantizes");
            let prefix = format!("model.layers.{layer}.{name}");
            tensors.push((
                format!("{prefix}.weight"),
                OwnedTensor {
                    dtype: Dtype::U8,
                    shape: vec![n, k / 2],
                    data: q.weight,
                },
            ));
            tensors.push((
                format!("{prefix}.weight_scale"),
                OwnedTensor {
                    dtype: Dtype::U8,
                    shape: vec![n, k / 32],
                    data: q.scale,
                },
            ));
        }
    }
    write_atomic(&dir.join("model.safetensors"), &tensors).expect("checkpoint");
}

#[test]
fn compile_model_builds_a_bundle_the_runtime_loads_and_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ckpt_dir = dir.path().join("ckpt");
    std::fs::create_dir(&ckpt_dir).expect("dir");
    write_quark_checkpoint(&ckpt_dir);
    let out = dir.path().join("bundle");
    let args: Vec<OsString> = ["nibble", "compile-model"]
        .iter()
        .map(OsString::from)
        .chain([ckpt_dir.clone().into_os_string()])
        .chain(["--target", "gfx942", "-o"].iter().map(OsString::from))
        .chain([out.clone().into_os_string()])
        .chain(["--emit-nib", "--jobs", "2"].iter().map(OsString::from))
        .collect();
    let (mut so, mut se) = (Vec::new(), Vec::new());
    let code = nibble_compiler::cli::run(args, &mut so, &mut se);
    let (so, se) = (String::from_utf8_lossy(&so), String::from_utf8_lossy(&se));
    assert_eq!(code, 0, "{so}{se}");
    // 14 layers, 5 distinct shapes (q/o, k/v, gate/up, down): a decode and a prefill kernel each.
    assert!(
        so.contains("14 quantized linear layers (mxfp4), 4 distinct shapes"),
        "{so}"
    );
    assert!(so.contains("wrote 8 kernels and 8 .nib files"), "{so}");

    // The runtime validates the whole bundle (manifests, code objects, symbols, kernel IR) and selects by M.
    let bundle = KernelBundle::load(&out).expect("the bundle loads");
    // A code object from another compilation under this manifest is refused: swap in a different source hash.
    let any = bundle
        .kernels()
        .next()
        .expect("a kernel")
        .manifest_path
        .clone();
    let original = std::fs::read_to_string(&any).expect("manifest");
    let mut tampered: serde_json::Value = serde_json::from_str(&original).expect("json");
    tampered["source_hash"] = "0".repeat(64).into();
    std::fs::write(&any, tampered.to_string()).expect("tamper");
    let Err(err) = KernelBundle::load(&out) else {
        panic!("a manifest with another source hash must be refused");
    };
    let err = err.to_string();
    assert!(err.contains("compiled from another source"), "{err}");
    std::fs::write(&any, original).expect("restore");
    let bundle = KernelBundle::load(&out).expect("loads again");
    // The kernarg buffer the HIP path builds from each manifest matches the compiled kernel's `.args` metadata.
    for k in bundle.kernels() {
        let code =
            nibble_runtime::codeobj::parse(&k.code_object().expect("reads")).expect("parses");
        let layout =
            nibble_runtime::launch::KernargLayout::from_manifest(&k.manifest).expect("layout");
        layout
            .check_code_object(&code)
            .expect("kernarg layout agrees with the code object");
    }
    let ckpt = Checkpoint::open(&ckpt_dir).expect("the checkpoint opens");
    assert_eq!(ckpt.format(), QuantScheme::Mxfp4);
    let small = bundle
        .select(512, 128, QuantScheme::Mxfp4, "gfx942", 4)
        .expect("decode kernel");
    assert_eq!(small.manifest.tiling.tile_m, 16);
    let prefill = bundle
        .select(512, 128, QuantScheme::Mxfp4, "gfx942", 100)
        .expect("prefill kernel");
    assert_eq!(prefill.manifest.tiling.mma, "32x32x8");

    // For an NVIDIA target the same checkpoint gets an 8-token decode kernel per shape besides the 16-token one and
    // the prefill kernel; the bundle loads and picks the 8-token kernel up to M = 8.
    let out_nv = dir.path().join("bundle_nv");
    let args: Vec<OsString> = ["nibble", "compile-model"]
        .iter()
        .map(OsString::from)
        .chain([ckpt_dir.clone().into_os_string()])
        .chain(["--target", "sm_90", "-o"].iter().map(OsString::from))
        .chain([out_nv.clone().into_os_string()])
        .collect();
    let (mut so, mut se) = (Vec::new(), Vec::new());
    let code = nibble_compiler::cli::run(args, &mut so, &mut se);
    let (so, se) = (String::from_utf8_lossy(&so), String::from_utf8_lossy(&se));
    assert_eq!(code, 0, "{so}{se}");
    assert!(so.contains("wrote 12 kernels"), "{so}");
    let nv = KernelBundle::load(&out_nv).expect("the NVIDIA bundle loads");
    for (m, tile_m) in [(1, 8), (8, 8), (9, 16), (32, 16)] {
        let k = nv
            .select(512, 128, QuantScheme::Mxfp4, "sm_90", m)
            .expect("decode kernel");
        assert_eq!(k.manifest.tiling.tile_m, tile_m, "M = {m}");
    }

    // The CPU reference backend and the interpreter running the selected kernel agree within the bound.
    let prefix = "model.layers.1.mlp.up_proj";
    let lin = QuantLinear::from_checkpoint(CpuReference, &bundle, &ckpt, prefix, "gfx942")
        .expect("layer");
    let data = ckpt.layer(prefix).expect("layer data");
    for m in [3usize, 40] {
        let x: Vec<u16> = (0..m * 128)
            .map(|i| half::bf16::from_f32(((i * 37 % 17) as f32 - 8.0) / 8.0).to_bits())
            .collect();
        let cpu = lin.forward_host(&x, m).expect("cpu forward");
        let kernel = bundle
            .select(512, 128, QuantScheme::Mxfp4, "gfx942", m)
            .expect("kernel");
        let b = Bundle::load(&kernel.manifest_path).expect("bundle");
        let inp = LayerInputs {
            m: m as u32,
            x: Half16 {
                dtype: "bf16".into(),
                bits: x.clone(),
            },
            weight: data.weight.to_vec(),
            scales: data.scales.clone(),
            tensor_scale: data.tensor_scale,
            bias: None,
        };
        let gpu = run_interpreted(&b, &inp, &Default::default())
            .expect("interpreted")
            .y;
        let xf: Vec<f32> = x.iter().map(|v| decode(*v, DType::Bf16)).collect();
        let w = reference::dequant_weight(
            &b.manifest.format,
            data.weight,
            &data.scales,
            None,
            512,
            128,
            DType::Bf16,
        )
        .expect("reference");
        for (who, y) in [("cpu backend", &cpu), ("interpreter", &gpu)] {
            let c = compare(y, DType::Bf16, &xf, &w, m, 512, 128, None, None).expect("comparable");
            assert_eq!(c.violations, 0, "{who} at M={m}: {c:?}");
        }
    }
}
