//! Run-time loading of the HIP runtime (`libamdhip64`) and the few HIP declarations this crate uses.
//!
//! The runtime library must load on machines without ROCm (an NVIDIA box, a CI runner), so it never links
//! `libamdhip64`: the library is opened with `dlopen` (through `libloading`) the first time a HIP function is
//! needed, and every function used is resolved into [`Api`]. If the library or one of its functions is missing,
//! the caller gets a typed error, never a loader failure at program start.
//!
//! The declarations below are transcribed from ROCm 5.2.3's `hip/hip_runtime_api.h` (Debian's
//! `libamdhip64-dev`) and agree with ROCm 6: every handle is an opaque pointer, `hipError_t`,
//! `hipMemcpyKind` and `hipDeviceAttribute_t` are C enums (`int`), `hipDevice_t` is `int`.

use std::ffi::{c_char, c_int, c_uint, c_void, OsString};
use std::path::PathBuf;
use std::sync::OnceLock;

use libloading::Library;

/// `hipError_t`.
pub type HipErrorCode = c_int;
pub type HipStream = *mut c_void;
pub type HipModule = *mut c_void;
pub type HipFunction = *mut c_void;
pub type HipEvent = *mut c_void;

pub const HIP_SUCCESS: HipErrorCode = 0;
pub const HIP_ERROR_NO_DEVICE: HipErrorCode = 100;
pub const HIP_ERROR_INVALID_DEVICE: HipErrorCode = 101;

/// `hipMemcpyKind` values.
pub const HIP_MEMCPY_HOST_TO_DEVICE: c_int = 1;
pub const HIP_MEMCPY_DEVICE_TO_HOST: c_int = 2;
pub const HIP_MEMCPY_DEVICE_TO_DEVICE: c_int = 3;

/// `hipDeviceAttribute_t` values used here. The enum was renumbered between ROCm releases, so only attributes
/// whose value is the same in ROCm 5.2.3 (computed with `offsetof`/enum printing against the installed header)
/// and in ROCm 6.x (the `hipDeviceAttributeCudaCompatibleBegin` block, which 6.x only extended past these entries)
/// are used. Anything else (the arch name in particular) is read another way; see [`ARCH_NAME_OFFSET_R0600`].
pub const HIP_ATTR_COMPUTE_UNITS: c_int = 63; // hipDeviceAttributeMultiprocessorCount
pub const HIP_ATTR_MAX_SHARED_MEMORY_PER_BLOCK: c_int = 74; // hipDeviceAttributeMaxSharedMemoryPerBlock
pub const HIP_ATTR_WARP_SIZE: c_int = 87; // hipDeviceAttributeWarpSize

/// `HIP_LAUNCH_PARAM_BUFFER_POINTER`, `HIP_LAUNCH_PARAM_BUFFER_SIZE`, `HIP_LAUNCH_PARAM_END` (`(void*)1..3`).
pub const HIP_LAUNCH_PARAM_BUFFER_POINTER: usize = 1;
pub const HIP_LAUNCH_PARAM_BUFFER_SIZE: usize = 2;
pub const HIP_LAUNCH_PARAM_END: usize = 3;

