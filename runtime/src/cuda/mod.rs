//! The CUDA layer for sm_80/sm_90 kernels: device, primary context, device buffers, streams, events, PTX modules
//! and kernel launches, as safe wrappers over the CUDA driver API.
//!
//! - `libcuda` is **not linked**: it is opened at run time ([`ffi`]). Without it, or without a device,
//!   [`Device::open`] fails with [`CudaError::NoDevice`] ("no NVIDIA GPU: <reason>").
//! - Every failing call is a [`CudaError::Call`] with the driver's error name (`CUDA_ERROR_INVALID_PTX`, ...).
//! - PTX is JIT-compiled by the driver with `cuModuleLoadData(Ex)`; a JIT failure carries the driver's error log.
//! - A kernel is refused before loading if its `sm_XY` exceeds the device's compute capability.
//! - Each call first makes the device's primary context current on the calling thread.
//!
//! Status: compiled and tested here only up to the no-driver path (no NVIDIA GPU on this project's build
//! machine); `nibble-rt check` is the on-hardware test.

pub mod ffi;
pub mod timing;

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::Arc;

use thiserror::Error;

use crate::launch::{check_values, ArgValue, BufferArg, KernargLayout, LaunchError};
use crate::manifest::{ArgRole, Manifest};
use ffi::{
    Api, CuContext, CuDevice, CuDevicePtr, CuEvent, CuFunction, CuModule, CuResult, CuStream,
};

/// Selects the device (`0` when unset).
pub const DEVICE_ENV: &str = "NIBBLE_CUDA_DEVICE";

/// An error of the CUDA layer; every variant displays as one line.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CudaError {
    #[error("no NVIDIA GPU: {reason}")]
    NoDevice { reason: String },
    #[error("{call} failed: {name} ({code})")]
    Call {
        call: &'static str,
        code: CuResult,
        name: String,
    },
    #[error("CUDA device {index} does not exist ({count} device(s) found)")]
    InvalidDevice { index: usize, count: usize },
    #[error("kernel {kernel} is compiled for {arch}, but the CUDA device {device} has compute capability {major}.{minor}")]
    ArchMismatch {
        kernel: String,
        arch: String,
        device: String,
        major: u32,
        minor: u32,
    },
    #[error("kernel {kernel}: the driver could not compile the PTX: {name}: {log}")]
    Jit {
        kernel: String,
        name: String,
        log: String,
    },
    #[error("{0}")]
    InvalidArgument(String),
}

/// The driver's name for `code` (`cuGetErrorName`, else the table in [`ffi::ERROR_NAMES`]).
pub fn error_name(code: CuResult) -> String {
    if let Ok(api) = ffi::api() {
        let mut p: *const c_char = std::ptr::null();
        // SAFETY: `p` is a valid out-pointer; on success it points to a static NUL-terminated string.
        if unsafe { (api.cuGetErrorName)(code, &mut p) } == ffi::CUDA_SUCCESS && !p.is_null() {
            // SAFETY: the driver returns a static C string.
            return unsafe { std::ffi::CStr::from_ptr(p) }
                .to_string_lossy()
                .into_owned();
        }
    }
    ffi::ERROR_NAMES
        .iter()
        .find(|(c, _)| *c == code)
        .map_or_else(|| format!("CUresult({code})"), |(_, n)| (*n).to_string())
}

/// Errors after which the CUDA context is unusable: every later call in the process returns the same error (a
/// kernel fault; the driver documents these as sticky).
pub const STICKY_ERRORS: &[CuResult] = &[700, 714, 715, 716, 717, 718, 719];

impl CudaError {
    /// Whether this is a kernel fault that leaves the context unusable (`STICKY_ERRORS`).
    pub fn is_sticky(&self) -> bool {
        matches!(self, CudaError::Call { code, .. } if STICKY_ERRORS.contains(code))
    }
}

fn check(call: &'static str, code: CuResult) -> Result<(), CudaError> {
    if code == ffi::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(CudaError::Call {
            call,
            code,
            name: error_name(code),
        })
    }
}

/// What `nibble-rt info` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub index: usize,
    pub name: String,
    pub major: u32,
    pub minor: u32,
    pub sm_count: u32,
    pub l2_bytes: u32,
    pub max_shared_per_block: u32,
    /// Shared memory a block may opt into (dynamic shared memory above the static 48 KiB).
    pub max_shared_per_block_optin: u32,
    pub total_mem_bytes: u64,
    /// `cuDriverGetVersion`, e.g. 12040.
    pub driver_version: i32,
    pub library: String,
}

struct DeviceInner {
    api: &'static Api,
    dev: CuDevice,
    ctx: CuContext,
    info: DeviceInfo,
}

