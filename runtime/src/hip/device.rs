//! Devices, streams, device buffers and events.
//!
//! Everything here that talks to a GPU is written against the real HIP API but, as of this writing, has only been
//! run on machines **without** an AMD GPU (where it reports "no HIP device found"); it has not been run on
//! hardware. What is tested without a GPU: the no-device path, the arch-name parsing and the arch check.

use std::ffi::{c_char, c_int, c_void};
use std::marker::PhantomData;
use std::sync::Arc;

use super::error::{check, HipError};
use super::ffi::{self, Api, HipEvent, HipStream};
use crate::launch::BufferArg;
use crate::manifest::Manifest;

/// Static facts about one HIP device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// HIP device index.
    pub index: usize,
    /// Marketing name (`hipDeviceGetName`).
    pub name: String,
    /// Full `gcnArchName`, with feature settings: e.g. `gfx942:sramecc+:xnack-`.
    pub arch: String,
    /// The processor alone: `gfx942`.
    pub arch_base: String,
    pub compute_units: u32,
    pub warp_size: u32,
    pub max_lds_per_block: u32,
    pub total_mem_bytes: u64,
    /// `hipRuntimeGetVersion`: e.g. 50221153 for ROCm 5.2.3, 60032830 for ROCm 6.0.
    pub runtime_version: i32,
}

/// Initializes HIP and returns the number of devices, turning every "there is no GPU" outcome into
/// [`HipError::NoDevice`] (one line, containing "no HIP device found").
///
/// On a machine without an AMD GPU, ROCm 5.2.3's `hipInit(0)` returns `hipErrorInvalidDevice` and
/// `hipGetDeviceCount` returns `hipErrorNoDevice` with a count of 0 (checked on this project's machines); both,
/// and a count of 0 with success, mean "no device".
fn init() -> Result<(&'static Api, usize), HipError> {
    let api = ffi::api()?;
    // SAFETY: hipInit takes flags by value (0 is the only documented value) and may be called repeatedly.
    let rc = unsafe { (api.hipInit)(0) };
    if rc == ffi::HIP_ERROR_INVALID_DEVICE || rc == ffi::HIP_ERROR_NO_DEVICE {
        return Err(HipError::NoDevice {
            reason: format!(
                "hipInit returned {} ({} is installed but sees no AMD GPU)",
                super::error::error_name(rc),
                api.path
            ),
        });
    }
    check("hipInit", rc)?;
    let mut count: c_int = 0;
    // SAFETY: `count` is a valid, writable c_int for the duration of the call.
    let rc = unsafe { (api.hipGetDeviceCount)(&mut count) };
    if rc == ffi::HIP_ERROR_NO_DEVICE || (rc == ffi::HIP_SUCCESS && count <= 0) {
        return Err(HipError::NoDevice {
            reason: format!("hipGetDeviceCount reports 0 devices ({})", api.path),
        });
    }
    check("hipGetDeviceCount", rc)?;
    Ok((api, count as usize))
}

/// Information about every HIP device. Fails with [`HipError::NoDevice`] when there is none.
pub fn devices() -> Result<Vec<DeviceInfo>, HipError> {
    let (api, count) = init()?;
    (0..count).map(|i| query_info(api, i)).collect()
}

fn device_id(index: usize) -> Result<c_int, HipError> {
    c_int::try_from(index).map_err(|_| HipError::InvalidArgument(format!("device index {index}")))
}

