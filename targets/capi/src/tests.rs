//! The C entry points called as C calls them: bad arguments are refused at the call that takes
//! them, with a status and a message, never later and never as a panic.

use std::ffi::{CStr, CString};
use std::ptr;

use super::*;

fn last_error() -> String {
    // SAFETY: `ep_last_error` returns a NUL-terminated string owned by this thread.
    unsafe { CStr::from_ptr(ep_last_error()) }.to_string_lossy().into_owned()
}

fn runtime() -> *mut EpRuntime {
    let mut rt = ptr::null_mut();
    assert_eq!(ep_runtime_new_embedded(&mut rt), EP_OK, "{}", last_error());
    rt
}

fn trainer(rt: *mut EpRuntime, resolution: u32) -> (i32, *mut EpTrainer) {
    let names = [CString::new("red").unwrap(), CString::new("blue").unwrap()];
    let labels: Vec<*const c_char> = names.iter().map(|n| n.as_ptr()).collect();
    let kinds = CString::new("logits").unwrap();
    let mut tr = ptr::null_mut();
    let status = ep_trainer_new(rt, kinds.as_ptr(), labels.as_ptr(), labels.len(), resolution, &mut tr);
    (status, tr)
}

#[test]
fn trainer_new_refuses_resolutions_the_trainer_cannot_use() {
    let rt = runtime();
    for bad in [0, 33, 4096] {
        let (status, tr) = trainer(rt, bad);
        assert_eq!(status, EP_ERR_TRAIN, "resolution {bad}");
        assert!(tr.is_null());
        assert!(last_error().contains(&format!("resolution {bad}")), "{}", last_error());
    }
    let (status, tr) = trainer(rt, 32);
    assert_eq!(status, EP_OK, "{}", last_error());
    ep_trainer_free(tr);
    ep_runtime_free(rt);
}

#[test]
fn fit_refuses_a_learning_rate_that_is_not_a_number() {
    let rt = runtime();
    let (status, tr) = trainer(rt, 32);
    assert_eq!(status, EP_OK);
    for (label, rgb) in [(0, [250u8, 10, 10]), (1, [10, 10, 250])] {
        let img: Vec<u8> = rgb.iter().copied().cycle().take(32 * 32 * 3).collect();
        assert_eq!(ep_trainer_add_rgb8(tr, img.as_ptr(), 32, 32, label), EP_OK);
    }
    for lr in [f32::NAN, f32::INFINITY] {
        assert_eq!(ep_trainer_fit(tr, 1, lr, 0, ptr::null_mut()), EP_ERR_TRAIN, "lr {lr}");
        assert!(last_error().contains("learning rate"), "{}", last_error());
    }
    let mut acc = 0f32;
    assert_eq!(ep_trainer_fit(tr, 1, 0.0, 0, &mut acc), EP_OK, "{}", last_error());
    ep_trainer_free(tr);
    ep_runtime_free(rt);
}