// SAFETY: CUDA contexts and the driver API are thread-safe; the context is made current per call.
unsafe impl Send for DeviceInner {}
// SAFETY: as above.
unsafe impl Sync for DeviceInner {}

impl Drop for DeviceInner {
    fn drop(&mut self) {
        // SAFETY: releases the primary-context reference retained in `Device::open`.
        unsafe { (self.api.cuDevicePrimaryCtxRelease_v2)(self.dev) };
    }
}

/// A CUDA device with its retained primary context. Cheap to clone.
#[derive(Clone)]
pub struct Device {
    inner: Arc<DeviceInner>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("info", &self.inner.info)
            .finish()
    }
}

/// The device index from [`DEVICE_ENV`] (0 when unset).
pub fn default_index() -> Result<usize, CudaError> {
    match std::env::var(DEVICE_ENV) {
        Ok(s) => s.trim().parse().map_err(|_| {
            CudaError::InvalidArgument(format!("{DEVICE_ENV}={s:?} is not a device index"))
        }),
        Err(_) => Ok(0),
    }
}

impl Device {
    /// Opens device `index`: loads the driver, `cuInit`, retains the primary context.
    pub fn open(index: usize) -> Result<Device, CudaError> {
        let api = ffi::api().map_err(|reason| CudaError::NoDevice { reason })?;
        // SAFETY: plain driver calls with valid out-pointers.
        let rc = unsafe { (api.cuInit)(0) };
        if rc != ffi::CUDA_SUCCESS {
            return Err(CudaError::NoDevice {
                reason: format!("cuInit failed: {} ({rc})", error_name(rc)),
            });
        }
        let mut count: c_int = 0;
        // SAFETY: valid out-pointer.
        let rc = unsafe { (api.cuDeviceGetCount)(&mut count) };
        if rc != ffi::CUDA_SUCCESS || count <= 0 {
            return Err(CudaError::NoDevice {
                reason: if rc == ffi::CUDA_SUCCESS {
                    "the driver reports 0 devices".into()
                } else {
                    format!("cuDeviceGetCount failed: {}", error_name(rc))
                },
            });
        }
        if index >= count as usize {
            return Err(CudaError::InvalidDevice {
                index,
                count: count as usize,
            });
        }
        let mut dev: CuDevice = 0;
        // SAFETY: valid out-pointer; index < count.
        check("cuDeviceGet", unsafe {
            (api.cuDeviceGet)(&mut dev, index as c_int)
        })?;
        let mut ctx: CuContext = std::ptr::null_mut();
        // SAFETY: valid out-pointer and device.
        check("cuDevicePrimaryCtxRetain", unsafe {
            (api.cuDevicePrimaryCtxRetain)(&mut ctx, dev)
        })?;
        let info = match query(api, index, dev, ctx) {
            Ok(i) => i,
            Err(e) => {
                // SAFETY: balances the retain above.
                unsafe { (api.cuDevicePrimaryCtxRelease_v2)(dev) };
                return Err(e);
            }
        };
        Ok(Device {
            inner: Arc::new(DeviceInner {
                api,
                dev,
                ctx,
                info,
            }),
        })
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.inner.info
    }

