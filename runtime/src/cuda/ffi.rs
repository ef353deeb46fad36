//! Run-time loading of the CUDA driver (`libcuda.so.1`) and the driver-API declarations this crate uses.
//!
//! `libcuda` is never linked: binaries of this crate start on machines without an NVIDIA driver, and the first
//! CUDA call reports a typed "no NVIDIA GPU" error. Declarations follow `cuda.h` (CUDA 12): `CUresult`,
//! `CUdevice` and the attribute/JIT-option enums are `int`, handles are opaque pointers, `CUdeviceptr` is a
//! 64-bit integer; the `_v2` entry points are the ones `cuda.h` maps the plain names to.

use std::ffi::{c_char, c_int, c_uint, c_void, OsString};
use std::sync::OnceLock;

use libloading::Library;

pub type CuResult = c_int;
pub type CuDevice = c_int;
pub type CuDevicePtr = u64;
pub type CuContext = *mut c_void;
pub type CuModule = *mut c_void;
pub type CuFunction = *mut c_void;
pub type CuStream = *mut c_void;
pub type CuEvent = *mut c_void;

pub const CUDA_SUCCESS: CuResult = 0;
pub const CUDA_ERROR_NO_DEVICE: CuResult = 100;

/// `CUdevice_attribute` values.
pub const ATTR_MAX_SHARED_MEMORY_PER_BLOCK: c_int = 8;
/// `CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN`.
pub const ATTR_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: c_int = 97;
/// `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`.
pub const FUNC_ATTR_MAX_DYNAMIC_SHARED_SIZE_BYTES: c_int = 8;
pub const ATTR_MULTIPROCESSOR_COUNT: c_int = 16;
pub const ATTR_L2_CACHE_SIZE: c_int = 38;
pub const ATTR_COMPUTE_CAPABILITY_MAJOR: c_int = 75;
pub const ATTR_COMPUTE_CAPABILITY_MINOR: c_int = 76;

/// `CUjit_option` values.
pub const JIT_ERROR_LOG_BUFFER: c_int = 5;
pub const JIT_ERROR_LOG_BUFFER_SIZE_BYTES: c_int = 6;

/// `CU_LAUNCH_PARAM_END`, `CU_LAUNCH_PARAM_BUFFER_POINTER`, `CU_LAUNCH_PARAM_BUFFER_SIZE` (`(void*)0..2`).
pub const LAUNCH_PARAM_END: usize = 0;
pub const LAUNCH_PARAM_BUFFER_POINTER: usize = 1;
pub const LAUNCH_PARAM_BUFFER_SIZE: usize = 2;

/// `CUresult` names (cuda.h, CUDA 12), used when `cuGetErrorName` is unavailable.
pub const ERROR_NAMES: &[(CuResult, &str)] = &[
    (0, "CUDA_SUCCESS"),
    (1, "CUDA_ERROR_INVALID_VALUE"),
    (2, "CUDA_ERROR_OUT_OF_MEMORY"),
    (3, "CUDA_ERROR_NOT_INITIALIZED"),
    (4, "CUDA_ERROR_DEINITIALIZED"),
    (34, "CUDA_ERROR_STUB_LIBRARY"),
    (46, "CUDA_ERROR_DEVICE_UNAVAILABLE"),
    (100, "CUDA_ERROR_NO_DEVICE"),
    (101, "CUDA_ERROR_INVALID_DEVICE"),
    (102, "CUDA_ERROR_DEVICE_NOT_LICENSED"),
    (200, "CUDA_ERROR_INVALID_IMAGE"),
    (201, "CUDA_ERROR_INVALID_CONTEXT"),
    (209, "CUDA_ERROR_NO_BINARY_FOR_GPU"),
    (218, "CUDA_ERROR_INVALID_PTX"),
    (221, "CUDA_ERROR_JIT_COMPILER_NOT_FOUND"),
    (222, "CUDA_ERROR_UNSUPPORTED_PTX_VERSION"),
    (223, "CUDA_ERROR_JIT_COMPILATION_DISABLED"),
    (300, "CUDA_ERROR_INVALID_SOURCE"),
    (301, "CUDA_ERROR_FILE_NOT_FOUND"),
    (400, "CUDA_ERROR_INVALID_HANDLE"),
    (500, "CUDA_ERROR_NOT_FOUND"),
    (600, "CUDA_ERROR_NOT_READY"),
    (700, "CUDA_ERROR_ILLEGAL_ADDRESS"),
    (701, "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES"),
    (702, "CUDA_ERROR_LAUNCH_TIMEOUT"),
    (714, "CUDA_ERROR_HARDWARE_STACK_ERROR"),
    (715, "CUDA_ERROR_ILLEGAL_INSTRUCTION"),
    (716, "CUDA_ERROR_MISALIGNED_ADDRESS"),
    (717, "CUDA_ERROR_INVALID_ADDRESS_SPACE"),
    (718, "CUDA_ERROR_INVALID_PC"),
    (719, "CUDA_ERROR_LAUNCH_FAILED"),
    (801, "CUDA_ERROR_NOT_SUPPORTED"),
    (803, "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH"),
    (804, "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE"),
    (999, "CUDA_ERROR_UNKNOWN"),
];

