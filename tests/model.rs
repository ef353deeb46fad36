//! compile-model's generation and parallel compilation, from a list of layer shapes.

use nibble_compiler::arch::Arch;
use nibble_compiler::model::{compile_model, distinct_shapes, kernels_for, DECODE_MAX_M};
use nibble_runtime::manifest::Manifest;

#[test]
fn shapes_are_grouped_and_every_generated_kernel_compiles() {
    let layers = vec![
        (
            "model.layers.0.self_attn.q_proj".to_string(),
            256,
            512,
            false,
        ),
        (
            "model.layers.1.self_attn.q_proj".to_string(),
            256,
            512,
            false,
        ),
        ("model.layers.0.mlp.down_proj".to_string(), 128, 1024, false),
        ("model.layers.0.mlp.up_proj".to_string(), 1024, 256, true),
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

#[test]
fn impossible_shapes_are_explained() {
    let shapes = distinct_shapes(&[("odd".to_string(), 100, 512, false)]);
    let e = kernels_for(&shapes[0], "mxfp4", &[Arch::Gfx942]).expect_err("N = 100");
    assert!(e.contains("N = 100"), "{e}");
    let shapes = distinct_shapes(&[("short".to_string(), 128, 96, false)]);
    let e = kernels_for(&shapes[0], "mxfp4", &[Arch::Gfx942]).expect_err("K = 96");
    assert!(e.contains("K = 96"), "{e}");
}