fn query_info(api: &'static Api, index: usize) -> Result<DeviceInfo, HipError> {
    let id = device_id(index)?;
    let mut name = [0u8; 256];
    // SAFETY: `name` is writable for 256 bytes and we pass 255 as its length, so the result stays NUL-terminated.
    check("hipDeviceGetName", unsafe {
        (api.hipDeviceGetName)(name.as_mut_ptr().cast::<c_char>(), 255, id)
    })?;
    let name = c_string(&name).unwrap_or_default();
    let attr = |call: &'static str, attr: c_int| -> Result<u32, HipError> {
        let mut v: c_int = 0;
        // SAFETY: `v` is a valid c_int to write; `attr` is one of the version-stable attribute values in ffi.
        check(call, unsafe {
            (api.hipDeviceGetAttribute)(&mut v, attr, id)
        })?;
        Ok(v.max(0) as u32)
    };
    let compute_units = attr(
        "hipDeviceGetAttribute(MultiprocessorCount)",
        ffi::HIP_ATTR_COMPUTE_UNITS,
    )?;
    let warp_size = attr("hipDeviceGetAttribute(WarpSize)", ffi::HIP_ATTR_WARP_SIZE)?;
    let max_lds_per_block = attr(
        "hipDeviceGetAttribute(MaxSharedMemoryPerBlock)",
        ffi::HIP_ATTR_MAX_SHARED_MEMORY_PER_BLOCK,
    )?;
    let mut mem: usize = 0;
    // SAFETY: `mem` is a valid size_t to write.
    check("hipDeviceTotalMem", unsafe {
        (api.hipDeviceTotalMem)(&mut mem, id)
    })?;
    let mut runtime_version: c_int = 0;
    // SAFETY: `runtime_version` is a valid c_int to write.
    check("hipRuntimeGetVersion", unsafe {
        (api.hipRuntimeGetVersion)(&mut runtime_version)
    })?;
    let arch = read_arch(api, index, id)?;
    let arch_base = arch_base(&arch).to_string();
    Ok(DeviceInfo {
        index,
        name,
        arch,
        arch_base,
        compute_units,
        warp_size,
        max_lds_per_block,
        total_mem_bytes: mem as u64,
        runtime_version,
    })
}

/// Reads the device's `gcnArchName` (e.g. `gfx942:sramecc+:xnack-`) in a way that works with ROCm 5 and 6.
///
/// The arch name is not available through `hipDeviceGetAttribute` (`hipDeviceAttributeGcnArchName` was
/// removed/renumbered, and the attribute enum itself was renumbered between releases), so it is read from the
/// device properties struct, whose layout differs between ROCm 5 and 6. Method:
///
/// 1. The layout is chosen by the *symbol* that is called, not by the version number: if the library exports
///    `hipGetDevicePropertiesR0600` (ROCm 6.0 and later; ROCm 6 headers `#define hipGetDeviceProperties
///    hipGetDevicePropertiesR0600`), it is called and fills `hipDeviceProp_tR0600`, where `gcnArchName` is at byte
///    1160. Otherwise the unversioned `hipGetDeviceProperties` is called; it fills the legacy layout
///    (`hipDeviceProp_t` of ROCm 5.x, kept as `hipDeviceProp_tR0000` for old binaries by ROCm 6), where
///    `gcnArchName` is at byte 396. Note that on ROCm 6 the unversioned symbol still exists and fills the *legacy*
///    layout, which is why the version number (`hipRuntimeGetVersion`) alone must not pick the offset. How the
///    offsets were computed is documented on [`ffi::ARCH_NAME_OFFSET_R0600`] and [`ffi::ARCH_NAME_OFFSET_R0000`].
/// 2. The struct is never declared: HIP writes into a zeroed 4 KiB byte buffer (both layouts are under 1.5 KiB),
///    so a longer struct in some release cannot overrun it.
/// 3. The 256-byte field must be a NUL-terminated printable ASCII string starting with `gfx`; anything else (a
///    layout this code does not know) is [`HipError::ArchUnreadable`], never a silently wrong arch.
fn read_arch(api: &'static Api, index: usize, id: c_int) -> Result<String, HipError> {
    let mut buf = vec![0u8; ffi::DEVICE_PROP_BUFFER_BYTES];
    let (call, offset, f) = match api.hipGetDevicePropertiesR0600 {
        Some(f) => (
            "hipGetDevicePropertiesR0600",
            ffi::ARCH_NAME_OFFSET_R0600,
            f,
        ),
        None => (
            "hipGetDeviceProperties",
            ffi::ARCH_NAME_OFFSET_R0000,
            api.hipGetDeviceProperties,
        ),
    };
    // SAFETY: `buf` is writable for 4096 bytes, more than either struct layout HIP may write (792 and 1472 bytes).
    check(call, unsafe { f(buf.as_mut_ptr().cast::<c_void>(), id) })?;
    // In bounds: ffi asserts at compile time that both offsets + ARCH_NAME_LEN fit the buffer.
    parse_arch_field(&buf[offset..offset + ffi::ARCH_NAME_LEN])
        .map_err(|what| HipError::ArchUnreadable { index, what })
}

