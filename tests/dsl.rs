//! The `.nib` front end: snapshots of every example and every bad file, the CLI, budgets, and a no-panic
//! property test over random and mutated sources.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use nibble_compiler::arch::Arch;
use nibble_compiler::cli;
use nibble_compiler::dsl::{self, budget, check_source};
use nibble_compiler::spec::{DType, MmaAtom, ScaleType, Schedule, Tiling};
use proptest::prelude::*;

/// `.nib` files directly in `dir` (relative to the repository root), sorted, as relative paths.
fn nib_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {dir}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "nib"))
        .collect();
    files.sort();
    files
}

fn stem(p: &Path) -> String {
    p.file_stem().unwrap().to_string_lossy().into_owned()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

// ---- examples and bad files -------------------------------------------------------------------------------------

#[test]
fn examples_check_and_match_snapshots() {
    let files = nib_files("dsl-examples");
    assert!(
        files.len() >= 10,
        "expected the example set, found {files:?}"
    );
    for path in files {
        let shown = path.display().to_string();
        let checked = match check_source(&shown, &read(&path)) {
            Ok(c) => c,
            Err(d) => panic!("{shown} should check:\n{}", d.render()),
        };
        assert!(!checked.kernels.is_empty(), "{shown} has no kernels");
        for k in &checked.kernels {
            assert_eq!(
                k.targets,
                vec![Arch::Gfx942, Arch::Gfx90a],
                "{shown}: every example targets both archs"
            );
        }
        insta::assert_snapshot!(format!("example__{}", stem(&path)), dsl::describe(&checked));
    }
}

#[test]
fn bad_files_fail_and_match_snapshots() {
    let files = nib_files("dsl-examples/bad");
    assert!(
        files.len() >= 15,
        "expected the bad-file set, found {files:?}"
    );
    for path in files {
        let shown = path.display().to_string();
        let d = match check_source(&shown, &read(&path)) {
            Ok(c) => panic!(
                "{shown} should fail, but checked to:\n{}",
                dsl::describe(&c)
            ),
            Err(d) => d,
        };
        assert!(!d.is_empty());
        let text = d.render();
        assert!(
            text.contains(&format!("{shown}:")),
            "{shown}: diagnostics name the file:\n{text}"
        );
        insta::assert_snapshot!(format!("bad__{}", stem(&path)), text);
    }
}

#[test]
fn several_errors_are_all_reported() {
    let path = "dsl-examples/bad/several_errors.nib";
    let d = check_source(path, &read(Path::new(path))).unwrap_err();
    assert!(d.len() >= 5, "{}", d.render());
}

#[test]
fn e3m0_is_rejected_with_the_layout_message() {
    let d = check_source("t.nib", "element e3m0 { exp 3; man 0 }").unwrap_err();
    assert_eq!(d.len(), 1);
    assert_eq!(
        d.errors()[0].message,
        "4-bit elements need 1 or 2 exponent bits (e2m1 or e1m2 families); the fast dequantization has no bit layout \
         for e3m0"
    );
}

// ---- semantics ---------------------------------------------------------------------------------------------------

#[test]
fn prelude_checks_and_defines_the_builtins() {
    let empty = check_source("empty.nib", "# nothing\n").unwrap();
    assert!(empty.kernels.is_empty() && empty.formats.is_empty());
    let k = &check_source("t.nib", &read(Path::new("dsl-examples/auto.nib")))
        .unwrap()
        .kernels[1];
    assert_eq!(k.format.name, "nvfp4");
    assert_eq!(
        (k.format.scale, k.format.group, k.format.tensor_scale),
        (ScaleType::E4m3, 16, true)
    );
    let e = &k.format.element;
    assert_eq!(
        (e.name.as_str(), e.exp_bits, e.man_bits, e.bias),
        ("e2m1", 2, 1, 1)
    );
    let values: Vec<f64> = (0..8).map(|c| e.value(c)).collect();
    assert_eq!(values, [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]);
    assert_eq!(k.bias, Some(DType::F16));
    assert_eq!(k.schedule, Schedule::Auto { m: 16 });
}

#[test]
fn user_element_bias_defaults_to_the_ieee_bias() {
    let src = "element e1m2 { exp 1; man 2 }\nformat f { element e1m2; scale f16 per 64 }\n";
    let f = &check_source("t.nib", src).unwrap().formats[0];
    assert_eq!(f.element.bias, 0);
    assert_eq!(f.element.value(0b0111), 3.5); // (1 + 3/4) * 2^(1 - 0)
    let src =
        "element e2m1b { exp 2; man 1; bias -2 }\nformat f { element e2m1b; scale f32 per 128 }\n";
    assert_eq!(
        check_source("t.nib", src).unwrap().formats[0].element.bias,
        -2
    );
}

const ONE_LINE: &str =
    "kernel k { target gfx942  x bf16[M,256]  w mxfp4[128,256]  y bf16[M,128]  tile m=16 n=64 \
                        k=128 waves m=1 n=4 mma 16x16x16 stages 1 }";

#[test]
fn separators_are_newlines_semicolons_or_nothing() {
    let lines =
        "kernel k {\n  target gfx942\n  x bf16[M, 256]\n  w mxfp4[128, 256]\n  y bf16[M, 128]\n  \
                 tile m=16 n=64 k=128\n  waves m=1 n=4\n  mma 16x16x16\n  stages 1\n}\n";
    let semis = "kernel k { target gfx942; x bf16[M, 256]; w mxfp4[128, 256]; y bf16[M, 128]; \
                 tile m=16 n=64 k=128; waves m=1 n=4; mma 16x16x16; stages 1; }";
    let mut specs: Vec<_> = [lines, semis, ONE_LINE]
        .into_iter()
        .map(|s| {
            check_source("t.nib", s)
                .unwrap_or_else(|d| panic!("{}", d.render()))
                .kernels
                .remove(0)
        })
        .collect();
    for s in &mut specs {
        s.source_hash.clear();
    }
    assert_eq!(specs[0], specs[1]);
    assert_eq!(specs[0], specs[2]);
    assert_eq!(
        specs[0].schedule,
        Schedule::Manual(Tiling {
            tile_m: 16,
            tile_n: 64,
            tile_k: 128,
            waves_m: 1,
            waves_n: 4,
            waves_k: 1,
            mma: MmaAtom::M16N16K16,
            stages: 1,
            split_k: None,
        })
    );
}

/// `split S` sets the tiling's cross-workgroup split-K, which the plan launches as S workgroups along z; without
/// it the planner's rule decides (here: 2 N tiles would leave the CUs idle, so it splits).
#[test]
fn split_sets_the_plans_cross_workgroup_split() {
    let with = |split: &str| {
        let src = format!(
            "kernel k {{ target gfx942; x bf16[M, 1024]; w mxfp4[128, 1024]; y bf16[M, 128]; \
             tile m=16 n=64 k=128; waves m=1 n=4; mma 16x16x16; stages 2; {split} }}"
        );
        let spec = check_source("t.nib", &src)
            .unwrap_or_else(|d| panic!("{}", d.render()))
            .kernels
            .remove(0);
        let Schedule::Manual(t) = spec.schedule else {
            panic!("manual tiling")
        };
        let p =
            nibble_compiler::plan::plan(&spec, nibble_compiler::arch::Arch::Gfx942).expect("plans");
        (t.split_k, p.split_k)
    };
    assert_eq!(with("split 8"), (Some(8), 8));
    assert_eq!(with("split 1"), (Some(1), 1));
    assert_eq!(with(""), (None, 4));
}

#[test]
fn source_hash_covers_the_kernel_and_its_format() {
    let hash = |src: &str| {
        let file = check_source("t.nib", src).unwrap();
        file.kernels
            .iter()
            .find(|k| k.name == "k")
            .unwrap()
            .source_hash
            .clone()
    };
    let fmt = "format f { element e2m1; scale e8m0 per 32 }\n";
    let kernel = "kernel k { target gfx942; x bf16[M, 256]; w f[128, 256]; y bf16[M, 128] }\n";
    let base = hash(&format!("{fmt}{kernel}"));
    assert_eq!(base.len(), 64);
    assert!(base.bytes().all(|b| b.is_ascii_hexdigit()));
    // Unrelated text and position do not matter.
    assert_eq!(base, hash(&format!("# comment\n{fmt}\nkernel other {{ target gfx90a; x f16[M,128]; w f[64,128]; y f16[M,64] }}\n{kernel}")));
    // The format's text does.
    assert_ne!(
        base,
        hash(&format!(
            "format f {{ element e2m1; scale e8m0 per 64 }}\n{kernel}"
        ))
    );
    // And the kernel's.
    assert_ne!(
        base,
        hash(&format!(
            "{fmt}{}",
            kernel.replace("target gfx942", "target gfx942, gfx90a")
        ))
    );
    // Prelude formats are hashed too (different prelude format, different hash).
    let pre = |f: &str| {
        hash(&format!(
            "kernel k {{ target gfx942; x bf16[M, 256]; w {f}[128, 256]; y bf16[M, 128] }}"
        ))
    };
    assert_ne!(pre("mxfp4"), pre("nvfp4"));
}

#[test]
fn diagnostics_render_location_caret_and_help() {
    let src = "kernel k {\n  target gfx942\n  x bf16[M, 4096]\n  w mxfp9[4096, 4096]\n  y bf16[M, 4096]\n}\n";
    let text = check_source("dir/k.nib", src).unwrap_err().render();
    assert!(text.contains("error: unknown format `mxfp9`"), "{text}");
    assert!(text.contains("dir/k.nib:4:5"), "{text}");
    assert!(text.contains("^^^^^"), "{text}");
    assert!(text.contains("help: known formats: mxfp4, nvfp4"), "{text}");
}

#[test]
fn error_count_is_bounded() {
    let src = "@".repeat(5000);
    let d = check_source("t.nib", &src).unwrap_err();
    assert_eq!(d.len(), 5000);
    assert_eq!(d.errors().len(), dsl::MAX_ERRORS);
    assert!(d.render().ends_with("error: 4900 more errors not shown\n"));
}

// ---- budgets -----------------------------------------------------------------------------------------------------

fn tiling(m: u32, n: u32, k: u32, wm: u32, wn: u32, mma: MmaAtom, stages: u32) -> Tiling {
    Tiling {
        tile_m: m,
        tile_n: n,
        tile_k: k,
        waves_m: wm,
        waves_n: wn,
        waves_k: 1,
        mma,
        stages,
        split_k: None,
    }
}

#[test]
fn budget_formulas_match_hand_computed_values() {
    // llama70b_qkv: acc 16*128/(4*64) = 8, wwords 32*256/512 = 16, scales (32/16)*(256/32) = 16, areg 4*(16/16) = 4.
    let t = tiling(16, 128, 256, 1, 4, MmaAtom::M16N16K16, 2);
    let v = budget::vgprs(&t, 32);
    assert_eq!(
        (v.acc, v.wwords, v.scales, v.areg, v.overhead),
        (8, 16, 16, 4, 24)
    );
    assert_eq!(v.total(), 8 + 2 * 16 + 16 + 4 + 24);
    // AMD: padded rows (16896 bytes) fit three workgroups of 4 waves in a CU's 64 KiB (3 waves per SIMD), swizzled
    // ones (16384) four (4 per SIMD), within the 5 per SIMD that the 84-VGPR estimate allows: swizzled. NVIDIA rows
    // stay padded.
    assert!(budget::x_swizzled(&t, 32, Arch::Gfx942.info()));
    assert_eq!(
        budget::lds_bytes(&t, 32, Arch::Gfx942.info()),
        2 * 16 * 256 * 2
    );
    assert_eq!(
        budget::lds_bytes(&t, 32, Arch::Sm90.info()),
        2 * 16 * (256 + 8) * 2
    );
    // One stage: 7 workgroups padded, 8 swizzled, but the VGPRs allow 5 waves per SIMD either way: padded.
    let t1 = tiling(16, 128, 256, 1, 4, MmaAtom::M16N16K16, 1);
    assert!(!budget::x_swizzled(&t1, 32, Arch::Gfx942.info()));
    assert_eq!(
        budget::lds_bytes(&t1, 32, Arch::Gfx942.info()),
        16 * (256 + 8) * 2
    );
    // prefill_32x32: acc 64*128/256 = 32, wwords 64*128/512 = 16, scales (64/32)*(128/32) = 8, areg 4*(32/32) = 4.
    let t = tiling(64, 128, 128, 2, 2, MmaAtom::M32N32K8, 2);
    assert_eq!(budget::vgprs(&t, 32).total(), 100);
    // Padded, 34816 bytes would leave one workgroup per CU; swizzled rows need no padding, so two fit.
    assert!(budget::x_swizzled(&t, 32, Arch::Gfx942.info()));
    assert!(!budget::x_swizzled(&t, 32, Arch::Sm90.info()));
    assert_eq!(budget::lds_bytes(&t, 32, Arch::Gfx942.info()), 32768);
    assert_eq!(budget::lds_bytes(&t, 32, Arch::Sm90.info()), 34816);
    // registers_over_budget: acc 128*256/64 = 512, wwords 256*128/512 = 64, scales 16*4 = 64, areg 4*8 = 32.
    let t = tiling(128, 256, 128, 1, 1, MmaAtom::M16N16K16, 1);
    assert_eq!(budget::vgprs(&t, 32).total(), 512 + 128 + 64 + 32 + 24);
    assert!(!budget::vgprs_fit(&t, 32, Arch::Gfx942.info()));
    // nvfp4 (group 16): scales (32/16) * (256/16) = 32.
    assert_eq!(
        budget::vgprs(&tiling(16, 128, 256, 1, 4, MmaAtom::M16N16K16, 2), 16).scales,
        32
    );
    // tile_k below the group still needs one scale per atom column: max(1, 64/128) = 1.
    assert_eq!(
        budget::vgprs(&tiling(16, 64, 64, 1, 4, MmaAtom::M16N16K16, 1), 128).scales,
        1
    );
    // lds_bad: 4 * 64 * 264 * 2 = 135168 > 65536 (and 131072 swizzled: no workgroup fits either way).
    let t = tiling(64, 64, 256, 1, 4, MmaAtom::M16N16K16, 4);
    assert_eq!(budget::lds_bytes(&t, 32, Arch::Gfx90a.info()), 135168);
    assert!(!budget::lds_fits(&t, 32, Arch::Gfx90a.info()));
    // Hostile sizes neither overflow nor divide by zero.
    let t = tiling(
        u32::MAX,
        u32::MAX,
        u32::MAX,
        0,
        0,
        MmaAtom::M32N32K8,
        u32::MAX,
    );
    assert!(budget::lds_bytes(&t, 32, Arch::Gfx942.info()) > 0);
    assert_eq!(budget::vgprs(&t, 0).acc, 0);
}

// ---- CLI ---------------------------------------------------------------------------------------------------------

fn run_cli(args: &[&str]) -> (i32, String, String) {
    let args: Vec<OsString> = std::iter::once("nibble")
        .chain(args.iter().copied())
        .map(OsString::from)
        .collect();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = cli::run(args, &mut out, &mut err);
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

#[test]
fn cli_check_prints_the_resolved_spec() {
    let (code, out, err) = run_cli(&["check", "dsl-examples/llama70b_qkv.nib"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.is_empty());
    for line in [
        "kernel llama70b_qkv",
        "targets   gfx942, gfx90a",
        "w         mxfp4[10240, 8192]",
        "bias      bf16[10240]",
        "format    mxfp4: element e2m1 (exp 2, man 1, bias 1), scale e8m0 per 32, no tensor scale",
        "schedule  tile m=16 n=256 k=256, waves m=1 n=4, mma 16x16x16, stages 2",
        "budget    gfx942: LDS 32768/65536 bytes, xf32 route,",
        "budget    gfx90a: LDS 16896/65536 bytes, VGPRs",
        "hash      ",
    ] {
        assert!(out.contains(line), "missing {line:?} in\n{out}");
    }
    let (code, out, _) = run_cli(&["check", "dsl-examples/auto.nib"]);
    assert_eq!(code, 0);
    assert!(out.contains("schedule  auto"));
}

#[test]
fn cli_check_reports_diagnostics_with_code_1() {
    let (code, out, err) = run_cli(&["check", "dsl-examples/bad/unknown_format.nib"]);
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert!(err.contains("error: unknown format `mxfp5`"), "{err}");
    assert!(
        err.contains("dsl-examples/bad/unknown_format.nib:5:5"),
        "{err}"
    );
    assert!(
        err.ends_with(
            "error: could not check dsl-examples/bad/unknown_format.nib due to 1 error\n"
        ),
        "{err}"
    );
}

#[test]
fn cli_unreadable_files_give_one_line() {
    let (code, _, err) = run_cli(&["check", "dsl-examples/no_such_file.nib"]);
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: cannot read dsl-examples/no_such_file.nib: "),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin.nib");
    std::fs::write(&bin, b"kernel \xff\xfe {}").unwrap();
    let (code, _, err) = run_cli(&["check", bin.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("not valid UTF-8 (at byte 7)"), "{err}");

    let (code, _, err) = run_cli(&["check", dir.path().to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn cli_usage_errors_exit_2_and_help_exits_0() {
    for args in [
        &[][..],
        &["frobnicate"],
        &["check"],
        &["check", "a.nib", "b.nib"],
        &["check", "--bogus", "a.nib"],
        &["compile", "dsl-examples/auto.nib"],
        &[
            "compile",
            "dsl-examples/auto.nib",
            "-o",
            "out",
            "--target",
            "gfx1100",
        ],
        &[
            "compile",
            "dsl-examples/auto.nib",
            "-o",
            "out",
            "--emit",
            "linalg,asm",
        ],
    ] {
        let (code, out, err) = run_cli(args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(!err.is_empty(), "{args:?}");
    }
    let (_, _, err) = run_cli(&[
        "compile",
        "dsl-examples/auto.nib",
        "-o",
        "out",
        "--target",
        "gfx1100",
    ]);
    assert!(
        err.contains(
            "unknown target `gfx1100` (known targets: gfx90a, gfx942, sm_80, sm_90, sm_90a)"
        ),
        "{err}"
    );
    for args in [
        &["--help"][..],
        &["check", "--help"],
        &["compile", "--help"],
        &["--version"],
    ] {
        let (code, out, err) = run_cli(args);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(!out.is_empty() && err.is_empty(), "{args:?}");
    }
    let (_, out, _) = run_cli(&["compile", "--help"]);
    assert!(
        out.contains("--emit") && out.contains("--target") && out.contains("--out-dir"),
        "{out}"
    );
}

#[test]
fn cli_compile_runs_the_front_end_first() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let out_dir = out_dir.to_str().unwrap();
    let (code, _, err) = run_cli(&["compile", "dsl-examples/bad/missing_w.nib", "-o", out_dir]);
    assert_eq!(code, 1);
    assert!(err.contains("has no `w` statement"), "{err}");

    let file = dir.path().join("one.nib");
    std::fs::write(&file, ONE_LINE).unwrap();
    let (code, _, err) = run_cli(&[
        "compile",
        file.to_str().unwrap(),
        "--target",
        "gfx90a",
        "-o",
        out_dir,
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("kernel `k` does not list target gfx90a (its targets: gfx942)"),
        "{err}"
    );
}

// ---- robustness --------------------------------------------------------------------------------------------------

/// Things to do to a source text.
#[derive(Debug, Clone)]
enum Mutation {
    FlipByte(usize, u8),
    Truncate(usize),
    DeleteToken(usize),
    DuplicateToken(usize),
    Insert(usize, String),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let snippets = prop_oneof![
        Just("99999999999999999999999".to_string()),
        Just("4294967296".to_string()),
        Just("4294967295".to_string()),
        Just("0".to_string()),
        Just("-".to_string()),
        (1usize..20_000).prop_map(|n| "{".repeat(n)),
        (1usize..20_000).prop_map(|n| "[".repeat(n) + &"]".repeat(n / 2)),
        (1usize..2_000).prop_map(|n| "kernel k {".repeat(n)),
        Just("}".to_string()),
        Just("\n".to_string()),
        Just(";".to_string()),
        Just("é".to_string()),
        Just(" mma 4294967295x4294967295x4294967295 ".to_string()),
        Just(" tile m=4294967295 n=4294967295 k=4294967295 ".to_string()),
        Just(" waves m=4294967295 n=4294967295 ".to_string()),
        Just(" element e1m2 { exp 1; man 2; bias -4294967295 } ".to_string()),
        "\\PC{0,12}",
    ];
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::FlipByte(i, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        any::<usize>().prop_map(Mutation::DeleteToken),
        any::<usize>().prop_map(Mutation::DuplicateToken),
        (any::<usize>(), snippets).prop_map(|(i, s)| Mutation::Insert(i, s)),
    ]
}

/// Byte ranges of whitespace-separated words.
fn words(s: &str) -> Vec<(usize, usize)> {
    let mut out = vec![];
    let mut start = None;
    for (i, c) in s.char_indices() {
        match (c.is_whitespace(), start) {
            (false, None) => start = Some(i),
            (true, Some(b)) => {
                out.push((b, i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(b) = start {
        out.push((b, s.len()));
    }
    out
}

fn apply(src: &str, m: &Mutation) -> String {
    let floor = |s: &str, i: usize| {
        let mut i = i % (s.len() + 1);
        while !s.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    match m {
        Mutation::FlipByte(i, b) => {
            let mut bytes = src.as_bytes().to_vec();
            if !bytes.is_empty() {
                let i = i % bytes.len();
                bytes[i] ^= b | 1;
            }
            String::from_utf8_lossy(&bytes).into_owned()
        }
        Mutation::Truncate(i) => src[..floor(src, *i)].to_string(),
        Mutation::DeleteToken(i) | Mutation::DuplicateToken(i) => {
            let w = words(src);
            if w.is_empty() {
                return src.to_string();
            }
            let (a, b) = w[i % w.len()];
            match m {
                Mutation::DeleteToken(_) => format!("{}{}", &src[..a], &src[b..]),
                _ => format!("{} {}", &src[..b], &src[a..]),
            }
        }
        Mutation::Insert(i, s) => {
            let i = floor(src, *i);
            format!("{}{s}{}", &src[..i], &src[i..])
        }
    }
}

fn corpus() -> Vec<String> {
    let mut files = nib_files("dsl-examples");
    files.extend(nib_files("dsl-examples/bad"));
    let mut out: Vec<String> = files.iter().map(|p| read(p)).collect();
    out.push(dsl::PRELUDE.to_string());
    out
}

/// Words the grammar uses, for token-soup inputs that reach past the parser.
const VOCAB: &[&str] = &[
    "kernel",
    "format",
    "element",
    "target",
    "x",
    "w",
    "y",
    "bias",
    "tile",
    "waves",
    "mma",
    "stages",
    "schedule",
    "auto",
    "gfx942",
    "gfx90a",
    "bf16",
    "f16",
    "mxfp4",
    "nvfp4",
    "e2m1",
    "e8m0",
    "e4m3",
    "f32",
    "per",
    "exp",
    "man",
    "tensor_scale",
    "scale",
    "M",
    "m",
    "n",
    "k",
    "=",
    "{",
    "}",
    "[",
    "]",
    ",",
    ";",
    "\n",
    "-",
    "16",
    "32",
    "128",
    "256",
    "4096",
    "0",
    "16x16x16",
    "32x32x8",
    "4294967296",
    "#",
];

fn check_does_not_panic(src: &str) {
    match check_source("fuzz.nib", src) {
        Ok(checked) => {
            let _ = dsl::describe(&checked);
        }
        Err(d) => {
            assert!(!d.is_empty());
            let _ = d.render();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 384, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_examples_never_panic(pick in any::<usize>(), muts in prop::collection::vec(mutation(), 1..6)) {
        let corpus = corpus();
        let mut src = corpus[pick % corpus.len()].clone();
        for m in &muts {
            src = apply(&src, m);
        }
        check_does_not_panic(&src);
    }

    #[test]
    fn random_text_never_panics(src in "\\PC{0,300}") {
        check_does_not_panic(&src);
    }

    #[test]
    fn token_soup_never_panics(words in prop::collection::vec(prop::sample::select(VOCAB), 0..120)) {
        check_does_not_panic(&words.join(" "));
    }
}

/// Regression (found by the mutation property test): hints computed from huge numbers must not overflow.
#[test]
fn huge_numbers_give_diagnostics_not_overflows() {
    for (k, tile_k, waves) in [
        ("4294967295", "128", "1"),
        ("8192", "4294967295", "1"),
        ("8192", "4294967295", "4294967295"),
    ] {
        let src = format!(
            "kernel k {{ target gfx942; x bf16[M, {k}]; w mxfp4[128, {k}]; y bf16[M, 128]\n\
             tile m=16 n=64 k={tile_k}; waves m={waves} n=1; mma 16x16x16; stages 2 }}"
        );
        let d = dsl::check_source("huge.nib", &src).expect_err("invalid");
        assert!(!d.is_empty());
    }
}

/// `schedule auto m=N` ranks the tilings at M = N: for a Llama-3-70B layer at M = 4096 the plan is a prefill tile
/// (more than 16 rows), where plain `schedule auto` (M = 16) takes a 16-row decode tile; `nibble plan` without
/// `--m` predicts at each kernel's own M, and `--m` still overrides it.
#[test]
fn schedule_auto_m_sets_the_m_the_tiling_is_chosen_for() {
    let src = |sched: &str| {
        format!(
            "kernel o {{ target gfx942; x bf16[M, 8192]; w mxfp4[8192, 8192]; y bf16[M, 8192]; {sched} }}"
        )
    };
    let tiling = |sched: &str| {
        let spec = check_source("t.nib", &src(sched))
            .unwrap_or_else(|d| panic!("{}", d.render()))
            .kernels
            .remove(0);
        let t = nibble_compiler::plan::plan(&spec, nibble_compiler::arch::Arch::Gfx942)
            .expect("plans")
            .tiling;
        (spec.schedule, t)
    };
    let (sched, decode) = tiling("schedule auto");
    assert_eq!(sched, Schedule::Auto { m: 16 });
    assert_eq!(decode.tile_m, 16);
    let (sched, prefill) = tiling("schedule auto m=4096");
    assert_eq!(sched, Schedule::Auto { m: 4096 });
    assert!(prefill.tile_m > 16, "{prefill:?}");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("p.nib");
    std::fs::write(&file, src("schedule auto m=4096")).expect("write");
    let path = file.display().to_string();
    let (code, out, err) = run_cli(&["plan", &path]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("kernel o on gfx942 at M=4096:"), "{out}");
    let (code, out, err) = run_cli(&["plan", &path, "--m", "16"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("kernel o on gfx942 at M=16:"), "{out}");
    let (code, out, _) = run_cli(&["check", &path]);
    assert_eq!(code, 0);
    assert!(
        out.contains("schedule  auto (tiling for M = 4096)"),
        "{out}"
    );
}

#[test]
fn cli_plan_explains_the_choice_and_names_the_route() {
    let (code, out, err) = run_cli(&[
        "plan",
        "docs/llama70b_auto.nib",
        "--m",
        "16",
        "--target",
        "gfx942,gfx90a",
        "--explain",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("kernel qkv on gfx942 at M=16: HBM roofline"),
        "{out}"
    );
    assert!(out.contains("valu/e  route"), "{out}");
    assert!(out.contains("chosen: the first row"), "{out}");
    // The first row after each kernel's header is its choice: xf32 on gfx942, the bf16 route on gfx90a.
    let first_rows: Vec<(&str, &str)> = out
        .split("\nkernel ")
        .filter_map(|block| {
            let head = block.lines().next()?;
            let row = block.lines().nth(2)?;
            Some((head, row))
        })
        .collect();
    assert_eq!(first_rows.len(), 8, "{out}");
    for (head, row) in first_rows {
        let want = if head.contains("on gfx942") {
            "xf32"
        } else {
            "bf16"
        };
        assert!(row.trim_end().ends_with(want), "{head}: {row}");
    }
    let (code, out, err) = run_cli(&["plan", "bench/kernels/decode.nib", "--target", "sm_90"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("mma.sync"), "{out}");
    // A target the kernel does not list is refused as `compile` refuses it, not planned as infeasible.
    let (code, out, err) = run_cli(&["plan", "docs/llama70b_auto.nib", "--target", "sm_90"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        err.contains(
            "error: kernel `qkv` does not list target sm_90 (its targets: gfx942, gfx90a); add it to the \
             kernel's `target` line"
        ),
        "{err}"
    );
    assert!(!out.contains("no feasible tiling"), "{out}");
    // NVIDIA decode: the measured tiling comes first and the explanation says so; prefill is the model's.
    let dir = tempfile::tempdir().expect("tempdir");
    let nv_file = dir.path().join("llama70b_auto_nv.nib");
    let src = std::fs::read_to_string("docs/llama70b_auto.nib").expect("reads");
    std::fs::write(&nv_file, src.replace("gfx942, gfx90a", "gfx942, sm_90")).expect("writes");
    let nv_path = nv_file.to_str().expect("utf-8 path");
    for (m, want) in [
        ("1", "8x32 x512 w1x2x4"),
        ("16", " 16x32 x512 w1x2x4"),
        ("4096", ""),
    ] {
        let (code, out, err) =
            run_cli(&["plan", nv_path, "--m", m, "--target", "sm_90", "--explain"]);
        assert_eq!(code, 0, "{err}");
        let qkv = out.split("\nkernel ").next().expect("qkv first");
        let first = qkv.lines().nth(2).expect("a first row");
        let rule = "measured on the H100";
        if want.is_empty() {
            assert!(!out.contains(rule), "M = {m}: {out}");
            assert!(out.contains("-bound; "), "M = {m}: {out}");
        } else {
            assert!(
                first.contains(want) && first.ends_with(rule),
                "M = {m}: {first}"
            );
            assert!(
                qkv.contains("chosen: the first row, the NVIDIA decode tiling"),
                "{qkv}"
            );
        }
    }
}
