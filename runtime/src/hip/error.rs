//! Typed HIP errors: every failing HIP call becomes a [`HipError`] naming the call and the HIP error.

use thiserror::Error;

use super::ffi::{HipErrorCode, LoadError, HIP_SUCCESS};

/// `hipError_t` codes and their names, from ROCm 5.2.3's `hip/hip_runtime_api.h` (values printed by compiling the
/// enum; unchanged in ROCm 6). Where the header has aliases (`hipErrorMemoryAllocation` = 2,
/// `hipErrorInitializationError` = 3, `hipErrorMapBufferObjectFailed` = 205, `hipErrorInvalidResourceHandle` =
/// 400) the name `hipGetErrorName` reports is used. `hipErrorTbd` (1054) is a marker, not an error, and is left out.
pub const HIP_ERROR_NAMES: &[(HipErrorCode, &str)] = &[
    (0, "hipSuccess"),
    (1, "hipErrorInvalidValue"),
    (2, "hipErrorOutOfMemory"),
    (3, "hipErrorNotInitialized"),
    (4, "hipErrorDeinitialized"),
    (5, "hipErrorProfilerDisabled"),
    (6, "hipErrorProfilerNotInitialized"),
    (7, "hipErrorProfilerAlreadyStarted"),
    (8, "hipErrorProfilerAlreadyStopped"),
    (9, "hipErrorInvalidConfiguration"),
    (12, "hipErrorInvalidPitchValue"),
    (13, "hipErrorInvalidSymbol"),
    (17, "hipErrorInvalidDevicePointer"),
    (21, "hipErrorInvalidMemcpyDirection"),
    (35, "hipErrorInsufficientDriver"),
    (52, "hipErrorMissingConfiguration"),
    (53, "hipErrorPriorLaunchFailure"),
    (98, "hipErrorInvalidDeviceFunction"),
    (100, "hipErrorNoDevice"),
    (101, "hipErrorInvalidDevice"),
    (200, "hipErrorInvalidImage"),
    (201, "hipErrorInvalidContext"),
    (202, "hipErrorContextAlreadyCurrent"),
    (205, "hipErrorMapFailed"),
    (206, "hipErrorUnmapFailed"),
    (207, "hipErrorArrayIsMapped"),
    (208, "hipErrorAlreadyMapped"),
    (209, "hipErrorNoBinaryForGpu"),
    (210, "hipErrorAlreadyAcquired"),
    (211, "hipErrorNotMapped"),
    (212, "hipErrorNotMappedAsArray"),
    (213, "hipErrorNotMappedAsPointer"),
    (214, "hipErrorECCNotCorrectable"),
    (215, "hipErrorUnsupportedLimit"),
    (216, "hipErrorContextAlreadyInUse"),
    (217, "hipErrorPeerAccessUnsupported"),
    (218, "hipErrorInvalidKernelFile"),
    (219, "hipErrorInvalidGraphicsContext"),
    (300, "hipErrorInvalidSource"),
    (301, "hipErrorFileNotFound"),
    (302, "hipErrorSharedObjectSymbolNotFound"),
    (303, "hipErrorSharedObjectInitFailed"),
    (304, "hipErrorOperatingSystem"),
    (400, "hipErrorInvalidHandle"),
    (401, "hipErrorIllegalState"),
    (500, "hipErrorNotFound"),
    (600, "hipErrorNotReady"),
    (700, "hipErrorIllegalAddress"),
    (701, "hipErrorLaunchOutOfResources"),
    (702, "hipErrorLaunchTimeOut"),
    (704, "hipErrorPeerAccessAlreadyEnabled"),
    (705, "hipErrorPeerAccessNotEnabled"),
    (708, "hipErrorSetOnActiveProcess"),
    (709, "hipErrorContextIsDestroyed"),
    (710, "hipErrorAssert"),
    (712, "hipErrorHostMemoryAlreadyRegistered"),
    (713, "hipErrorHostMemoryNotRegistered"),
    (719, "hipErrorLaunchFailure"),
    (720, "hipErrorCooperativeLaunchTooLarge"),
    (801, "hipErrorNotSupported"),
    (900, "hipErrorStreamCaptureUnsupported"),
    (901, "hipErrorStreamCaptureInvalidated"),
    (902, "hipErrorStreamCaptureMerge"),
    (903, "hipErrorStreamCaptureUnmatched"),
    (904, "hipErrorStreamCaptureUnjoined"),
    (905, "hipErrorStreamCaptureIsolation"),
    (906, "hipErrorStreamCaptureImplicit"),
    (907, "hipErrorCapturedEvent"),
    (908, "hipErrorStreamCaptureWrongThread"),
    (910, "hipErrorGraphExecUpdateFailure"),
    (999, "hipErrorUnknown"),
    (1052, "hipErrorRuntimeMemory"),
    (1053, "hipErrorRuntimeOther"),
];