/// The NUL-terminated string at the start of `bytes`, if there is a NUL.
fn c_string(bytes: &[u8]) -> Option<String> {
    let end = bytes.iter().position(|&b| b == 0)?;
    Some(String::from_utf8_lossy(&bytes[..end]).into_owned())
}

/// Validates the raw `gcnArchName` field (see [`read_arch`]).
pub fn parse_arch_field(bytes: &[u8]) -> Result<String, String> {
    let end = bytes
        .iter()
        .position(|&b| b == 0)
        .ok_or("gcnArchName is not NUL-terminated (unknown hipDeviceProp_t layout)")?;
    let s = &bytes[..end];
    if !s.starts_with(b"gfx") || !s.iter().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "gcnArchName {:?} is not a gfx target name (unknown hipDeviceProp_t layout)",
            String::from_utf8_lossy(s)
        ));
    }
    Ok(String::from_utf8_lossy(s).into_owned())
}

/// The processor of a target ID: `gfx942` for `gfx942:sramecc+:xnack-`.
pub fn arch_base(target_id: &str) -> &str {
    target_id.split(':').next().unwrap_or(target_id)
}

/// The explicit feature settings of a target ID: `[("sramecc", true), ("xnack", false)]` for
/// `gfx942:sramecc+:xnack-`. Features without `+`/`-` are ignored.
pub fn arch_features(target_id: &str) -> Vec<(&str, bool)> {
    target_id
        .split(':')
        .skip(1)
        .filter_map(|f| {
            if let Some(n) = f.strip_suffix('+') {
                Some((n, true))
            } else {
                f.strip_suffix('-').map(|n| (n, false))
            }
        })
        .collect()
}

/// Checks that a kernel compiled for `manifest.arch` can run on a device whose `gcnArchName` is `device_arch`.
///
/// The processors must be equal (`gfx942` vs `gfx942:sramecc+:xnack-` passes; `gfx90a` code on a `gfx942` device
/// fails). If the manifest's target ID pins a feature (`gfx942:xnack-`) and the device reports the opposite setting,
/// that fails too; a feature the manifest leaves unspecified ("any") or the device does not report is accepted.
pub fn check_arch(device_arch: &str, manifest: &Manifest) -> Result<(), HipError> {
    check_target(device_arch, &manifest.arch, &manifest.kernel, &[])
}

/// [`check_arch`] for a target ID `expected`, plus extra feature requirements (from the code object's `e_flags`).
pub(crate) fn check_target(
    device_arch: &str,
    expected: &str,
    kernel: &str,
    extra_features: &[(&str, bool)],
) -> Result<(), HipError> {
    let device_base = arch_base(device_arch);
    let mismatch = |hint: String| HipError::ArchMismatch {
        kernel: kernel.to_string(),
        expected: expected.to_string(),
        device: device_arch.to_string(),
        hint,
    };
    if arch_base(expected) != device_base {
        return Err(mismatch(format!(
            "a code object for {} cannot run on {device_base}; recompile the kernel with arch {device_base}",
            arch_base(expected)
        )));
    }
    let device_features = arch_features(device_arch);
    for (name, on) in arch_features(expected)
        .into_iter()
        .chain(extra_features.iter().copied())
    {
        if let Some(&(_, dev_on)) = device_features.iter().find(|(n, _)| *n == name) {
            if dev_on != on {
                let sign = |b: bool| if b { '+' } else { '-' };
                return Err(mismatch(format!(
                    "the code requires {name}{} but the device runs with {name}{}",
                    sign(on),
                    sign(dev_on)
                )));
            }
        }
    }
    Ok(())
}

struct DeviceInner {
    api: &'static Api,
    id: c_int,
    info: DeviceInfo,
}

/// One HIP device. Cheap to clone; buffers, streams, events and modules keep it alive.
///
/// Not run on hardware: only the no-device path has been exercised.
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

impl Device {
    /// Opens HIP device `index`: loads libamdhip64, initializes HIP and reads the device's facts.
    ///
    /// Without libamdhip64, or with it but without an AMD GPU, this is [`HipError::NoDevice`], whose message is one
    /// line containing "no HIP device found".
    pub fn open(index: usize) -> Result<Device, HipError> {
        let (api, count) = init()?;
        if index >= count {
            return Err(HipError::InvalidDevice { index, count });
        }
        let info = query_info(api, index)?;
        let dev = Device {
            inner: Arc::new(DeviceInner {
                api,
                id: device_id(index)?,
                info,
            }),
        };
        dev.make_current()?;
        Ok(dev)
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.inner.info
    }