/// The driver functions this crate calls.
#[allow(non_snake_case)]
pub struct Api {
    _lib: Library,
    pub path: String,
    pub cuInit: unsafe extern "C" fn(c_uint) -> CuResult,
    pub cuDriverGetVersion: unsafe extern "C" fn(*mut c_int) -> CuResult,
    pub cuGetErrorName: unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult,
    pub cuDeviceGetCount: unsafe extern "C" fn(*mut c_int) -> CuResult,
    pub cuDeviceGet: unsafe extern "C" fn(*mut CuDevice, c_int) -> CuResult,
    pub cuDeviceGetName: unsafe extern "C" fn(*mut c_char, c_int, CuDevice) -> CuResult,
    pub cuDeviceGetAttribute: unsafe extern "C" fn(*mut c_int, c_int, CuDevice) -> CuResult,
    pub cuDeviceTotalMem_v2: unsafe extern "C" fn(*mut usize, CuDevice) -> CuResult,
    pub cuDevicePrimaryCtxRetain: unsafe extern "C" fn(*mut CuContext, CuDevice) -> CuResult,
    pub cuDevicePrimaryCtxRelease_v2: unsafe extern "C" fn(CuDevice) -> CuResult,
    pub cuCtxSetCurrent: unsafe extern "C" fn(CuContext) -> CuResult,
    pub cuCtxSynchronize: unsafe extern "C" fn() -> CuResult,
    pub cuMemAlloc_v2: unsafe extern "C" fn(*mut CuDevicePtr, usize) -> CuResult,
    pub cuMemFree_v2: unsafe extern "C" fn(CuDevicePtr) -> CuResult,
    pub cuMemcpyHtoD_v2: unsafe extern "C" fn(CuDevicePtr, *const c_void, usize) -> CuResult,
    pub cuMemcpyDtoH_v2: unsafe extern "C" fn(*mut c_void, CuDevicePtr, usize) -> CuResult,
    pub cuMemsetD8Async: unsafe extern "C" fn(CuDevicePtr, u8, usize, CuStream) -> CuResult,
    pub cuModuleLoadDataEx: unsafe extern "C" fn(
        *mut CuModule,
        *const c_void,
        c_uint,
        *mut c_int,
        *mut *mut c_void,
    ) -> CuResult,
    pub cuModuleUnload: unsafe extern "C" fn(CuModule) -> CuResult,
    pub cuModuleGetFunction:
        unsafe extern "C" fn(*mut CuFunction, CuModule, *const c_char) -> CuResult,
    pub cuFuncSetAttribute: unsafe extern "C" fn(CuFunction, c_int, c_int) -> CuResult,
    #[allow(clippy::type_complexity)]
    pub cuLaunchKernel: unsafe extern "C" fn(
        CuFunction,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        CuStream,
        *mut *mut c_void,
        *mut *mut c_void,
    ) -> CuResult,
    pub cuStreamCreate: unsafe extern "C" fn(*mut CuStream, c_uint) -> CuResult,
    pub cuStreamDestroy_v2: unsafe extern "C" fn(CuStream) -> CuResult,
    pub cuStreamSynchronize: unsafe extern "C" fn(CuStream) -> CuResult,
    pub cuEventCreate: unsafe extern "C" fn(*mut CuEvent, c_uint) -> CuResult,
    pub cuEventDestroy_v2: unsafe extern "C" fn(CuEvent) -> CuResult,
    pub cuEventRecord: unsafe extern "C" fn(CuEvent, CuStream) -> CuResult,
    pub cuEventSynchronize: unsafe extern "C" fn(CuEvent) -> CuResult,
    pub cuEventElapsedTime: unsafe extern "C" fn(*mut f32, CuEvent, CuEvent) -> CuResult,
}

/// Overrides the driver library's path.
pub const LIBRARY_ENV: &str = "NIBBLE_CUDA_LIBRARY";

/// `$NIBBLE_CUDA_LIBRARY` alone if set, else `libcuda.so.1`, `libcuda.so`.
pub fn default_candidates() -> Vec<OsString> {
    if let Some(p) = std::env::var_os(LIBRARY_ENV) {
        return vec![p];
    }
    vec!["libcuda.so.1".into(), "libcuda.so".into()]
}