/// The HIP name of an error code, or `hipError(<n>)` for a code not in [`HIP_ERROR_NAMES`].
pub fn error_name(code: HipErrorCode) -> String {
    match HIP_ERROR_NAMES.iter().find(|(c, _)| *c == code) {
        Some((_, name)) => (*name).to_string(),
        None => format!("hipError({code})"),
    }
}

/// An error of the HIP layer. Every variant displays as a single line.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HipError {
    /// No usable AMD GPU: libamdhip64 is missing, or it reports no device. `reason` says which.
    #[error("no HIP device found: {reason}")]
    NoDevice { reason: String },
    /// A HIP call returned an error.
    #[error("{call} failed: {name} ({code})", name = error_name(*code))]
    Call {
        call: &'static str,
        code: HipErrorCode,
    },
    /// A device index beyond the devices HIP reports.
    #[error("HIP device {index} does not exist ({count} device(s) found)")]
    InvalidDevice { index: usize, count: usize },
    /// The device's architecture name could not be read or is not a `gfx...` name.
    #[error("cannot read the architecture of HIP device {index}: {what}")]
    ArchUnreadable { index: usize, what: String },
    /// The code object was compiled for another GPU than the device.
    #[error("kernel {kernel} was compiled for {expected} but the HIP device is {device}: {hint}")]
    ArchMismatch {
        kernel: String,
        expected: String,
        device: String,
        hint: String,
    },
    /// A host/device copy or buffer operation with inconsistent sizes.
    #[error("{what}: {expected} elements expected, {found} given")]
    LengthMismatch {
        what: &'static str,
        expected: usize,
        found: usize,
    },
    /// An argument HIP cannot take (a name with a NUL byte, a size that overflows).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The code object itself is invalid or disagrees with the manifest.
    #[error("code object: {0}")]
    CodeObject(#[from] crate::codeobj::CodeObjectError),
}

impl From<LoadError> for HipError {
    fn from(e: LoadError) -> Self {
        HipError::NoDevice {
            reason: one_line(&e.to_string()),
        }
    }
}

/// Collapses any line breaks so that an error always displays as one line.
pub(crate) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `Ok(())` for `hipSuccess`, else the typed error for `call`.
pub fn check(call: &'static str, code: HipErrorCode) -> Result<(), HipError> {
    if code == HIP_SUCCESS {
        Ok(())
    } else {
        Err(HipError::Call { call, code })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mapped_code_has_its_name() {
        for &(code, name) in HIP_ERROR_NAMES {
            assert_eq!(error_name(code), name);
            assert!(name.starts_with("hip"), "{name}");
            if code != 0 {
                let e = check("hipMalloc", code).unwrap_err();
                assert_eq!(e.to_string(), format!("hipMalloc failed: {name} ({code})"));
            }
        }
        // The table has no duplicate codes.
        let mut codes: Vec<_> = HIP_ERROR_NAMES.iter().map(|(c, _)| *c).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), HIP_ERROR_NAMES.len());
    }

    #[test]
    fn known_codes_spot_check() {
        assert_eq!(error_name(100), "hipErrorNoDevice");
        assert_eq!(error_name(101), "hipErrorInvalidDevice");
        assert_eq!(error_name(209), "hipErrorNoBinaryForGpu");
        assert_eq!(error_name(400), "hipErrorInvalidHandle");
        assert_eq!(error_name(2), "hipErrorOutOfMemory");
    }

    #[test]
    fn unknown_codes_are_numbered() {
        for code in [-1, 10, 99, 1054, 12345] {
            assert_eq!(error_name(code), format!("hipError({code})"));
        }
        assert_eq!(
            check("hipModuleLoadData", 77).unwrap_err().to_string(),
            "hipModuleLoadData failed: hipError(77) (77)"
        );
        assert!(check("hipInit", 0).is_ok());
    }

    #[test]
    fn load_errors_become_one_line_no_device() {
        let e: HipError = LoadError::NotFound {
            tried: vec!["a.so".into(), "b\nc.so".into()],
        }
        .into();
        let s = e.to_string();
        assert_eq!(s.lines().count(), 1);
        assert!(s.starts_with("no HIP device found: libamdhip64 could not be loaded"));
    }
}