/// Size of the zeroed scratch buffer `hipGetDeviceProperties*` writes into. Both layouts are far smaller
/// (`sizeof(hipDeviceProp_t)` = 792 bytes in ROCm 5.2.3, `sizeof(hipDeviceProp_tR0600)` = 1472 bytes in ROCm 6),
/// so a few fields appended by a later release cannot write past it.
pub const DEVICE_PROP_BUFFER_BYTES: usize = 4096;
/// Length of the `gcnArchName` field (`char gcnArchName[256]`) in both layouts.
pub const ARCH_NAME_LEN: usize = 256;
/// Byte offset of `gcnArchName` in `hipDeviceProp_tR0600`, the struct `hipGetDevicePropertiesR0600` fills (ROCm 6.0
/// and later; in ROCm 6 headers `hipGetDeviceProperties` is a macro for that symbol). Computed with `offsetof` over
/// a transcription of the ROCm 6 struct (name[256], uuid[16], luid[8], luidDeviceNodeMask, ... `int reserved[63]`,
/// `int hipReserved[32]`, then `gcnArchName`) on x86_64; an independent vendored layout
/// (`padding[1160]; gcnArchName[256]; padding2[56]`, sizeof 1472) agrees.
pub const ARCH_NAME_OFFSET_R0600: usize = 1160;
/// Byte offset of `gcnArchName` in the legacy `hipDeviceProp_t` (ROCm 5.x; ROCm 6 keeps it as `hipDeviceProp_tR0000`
/// behind the unversioned exported symbol `hipGetDeviceProperties`). Computed with
/// `offsetof(hipDeviceProp_t, gcnArchName)` against ROCm 5.2.3's `/usr/include/hip/hip_runtime_api.h`
/// (`-D__HIP_PLATFORM_AMD__`, x86_64): 396 (after `int gcnArch` at 392).
pub const ARCH_NAME_OFFSET_R0000: usize = 396;

// Both layouts' `gcnArchName` fields lie inside the scratch buffer, so slicing them out cannot panic.
const _: () = assert!(ARCH_NAME_OFFSET_R0600 + ARCH_NAME_LEN <= DEVICE_PROP_BUFFER_BYTES);
const _: () = assert!(ARCH_NAME_OFFSET_R0000 + ARCH_NAME_LEN <= DEVICE_PROP_BUFFER_BYTES);

/// The HIP functions this crate calls, resolved from `libamdhip64` at run time.
#[allow(non_snake_case)]
pub struct Api {
    /// Kept alive for the life of the process: the function pointers below point into it.
    _lib: Library,
    /// The file that was opened (for diagnostics).
    pub path: String,
    pub hipInit: unsafe extern "C" fn(c_uint) -> HipErrorCode,
    pub hipGetDeviceCount: unsafe extern "C" fn(*mut c_int) -> HipErrorCode,
    pub hipRuntimeGetVersion: unsafe extern "C" fn(*mut c_int) -> HipErrorCode,
    pub hipSetDevice: unsafe extern "C" fn(c_int) -> HipErrorCode,
    pub hipDeviceGetName: unsafe extern "C" fn(*mut c_char, c_int, c_int) -> HipErrorCode,
    pub hipDeviceGetAttribute: unsafe extern "C" fn(*mut c_int, c_int, c_int) -> HipErrorCode,
    pub hipDeviceTotalMem: unsafe extern "C" fn(*mut usize, c_int) -> HipErrorCode,
    /// Legacy (ROCm 5 layout) `hipGetDeviceProperties`; the struct is passed as an opaque byte buffer.
    pub hipGetDeviceProperties: unsafe extern "C" fn(*mut c_void, c_int) -> HipErrorCode,
    /// `hipGetDevicePropertiesR0600`, present from ROCm 6.0 on.
    pub hipGetDevicePropertiesR0600:
        Option<unsafe extern "C" fn(*mut c_void, c_int) -> HipErrorCode>,
    pub hipDeviceSynchronize: unsafe extern "C" fn() -> HipErrorCode,
    pub hipStreamCreate: unsafe extern "C" fn(*mut HipStream) -> HipErrorCode,
    pub hipStreamDestroy: unsafe extern "C" fn(HipStream) -> HipErrorCode,
    pub hipStreamSynchronize: unsafe extern "C" fn(HipStream) -> HipErrorCode,
    pub hipMalloc: unsafe extern "C" fn(*mut *mut c_void, usize) -> HipErrorCode,
    pub hipFree: unsafe extern "C" fn(*mut c_void) -> HipErrorCode,
    pub hipMemcpy: unsafe extern "C" fn(*mut c_void, *const c_void, usize, c_int) -> HipErrorCode,
    pub hipMemcpyAsync:
        unsafe extern "C" fn(*mut c_void, *const c_void, usize, c_int, HipStream) -> HipErrorCode,
    pub hipMemsetAsync: unsafe extern "C" fn(*mut c_void, c_int, usize, HipStream) -> HipErrorCode,
    pub hipModuleLoadData: unsafe extern "C" fn(*mut HipModule, *const c_void) -> HipErrorCode,
    pub hipModuleUnload: unsafe extern "C" fn(HipModule) -> HipErrorCode,
    pub hipModuleGetFunction:
        unsafe extern "C" fn(*mut HipFunction, HipModule, *const c_char) -> HipErrorCode,
    #[allow(clippy::type_complexity)]
    pub hipModuleLaunchKernel: unsafe extern "C" fn(
        HipFunction,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        HipStream,
        *mut *mut c_void,
        *mut *mut c_void,
    ) -> HipErrorCode,
    pub hipEventCreate: unsafe extern "C" fn(*mut HipEvent) -> HipErrorCode,
    pub hipEventDestroy: unsafe extern "C" fn(HipEvent) -> HipErrorCode,
    pub hipEventRecord: unsafe extern "C" fn(HipEvent, HipStream) -> HipErrorCode,
    pub hipEventSynchronize: unsafe extern "C" fn(HipEvent) -> HipErrorCode,
    pub hipEventElapsedTime: unsafe extern "C" fn(*mut f32, HipEvent, HipEvent) -> HipErrorCode,
}

