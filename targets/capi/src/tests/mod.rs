//! The C entry points called as C calls them: bad arguments are refused at the call that takes
//! them, with a status and a message, never later and never as a panic.

use std::ffi::{c_void, CStr, CString};
use std::ptr;

use super::*;

pub(super) fn last_error() -> String {
    // SAFETY: `ep_last_error` returns a NUL-terminated string owned by this thread.
    unsafe { CStr::from_ptr(ep_last_error()) }.to_string_lossy().into_owned()
}

pub(super) fn runtime() -> *mut EpRuntime {
    let mut rt = ptr::null_mut();
    assert_eq!(ep_runtime_new_embedded(&mut rt), EP_OK, "{}", last_error());
    rt
}

pub(super) fn trainer(rt: *mut EpRuntime, resolution: u32) -> (i32, *mut EpTrainer) {
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
fn a_memory_budget_too_small_for_one_sample_fails_the_fit_and_a_large_one_trains() {
    let rt = runtime();
    let tr = red_and_blue(rt, 2);
    assert_eq!(ep_trainer_set_memory_budget(tr, 1000), EP_OK);
    assert_eq!(ep_trainer_fit(tr, 1, 0.0, 0, ptr::null_mut()), EP_ERR_TRAIN);
    let err = last_error();
    assert!(err.contains("training needs at least") && err.contains("memory budget"), "{err}");
    assert_eq!(ep_trainer_set_memory_budget(tr, 1 << 34), EP_OK);
    assert_eq!(ep_trainer_fit(tr, 1, 0.0, 0, ptr::null_mut()), EP_OK, "{}", last_error());
    assert_eq!(ep_trainer_set_memory_budget(ptr::null_mut(), 0), EP_ERR_ARGUMENT);
    ep_trainer_free(tr);
    ep_runtime_free(rt);
}

#[test]
fn fit_refuses_a_learning_rate_that_is_not_a_number() {
    let rt = runtime();
    let tr = red_and_blue(rt, 1);
    for lr in [f32::NAN, f32::INFINITY] {
        assert_eq!(ep_trainer_fit(tr, 1, lr, 0, ptr::null_mut()), EP_ERR_TRAIN, "lr {lr}");
        assert!(last_error().contains("learning rate"), "{}", last_error());
    }
    let mut acc = 0f32;
    assert_eq!(ep_trainer_fit(tr, 1, 0.0, 0, &mut acc), EP_OK, "{}", last_error());
    ep_trainer_free(tr);
    ep_runtime_free(rt);
}

pub(super) fn solid(rgb: [u8; 3], side: usize) -> Vec<u8> {
    rgb.iter().copied().cycle().take(side * side * 3).collect()
}

/// A 32 px `logits` trainer holding `per_class` red images (label 0) and blue ones (label 1).
pub(super) fn red_and_blue(rt: *mut EpRuntime, per_class: usize) -> *mut EpTrainer {
    let (status, tr) = trainer(rt, 32);
    assert_eq!(status, EP_OK, "{}", last_error());
    for (label, rgb) in [(0, [250u8, 10, 10]), (1, [10, 10, 250])] {
        for _ in 0..per_class {
            assert_eq!(ep_trainer_add_rgb8(tr, solid(rgb, 40).as_ptr(), 40, 40, label), EP_OK);
        }
    }
    tr
}

/// Room for `k` classes of a prediction.
pub(super) fn room(k: usize) -> Vec<EpClass> {
    (0..k).map(|_| EpClass { class_index: 0, prob: 0.0, label: [0; EP_LABEL_LEN] }).collect()
}

/// The top class of `img` on `rt` (the pointer as an address, so that threads can share it).
pub(super) fn top(rt: usize, img: &[u8], side: u32) -> (i32, u32) {
    let mut classes = room(3);
    let mut n = 0usize;
    let status = ep_predict_rgb8(rt as *mut EpRuntime, img.as_ptr(), side, side, 3, classes.as_mut_ptr(), &mut n);
    (status, classes[0].class_index)
}

#[test]
fn threads_predict_on_one_runtime_while_patches_switch_and_a_trainer_fits() {
    let rt = runtime();
    let tr = red_and_blue(rt, 4);
    assert_eq!(ep_trainer_fit(tr, 3, 0.0, 0, ptr::null_mut()), EP_OK, "{}", last_error());
    let (mut bytes, mut len) = (ptr::null_mut(), 0usize);
    assert_eq!(ep_trainer_save(tr, &mut bytes, &mut len), EP_OK);
    let name = CString::new("colours").unwrap();
    // SAFETY: `ep_trainer_save` returned `len` bytes at `bytes`.
    let patch = unsafe { std::slice::from_raw_parts(bytes, len) }.to_vec();
    ep_bytes_free(bytes, len);
    assert_eq!(ep_patch_load_bytes(rt, name.as_ptr(), patch.as_ptr(), patch.len()), EP_OK);

    let cat = solid([120, 90, 60], 64);
    let alone = top(rt as usize, &cat, 64);
    assert_eq!(ep_patch_activate(rt, name.as_ptr()), EP_OK);
    let patched = top(rt as usize, &cat, 64);
    assert_eq!(ep_patch_activate(rt, ptr::null()), EP_OK);
    assert_eq!(alone.0, EP_OK);
    assert!(patched.1 < 2);

    let (rt_addr, tr_addr) = (rt as usize, tr as usize);
    let busy_seen = std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..6 {
                    let r = top(rt_addr, &cat, 64);
                    assert!(r == alone || r == patched, "a prediction saw a half-switched runtime: {r:?}");
                }
            });
        }
        s.spawn(|| {
            for i in 0..6 {
                let n = if i % 2 == 0 { name.as_ptr() } else { ptr::null() };
                assert_eq!(ep_patch_activate(rt_addr as *mut EpRuntime, n), EP_OK);
            }
        });
        let fit = s.spawn(move || ep_trainer_fit(tr_addr as *mut EpTrainer, 4, 0.0, 1, ptr::null_mut()));
        // While the fit runs, another call on the same trainer is refused, not interleaved.
        let mut busy = 0;
        while !fit.is_finished() {
            let img = solid([10, 250, 10], 40);
            match ep_trainer_add_rgb8(tr_addr as *mut EpTrainer, img.as_ptr(), 40, 40, 0) {
                EP_ERR_BUSY => {
                    assert!(last_error().contains("another thread"), "{}", last_error());
                    busy += 1
                }
                status => assert_eq!(status, EP_OK),
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(fit.join().unwrap(), EP_OK);
        busy
    });
    assert!(busy_seen > 0, "no call was refused while the trainer was fitting");
    ep_trainer_free(tr);
    ep_runtime_free(rt);
}

