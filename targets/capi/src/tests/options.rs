//! The versioned options struct and the runtime's device: defaults, a round trip, refusals that
//! change nothing, options that take effect, and predictions moved to the GPU (lavapipe in CI).

use std::ffi::{c_char, c_void, CStr};
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{last_error, red_and_blue, room, runtime, solid};
use crate::*;

fn init() -> EpTrainOptions {
    let mut o = std::mem::MaybeUninit::<EpTrainOptions>::zeroed();
    assert_eq!(ep_train_options_init(o.as_mut_ptr()), EP_OK);
    // SAFETY: `ep_train_options_init` filled every field.
    unsafe { o.assume_init() }
}

fn get(tr: *mut EpTrainer) -> EpTrainOptions {
    let mut o = init();
    assert_eq!(ep_trainer_options(tr, &mut o), EP_OK, "{}", last_error());
    o
}

#[test]
fn options_have_defaults_round_trip_and_refusals_change_nothing() {
    let o = init();
    assert_eq!(o.struct_size as usize, std::mem::size_of::<EpTrainOptions>());
    assert_eq!((o.device, o.batch, o.optimizer, o.augment, o.validation), (EP_DEVICE_CPU, 32, EP_OPTIMIZER_SGD, 0, 0));
    assert_eq!((o.warmup, o.clip_norm, o.memory_budget, o.time_budget), (0.05, 5.0, 0, 0.0));
    let rt = runtime();
    let tr = red_and_blue(rt, 4);
    assert_eq!(get(tr), o, "a new trainer has the defaults");

    let mut mine = o;
    (mine.batch, mine.optimizer, mine.augment, mine.validation) = (4, EP_OPTIMIZER_ADAM, 1, 2);
    (mine.weight_decay, mine.label_smoothing, mine.clip_norm) = (1e-4, 0.1, 0.0);
    (mine.memory_budget, mine.time_budget) = (1 << 30, 600.0);
    assert_eq!(ep_trainer_set_options(tr, &mine), EP_OK, "{}", last_error());
    assert_eq!(get(tr), mine);
    // The single setters and the struct are one state.
    assert_eq!(ep_trainer_set_validation(tr, 3), EP_OK);
    assert_eq!(get(tr).validation, 3);
    assert_eq!(ep_trainer_set_validation(tr, 2), EP_OK);

    type Spoil = fn(&mut EpTrainOptions);
    let bad: [(&str, Spoil); 9] = [
        ("of 0 bytes", |o| o.struct_size = 0),
        ("of 52 bytes", |o| o.struct_size -= 4),
        ("newer header", |o| o.struct_size += 8),
        ("device 7", |o| o.device = 7),
        ("optimizer 9", |o| o.optimizer = 9),
        ("at least 1", |o| o.batch = 0),
        ("label smoothing", |o| o.label_smoothing = 1.5),
        ("clipping norm -1", |o| o.clip_norm = -1.0),
        ("time budget NaN", |o| o.time_budget = f64::NAN),
    ];
    for (message, spoil) in bad {
        let mut o = mine;
        o.batch = 8;
        spoil(&mut o);
        assert_eq!(ep_trainer_set_options(tr, &o), EP_ERR_ARGUMENT, "{message}");
        assert!(last_error().contains(message), "{message}: {}", last_error());
        assert_eq!(get(tr), mine, "a refused struct changed the options");
    }
    let mut short = init();
    short.struct_size = 12;
    assert_eq!(ep_trainer_options(tr, &mut short), EP_ERR_ARGUMENT);
    assert_eq!(ep_trainer_set_options(tr, ptr::null()), EP_ERR_ARGUMENT);
    assert_eq!(ep_trainer_options(ptr::null_mut(), &mut short), EP_ERR_ARGUMENT);
    assert_eq!(ep_train_options_init(ptr::null_mut()), EP_ERR_ARGUMENT);
    ep_trainer_free(tr);
    ep_runtime_free(rt);
}

/// Records the total number of steps a fit reports.
extern "C" fn total_steps(p: *const EpProgress, user: *mut c_void) -> i32 {
    // SAFETY: the trainer passes a valid progress; the test passes an `AtomicUsize` as `user`.
    let (p, total) = unsafe { (&*p, &*(user as *const AtomicUsize)) };
    assert_eq!(p.struct_size as usize, std::mem::size_of::<EpProgress>());
    total.store(p.total_steps as usize, Ordering::SeqCst);
    0
}

#[test]
fn options_take_effect_in_the_fit() {
    let rt = runtime();
    let tr = red_and_blue(rt, 6);
    let total = AtomicUsize::new(0);
    assert_eq!(ep_trainer_set_progress(tr, Some(total_steps), &total as *const _ as *mut c_void), EP_OK);
    let mut o = init();
    (o.batch, o.validation, o.optimizer) = (3, 3, EP_OPTIMIZER_ADAM);
    assert_eq!(ep_trainer_set_options(tr, &o), EP_OK, "{}", last_error());
    assert_eq!(ep_trainer_fit(tr, 2, 0.0, 0, ptr::null_mut()), EP_OK, "{}", last_error());
    // 12 images, 3 held out: 9 in batches of 3, for 2 epochs.
    assert_eq!(total.load(Ordering::SeqCst), 6);
    let mut accuracy = -1.0f32;
    assert_eq!(ep_trainer_validation_accuracy(tr, &mut accuracy), EP_OK, "{}", last_error());
    assert!((0.0..=1.0).contains(&accuracy));
    ep_trainer_free(tr);
    ep_runtime_free(rt);
}