    /// The full `gcnArchName`, e.g. `gfx942:sramecc+:xnack-`.
    pub fn arch(&self) -> &str {
        &self.inner.info.arch
    }

    pub(crate) fn api(&self) -> &'static Api {
        self.inner.api
    }

    /// Makes this device current on the calling thread (HIP's current device is per thread). Every operation that
    /// allocates or creates something calls this first, so a `Device` may be used from any thread.
    pub(crate) fn make_current(&self) -> Result<(), HipError> {
        // SAFETY: hipSetDevice takes a device index by value; `id` was checked against the device count.
        check("hipSetDevice", unsafe {
            (self.inner.api.hipSetDevice)(self.inner.id)
        })
    }

    /// Waits until all work on this device has finished.
    pub fn synchronize(&self) -> Result<(), HipError> {
        self.make_current()?;
        // SAFETY: no arguments; synchronizes the current device.
        check("hipDeviceSynchronize", unsafe {
            (self.inner.api.hipDeviceSynchronize)()
        })
    }

    /// Allocates an uninitialized buffer of `len` elements.
    pub fn alloc<T: DeviceElem>(&self, len: usize) -> Result<DeviceBuffer<T>, HipError> {
        let bytes = len.checked_mul(size_of::<T>()).ok_or_else(|| {
            HipError::InvalidArgument(format!("buffer of {len} elements overflows"))
        })?;
        let mut ptr: *mut c_void = std::ptr::null_mut();
        if bytes > 0 {
            self.make_current()?;
            // SAFETY: `ptr` is a valid out-pointer; on success HIP stores a device allocation of `bytes` bytes.
            check("hipMalloc", unsafe {
                (self.inner.api.hipMalloc)(&mut ptr, bytes)
            })?;
        }
        Ok(DeviceBuffer {
            device: self.clone(),
            ptr,
            len,
            _elem: PhantomData,
        })
    }

    /// Allocates a buffer holding a copy of `data` (synchronous copy).
    pub fn upload<T: DeviceElem>(&self, data: &[T]) -> Result<DeviceBuffer<T>, HipError> {
        let mut b = self.alloc(data.len())?;
        b.copy_from_host(data)?;
        Ok(b)
    }

    /// Creates a stream on this device.
    pub fn stream(&self) -> Result<Stream, HipError> {
        self.make_current()?;
        let mut raw: HipStream = std::ptr::null_mut();
        // SAFETY: `raw` is a valid out-pointer for the new stream handle.
        check("hipStreamCreate", unsafe {
            (self.inner.api.hipStreamCreate)(&mut raw)
        })?;
        Ok(Stream {
            device: self.clone(),
            raw,
        })
    }

    /// Creates an event (with timing) on this device.
    pub fn event(&self) -> Result<Event, HipError> {
        self.make_current()?;
        let mut raw: HipEvent = std::ptr::null_mut();
        // SAFETY: `raw` is a valid out-pointer for the new event handle.
        check("hipEventCreate", unsafe {
            (self.inner.api.hipEventCreate)(&mut raw)
        })?;
        Ok(Event {
            device: self.clone(),
            raw,
        })
    }
}

/// Element types that may live in a [`DeviceBuffer`] and be copied bytewise to and from the device.
///
/// # Safety
/// Implementors must be plain old data: `Copy`, no padding, no pointers, and every bit pattern a valid value
/// (bytes written by a kernel are read back as `Self`).
pub unsafe trait DeviceElem: Copy + Send + Sync + 'static {
    /// The manifest's name for the element type (`bf16`, `f16`, `f32`, `u32`, `i32`); `u8` means raw bytes.
    const NAME: &'static str;
}

// SAFETY (all impls below): primitive numbers and `half`'s `#[repr(transparent)]` u16 wrappers are plain old data
// for which every bit pattern is valid.
unsafe impl DeviceElem for u8 {
    const NAME: &'static str = "u8";
}
// SAFETY: see above.
unsafe impl DeviceElem for u32 {
    const NAME: &'static str = "u32";
}
// SAFETY: see above.
unsafe impl DeviceElem for i32 {
    const NAME: &'static str = "i32";
}
// SAFETY: see above.
unsafe impl DeviceElem for f32 {
    const NAME: &'static str = "f32";
}
// SAFETY: see above.
unsafe impl DeviceElem for half::f16 {
    const NAME: &'static str = "f16";
}
// SAFETY: see above.
unsafe impl DeviceElem for half::bf16 {
    const NAME: &'static str = "bf16";
}

