//! Checked-in compiler output used by tests that cannot run the compiler: the sm_90 kernel bundle of
//! runtime/tests/cuda_forward.rs (built into a runtime-only test binary that runs on a GPU machine without LLVM).
//! Each fixture is recompiled here from its source and must be byte-identical to the checked-in files, so it never
//! drifts from the compiler.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use nibble_compiler::cli;

/// The sources of runtime/tests/fixtures/cuda_bundle/ and the M range each is compiled with.
const CUDA_BUNDLE: &[(&str, &str)] = &[
    ("runtime/tests/fixtures/cuda_bundle_decode.nib", "1..16"),
    ("runtime/tests/fixtures/cuda_bundle_prefill.nib", "17..4096"),
];
const CUDA_BUNDLE_DIR: &str = "runtime/tests/fixtures/cuda_bundle";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The commands that regenerate the bundle, run from the repository root.
fn regenerate_commands() -> String {
    let mut s = format!("rm -rf {CUDA_BUNDLE_DIR} && cargo build --release --bin nibble");
    for (nib, range) in CUDA_BUNDLE {
        s.push_str(&format!(
            " && target/release/nibble compile {nib} --m-range {range} -o {CUDA_BUNDLE_DIR}"
        ));
    }
    s
}

/// Every file of `dir` by name (the bundle is flat).
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let p = e.expect("directory entry").path();
            assert!(p.is_file(), "{}: not a plain file", p.display());
            let name = p
                .file_name()
                .and_then(|n| n.to_str())
                .expect("UTF-8 file name")
                .to_string();
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (name, bytes)
        })
        .collect()
}

/// `nibble compile` through `cli::run` (the command `regenerate_commands` names), into `out`.
fn compile(nib: &Path, range: &str, out: &Path) {
    let argv: Vec<OsString> = vec![
        "nibble".into(),
        "compile".into(),
        nib.into(),
        "--m-range".into(),
        range.into(),
        "-o".into(),
        out.into(),
    ];
    let (mut o, mut e) = (vec![], vec![]);
    let code = cli::run(argv, &mut o, &mut e);
    assert_eq!(
        code,
        0,
        "nibble compile {} failed:\n{}{}",
        nib.display(),
        String::from_utf8_lossy(&o),
        String::from_utf8_lossy(&e)
    );
}

#[test]
fn cuda_bundle_is_what_the_compiler_produces() {
    let tmp = tempfile::tempdir().expect("temp dir");
    for (nib, range) in CUDA_BUNDLE {
        compile(&root().join(nib), range, tmp.path());
    }
    let fresh = files(tmp.path());
    let checked_in = files(&root().join(CUDA_BUNDLE_DIR));
    // Two kernels, each a manifest, its PTX and its kernel IR.
    assert_eq!(fresh.len(), 6, "{:?}", fresh.keys().collect::<Vec<_>>());
    let regen = regenerate_commands();
    assert_eq!(
        checked_in.keys().collect::<Vec<_>>(),
        fresh.keys().collect::<Vec<_>>(),
        "{CUDA_BUNDLE_DIR} does not hold the files the compiler writes; regenerate it from the repository root \
         with:\n  {regen}"
    );
    for (name, bytes) in &fresh {
        assert!(
            checked_in[name] == *bytes,
            "{CUDA_BUNDLE_DIR}/{name} differs from what the compiler produces now; regenerate the bundle from the \
             repository root with:\n  {regen}"
        );
    }
}