    fn api(&self) -> &'static Api {
        self.inner.api
    }

    /// Makes the primary context current on this thread.
    fn bind(&self) -> Result<(), CudaError> {
        // SAFETY: the context is retained for the life of `inner`.
        check("cuCtxSetCurrent", unsafe {
            (self.api().cuCtxSetCurrent)(self.inner.ctx)
        })
    }

    /// The kernel fault that has made this device's context unusable, if one has (what `cuCtxSynchronize`
    /// reports then; other errors are not the context's state and give None).
    pub fn sticky_fault(&self) -> Option<CudaError> {
        self.synchronize().err().filter(CudaError::is_sticky)
    }

    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.bind()?;
        // SAFETY: a context is current.
        check("cuCtxSynchronize", unsafe {
            (self.api().cuCtxSynchronize)()
        })
    }

    /// Uninitialized device memory of `bytes` bytes holding elements named `elem` (`u8`, `u32`, `bf16`, ...).
    pub fn alloc(&self, bytes: usize, elem: &'static str) -> Result<DeviceBuffer, CudaError> {
        self.bind()?;
        let mut ptr: CuDevicePtr = 0;
        // SAFETY: valid out-pointer; a current context. Zero-byte requests allocate one byte (never read).
        check("cuMemAlloc", unsafe {
            (self.api().cuMemAlloc_v2)(&mut ptr, bytes.max(1))
        })?;
        Ok(DeviceBuffer {
            device: self.clone(),
            ptr,
            bytes,
            elem,
        })
    }

    /// A device copy of `data` (little-endian bytes of `elem` values).
    pub fn upload(&self, data: &[u8], elem: &'static str) -> Result<DeviceBuffer, CudaError> {
        let b = self.alloc(data.len(), elem)?;
        b.write(data)?;
        Ok(b)
    }

    pub fn upload_u16(&self, data: &[u16], elem: &'static str) -> Result<DeviceBuffer, CudaError> {
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.upload(&bytes, elem)
    }

    pub fn upload_u32(&self, data: &[u32], elem: &'static str) -> Result<DeviceBuffer, CudaError> {
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.upload(&bytes, elem)
    }

    pub fn stream(&self) -> Result<Stream, CudaError> {
        self.bind()?;
        let mut s: CuStream = std::ptr::null_mut();
        // SAFETY: valid out-pointer, current context.
        check("cuStreamCreate", unsafe {
            (self.api().cuStreamCreate)(&mut s, 0)
        })?;
        Ok(Stream {
            device: self.clone(),
            raw: s,
        })
    }

    pub fn event(&self) -> Result<Event, CudaError> {
        self.bind()?;
        let mut e: CuEvent = std::ptr::null_mut();
        // SAFETY: valid out-pointer; flags 0 (timing enabled).
        check("cuEventCreate", unsafe {
            (self.api().cuEventCreate)(&mut e, 0)
        })?;
        Ok(Event {
            device: self.clone(),
            raw: e,
        })
    }
}

fn query(
    api: &'static Api,
    index: usize,
    dev: CuDevice,
    ctx: CuContext,
) -> Result<DeviceInfo, CudaError> {
    // SAFETY (all calls): valid out-pointers and a valid device.
    check("cuCtxSetCurrent", unsafe { (api.cuCtxSetCurrent)(ctx) })?;
    let mut name = [0u8; 256];
    check("cuDeviceGetName", unsafe {
        (api.cuDeviceGetName)(name.as_mut_ptr().cast::<c_char>(), 255, dev)
    })?;
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    let attr = |call: &'static str, a: c_int| -> Result<u32, CudaError> {
        let mut v: c_int = 0;
        check(call, unsafe { (api.cuDeviceGetAttribute)(&mut v, a, dev) })?;
        Ok(v.max(0) as u32)
    };
    let mut mem: usize = 0;
    check("cuDeviceTotalMem", unsafe {
        (api.cuDeviceTotalMem_v2)(&mut mem, dev)
    })?;
    let mut driver_version: c_int = 0;
    check("cuDriverGetVersion", unsafe {
        (api.cuDriverGetVersion)(&mut driver_version)
    })?;
    Ok(DeviceInfo {
        index,
        name: String::from_utf8_lossy(&name[..end]).into_owned(),
        major: attr(
            "cuDeviceGetAttribute(CC major)",
            ffi::ATTR_COMPUTE_CAPABILITY_MAJOR,
        )?,
        minor: attr(
            "cuDeviceGetAttribute(CC minor)",
            ffi::ATTR_COMPUTE_CAPABILITY_MINOR,
        )?,
        sm_count: attr(
            "cuDeviceGetAttribute(SM count)",
            ffi::ATTR_MULTIPROCESSOR_COUNT,
        )?,
        l2_bytes: attr("cuDeviceGetAttribute(L2 size)", ffi::ATTR_L2_CACHE_SIZE)?,
        max_shared_per_block: attr(
            "cuDeviceGetAttribute(shared per block)",
            ffi::ATTR_MAX_SHARED_MEMORY_PER_BLOCK,
        )?,
        max_shared_per_block_optin: attr(
            "cuDeviceGetAttribute(shared per block, opt-in)",
            ffi::ATTR_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
        )?,
        total_mem_bytes: mem as u64,
        driver_version,
        library: api.path.clone(),
    })
}

/// Checks the manifest's shared memory against the device: static bytes within the per-block limit, static plus
/// dynamic bytes within what a block may opt into (a limit of 0 means the driver did not say).
pub fn check_shared_memory(info: &DeviceInfo, manifest: &Manifest) -> Result<(), String> {
    let (stat, dynamic) = (manifest.launch.lds_bytes, manifest.launch.dynamic_lds_bytes);
    let smem_max = info.max_shared_per_block;
    if smem_max != 0 && stat > smem_max {
        return Err(format!(
            "the kernel needs {stat} bytes of shared memory, the device allows {smem_max} per block"
        ));
    }
    let optin = info.max_shared_per_block_optin;
    if dynamic > 0 && optin != 0 && stat.saturating_add(dynamic) > optin {
        return Err(format!(
            "the kernel needs {dynamic} bytes of dynamic shared memory, the device allows {optin} per block"
        ));
    }
    Ok(())
}