#[test]
fn the_pixel_limit_applies_to_decoded_files() {
    let rt = runtime();
    let path = CString::new(format!("{}/../../models/mobilenet_v2/reference/chelsea.png", env!("CARGO_MANIFEST_DIR")))
        .unwrap();
    let mut classes = room(1);
    let mut n = 0usize;
    assert_eq!(ep_set_max_pixels(0), EP_ERR_ARGUMENT);
    assert_eq!(ep_set_max_pixels(1000), EP_OK);
    assert_eq!(ep_predict_file(rt, path.as_ptr(), 1, classes.as_mut_ptr(), &mut n), EP_ERR_IMAGE);
    assert!(last_error().contains("more than 1000 pixels"), "{}", last_error());
    assert_eq!(ep_set_max_pixels(edgepatch::data::image::DEFAULT_MAX_PIXELS), EP_OK);
    assert_eq!(ep_predict_file(rt, path.as_ptr(), 1, classes.as_mut_ptr(), &mut n), EP_OK, "{}", last_error());
    assert_eq!(n, 1);
    ep_runtime_free(rt);
}

/// Counts the calls in the `AtomicUsize` at `user`.
pub(super) extern "C" fn record(p: *const EpProgress, user: *mut c_void) -> i32 {
    // SAFETY: the trainer passes a valid progress; the tests pass an `AtomicUsize` as `user`.
    let (p, seen) = unsafe { (&*p, &*(user as *const std::sync::atomic::AtomicUsize)) };
    assert!(p.step >= 1 && p.step <= p.total_steps && p.loss.is_finite() && (0.0..=1.0).contains(&p.accuracy));
    assert!(p.seconds_left.is_finite() && p.seconds_left >= 0.0);
    seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    0
}

