//! Tests of the HIP layer that need no GPU.

use std::ffi::OsString;

use super::device::parse_arch_field;
use super::ffi::{self, Api, LoadError};
use super::*;
use crate::manifest::Manifest;

/// The no-device error: exactly one line, containing "no HIP device found".
fn assert_no_device(e: &HipError) {
    assert!(matches!(e, HipError::NoDevice { .. }), "{e:?}");
    let s = e.to_string();
    assert_eq!(s.lines().count(), 1, "{s:?}");
    assert!(!s.contains('\n'), "{s:?}");
    assert!(s.contains("no HIP device found"), "{s}");
}

/// On these machines libamdhip64 (ROCm 5.2.3) is installed but there is no AMD GPU: `hipInit` fails with
/// `hipErrorInvalidDevice`. On a machine without the library the same error comes from the loader. On a machine
/// with a GPU the device opens and there is nothing to check here.
#[test]
fn open_without_gpu_is_no_device() {
    match Device::open(0) {
        Ok(dev) => eprintln!("a HIP device is present: {:?}", dev.info()),
        Err(e) => {
            eprintln!("{e}");
            assert_no_device(&e);
        }
    }
    match devices() {
        Ok(list) => assert!(!list.is_empty()),
        Err(e) => assert_no_device(&e),
    }
}

/// Run in a child process by `open_without_library_is_no_device`, with `NIBBLE_HIP_LIBRARY` naming a file that
/// does not exist.
#[test]
#[ignore = "run in a child process by open_without_library_is_no_device"]
fn child_open_device() {
    let e = Device::open(0).unwrap_err();
    assert_no_device(&e);
    assert!(
        e.to_string().contains("libamdhip64 could not be loaded"),
        "{e}"
    );
    assert_no_device(&devices().unwrap_err());
    println!("CHILD-OK: {e}");
}

/// The "libamdhip64 is not installed" path through the public API: a child process (this test binary) whose
/// loader is pointed at a missing file.
#[test]
fn open_without_library_is_no_device() {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([
            "--ignored",
            "--exact",
            "hip::tests::child_open_device",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ffi::LIBRARY_ENV, "/nonexistent/libamdhip64.so")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("CHILD-OK: no HIP device found: libamdhip64 could not be loaded (tried /nonexistent/libamdhip64.so)"), "{stdout}");
}

#[test]
fn missing_library_is_a_load_error() {
    let err = Api::load_from(&[
        OsString::from("/nonexistent/a.so"),
        OsString::from("libdoesnotexist-nibble.so"),
    ])
    .err()
    .unwrap();
    assert_eq!(
        err,
        LoadError::NotFound {
            tried: vec![
                "/nonexistent/a.so".into(),
                "libdoesnotexist-nibble.so".into()
            ]
        }
    );
    assert_no_device(&HipError::from(err));
}

#[test]
fn a_library_without_hip_functions_is_a_load_error() {
    // libc is loadable but has no hipInit.
    let err = Api::load_from(&[OsString::from("libc.so.6")])
        .err()
        .unwrap();
    assert_eq!(
        err,
        LoadError::MissingSymbol {
            path: "libc.so.6".into(),
            symbol: "hipInit".into()
        }
    );
    assert_no_device(&HipError::from(err));
}

/// `DT_NEEDED` entries of the running test binary: libamdhip64 must not be among them (it is `dlopen`ed).
#[test]
fn binary_does_not_link_libamdhip64() {
    use object::read::elf::{Dyn, FileHeader, SectionHeader};
    let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    let header = object::elf::FileHeader64::<object::LittleEndian>::parse(&*exe).unwrap();
    let endian = header.endian().unwrap();
    let sections = header.sections(endian, &*exe).unwrap();
    let mut needed = Vec::new();
    for s in sections.iter() {
        if let Some((entries, link)) = s.dynamic(endian, &*exe).unwrap() {
            let strings = sections.strings(endian, &*exe, link).unwrap();
            for d in entries {
                if d.tag(endian) == object::elf::DT_NEEDED {
                    let name = d.string(endian, strings).unwrap();
                    needed.push(String::from_utf8_lossy(name).into_owned());
                }
            }
        }
    }
    assert!(
        !needed.is_empty(),
        "no DT_NEEDED found; is the binary static?"
    );
    assert!(!needed.iter().any(|n| n.contains("amdhip64")), "{needed:?}");
}