/// Checks that a kernel for `manifest.arch` (`sm_XY`, `sm_XYa`) can run on a device of compute capability
/// `major.minor`: `XY` must not exceed it (PTX is JIT-compiled forward), and arch-specific `sm_XYa` must match it.
pub fn check_arch(info: &DeviceInfo, manifest: &Manifest) -> Result<(), CudaError> {
    let mismatch = || CudaError::ArchMismatch {
        kernel: manifest.kernel.clone(),
        arch: manifest.arch.clone(),
        device: info.name.clone(),
        major: info.major,
        minor: info.minor,
    };
    let (maj, min, specific) = crate::ptx::parse_sm(&manifest.arch).ok_or_else(mismatch)?;
    let ok = if specific {
        (maj, min) == (info.major, info.minor)
    } else {
        (maj, min) <= (info.major, info.minor)
    };
    if ok {
        Ok(())
    } else {
        Err(mismatch())
    }
}

/// Untyped device memory; freed on drop.
pub struct DeviceBuffer {
    device: Device,
    ptr: CuDevicePtr,
    bytes: usize,
    elem: &'static str,
}

impl DeviceBuffer {
    pub fn len_bytes(&self) -> usize {
        self.bytes
    }

    pub fn device_ptr(&self) -> u64 {
        self.ptr
    }

    pub fn elem(&self) -> &'static str {
        self.elem
    }

    /// The buffer as a kernel argument.
    pub fn as_arg(&self) -> BufferArg<'_> {
        // SAFETY: a live allocation of `bytes` bytes holding `elem` values, borrowed for the argument's lifetime.
        unsafe { BufferArg::from_raw(self.ptr, self.bytes, self.elem) }
    }

    /// Copies `data` to the start of the buffer (synchronous).
    pub fn write(&self, data: &[u8]) -> Result<(), CudaError> {
        if data.len() > self.bytes {
            return Err(CudaError::InvalidArgument(format!(
                "copy of {} bytes into a {}-byte buffer",
                data.len(),
                self.bytes
            )));
        }
        if data.is_empty() {
            return Ok(());
        }
        self.device.bind()?;
        // SAFETY: `data` is readable for its length, which fits the allocation.
        check("cuMemcpyHtoD", unsafe {
            (self.device.api().cuMemcpyHtoD_v2)(
                self.ptr,
                data.as_ptr().cast::<c_void>(),
                data.len(),
            )
        })
    }

    /// The buffer's contents (synchronous).
    pub fn read(&self) -> Result<Vec<u8>, CudaError> {
        let mut out = vec![0u8; self.bytes];
        if self.bytes == 0 {
            return Ok(out);
        }
        self.device.bind()?;
        // SAFETY: `out` is writable for `bytes` bytes, the size of the allocation.
        check("cuMemcpyDtoH", unsafe {
            (self.device.api().cuMemcpyDtoH_v2)(
                out.as_mut_ptr().cast::<c_void>(),
                self.ptr,
                self.bytes,
            )
        })?;
        Ok(out)
    }

    pub fn read_u16(&self) -> Result<Vec<u16>, CudaError> {
        Ok(self
            .read()?
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect())
    }

    /// Enqueues a memset of the whole buffer to `value` on `stream`.
    pub fn memset(&self, stream: &Stream, value: u8) -> Result<(), CudaError> {
        self.device.bind()?;
        // SAFETY: the range is the allocation; the stream is live.
        check("cuMemsetD8Async", unsafe {
            (self.device.api().cuMemsetD8Async)(self.ptr, value, self.bytes, stream.raw)
        })
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        if self.device.bind().is_ok() {
            // SAFETY: frees the allocation made in `alloc` (cuMemFree waits for pending work using it).
            unsafe { (self.device.api().cuMemFree_v2)(self.ptr) };
        }
    }
}

/// A CUDA stream; destroyed on drop.
pub struct Stream {
    device: Device,
    raw: CuStream,
}

// SAFETY: stream handles may be used from any thread.
unsafe impl Send for Stream {}
// SAFETY: as above.
unsafe impl Sync for Stream {}

impl Stream {
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.device.bind()?;
        // SAFETY: live stream.
        check("cuStreamSynchronize", unsafe {
            (self.device.api().cuStreamSynchronize)(self.raw)
        })
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if self.device.bind().is_ok() {
            // SAFETY: destroys the stream created in `Device::stream`.
            unsafe { (self.device.api().cuStreamDestroy_v2)(self.raw) };
        }
    }
}