/// Why the HIP runtime could not be loaded. Always a single line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadError {
    /// No candidate file could be opened.
    NotFound { tried: Vec<String> },
    /// A library was opened but lacks a function this crate needs (a very old or broken ROCm).
    MissingSymbol { path: String, symbol: String },
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::NotFound { tried } => {
                write!(
                    f,
                    "libamdhip64 could not be loaded (tried {})",
                    tried.join(", ")
                )
            }
            LoadError::MissingSymbol { path, symbol } => {
                write!(f, "{path} has no function {symbol}")
            }
        }
    }
}

/// Environment variable naming the HIP runtime library to load instead of searching for it.
pub const LIBRARY_ENV: &str = "NIBBLE_HIP_LIBRARY";

/// Candidate file names/paths for the HIP runtime, in the order they are tried: `$NIBBLE_HIP_LIBRARY` alone if
/// set; else the loader's search path (`libamdhip64.so`, `.so.6`, `.so.5`), then `$ROCM_PATH/lib` and
/// `/opt/rocm/lib`.
pub fn default_candidates() -> Vec<OsString> {
    if let Some(path) = std::env::var_os(LIBRARY_ENV) {
        return vec![path];
    }
    let mut c: Vec<OsString> = ["libamdhip64.so", "libamdhip64.so.6", "libamdhip64.so.5"]
        .iter()
        .map(OsString::from)
        .collect();
    let mut dirs = Vec::new();
    if let Some(root) = std::env::var_os("ROCM_PATH") {
        dirs.push(PathBuf::from(root).join("lib"));
    }
    dirs.push(PathBuf::from("/opt/rocm/lib"));
    for d in dirs {
        for name in ["libamdhip64.so", "libamdhip64.so.6", "libamdhip64.so.5"] {
            c.push(d.join(name).into_os_string());
        }
    }
    c
}

/// The process-wide HIP runtime, loaded on first use from [`default_candidates`]. The library is never unloaded
/// (unloading the HIP runtime while its threads run is unsafe, and the OS reclaims it at exit).
pub fn api() -> Result<&'static Api, LoadError> {
    static API: OnceLock<Result<Api, LoadError>> = OnceLock::new();
    API.get_or_init(|| Api::load_from(&default_candidates()))
        .as_ref()
        .map_err(Clone::clone)
}

/// Resolves `name` from `lib` as a value of type `T` (a function pointer type).
///
/// # Safety
/// `T` must be the exact C signature of the symbol `name` (as declared in `hip_runtime_api.h`).
unsafe fn sym<T: Copy>(lib: &Library, path: &str, name: &str) -> Result<T, LoadError> {
    // SAFETY: the caller guarantees that `T` matches the symbol's C signature; the returned pointer stays valid
    // while `lib` is loaded, and `Api` keeps `lib` alive as long as the pointers.
    unsafe { lib.get::<T>(name.as_bytes()) }
        .map(|s| *s)
        .map_err(|_| LoadError::MissingSymbol {
            path: path.to_string(),
            symbol: name.to_string(),
        })
}

