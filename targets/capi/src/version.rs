//! What the app links against: the ABI version and the library's version.

use std::ffi::{c_char, CString};

/// The version of this C ABI: raised whenever a function, constant or struct changes (1: the
/// first header; 2: devices, progress, cancel, checkpoints, versions; 3: the runtime's device,
/// `EpTrainOptions`, `EpProgress::struct_size`). Compare it with `EP_ABI_VERSION` from the header
/// the app was built with.
pub const EP_ABI_VERSION: u32 = 3;

/// The ABI version of the library loaded (`EP_ABI_VERSION` of the header it was built with).
/// Threads: any thread, any time.
#[no_mangle]
pub extern "C" fn ep_abi_version() -> u32 {
    EP_ABI_VERSION
}

/// The library's version, e.g. "edgepatch 0.1.0 (ABI 3)": a static NUL-terminated string.
/// Threads: any thread, any time.
#[no_mangle]
pub extern "C" fn ep_version() -> *const c_char {
    static VERSION: std::sync::OnceLock<CString> = std::sync::OnceLock::new();
    VERSION
        .get_or_init(|| {
            CString::new(format!("edgepatch {} (ABI {EP_ABI_VERSION})", env!("CARGO_PKG_VERSION"))).unwrap_or_default()
        })
        .as_ptr()
}