/// A timing event; destroyed on drop.
pub struct Event {
    device: Device,
    raw: CuEvent,
}

// SAFETY: event handles may be used from any thread.
unsafe impl Send for Event {}
// SAFETY: as above.
unsafe impl Sync for Event {}

impl Event {
    pub fn record(&self, stream: &Stream) -> Result<(), CudaError> {
        self.device.bind()?;
        // SAFETY: live event and stream.
        check("cuEventRecord", unsafe {
            (self.device.api().cuEventRecord)(self.raw, stream.raw)
        })
    }

    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.device.bind()?;
        // SAFETY: live event.
        check("cuEventSynchronize", unsafe {
            (self.device.api().cuEventSynchronize)(self.raw)
        })
    }

    /// Milliseconds from `self` to `end` (both recorded and complete).
    pub fn elapsed_ms(&self, end: &Event) -> Result<f32, CudaError> {
        self.device.bind()?;
        let mut ms = 0f32;
        // SAFETY: valid out-pointer, live events.
        check("cuEventElapsedTime", unsafe {
            (self.device.api().cuEventElapsedTime)(&mut ms, self.raw, end.raw)
        })?;
        Ok(ms)
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        if self.device.bind().is_ok() {
            // SAFETY: destroys the event created in `Device::event`.
            unsafe { (self.device.api().cuEventDestroy_v2)(self.raw) };
        }
    }
}

struct ModuleInner {
    device: Device,
    raw: CuModule,
}

impl Drop for ModuleInner {
    fn drop(&mut self) {
        if self.device.bind().is_ok() {
            // SAFETY: unloads the module loaded in `CudaKernel::load`.
            unsafe { (self.device.api().cuModuleUnload)(self.raw) };
        }
    }
}

/// A PTX kernel loaded on a device, with its manifest and checked kernarg layout.
pub struct CudaKernel {
    manifest: Manifest,
    layout: KernargLayout,
    module: ModuleInner,
    function: CuFunction,
}

// SAFETY: module and function handles may be used from any thread (the context is bound per call).
unsafe impl Send for CudaKernel {}
// SAFETY: as above.
unsafe impl Sync for CudaKernel {}

/// JIT-loads a NUL-terminated PTX image and looks up its entry `symbol`; a JIT failure carries the driver's error
/// log, attributed to `kernel`.
fn load_entry(
    device: &Device,
    image: &CStr,
    symbol: &CStr,
    kernel: &str,
) -> Result<(ModuleInner, CuFunction), CudaError> {
    device.bind()?;
    let api = device.api();
    let mut log = vec![0u8; 16384];
    let mut opts: [c_int; 2] = [
        ffi::JIT_ERROR_LOG_BUFFER,
        ffi::JIT_ERROR_LOG_BUFFER_SIZE_BYTES,
    ];
    let mut vals: [*mut c_void; 2] = [log.as_mut_ptr().cast::<c_void>(), log.len() as *mut c_void];
    let mut module: CuModule = std::ptr::null_mut();
    // SAFETY: `image` is a NUL-terminated PTX string; the option arrays have 2 entries each; the log buffer is
    // writable for the size given (passed by value in the pointer, as the JIT options require).
    let rc = unsafe {
        (api.cuModuleLoadDataEx)(
            &mut module,
            image.as_ptr().cast::<c_void>(),
            2,
            opts.as_mut_ptr(),
            vals.as_mut_ptr(),
        )
    };
    if rc != ffi::CUDA_SUCCESS {
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        let text = String::from_utf8_lossy(&log[..end]).replace('\n', " | ");
        return Err(CudaError::Jit {
            kernel: kernel.to_string(),
            name: error_name(rc),
            log: if text.trim().is_empty() {
                "(no log)".into()
            } else {
                text
            },
        });
    }
    let module = ModuleInner {
        device: device.clone(),
        raw: module,
    };
    let mut function: CuFunction = std::ptr::null_mut();
    // SAFETY: valid out-pointer, live module, NUL-terminated name.
    check("cuModuleGetFunction", unsafe {
        (api.cuModuleGetFunction)(&mut function, module.raw, symbol.as_ptr())
    })?;
    Ok((module, function))
}

