//! The HIP layer: devices, streams, device buffers, host/device copies, code-object modules, kernel launches and
//! timing events, as safe wrappers over the HIP runtime.
//!
//! - `libamdhip64` is **not linked**: it is opened at run time ([`ffi`]), so this crate, and every binary using
//!   it, loads on machines without ROCm. On such a machine, or on one with ROCm but no AMD GPU, [`Device::open`]
//!   and [`devices`] fail with [`HipError::NoDevice`], whose message is one line starting with
//!   "no HIP device found".
//! - Every failing HIP call is a [`HipError::Call`] naming the call and the HIP error (`hipErrorNoBinaryForGpu`,
//!   or `hipError(<n>)` for codes this crate does not know).
//! - Every resource (buffer, stream, event, module) is released on drop.
//! - The device's arch is checked against the manifest and the code object before loading ([`check_arch`]).
//!
//! Status: the code paths that need a GPU are written against the HIP API as declared in ROCm 5.2.3's headers
//! (and checked against ROCm 6's changes) but have **not been run on AMD hardware**; only the no-device path and
//! the pure functions are tested.

pub mod device;
pub mod error;
pub mod ffi;
pub mod module;

pub use device::{
    arch_base, arch_features, check_arch, devices, Device, DeviceBuffer, DeviceBytes, DeviceElem,
    DeviceInfo, Event, Stream,
};
pub use error::{error_name, HipError};
pub use module::{Function, Module};

#[cfg(test)]
mod tests;