/// A device allocation of `len` elements of `T`, freed on drop.
pub struct DeviceBuffer<T: DeviceElem> {
    device: Device,
    ptr: *mut c_void,
    len: usize,
    _elem: PhantomData<T>,
}

/// A device buffer of raw bytes.
pub type DeviceBytes = DeviceBuffer<u8>;

// SAFETY: the buffer owns a device allocation addressed by a plain device address; the HIP runtime API is
// thread-safe and device memory is not tied to the thread that allocated it (each call sets the device first).
unsafe impl<T: DeviceElem> Send for DeviceBuffer<T> {}
// SAFETY: `&DeviceBuffer` only allows reading the allocation (copy to host, taking its address), which HIP
// allows concurrently from several threads.
unsafe impl<T: DeviceElem> Sync for DeviceBuffer<T> {}

impl<T: DeviceElem> DeviceBuffer<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn size_bytes(&self) -> usize {
        // Cannot overflow: checked at allocation.
        self.len * size_of::<T>()
    }

    /// The device address (0 for an empty buffer).
    pub fn device_ptr(&self) -> u64 {
        self.ptr as u64
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// This buffer as a kernel argument; the borrow keeps the buffer alive while the argument exists.
    pub fn as_arg(&self) -> BufferArg<'_> {
        // SAFETY: the address and size describe this live allocation, and the returned value borrows `self`.
        unsafe { BufferArg::from_raw(self.device_ptr(), self.size_bytes(), T::NAME) }
    }

    /// Copies `src` (exactly `len` elements) to the device, synchronously.
    pub fn copy_from_host(&mut self, src: &[T]) -> Result<(), HipError> {
        if src.len() != self.len {
            return Err(HipError::LengthMismatch {
                what: "copy to device",
                expected: self.len,
                found: src.len(),
            });
        }
        if self.len == 0 {
            return Ok(());
        }
        self.device.make_current()?;
        // SAFETY: `self.ptr` is a device allocation of size_bytes() bytes and `src` is a host slice of the same
        // size; hipMemcpy is synchronous for pageable host memory, so `src` is not used after the call.
        check("hipMemcpy(HostToDevice)", unsafe {
            (self.device.api().hipMemcpy)(
                self.ptr,
                src.as_ptr().cast::<c_void>(),
                self.size_bytes(),
                ffi::HIP_MEMCPY_HOST_TO_DEVICE,
            )
        })
    }

    /// Copies the buffer into `dst` (exactly `len` elements), synchronously. Waits for work that writes the buffer
    /// only if it was issued on the null stream; synchronize other streams first.
    pub fn copy_to_host(&self, dst: &mut [T]) -> Result<(), HipError> {
        if dst.len() != self.len {
            return Err(HipError::LengthMismatch {
                what: "copy to host",
                expected: self.len,
                found: dst.len(),
            });
        }
        if self.len == 0 {
            return Ok(());
        }
        self.device.make_current()?;
        // SAFETY: `dst` is a writable host slice of size_bytes() bytes, `self.ptr` a device allocation of the same
        // size; `T: DeviceElem` makes any bytes written a valid `T`.
        check("hipMemcpy(DeviceToHost)", unsafe {
            (self.device.api().hipMemcpy)(
                dst.as_mut_ptr().cast::<c_void>(),
                self.ptr,
                self.size_bytes(),
                ffi::HIP_MEMCPY_DEVICE_TO_HOST,
            )
        })
    }

    /// Copies the buffer to a new vector (see [`DeviceBuffer::copy_to_host`]).
    pub fn to_vec(&self) -> Result<Vec<T>, HipError>
    where
        T: Default,
    {
        let mut v = vec![T::default(); self.len];
        self.copy_to_host(&mut v)?;
        Ok(v)
    }

    /// Copies another buffer of the same length into this one, synchronously.
    pub fn copy_from_device(&mut self, src: &DeviceBuffer<T>) -> Result<(), HipError> {
        if src.len != self.len {
            return Err(HipError::LengthMismatch {
                what: "device-to-device copy",
                expected: self.len,
                found: src.len,
            });
        }
        if self.len == 0 {
            return Ok(());
        }
        self.device.make_current()?;
        // SAFETY: both pointers are device allocations of size_bytes() bytes; `&mut self` excludes aliasing.
        check("hipMemcpy(DeviceToDevice)", unsafe {
            (self.device.api().hipMemcpy)(
                self.ptr,
                src.ptr,
                self.size_bytes(),
                ffi::HIP_MEMCPY_DEVICE_TO_DEVICE,
            )
        })
    }
}