/// [`record`], and stops the fit at step 3.
extern "C" fn stop_at_three(p: *const EpProgress, user: *mut c_void) -> i32 {
    record(p, user);
    // SAFETY: as in `record`.
    (unsafe { &*p }.step == 3) as i32
}

pub(super) fn patch_bytes(tr: *mut EpTrainer) -> Vec<u8> {
    let (mut p, mut len) = (ptr::null_mut(), 0usize);
    assert_eq!(ep_trainer_save(tr, &mut p, &mut len), EP_OK, "{}", last_error());
    // SAFETY: `ep_trainer_save` returned `len` bytes at `p`.
    let v = unsafe { std::slice::from_raw_parts(p, len) }.to_vec();
    ep_bytes_free(p, len);
    v
}

#[test]
fn a_fit_stopped_by_its_progress_callback_resumes_to_the_uninterrupted_patch() {
    let rt = runtime();
    let whole = red_and_blue(rt, 8);
    assert_eq!(ep_trainer_fit(whole, 6, 0.05, 3, ptr::null_mut()), EP_OK, "{}", last_error());
    let expected = patch_bytes(whole);

    let dir = std::env::temp_dir().join(format!("edgepatch-capi-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = CString::new(dir.join("fit.ckpt").to_str().unwrap()).unwrap();
    let tr = red_and_blue(rt, 8);
    assert_eq!(ep_trainer_set_checkpoint(tr, path.as_ptr(), 1, 1), EP_OK, "{}", last_error());
    let seen = std::sync::atomic::AtomicUsize::new(0);
    let user = &seen as *const _ as *mut c_void;
    assert_eq!(ep_trainer_set_progress(tr, Some(stop_at_three), user), EP_OK);
    assert_eq!(ep_trainer_fit(tr, 6, 0.05, 3, ptr::null_mut()), EP_ERR_CANCELLED);
    assert!(last_error().contains("cancelled") && last_error().contains("step 3 of 6"), "{}", last_error());
    // The next fit resumes at step 4 and runs to the end.
    assert_eq!(ep_trainer_set_progress(tr, Some(record), user), EP_OK);
    seen.store(0, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(ep_trainer_fit(tr, 6, 0.05, 3, ptr::null_mut()), EP_OK, "{}", last_error());
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 3, "steps 4 to 6 only");
    assert!(patch_bytes(tr) == expected, "the resumed patch differs from the uninterrupted one");
    let mut device = [0 as c_char; 32];
    assert_eq!(ep_trainer_device(tr, device.as_mut_ptr(), device.len()), EP_OK);
    // SAFETY: `ep_trainer_device` wrote a NUL-terminated string.
    assert_eq!(unsafe { CStr::from_ptr(device.as_ptr()) }.to_str().unwrap(), "cpu");
    // Bad arguments.
    assert_eq!(ep_trainer_set_checkpoint(tr, path.as_ptr(), 0, 1), EP_ERR_ARGUMENT);
    assert_eq!(ep_trainer_set_device(tr, 7), EP_ERR_ARGUMENT);
    assert_eq!(ep_trainer_device(tr, ptr::null_mut(), 4), EP_ERR_ARGUMENT);
    assert_eq!(ep_trainer_cancel(ptr::null_mut()), EP_ERR_ARGUMENT);
    for t in [whole, tr] {
        ep_trainer_free(t);
    }
    ep_runtime_free(rt);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn another_thread_cancels_a_fit_in_progress() {
    let rt = runtime();
    let tr = red_and_blue(rt, 4);
    let seen = Box::leak(Box::new(std::sync::atomic::AtomicUsize::new(0)));
    assert_eq!(ep_trainer_set_progress(tr, Some(record), seen as *const _ as *mut c_void), EP_OK);
    let addr = tr as usize;
    let fit = std::thread::spawn(move || ep_trainer_fit(addr as *mut EpTrainer, 100_000, 0.01, 0, ptr::null_mut()));
    let started = std::time::Instant::now();
    while seen.load(std::sync::atomic::Ordering::SeqCst) < 2 {
        assert!(started.elapsed().as_secs() < 60, "no progress reported");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // The fit holds the trainer: other calls are refused, a cancel is not.
    assert_eq!(ep_trainer_set_memory_budget(tr, 0), EP_ERR_BUSY);
    assert_eq!(ep_trainer_cancel(tr), EP_OK);
    assert_eq!(fit.join().unwrap(), EP_ERR_CANCELLED);
    assert!(seen.load(std::sync::atomic::Ordering::SeqCst) < 100_000);
    // The trainer is free again, and a new fit is not cancelled by the old request.
    assert_eq!(ep_trainer_set_progress(tr, None, ptr::null_mut()), EP_OK);
    assert_eq!(ep_trainer_fit(tr, 1, 0.01, 0, ptr::null_mut()), EP_OK, "{}", last_error());
    ep_trainer_free(tr);
    ep_runtime_free(rt);
}

#[test]
fn the_version_is_the_headers() {
    assert_eq!(ep_abi_version(), EP_ABI_VERSION);
    // SAFETY: `ep_version` returns a static NUL-terminated string.
    let v = unsafe { CStr::from_ptr(ep_version()) }.to_str().unwrap();
    assert!(v.starts_with("edgepatch ") && v.ends_with(&format!("(ABI {EP_ABI_VERSION})")), "{v}");
}

#[test]
fn the_store_adds_lists_activates_and_removes_patches() {
    let rt = runtime();
    let tr = red_and_blue(rt, 4);
    assert_eq!(ep_trainer_fit(tr, 2, 0.05, 0, ptr::null_mut()), EP_OK, "{}", last_error());
    let patch = patch_bytes(tr);
    let dir = std::env::temp_dir().join(format!("edgepatch-capi-store-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    let d = CString::new(dir.to_str().unwrap()).unwrap();
    let mut s = ptr::null_mut();
    assert_eq!(ep_store_open(d.as_ptr(), 0, &mut s), EP_ERR_IO, "no store there yet");
    assert_eq!(ep_store_open(d.as_ptr(), 1, &mut s), EP_OK, "{}", last_error());
    let colours = CString::new("colours").unwrap();
    assert_eq!(ep_store_add_bytes(s, colours.as_ptr(), patch.as_ptr(), patch.len()), EP_OK, "{}", last_error());
    // A damaged patch and a bad name are refused; the store keeps what it had.
    let mut bad = patch.clone();
    bad[50] ^= 1;
    assert_eq!(ep_store_add_bytes(s, colours.as_ptr(), bad.as_ptr(), bad.len()), EP_ERR_PATCH);
    let slash = CString::new("a/b").unwrap();
    assert_ne!(ep_store_add_bytes(s, slash.as_ptr(), patch.as_ptr(), patch.len()), EP_OK);
    let mut n = 0usize;
    assert_eq!(ep_store_count(s, &mut n), EP_OK);
    assert_eq!(n, 1);
    let mut name = [0 as c_char; 16];
    assert_eq!(ep_store_name(s, 0, name.as_mut_ptr(), name.len()), EP_OK);
    // SAFETY: `ep_store_name` wrote a NUL-terminated string.
    assert_eq!(unsafe { CStr::from_ptr(name.as_ptr()) }.to_str().unwrap(), "colours");
    assert_eq!(ep_store_name(s, 0, name.as_mut_ptr(), 7), EP_ERR_ARGUMENT, "too short for the name");
    assert_eq!(ep_store_name(s, 1, name.as_mut_ptr(), name.len()), EP_ERR_ARGUMENT);
    // Activated from the store, the patch classifies red and blue.
    assert_eq!(ep_store_activate(s, rt, colours.as_ptr()), EP_OK, "{}", last_error());
    assert_eq!(top(rt as usize, &solid([250, 10, 10], 40), 40), (EP_OK, 0));
    assert_eq!(top(rt as usize, &solid([10, 10, 250], 40), 40), (EP_OK, 1));
    let missing = CString::new("missing").unwrap();
    assert_ne!(ep_store_activate(s, rt, missing.as_ptr()), EP_OK);
    assert_eq!(ep_store_remove(s, colours.as_ptr()), EP_OK, "{}", last_error());
    assert_eq!(ep_store_count(s, &mut n), EP_OK);
    assert_eq!(n, 0);
    assert_ne!(ep_store_remove(s, colours.as_ptr()), EP_OK);
    assert_eq!(ep_store_count(ptr::null_mut(), &mut n), EP_ERR_ARGUMENT);
    ep_store_free(s);
    ep_trainer_free(tr);
    ep_runtime_free(rt);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn held_out_and_test_images_are_scored_and_a_time_budget_stops_the_fit() {
    let rt = runtime();
    let tr = red_and_blue(rt, 6);
    let mut acc = -1f32;
    assert_eq!(ep_trainer_validation_accuracy(tr, &mut acc), EP_ERR_TRAIN, "no fit yet");
    assert_eq!(ep_trainer_set_validation(tr, 12), EP_OK);
    assert_eq!(ep_trainer_fit(tr, 1, 0.05, 0, ptr::null_mut()), EP_ERR_ARGUMENT, "nothing left to train on");
    assert_eq!(ep_trainer_set_validation(tr, 4), EP_OK);
    assert_eq!(ep_trainer_fit(tr, 30, 0.1, 0, ptr::null_mut()), EP_OK, "{}", last_error());
    assert_eq!(ep_trainer_validation_accuracy(tr, &mut acc), EP_OK);
    assert!((0.0..=1.0).contains(&acc) && acc * 4.0 == (acc * 4.0).round(), "{acc} of 4 images");
    // Test images.
    let mut per_class = [-1f32; 2];
    assert_eq!(ep_trainer_evaluate(tr, &mut acc, per_class.as_mut_ptr()), EP_ERR_ARGUMENT, "no test images yet");
    for (label, rgb) in [(0, [240u8, 20, 20]), (1, [20, 20, 240])] {
        for _ in 0..3 {
            assert_eq!(ep_trainer_add_test_rgb8(tr, solid(rgb, 36).as_ptr(), 36, 36, label), EP_OK);
        }
    }
    assert_eq!(ep_trainer_add_test_rgb8(tr, solid([0, 0, 0], 36).as_ptr(), 36, 36, 2), EP_ERR_ARGUMENT);
    assert_eq!(ep_trainer_evaluate(tr, &mut acc, per_class.as_mut_ptr()), EP_OK, "{}", last_error());
    assert_eq!(acc, 1.0, "solid red and blue after 30 epochs");
    assert_eq!(per_class, [1.0, 1.0]);
    // A time budget already spent after the first step stops the fit there.
    assert_eq!(ep_trainer_set_time_budget(tr, 1e-9), EP_OK);
    assert_eq!(ep_trainer_fit(tr, 50, 0.05, 0, ptr::null_mut()), EP_ERR_CANCELLED);
    assert!(last_error().contains("time budget") && last_error().contains("step 1 of"), "{}", last_error());
    for bad in [-1.0, f64::NAN, f64::INFINITY] {
        assert_eq!(ep_trainer_set_time_budget(tr, bad), EP_ERR_ARGUMENT, "{bad}");
    }
    assert_eq!(ep_trainer_set_time_budget(tr, 0.0), EP_OK);
    ep_trainer_free(tr);
    ep_runtime_free(rt);
}

mod options;
mod threads;