#[test]
fn arch_field_is_read_at_either_layout_offset() {
    for offset in [ffi::ARCH_NAME_OFFSET_R0600, ffi::ARCH_NAME_OFFSET_R0000] {
        let mut props = vec![0u8; ffi::DEVICE_PROP_BUFFER_BYTES];
        props[..8].copy_from_slice(b"AMD MI3\0");
        let name = b"gfx942:sramecc+:xnack-";
        props[offset..offset + name.len()].copy_from_slice(name);
        let field = &props[offset..offset + ffi::ARCH_NAME_LEN];
        assert_eq!(parse_arch_field(field).unwrap(), "gfx942:sramecc+:xnack-");
    }
}

#[test]
fn unreadable_arch_fields_are_errors() {
    // Zeros: the wrong layout read an empty field.
    assert!(parse_arch_field(&[0u8; 256])
        .unwrap_err()
        .contains("not a gfx target"));
    // No NUL.
    assert!(parse_arch_field(&[b'g'; 256]).unwrap_err().contains("NUL"));
    // Some other field's bytes.
    let mut f = [0u8; 256];
    f[..4].copy_from_slice(&[0x10, 0x27, 0, 0]);
    assert!(parse_arch_field(&f).is_err());
    let mut f = [0u8; 256];
    f[..7].copy_from_slice(b"gfx9 0a");
    assert!(parse_arch_field(&f).is_err());
}

fn manifest_for(arch: &str) -> Manifest {
    let text = r#"{"schema_version":1,"compiler_version":"nibble test","source_hash":"0","kernel":"gemm",
      "symbol":"gemm","arch":"ARCH","code_object":"gemm.hsaco","kernel_ir":"gemm.mlir",
      "shapes":{"n":64,"k":64,"m_min":1,"m_max":64,"x_dtype":"bf16","y_dtype":"bf16","bias_dtype":null},
      "format":{"name":"mxfp4","element":{"name":"e2m1","exp_bits":2,"man_bits":1,"bias":1},"scale":"e8m0",
        "group":32,"tensor_scale":false},
      "tiling":{"tile_m":16,"tile_n":32,"tile_k":64,"waves_m":1,"waves_n":2,"mma":"16x16x16","stages":2},
      "launch":{"block":[128,1,1],"grid":[{"kind":"const","value":2},{"kind":"ceil_div_m","divisor":16},
        {"kind":"const","value":1}],"lds_bytes":0},
      "args":[],"kernarg_bytes":0,
      "weight_layout":{"id":"nibble.mfma_pairs.v1","atom_n":16,"atom_k":16,"words_per_lane":1,"mag_shift":1,
        "second_half":"bitreverse","mask":2391707278},
      "scale_layout":{"id":"nibble.scales_f32.v1","group":32,"exp_offset":15}}"#;
    Manifest::from_json("test", &text.replace("ARCH", arch)).unwrap()
}

#[test]
fn arch_check_accepts_matching_devices() {
    let m = manifest_for("gfx942");
    check_arch("gfx942", &m).unwrap();
    check_arch("gfx942:sramecc+:xnack-", &m).unwrap();
    check_arch("gfx942:sramecc-:xnack+", &m).unwrap();
    // A manifest pinning xnack- runs where the device has xnack- (or does not say).
    let pinned = manifest_for("gfx942:xnack-");
    check_arch("gfx942:sramecc+:xnack-", &pinned).unwrap();
    check_arch("gfx942", &pinned).unwrap();
}

#[test]
fn arch_check_rejects_other_processors() {
    let m = manifest_for("gfx90a");
    let e = check_arch("gfx942:sramecc+:xnack-", &m).unwrap_err();
    assert!(matches!(e, HipError::ArchMismatch { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "kernel gemm was compiled for gfx90a but the HIP device is gfx942:sramecc+:xnack-: a code object for \
         gfx90a cannot run on gfx942; recompile the kernel with arch gfx942"
    );
    assert_eq!(e.to_string().lines().count(), 1);
    assert!(check_arch("gfx90a", &manifest_for("gfx942")).is_err());
    // Prefix is not enough.
    assert!(check_arch("gfx9420", &manifest_for("gfx942")).is_err());
    assert!(check_arch("gfx94", &manifest_for("gfx942")).is_err());
}

#[test]
fn arch_check_rejects_opposite_feature_settings() {
    let pinned = manifest_for("gfx942:xnack-");
    let e = check_arch("gfx942:sramecc+:xnack+", &pinned).unwrap_err();
    assert!(
        e.to_string()
            .ends_with("the code requires xnack- but the device runs with xnack+"),
        "{e}"
    );
}

#[test]
fn target_id_helpers() {
    assert_eq!(arch_base("gfx942:sramecc+:xnack-"), "gfx942");
    assert_eq!(arch_base("gfx90a"), "gfx90a");
    assert_eq!(
        arch_features("gfx942:sramecc+:xnack-"),
        [("sramecc", true), ("xnack", false)]
    );
    assert!(arch_features("gfx942").is_empty());
}