impl CudaKernel {
    /// Checks the device's capability against the manifest, the PTX against the manifest
    /// ([`crate::ptx::check_against_manifest`]) and the launch geometry, then JIT-loads the PTX and looks up the
    /// entry.
    pub fn load(
        device: &Device,
        manifest: &Manifest,
        ptx: &[u8],
    ) -> Result<CudaKernel, LaunchError> {
        check_arch(device.info(), manifest)?;
        crate::ptx::check_against_manifest(ptx, manifest).map_err(|e| {
            LaunchError::Inconsistent {
                kernel: manifest.kernel.clone(),
                what: e.to_string(),
            }
        })?;
        let layout = KernargLayout::from_manifest(manifest)?;
        let inconsistent = |what: String| LaunchError::Inconsistent {
            kernel: manifest.kernel.clone(),
            what,
        };
        let b = manifest.launch.block;
        let threads: u32 = b.iter().product();
        if threads == 0 || threads > 1024 || !b[0].is_multiple_of(32) {
            return Err(inconsistent(format!(
                "block {b:?} is not a launchable CUDA block of whole warps"
            )));
        }
        check_shared_memory(device.info(), manifest).map_err(inconsistent)?;
        let dynamic = manifest.launch.dynamic_lds_bytes;
        let text = ptx.strip_suffix(&[0]).unwrap_or(ptx);
        let image =
            CString::new(text).map_err(|_| inconsistent("the PTX contains a NUL byte".into()))?;
        let sym = CString::new(manifest.symbol.as_str())
            .map_err(|_| inconsistent("the symbol contains a NUL byte".into()))?;
        let (module, function) =
            load_entry(device, &image, &sym, &manifest.kernel).map_err(LaunchError::Cuda)?;
        if dynamic > 0 {
            let bytes = i32::try_from(dynamic)
                .map_err(|_| inconsistent(format!("dynamic_lds_bytes {dynamic} is too large")))?;
            device.bind().map_err(LaunchError::Cuda)?;
            // SAFETY: `function` was just looked up in the live `module`; the attribute takes an int.
            check("cuFuncSetAttribute", unsafe {
                (device.api().cuFuncSetAttribute)(
                    function,
                    ffi::FUNC_ATTR_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    bytes,
                )
            })
            .map_err(LaunchError::Cuda)?;
        }
        Ok(CudaKernel {
            manifest: manifest.clone(),
            layout,
            module,
            function,
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Enqueues the kernel for `m` rows on `stream` (with the manifest's dynamic shared memory). If `values` has no value for the M
    /// argument, `m` is used. Every check of [`check_values`] and [`KernargLayout::build`] runs first.
    pub fn launch(
        &self,
        stream: &Stream,
        m: u32,
        values: &[(ArgRole, ArgValue<'_>)],
    ) -> Result<(), LaunchError> {
        let mut all = values.to_vec();
        if let Some(slot) = self.layout.slots().iter().find(|s| s.role == ArgRole::M) {
            if !all.iter().any(|(r, _)| *r == ArgRole::M) {
                let v = i32::try_from(m).map_err(|_| LaunchError::MValue {
                    name: slot.name.clone(),
                    m,
                    value: i32::MAX,
                })?;
                all.push((ArgRole::M, ArgValue::I32(v)));
            }
        }
        check_values(&self.manifest, &self.layout, m, &all)?;
        let kernargs = self.layout.build(&all)?;
        let grid = self.manifest.launch.grid_for(m);
        if grid.contains(&0) {
            return Ok(());
        }
        if !Arc::ptr_eq(&stream.device.inner, &self.module.device.inner)
            && stream.device.info().index != self.module.device.info().index
        {
            return Err(LaunchError::Cuda(CudaError::InvalidArgument(
                "the stream belongs to another device than the kernel".into(),
            )));
        }
        let b = self.manifest.launch.block;
        let mut size = kernargs.len();
        let mut extra: [*mut c_void; 5] = [
            ffi::LAUNCH_PARAM_BUFFER_POINTER as *mut c_void,
            kernargs.as_bytes().as_ptr() as *mut c_void,
            ffi::LAUNCH_PARAM_BUFFER_SIZE as *mut c_void,
            (&mut size as *mut usize).cast::<c_void>(),
            ffi::LAUNCH_PARAM_END as *mut c_void,
        ];
        self.module.device.bind()?;
        // SAFETY: the kernarg buffer was checked against the PTX entry's parameters (count and sizes) at load and
        // filled from values of the right kinds; every buffer is live (borrowed by `values`) and large enough for
        // `m`; `extra` is the documented END-terminated buffer-pointer/size list, alive across the call.
        check("cuLaunchKernel", unsafe {
            (self.module.device.api().cuLaunchKernel)(
                self.function,
                grid[0],
                grid[1],
                grid[2],
                b[0],
                b[1],
                b[2],
                self.manifest.launch.dynamic_lds_bytes,
                stream.raw,
                std::ptr::null_mut(),
                extra.as_mut_ptr(),
            )
        })?;
        Ok(())
    }
}

/// A fixed utility kernel: reads a whole buffer through L2 (16-byte loads, grid-stride) and stores nothing unless
/// an impossible checksum turns up. Used between timed launches to evict a kernel's inputs from L2 with clean
/// lines only: a memset leaves tens of MB of dirty lines whose write-back would be charged to the next kernel.
const L2_FLUSH_PTX: &str = "\
.version 7.0
.target sm_80
.address_size 64
.visible .entry nibble_l2_flush(.param .u64 buf, .param .u64 vecs, .param .u64 sink)
{
  .reg .pred %p<3>;
  .reg .b32 %r<10>;
  .reg .b64 %rd<10>;
  ld.param.u64 %rd1, [buf];
  ld.param.u64 %rd2, [vecs];
  ld.param.u64 %rd3, [sink];
  cvta.to.global.u64 %rd1, %rd1;
  cvta.to.global.u64 %rd3, %rd3;
  mov.u32 %r1, %ctaid.x;
  mov.u32 %r2, %ntid.x;
  mov.u32 %r3, %tid.x;
  mov.u32 %r4, %nctaid.x;
  mul.wide.u32 %rd4, %r1, %r2;
  cvt.u64.u32 %rd5, %r3;
  add.u64 %rd4, %rd4, %rd5;
  mul.wide.u32 %rd6, %r4, %r2;
  mov.u32 %r5, 0;
  setp.ge.u64 %p1, %rd4, %rd2;
  @%p1 bra DONE;
LOOP:
  shl.b64 %rd7, %rd4, 4;
  add.u64 %rd8, %rd1, %rd7;
  ld.global.v4.u32 {%r6, %r7, %r8, %r9}, [%rd8];
  xor.b32 %r5, %r5, %r6;
  xor.b32 %r5, %r5, %r7;
  xor.b32 %r5, %r5, %r8;
  xor.b32 %r5, %r5, %r9;
  add.u64 %rd4, %rd4, %rd6;
  setp.lt.u64 %p2, %rd4, %rd2;
  @%p2 bra LOOP;
DONE:
  setp.ne.u32 %p1, %r5, 2052865567;
  @%p1 bra END;
  st.global.u32 [%rd3], %r5;
END:
  ret;
}
";

/// Evicts L2 by reading a device buffer (see `L2_FLUSH_PTX`).
pub struct L2Flush {
    buffer: DeviceBuffer,
    sink: DeviceBuffer,
    module: ModuleInner,
    function: CuFunction,
}

// SAFETY: as for `CudaKernel`.
unsafe impl Send for L2Flush {}
// SAFETY: as above.
unsafe impl Sync for L2Flush {}

impl L2Flush {
    /// A flush that reads `bytes` (rounded down to 16) of a fresh device buffer.
    pub fn new(device: &Device, bytes: usize) -> Result<L2Flush, CudaError> {
        let buffer = device.alloc(bytes, "u8")?;
        let sink = device.alloc(4, "u32")?;
        let image = CString::new(L2_FLUSH_PTX)
            .map_err(|_| CudaError::InvalidArgument("flush PTX contains a NUL byte".into()))?;
        let (module, function) = load_entry(device, &image, c"nibble_l2_flush", "nibble_l2_flush")?;
        Ok(L2Flush {
            buffer,
            sink,
            module,
            function,
        })
    }

    /// Enqueues the read on `stream`.
    pub fn run(&self, stream: &Stream) -> Result<(), CudaError> {
        let mut params = [0u8; 24];
        params[..8].copy_from_slice(&self.buffer.device_ptr().to_le_bytes());
        params[8..16].copy_from_slice(&((self.buffer.len_bytes() / 16) as u64).to_le_bytes());
        params[16..].copy_from_slice(&self.sink.device_ptr().to_le_bytes());
        let mut size = params.len();
        let mut extra: [*mut c_void; 5] = [
            ffi::LAUNCH_PARAM_BUFFER_POINTER as *mut c_void,
            params.as_mut_ptr().cast::<c_void>(),
            ffi::LAUNCH_PARAM_BUFFER_SIZE as *mut c_void,
            (&mut size as *mut usize).cast::<c_void>(),
            ffi::LAUNCH_PARAM_END as *mut c_void,
        ];
        let blocks = self.module.device.info().sm_count.max(1) * 8;
        self.module.device.bind()?;
        // SAFETY: the parameter buffer matches the entry's three u64 parameters; both buffers are alive in `self`;
        // `extra` is the END-terminated list and lives across the call.
        check("cuLaunchKernel", unsafe {
            (self.module.device.api().cuLaunchKernel)(
                self.function,
                blocks,
                1,
                1,
                256,
                1,
                1,
                0,
                stream.raw,
                std::ptr::null_mut(),
                extra.as_mut_ptr(),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_driver_open_reports_no_nvidia_gpu_in_one_line() {
        // This machine has no NVIDIA driver (libcuda absent); on one with a GPU the test checks nothing more.
        match Device::open(0) {
            Err(e) => {
                let t = e.to_string();
                assert!(matches!(e, CudaError::NoDevice { .. }), "{t}");
                assert!(t.starts_with("no NVIDIA GPU: "), "{t}");
                assert_eq!(t.lines().count(), 1, "{t}");
            }
            Ok(d) => assert!(d.info().major >= 1),
        }
    }

    #[test]
    fn a_missing_library_is_a_load_error_naming_what_was_tried() {
        let e = Api::load_from(&["/nonexistent/libcuda.so.1".into()])
            .err()
            .unwrap_or_default();
        assert!(e.contains("/nonexistent/libcuda.so.1"), "{e}");
    }

    #[test]
    fn error_names() {
        assert_eq!(error_name(218), "CUDA_ERROR_INVALID_PTX");
        assert_eq!(error_name(100), "CUDA_ERROR_NO_DEVICE");
        assert_eq!(error_name(12345), "CUresult(12345)");
    }

    /// An H100's facts and an sm_90 manifest.
    fn h100_and_sm90_manifest() -> (DeviceInfo, Manifest) {
        let info = DeviceInfo {
            index: 0,
            name: "H100".into(),
            major: 9,
            minor: 0,
            sm_count: 132,
            l2_bytes: 50 << 20,
            max_shared_per_block: 49152,
            max_shared_per_block_optin: 232448,
            total_mem_bytes: 80 << 30,
            driver_version: 12040,
            library: "libcuda.so.1".into(),
        };
        let base = crate::bundle::testutil::manifest(
            "k",
            "gfx942",
            256,
            512,
            crate::checkpoint::QuantScheme::Mxfp4,
            16,
            (1, 64),
            None,
            (16, 16),
        );
        (info, crate::bundle::testutil::sm90_manifest(&base).0)
    }

    #[test]
    fn capability_check() {
        let (info, mut m) = h100_and_sm90_manifest();
        assert_eq!(check_arch(&info, &m), Ok(()));
        m.arch = "sm_80".into();
        assert_eq!(check_arch(&info, &m), Ok(()));
        m.arch = "sm_90a".into();
        assert_eq!(check_arch(&info, &m), Ok(()));
        m.arch = "sm_100".into();
        let e = check_arch(&info, &m).expect_err("too new").to_string();
        assert!(e.contains("sm_100") && e.contains("9.0"), "{e}");
        let old = DeviceInfo {
            major: 8,
            minor: 6,
            ..info
        };
        m.arch = "sm_90".into();
        assert!(check_arch(&old, &m).is_err());
        m.arch = "sm_80a".into();
        assert!(check_arch(&old, &m).is_err());
    }

    #[test]
    fn shared_memory_check() {
        let (info, mut m) = h100_and_sm90_manifest();
        m.launch.lds_bytes = 0;
        m.launch.dynamic_lds_bytes = 232448;
        assert_eq!(check_shared_memory(&info, &m), Ok(()));
        m.launch.dynamic_lds_bytes = 232449;
        let e = check_shared_memory(&info, &m).expect_err("over the opt-in limit");
        assert!(e.contains("232449") && e.contains("232448"), "{e}");
        m.launch.dynamic_lds_bytes = 0;
        m.launch.lds_bytes = 49153;
        assert!(check_shared_memory(&info, &m)
            .expect_err("static")
            .contains("49152"));
        // A100-class device: 163 KiB opt-in.
        let a100 = DeviceInfo {
            max_shared_per_block_optin: 166912,
            ..info
        };
        m.launch.lds_bytes = 0;
        m.launch.dynamic_lds_bytes = 200 * 1024;
        assert!(check_shared_memory(&a100, &m).is_err());
    }

    #[test]
    fn kernel_faults_are_sticky_and_named_without_a_driver() {
        let call = |code| CudaError::Call {
            call: "cuStreamSynchronize",
            code,
            name: error_name(code),
        };
        for &code in STICKY_ERRORS {
            assert!(call(code).is_sticky(), "{code}");
            assert!(
                ffi::ERROR_NAMES.iter().any(|(c, _)| *c == code),
                "{code} has a name"
            );
        }
        // Out of memory, a bad argument or a JIT failure leave the context usable.
        assert!(!call(2).is_sticky() && !call(1).is_sticky());
        let jit = CudaError::Jit {
            kernel: "k".into(),
            name: "CUDA_ERROR_INVALID_PTX".into(),
            log: String::new(),
        };
        assert!(!jit.is_sticky());
    }
}
