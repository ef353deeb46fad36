//! Code-object modules and kernel functions.
//!
//! Written against the real HIP API; not run on hardware (no AMD GPU was available). Before any bytes reach
//! `hipModuleLoadData`, the code object is parsed and its target is checked against the device, so a gfx90a code
//! object on a gfx942 device is a [`HipError::ArchMismatch`], not a crash or an opaque `hipErrorNoBinaryForGpu`.

use std::ffi::{c_uint, c_void, CString};
use std::sync::Arc;

use super::device::{check_target, Device, Stream};
use super::error::{check, HipError};
use super::ffi::{self, HipFunction, HipModule};
use crate::codeobj::{self, CodeObject, FeatureSetting};

struct ModuleInner {
    device: Device,
    raw: HipModule,
}

// SAFETY: a module handle is a process-global HIP object; the HIP runtime API is thread-safe.
unsafe impl Send for ModuleInner {}
// SAFETY: as above; looking up functions and launching from several threads is allowed by HIP.
unsafe impl Sync for ModuleInner {}

impl Drop for ModuleInner {
    fn drop(&mut self) {
        let _ = self.device.make_current();
        // SAFETY: `self.raw` came from hipModuleLoadData and is unloaded exactly once, when the last `Module` or
        // `Function` referring to it is dropped.
        let _ = unsafe { (self.device.api().hipModuleUnload)(self.raw) };
    }
}

/// A loaded code object. Unloaded when it and every [`Function`] taken from it are dropped.
#[derive(Clone)]
pub struct Module {
    inner: Arc<ModuleInner>,
    code: Arc<CodeObject>,
}

/// The code object's feature requirements (`xnack+`/`xnack-`, `sramecc+`/`sramecc-`) from its `e_flags`.
fn feature_requirements(code: &CodeObject) -> Vec<(&'static str, bool)> {
    let mut v = Vec::new();
    for (name, setting) in [("xnack", code.xnack), ("sramecc", code.sramecc)] {
        match setting {
            FeatureSetting::On => v.push((name, true)),
            FeatureSetting::Off => v.push((name, false)),
            FeatureSetting::Any | FeatureSetting::Unsupported => {}
        }
    }
    v
}

impl Module {
    /// Parses `code_object`, checks that its target (processor and xnack/sramecc settings) fits `device`, and
    /// loads it with `hipModuleLoadData`. `what` names the kernel in error messages.
    pub fn load(device: &Device, code_object: &[u8], what: &str) -> Result<Module, HipError> {
        let code = codeobj::parse(code_object)?;
        check_target(
            device.arch(),
            &code.arch,
            what,
            &feature_requirements(&code),
        )?;
        device.make_current()?;
        let mut raw: HipModule = std::ptr::null_mut();
        // SAFETY: `raw` is a valid out-pointer; `code_object` is a complete ELF code object (just parsed), which
        // HIP reads during the call only.
        check("hipModuleLoadData", unsafe {
            (device.api().hipModuleLoadData)(&mut raw, code_object.as_ptr().cast::<c_void>())
        })?;
        Ok(Module {
            inner: Arc::new(ModuleInner {
                device: device.clone(),
                raw,
            }),
            code: Arc::new(code),
        })
    }

    /// The parsed code object.
    pub fn code_object(&self) -> &CodeObject {
        &self.code
    }

    pub fn device(&self) -> &Device {
        &self.inner.device
    }

    /// Looks up kernel `name` (the function name, e.g. `mfma_loop`, not the `.kd` symbol).
    pub fn function(&self, name: &str) -> Result<Function, HipError> {
        let cname = CString::new(name)
            .map_err(|_| HipError::InvalidArgument(format!("kernel name {name:?} contains NUL")))?;
        let mut raw: HipFunction = std::ptr::null_mut();
        self.inner.device.make_current()?;
        // SAFETY: `raw` is a valid out-pointer, the module handle is live and `cname` is NUL-terminated.
        check("hipModuleGetFunction", unsafe {
            (self.inner.device.api().hipModuleGetFunction)(&mut raw, self.inner.raw, cname.as_ptr())
        })?;
        Ok(Function {
            module: self.inner.clone(),
            raw,
            name: name.to_string(),
        })
    }
}

/// A kernel in a loaded [`Module`]; keeps the module loaded.
#[derive(Clone)]
pub struct Function {
    module: Arc<ModuleInner>,
    raw: HipFunction,
    name: String,
}

// SAFETY: a function handle is a process-global HIP object that stays valid while its module is loaded (kept
// alive by the Arc); the HIP runtime API is thread-safe.
unsafe impl Send for Function {}
// SAFETY: as above.
unsafe impl Sync for Function {}

impl Function {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Enqueues the kernel on `stream` with `kernargs` as the explicit-argument buffer
    /// (`HIP_LAUNCH_PARAM_BUFFER_POINTER`/`HIP_LAUNCH_PARAM_BUFFER_SIZE`; HIP fills the hidden arguments).
    /// `dynamic_lds_bytes` is LDS on top of the kernel's static LDS (0 for nibble kernels).
    ///
    /// Prefer [`crate::launch::Kernel::launch`], which builds and checks the buffer from the manifest.
    /// Not run on hardware.
    ///
    /// # Safety
    /// `kernargs` must be laid out exactly as the kernel expects, every pointer in it must address device memory
    /// that stays allocated until the kernel completes and is large enough for everything the kernel accesses, and
    /// `stream` must belong to the function's device.
    pub unsafe fn launch_raw(
        &self,
        stream: &Stream,
        grid: [u32; 3],
        block: [u32; 3],
        dynamic_lds_bytes: u32,
        kernargs: &[u8],
    ) -> Result<(), HipError> {
        let mut size: usize = kernargs.len();
        let mut extra: [*mut c_void; 5] = [
            ffi::HIP_LAUNCH_PARAM_BUFFER_POINTER as *mut c_void,
            kernargs.as_ptr() as *mut c_void,
            ffi::HIP_LAUNCH_PARAM_BUFFER_SIZE as *mut c_void,
            (&mut size as *mut usize).cast::<c_void>(),
            ffi::HIP_LAUNCH_PARAM_END as *mut c_void,
        ];
        self.module.device.make_current()?;
        // SAFETY: the function handle is live (its module is kept loaded by `self.module`); `extra` is the
        // documented 5-entry array whose buffer pointer and size stay valid for the duration of the call (HIP copies
        // the arguments before returning); the caller guarantees the buffer's contents and the stream.
        check("hipModuleLaunchKernel", unsafe {
            (self.module.device.api().hipModuleLaunchKernel)(
                self.raw,
                grid[0] as c_uint,
                grid[1] as c_uint,
                grid[2] as c_uint,
                block[0] as c_uint,
                block[1] as c_uint,
                block[2] as c_uint,
                dynamic_lds_bytes as c_uint,
                stream.raw(),
                std::ptr::null_mut(),
                extra.as_mut_ptr(),
            )
        })
    }
}