fn device_of(rt: *mut EpRuntime) -> String {
    let mut buf = [0 as c_char; 96];
    assert_eq!(ep_runtime_device(rt, buf.as_mut_ptr(), buf.len()), EP_OK);
    // SAFETY: `ep_runtime_device` wrote a NUL-terminated string.
    unsafe { CStr::from_ptr(buf.as_ptr()) }.to_str().unwrap().to_string()
}

/// The top three classes and probabilities of `img`.
fn top3(rt: *mut EpRuntime, img: &[u8], side: u32) -> Vec<(u32, f32)> {
    let mut classes = room(3);
    let mut n = 0usize;
    assert_eq!(ep_predict_rgb8(rt, img.as_ptr(), side, side, 3, classes.as_mut_ptr(), &mut n), EP_OK);
    classes[..n].iter().map(|c| (c.class_index, c.prob)).collect()
}

/// A runtime moved to the GPU keeps its active patch and predicts what the CPU does (up to
/// summation order), also from several threads; an unknown device is refused and changes
/// nothing. Skipped without a GPU adapter unless `EDGEPATCH_REQUIRE_GPU=1`.
#[test]
fn the_runtime_predicts_on_the_device_it_is_given() {
    let rt = runtime();
    assert_eq!(device_of(rt), "cpu");
    assert_eq!(ep_runtime_set_device(rt, 5), EP_ERR_ARGUMENT);
    assert_eq!(ep_runtime_set_device(ptr::null_mut(), EP_DEVICE_CPU), EP_ERR_ARGUMENT);
    assert_eq!(ep_runtime_device(rt, ptr::null_mut(), 8), EP_ERR_ARGUMENT);
    let mut tiny = [1 as c_char; 3];
    assert_eq!(ep_runtime_device(rt, tiny.as_mut_ptr(), tiny.len()), EP_OK);
    assert_eq!(tiny, [b'c' as c_char, b'p' as c_char, 0], "cut to fit");

    let tr = red_and_blue(rt, 4);
    assert_eq!(ep_trainer_fit(tr, 2, 0.05, 0, ptr::null_mut()), EP_OK, "{}", last_error());
    let patch = super::patch_bytes(tr);
    let name = std::ffi::CString::new("colours").unwrap();
    assert_eq!(ep_patch_load_bytes(rt, name.as_ptr(), patch.as_ptr(), patch.len()), EP_OK);
    assert_eq!(ep_patch_activate(rt, name.as_ptr()), EP_OK);
    let img = solid([200, 40, 60], 48);
    let on_cpu = top3(rt, &img, 48);

    match ep_runtime_set_device(rt, EP_DEVICE_GPU) {
        EP_OK => {}
        EP_ERR_DEVICE if std::env::var("EDGEPATCH_REQUIRE_GPU").map_or(true, |v| v != "1") => {
            eprintln!("skipping the GPU half: {}", last_error());
            assert_eq!(device_of(rt), "cpu", "a failed move changed the device");
            assert_eq!(top3(rt, &img, 48), on_cpu);
            ep_trainer_free(tr);
            ep_runtime_free(rt);
            return;
        }
        status => panic!("ep_runtime_set_device(GPU): {status}: {}", last_error()),
    }
    assert!(device_of(rt).starts_with("gpu"), "{}", device_of(rt));
    let r = rt as usize;
    std::thread::scope(|s| {
        for _ in 0..3 {
            let (img, on_cpu) = (&img, &on_cpu);
            s.spawn(move || {
                let on_gpu = top3(r as *mut EpRuntime, img, 48);
                assert_eq!(on_gpu.len(), on_cpu.len());
                for ((gc, gp), (cc, cp)) in on_gpu.iter().zip(on_cpu) {
                    assert!(gc == cc && (gp - cp).abs() < 1e-4, "GPU {on_gpu:?}, CPU {on_cpu:?}");
                }
            });
        }
    });
    // Switching patches on the GPU, and back to the CPU.
    assert_eq!(ep_patch_activate(rt, ptr::null()), EP_OK);
    let alone = top3(rt, &img, 48);
    assert_eq!(ep_runtime_set_device(rt, EP_DEVICE_CPU), EP_OK);
    assert_eq!(device_of(rt), "cpu");
    for ((gc, gp), (cc, cp)) in alone.iter().zip(&top3(rt, &img, 48)) {
        assert!(gc == cc && (gp - cp).abs() < 1e-4);
    }
    ep_trainer_free(tr);
    ep_runtime_free(rt);
}