impl<T: DeviceElem> Drop for DeviceBuffer<T> {
    /// Frees the allocation. `hipFree` synchronizes the device first, so a kernel still using the buffer finishes
    /// before the memory is released. Errors cannot be reported from `drop` and are ignored.
    fn drop(&mut self) {
        if self.ptr.is_null() {
            return;
        }
        let _ = self.device.make_current();
        // SAFETY: `self.ptr` came from hipMalloc and is freed exactly once, here.
        let _ = unsafe { (self.device.api().hipFree)(self.ptr) };
    }
}

/// A HIP stream, destroyed on drop.
pub struct Stream {
    device: Device,
    raw: HipStream,
}

// SAFETY: a stream handle is a process-global HIP object; the HIP runtime API is thread-safe.
unsafe impl Send for Stream {}
// SAFETY: as above; HIP allows enqueueing on one stream from several threads.
unsafe impl Sync for Stream {}

impl Stream {
    pub(crate) fn raw(&self) -> HipStream {
        self.raw
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Waits until all work enqueued on this stream has finished.
    pub fn synchronize(&self) -> Result<(), HipError> {
        // SAFETY: `self.raw` is a live stream handle.
        check("hipStreamSynchronize", unsafe {
            (self.device.api().hipStreamSynchronize)(self.raw)
        })
    }

    /// Enqueues filling `buf` with zero bytes.
    pub fn memset_zero<T: DeviceElem>(&self, buf: &mut DeviceBuffer<T>) -> Result<(), HipError> {
        if buf.is_empty() {
            return Ok(());
        }
        self.device.make_current()?;
        // SAFETY: `buf.ptr` is a device allocation of size_bytes() bytes; the operation is ordered on this stream
        // and hipFree (on drop) synchronizes the device, so the memory outlives it.
        check("hipMemsetAsync", unsafe {
            (self.device.api().hipMemsetAsync)(buf.ptr, 0, buf.size_bytes(), self.raw)
        })
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let _ = self.device.make_current();
        // SAFETY: `self.raw` came from hipStreamCreate and is destroyed exactly once, here.
        let _ = unsafe { (self.device.api().hipStreamDestroy)(self.raw) };
    }
}

/// A HIP event for timing work on a stream, destroyed on drop.
pub struct Event {
    device: Device,
    raw: HipEvent,
}

// SAFETY: an event handle is a process-global HIP object; the HIP runtime API is thread-safe.
unsafe impl Send for Event {}
// SAFETY: as above.
unsafe impl Sync for Event {}

impl Event {
    /// Records the event on `stream`.
    pub fn record(&self, stream: &Stream) -> Result<(), HipError> {
        // SAFETY: both handles are live.
        check("hipEventRecord", unsafe {
            (self.device.api().hipEventRecord)(self.raw, stream.raw())
        })
    }

    /// Waits until the recorded work has completed.
    pub fn synchronize(&self) -> Result<(), HipError> {
        // SAFETY: `self.raw` is a live event.
        check("hipEventSynchronize", unsafe {
            (self.device.api().hipEventSynchronize)(self.raw)
        })
    }

    /// Milliseconds between `self` (the start) and `end`, both recorded and completed.
    pub fn elapsed_ms(&self, end: &Event) -> Result<f32, HipError> {
        let mut ms = 0f32;
        // SAFETY: `ms` is a valid f32 to write; both events are live.
        check("hipEventElapsedTime", unsafe {
            (self.device.api().hipEventElapsedTime)(&mut ms, self.raw, end.raw)
        })?;
        Ok(ms)
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: `self.raw` came from hipEventCreate and is destroyed exactly once, here.
        let _ = unsafe { (self.device.api().hipEventDestroy)(self.raw) };
    }
}
