//! Every C function called from several threads at once, as the header's "Threads:" rules allow:
//! a runtime's predictions never see a half-made change, a trainer refuses every call but
//! `ep_trainer_cancel` while a fit holds it, and a store's handles and directory stay consistent.

use std::ffi::{c_char, c_void, CString};
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{last_error, patch_bytes, record, red_and_blue, room, runtime, solid, trainer};
use crate::*;

/// The top class and its probability's bits for `img` on the runtime at `rt`.
fn top_bits(rt: usize, img: &[u8], side: u32) -> (i32, u32, u32) {
    let mut classes = room(3);
    let mut n = 0usize;
    let status = ep_predict_rgb8(rt as *mut EpRuntime, img.as_ptr(), side, side, 3, classes.as_mut_ptr(), &mut n);
    (status, classes[0].class_index, classes[0].prob.to_bits())
}

/// The same through `ep_predict_file`.
fn top_file(rt: usize, path: &CString) -> (i32, u32, u32) {
    let mut classes = room(3);
    let mut n = 0usize;
    let status = ep_predict_file(rt as *mut EpRuntime, path.as_ptr(), 3, classes.as_mut_ptr(), &mut n);
    (status, classes[0].class_index, classes[0].prob.to_bits())
}

fn temp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("edgepatch-capi-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Every runtime function at once: predictions (pixels and files) on four threads while other
/// threads load, unload and activate patches (also from a store), rebuild the session on the CPU,
/// ask for the device, set the pixel limit and make trainers. Each prediction equals, bit for bit,
/// the backbone's or the patch's, computed alone beforehand.
#[test]
fn every_runtime_function_at_once() {
    let rt = runtime();
    let tr = red_and_blue(rt, 4);
    assert_eq!(ep_trainer_fit(tr, 2, 0.05, 0, ptr::null_mut()), EP_OK, "{}", last_error());
    let patch = patch_bytes(tr);
    let dir = temp("runtime-threads");
    let patch_path = CString::new(dir.join("colours.patch").to_str().unwrap()).unwrap();
    std::fs::write(dir.join("colours.patch"), &patch).unwrap();
    let image =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/mobilenet_v2/reference/chelsea.png");
    let image = CString::new(image.to_str().unwrap()).unwrap();
    let store_dir = CString::new(dir.join("store").to_str().unwrap()).unwrap();
    let mut store = ptr::null_mut();
    assert_eq!(ep_store_open(store_dir.as_ptr(), 1, &mut store), EP_OK, "{}", last_error());
    let name = CString::new("colours").unwrap();
    assert_eq!(ep_store_add_bytes(store, name.as_ptr(), patch.as_ptr(), patch.len()), EP_OK);
    assert_eq!(ep_patch_load_bytes(rt, name.as_ptr(), patch.as_ptr(), patch.len()), EP_OK);

    let img = solid([120, 90, 60], 64);
    let r = rt as usize;
    let alone = (top_bits(r, &img, 64), top_file(r, &image));
    assert_eq!(ep_patch_activate(rt, name.as_ptr()), EP_OK);
    let patched = (top_bits(r, &img, 64), top_file(r, &image));
    assert_eq!(ep_patch_activate(rt, ptr::null()), EP_OK);
    assert!(alone.0 .0 == EP_OK && alone.1 .0 == EP_OK && patched.0 .1 < 2);

    let s_addr = store as usize;
    std::thread::scope(|s| {
        for t in 0..4 {
            let (img, image, alone, patched) = (&img, &image, &alone, &patched);
            s.spawn(move || {
                for _ in 0..6 {
                    let p = top_bits(r, img, 64);
                    assert!(p == alone.0 || p == patched.0, "thread {t}: a half-switched runtime: {p:?}");
                    let f = top_file(r, image);
                    assert!(f == alone.1 || f == patched.1, "thread {t}: a half-switched runtime: {f:?}");
                }
            });
        }
        let name = &name;
        s.spawn(move || {
            for i in 0..6 {
                let n = if i % 2 == 0 { name.as_ptr() } else { ptr::null() };
                assert_eq!(ep_patch_activate(r as *mut EpRuntime, n), EP_OK, "{}", last_error());
                assert_eq!(ep_store_activate(s_addr as *mut EpStore, r as *mut EpRuntime, name.as_ptr()), EP_OK);
            }
        });
        let (patch, patch_path) = (&patch, &patch_path);
        s.spawn(move || {
            let other = CString::new("other").unwrap();
            for _ in 0..4 {
                let rt = r as *mut EpRuntime;
                assert_eq!(ep_patch_load_bytes(rt, other.as_ptr(), patch.as_ptr(), patch.len()), EP_OK);
                assert_eq!(ep_patch_unload(rt, other.as_ptr()), EP_OK, "{}", last_error());
                assert_eq!(ep_patch_load_path(rt, other.as_ptr(), patch_path.as_ptr()), EP_OK, "{}", last_error());
                assert_eq!(ep_patch_unload(rt, other.as_ptr()), EP_OK);
                assert_eq!(ep_patch_unload(rt, other.as_ptr()), EP_ERR_ARGUMENT, "unloaded twice");
            }
        });
        s.spawn(move || {
            let mut device = [0 as c_char; 64];
            for _ in 0..4 {
                let rt = r as *mut EpRuntime;
                assert_eq!(ep_runtime_set_device(rt, EP_DEVICE_CPU), EP_OK, "{}", last_error());
                assert_eq!(ep_runtime_device(rt, device.as_mut_ptr(), device.len()), EP_OK);
                assert_eq!(device[..4], [b'c', b'p', b'u', 0].map(|b| b as c_char));
                assert_eq!(ep_set_max_pixels(1 << 25), EP_OK);
                let (status, tr) = trainer(rt, 32);
                assert_eq!(status, EP_OK, "{}", last_error());
                ep_trainer_free(tr);
                assert_eq!(ep_abi_version(), EP_ABI_VERSION);
                assert!(!ep_version().is_null());
            }
        });
    });
    ep_store_free(store);
    ep_trainer_free(tr);
    ep_runtime_free(rt);
    std::fs::remove_dir_all(&dir).ok();
}

/// Raises the `AtomicUsize` at `user` when called (the fit holds the trainer from then on).
extern "C" fn started(_: *const EpProgress, user: *mut c_void) -> i32 {
    // SAFETY: the test passes an `AtomicUsize` as `user`.
    unsafe { &*(user as *const AtomicUsize) }.fetch_add(1, Ordering::SeqCst);
    0
}

/// Every trainer function, called as `f(trainer)`; each succeeds on a trainer that has fitted
/// once with held-out images and has a test image.
/// A named call on a trainer.
type Call = (&'static str, Box<dyn Fn(*mut EpTrainer) -> i32 + Sync>);

fn every_trainer_call() -> Vec<Call> {
    let img = solid([250, 10, 10], 40);
    let img2 = img.clone();
    let ckpt = CString::new(std::env::temp_dir().join("edgepatch-capi-unused.ckpt").to_str().unwrap()).unwrap();
    vec![
        ("set_device", Box::new(|t| ep_trainer_set_device(t, EP_DEVICE_CPU))),
        ("device", Box::new(|t| ep_trainer_device(t, [0 as c_char; 32].as_mut_ptr(), 32))),
        ("set_progress", Box::new(|t| ep_trainer_set_progress(t, None, ptr::null_mut()))),
        ("set_checkpoint", Box::new(move |t| ep_trainer_set_checkpoint(t, ckpt.as_ptr(), 5, 0))),
        ("set_checkpoint(null)", Box::new(|t| ep_trainer_set_checkpoint(t, ptr::null(), 0, 0))),
        ("set_time_budget", Box::new(|t| ep_trainer_set_time_budget(t, 0.0))),
        ("set_memory_budget", Box::new(|t| ep_trainer_set_memory_budget(t, 0))),
        ("set_validation", Box::new(|t| ep_trainer_set_validation(t, 2))),
        ("validation_accuracy", Box::new(|t| ep_trainer_validation_accuracy(t, &mut 0.0))),
        ("add_rgb8", Box::new(move |t| ep_trainer_add_rgb8(t, img.as_ptr(), 40, 40, 0))),
        ("add_test_rgb8", Box::new(move |t| ep_trainer_add_test_rgb8(t, img2.as_ptr(), 40, 40, 0))),
        ("evaluate", Box::new(|t| ep_trainer_evaluate(t, &mut 0.0, ptr::null_mut()))),
        ("options", Box::new(|t| ep_trainer_options(t, &mut options()))),
        ("set_options", Box::new(|t| ep_trainer_set_options(t, &options()))),
        (
            "save",
            Box::new(|t| {
                let (mut p, mut len) = (ptr::null_mut(), 0usize);
                let status = ep_trainer_save(t, &mut p, &mut len);
                ep_bytes_free(p, len);
                status
            }),
        ),
        ("fit", Box::new(|t| ep_trainer_fit(t, 1, 0.05, 0, ptr::null_mut()))),
    ]
}

/// The default options with two held-out images.
fn options() -> EpTrainOptions {
    let mut o = std::mem::MaybeUninit::<EpTrainOptions>::zeroed();
    assert_eq!(ep_train_options_init(o.as_mut_ptr()), EP_OK);
    // SAFETY: `ep_train_options_init` filled every field.
    let mut o = unsafe { o.assume_init() };
    o.validation = 2;
    o
}

/// While a fit runs, three threads call every other trainer function: each is refused with
/// `EP_ERR_BUSY` (never interleaved with the fit), and `ep_trainer_cancel` from another thread
/// stops it; afterwards every call succeeds.
#[test]
fn every_trainer_function_waits_its_turn_and_cancel_does_not() {
    let rt = runtime();
    let tr = red_and_blue(rt, 4);
    let calls = every_trainer_call();
    assert_eq!(ep_trainer_set_validation(tr, 2), EP_OK);
    assert_eq!(ep_trainer_add_test_rgb8(tr, solid([10, 10, 250], 40).as_ptr(), 40, 40, 1), EP_OK);
    assert_eq!(ep_trainer_fit(tr, 1, 0.05, 0, ptr::null_mut()), EP_OK, "{}", last_error());
    for (what, call) in &calls {
        assert_eq!(call(tr), EP_OK, "{what}: {}", last_error());
    }

    let seen = AtomicUsize::new(0);
    assert_eq!(ep_trainer_set_progress(tr, Some(started), &seen as *const _ as *mut c_void), EP_OK);
    let t = tr as usize;
    std::thread::scope(|s| {
        let fit = s.spawn(move || ep_trainer_fit(t as *mut EpTrainer, 100_000, 0.05, 0, ptr::null_mut()));
        while seen.load(Ordering::SeqCst) == 0 {
            assert!(!fit.is_finished(), "the fit ended before its first step: {}", last_error());
            std::thread::yield_now();
        }
        let callers: Vec<_> = (0..3)
            .map(|_| {
                let calls = &calls;
                s.spawn(move || {
                    for (what, call) in calls {
                        assert_eq!(call(t as *mut EpTrainer), EP_ERR_BUSY, "{what} during a fit");
                        assert!(last_error().contains("another thread"), "{what}: {}", last_error());
                    }
                })
            })
            .collect();
        for c in callers {
            c.join().unwrap();
        }
        assert!(!fit.is_finished());
        assert_eq!(ep_trainer_cancel(t as *mut EpTrainer), EP_OK);
        assert_eq!(fit.join().unwrap(), EP_ERR_CANCELLED);
    });
    assert_eq!(ep_trainer_set_progress(tr, Some(record), &seen as *const _ as *mut c_void), EP_OK);
    for (what, call) in &calls {
        assert_eq!(call(tr), EP_OK, "{what} after the fit: {}", last_error());
    }
    ep_trainer_free(tr);
    ep_runtime_free(rt);
}

/// Every store function at once on one handle, with a second handle on the same directory: three
/// threads add tasks, one adds and removes its own, one lists names and activates a task into a
/// runtime, and the other handle counts. Every add lands, every listing is a consistent index,
/// and each name read is one that was added.
#[test]
fn every_store_function_at_once_on_two_handles() {
    let rt = runtime();
    let tr = red_and_blue(rt, 2);
    assert_eq!(ep_trainer_fit(tr, 1, 0.05, 0, ptr::null_mut()), EP_OK, "{}", last_error());
    let patch = patch_bytes(tr);
    let dir = temp("store-threads");
    let d = CString::new(dir.join("store").to_str().unwrap()).unwrap();
    let (mut a, mut b) = (ptr::null_mut(), ptr::null_mut());
    assert_eq!(ep_store_open(d.as_ptr(), 1, &mut a), EP_OK, "{}", last_error());
    assert_eq!(ep_store_open(d.as_ptr(), 0, &mut b), EP_OK, "{}", last_error());
    let base = CString::new("base").unwrap();
    assert_eq!(ep_store_add_bytes(a, base.as_ptr(), patch.as_ptr(), patch.len()), EP_OK);
    let (a, b, r) = (a as usize, b as usize, rt as usize);
    std::thread::scope(|s| {
        let patch = &patch;
        for t in 0..3 {
            s.spawn(move || {
                for k in 0..4 {
                    let name = CString::new(format!("t{t}-{k}")).unwrap();
                    let status = ep_store_add_bytes(a as *mut EpStore, name.as_ptr(), patch.as_ptr(), patch.len());
                    assert_eq!(status, EP_OK, "{}", last_error());
                }
            });
        }
        s.spawn(move || {
            for k in 0..4 {
                let name = CString::new(format!("gone-{k}")).unwrap();
                let store = a as *mut EpStore;
                assert_eq!(ep_store_add_bytes(store, name.as_ptr(), patch.as_ptr(), patch.len()), EP_OK);
                assert_eq!(ep_store_remove(store, name.as_ptr()), EP_OK, "{}", last_error());
            }
        });
        let base = &base;
        s.spawn(move || {
            let mut buf = [0 as c_char; 65];
            for _ in 0..8 {
                let mut n = 0usize;
                assert_eq!(ep_store_count(a as *mut EpStore, &mut n), EP_OK);
                assert!((1..=14).contains(&n), "{n} tasks");
                // The first task is the one added before the threads.
                assert_eq!(ep_store_name(a as *mut EpStore, 0, buf.as_mut_ptr(), buf.len()), EP_OK);
                // SAFETY: `ep_store_name` wrote a NUL-terminated string.
                let first = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_str().unwrap().to_string();
                assert_eq!(first, "base");
                let status = ep_store_activate(a as *mut EpStore, r as *mut EpRuntime, base.as_ptr());
                assert_eq!(status, EP_OK, "{}", last_error());
            }
        });
        s.spawn(move || {
            for _ in 0..20 {
                let mut n = 0usize;
                assert_eq!(ep_store_count(b as *mut EpStore, &mut n), EP_OK, "{}", last_error());
                assert!((1..=14).contains(&n), "{n} tasks");
            }
        });
    });
    let (a, b) = (a as *mut EpStore, b as *mut EpStore);
    let mut n = 0usize;
    assert_eq!(ep_store_count(b, &mut n), EP_OK);
    assert_eq!(n, 13, "base and twelve added; the removed ones gone");
    let mut buf = [0 as c_char; 65];
    let mut names: Vec<String> = (0..n)
        .map(|i| {
            assert_eq!(ep_store_name(b, i, buf.as_mut_ptr(), buf.len()), EP_OK);
            // SAFETY: `ep_store_name` wrote a NUL-terminated string.
            unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_str().unwrap().to_string()
        })
        .collect();
    names.sort();
    let mut want: Vec<String> = (0..3).flat_map(|t| (0..4).map(move |k| format!("t{t}-{k}"))).collect();
    want.push("base".into());
    want.sort();
    assert_eq!(names, want);
    ep_store_free(a);
    ep_store_free(b);
    ep_trainer_free(tr);
    ep_runtime_free(rt);
    std::fs::remove_dir_all(&dir).ok();
}
