//! Where a runtime predicts and a trainer trains: the device constants, the runtime's device
//! choice and the names of the devices chosen.

use std::ffi::c_char;

use edgepatch::backend::Device;

use super::{arg, guard, runtime, EpRuntime, Failure};

/// A hardware GPU when there is one, else the CPU (`Device::Auto`).
pub const EP_DEVICE_AUTO: i32 = 0;
/// The CPU (the default of runtimes and trainers).
pub const EP_DEVICE_CPU: i32 = 1;
/// A GPU adapter, software ones included; `EP_ERR_DEVICE` without one.
pub const EP_DEVICE_GPU: i32 = 2;

/// The device of an `EP_DEVICE_*` constant; anything else is refused.
pub(crate) fn parse_device(code: i32) -> Result<Device, Failure> {
    match code {
        EP_DEVICE_AUTO => Ok(Device::Auto),
        EP_DEVICE_CPU => Ok(Device::Cpu),
        EP_DEVICE_GPU => Ok(Device::Gpu),
        other => Err(arg(format!("device {other} (EP_DEVICE_AUTO, EP_DEVICE_CPU or EP_DEVICE_GPU)"))),
    }
}

/// The `EP_DEVICE_*` constant of a device.
pub(crate) fn code(device: Device) -> i32 {
    match device {
        Device::Auto => EP_DEVICE_AUTO,
        Device::Cpu => EP_DEVICE_CPU,
        Device::Gpu => EP_DEVICE_GPU,
    }
}

/// Copies `s` NUL-terminated into `buf` of `len` bytes (cut at a character boundary to fit).
pub(crate) fn copy_str(s: &str, buf: *mut c_char, len: usize) -> Result<(), Failure> {
    if buf.is_null() || len == 0 {
        return Err(arg("buf is null or empty"));
    }
    let mut n = s.len().min(len - 1);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    // SAFETY: C passes `len` writable bytes at `buf`.
    let dst = unsafe { std::slice::from_raw_parts_mut(buf as *mut u8, len) };
    dst[..n].copy_from_slice(&s.as_bytes()[..n]);
    dst[n] = 0;
    Ok(())
}

/// Moves the runtime's predictions to `EP_DEVICE_AUTO`, `EP_DEVICE_CPU` (a new runtime's) or
/// `EP_DEVICE_GPU`, keeping its patches and the active one; `ep_runtime_device` tells which
/// device was chosen. When the device cannot be used (`EP_ERR_DEVICE` for an absent or failing
/// GPU) the runtime stays as it was. Predictions on a GPU agree with the CPU's up to summation
/// order. See `ep_trainer_set_device` about the Vulkan drivers' messages.
/// Threads: any thread; waits for the predictions in flight on the runtime, and the ones after it
/// run on the new device.
#[no_mangle]
pub extern "C" fn ep_runtime_set_device(rt: *mut EpRuntime, device: i32) -> i32 {
    guard(|| {
        let rt = runtime(rt)?;
        Ok(rt.set_device(parse_device(device)?)?)
    })
}

/// Where the runtime predicts now ("cpu", or "gpu (adapter)"), copied NUL-terminated into `buf`
/// of `len` bytes (cut to fit).
/// Threads: any number of threads at once on one runtime.
#[no_mangle]
pub extern "C" fn ep_runtime_device(rt: *mut EpRuntime, buf: *mut c_char, len: usize) -> i32 {
    guard(|| copy_str(&runtime(rt)?.device(), buf, len))
}