impl Api {
    /// Opens the first loadable candidate and resolves every function. Public for tests (a candidate list of
    /// non-existent files reproduces a machine without ROCm).
    pub fn load_from(candidates: &[OsString]) -> Result<Api, LoadError> {
        let mut tried = Vec::new();
        for cand in candidates {
            let shown = cand.to_string_lossy().into_owned();
            // SAFETY: opening libamdhip64 runs its ELF initializers; the HIP runtime's initializers only set up
            // internal state (the runtime itself is initialized lazily by hipInit), which is sound to run here.
            match unsafe { Library::new(cand) } {
                Ok(lib) => return Api::resolve(lib, shown),
                Err(_) => tried.push(shown),
            }
        }
        Err(LoadError::NotFound { tried })
    }

    fn resolve(lib: Library, path: String) -> Result<Api, LoadError> {
        let p = path.as_str();
        // SAFETY (every `sym` call below): each field's type is the C signature of the named function in
        // ROCm 5.2.3's hip_runtime_api.h (unchanged in ROCm 6), with opaque handles as `*mut c_void`, enums as
        // `c_int`, `size_t` as `usize` and `hipDeviceProp_t*` as `*mut c_void`.
        unsafe {
            let r0600 = sym(&lib, p, "hipGetDevicePropertiesR0600").ok();
            Ok(Api {
                hipInit: sym(&lib, p, "hipInit")?,
                hipGetDeviceCount: sym(&lib, p, "hipGetDeviceCount")?,
                hipRuntimeGetVersion: sym(&lib, p, "hipRuntimeGetVersion")?,
                hipSetDevice: sym(&lib, p, "hipSetDevice")?,
                hipDeviceGetName: sym(&lib, p, "hipDeviceGetName")?,
                hipDeviceGetAttribute: sym(&lib, p, "hipDeviceGetAttribute")?,
                hipDeviceTotalMem: sym(&lib, p, "hipDeviceTotalMem")?,
                hipGetDeviceProperties: sym(&lib, p, "hipGetDeviceProperties")?,
                hipGetDevicePropertiesR0600: r0600,
                hipDeviceSynchronize: sym(&lib, p, "hipDeviceSynchronize")?,
                hipStreamCreate: sym(&lib, p, "hipStreamCreate")?,
                hipStreamDestroy: sym(&lib, p, "hipStreamDestroy")?,
                hipStreamSynchronize: sym(&lib, p, "hipStreamSynchronize")?,
                hipMalloc: sym(&lib, p, "hipMalloc")?,
                hipFree: sym(&lib, p, "hipFree")?,
                hipMemcpy: sym(&lib, p, "hipMemcpy")?,
                hipMemcpyAsync: sym(&lib, p, "hipMemcpyAsync")?,
                hipMemsetAsync: sym(&lib, p, "hipMemsetAsync")?,
                hipModuleLoadData: sym(&lib, p, "hipModuleLoadData")?,
                hipModuleUnload: sym(&lib, p, "hipModuleUnload")?,
                hipModuleGetFunction: sym(&lib, p, "hipModuleGetFunction")?,
                hipModuleLaunchKernel: sym(&lib, p, "hipModuleLaunchKernel")?,
                hipEventCreate: sym(&lib, p, "hipEventCreate")?,
                hipEventDestroy: sym(&lib, p, "hipEventDestroy")?,
                hipEventRecord: sym(&lib, p, "hipEventRecord")?,
                hipEventSynchronize: sym(&lib, p, "hipEventSynchronize")?,
                hipEventElapsedTime: sym(&lib, p, "hipEventElapsedTime")?,
                _lib: lib,
                path,
            })
        }
    }
}