/// # Safety
/// `T` must be the exact C signature of `name`.
unsafe fn sym<T: Copy>(lib: &Library, path: &str, name: &str) -> Result<T, String> {
    // SAFETY: the caller guarantees the signature; `Api` keeps `lib` alive as long as the pointers.
    unsafe { lib.get::<T>(name.as_bytes()) }
        .map(|s| *s)
        .map_err(|_| format!("{path} has no symbol {name}"))
}

impl Api {
    /// Opens the first loadable candidate and resolves every function; the error says what was tried.
    pub fn load_from(candidates: &[OsString]) -> Result<Api, String> {
        let mut tried = vec![];
        for cand in candidates {
            let shown = cand.to_string_lossy().into_owned();
            // SAFETY: libcuda's initializers only set up internal state; the driver initializes in cuInit.
            let lib = match unsafe { Library::new(cand) } {
                Ok(l) => l,
                Err(e) => {
                    tried.push(format!("{shown}: {e}"));
                    continue;
                }
            };
            let p = shown.as_str();
            // SAFETY (every `sym` below): the types are transcribed from cuda.h for these exact symbols.
            unsafe {
                return Ok(Api {
                    cuInit: sym(&lib, p, "cuInit")?,
                    cuDriverGetVersion: sym(&lib, p, "cuDriverGetVersion")?,
                    cuGetErrorName: sym(&lib, p, "cuGetErrorName")?,
                    cuDeviceGetCount: sym(&lib, p, "cuDeviceGetCount")?,
                    cuDeviceGet: sym(&lib, p, "cuDeviceGet")?,
                    cuDeviceGetName: sym(&lib, p, "cuDeviceGetName")?,
                    cuDeviceGetAttribute: sym(&lib, p, "cuDeviceGetAttribute")?,
                    cuDeviceTotalMem_v2: sym(&lib, p, "cuDeviceTotalMem_v2")?,
                    cuDevicePrimaryCtxRetain: sym(&lib, p, "cuDevicePrimaryCtxRetain")?,
                    cuDevicePrimaryCtxRelease_v2: sym(&lib, p, "cuDevicePrimaryCtxRelease_v2")?,
                    cuCtxSetCurrent: sym(&lib, p, "cuCtxSetCurrent")?,
                    cuCtxSynchronize: sym(&lib, p, "cuCtxSynchronize")?,
                    cuMemAlloc_v2: sym(&lib, p, "cuMemAlloc_v2")?,
                    cuMemFree_v2: sym(&lib, p, "cuMemFree_v2")?,
                    cuMemcpyHtoD_v2: sym(&lib, p, "cuMemcpyHtoD_v2")?,
                    cuMemcpyDtoH_v2: sym(&lib, p, "cuMemcpyDtoH_v2")?,
                    cuMemsetD8Async: sym(&lib, p, "cuMemsetD8Async")?,
                    cuModuleLoadDataEx: sym(&lib, p, "cuModuleLoadDataEx")?,
                    cuModuleUnload: sym(&lib, p, "cuModuleUnload")?,
                    cuModuleGetFunction: sym(&lib, p, "cuModuleGetFunction")?,
                    cuFuncSetAttribute: sym(&lib, p, "cuFuncSetAttribute")?,
                    cuLaunchKernel: sym(&lib, p, "cuLaunchKernel")?,
                    cuStreamCreate: sym(&lib, p, "cuStreamCreate")?,
                    cuStreamDestroy_v2: sym(&lib, p, "cuStreamDestroy_v2")?,
                    cuStreamSynchronize: sym(&lib, p, "cuStreamSynchronize")?,
                    cuEventCreate: sym(&lib, p, "cuEventCreate")?,
                    cuEventDestroy_v2: sym(&lib, p, "cuEventDestroy_v2")?,
                    cuEventRecord: sym(&lib, p, "cuEventRecord")?,
                    cuEventSynchronize: sym(&lib, p, "cuEventSynchronize")?,
                    cuEventElapsedTime: sym(&lib, p, "cuEventElapsedTime")?,
                    path: shown,
                    _lib: lib,
                });
            }
        }
        Err(format!(
            "the CUDA driver library could not be loaded ({})",
            tried.join("; ")
        ))
    }
}

/// The process-wide driver, loaded on first use and never unloaded.
pub fn api() -> Result<&'static Api, String> {
    static API: OnceLock<Result<Api, String>> = OnceLock::new();
    API.get_or_init(|| Api::load_from(&default_candidates()))
        .as_ref()
        .map_err(Clone::clone)
}
