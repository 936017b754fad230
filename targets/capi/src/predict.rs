//! Predictions through the C ABI: an image's top classes with the active patch.

use std::ffi::c_char;

use edgepatch::app::Runtime;
use edgepatch::data::image::Rgb8;

use super::{arg, cstr, guard, out, rgb8, runtime, EpRuntime, Failure};

/// Longest label copied into `EpClass::label`, including the terminating NUL.
pub const EP_LABEL_LEN: usize = 64;

/// One class of a prediction.
#[repr(C)]
pub struct EpClass {
    pub class_index: u32,
    pub prob: f32,
    /// NUL-terminated, truncated to fit.
    pub label: [c_char; EP_LABEL_LEN],
}

fn write_top(rt: &Runtime, img: Rgb8, k: usize, classes: *mut EpClass, n_out: *mut usize) -> Result<(), Failure> {
    if classes.is_null() || k == 0 {
        return Err(arg("classes is null or k is 0"));
    }
    let n_out = out(n_out, "n_out")?;
    let top = rt.classify(&[img], k)?.pop().unwrap_or_default();
    // SAFETY: C passes room for `k` classes at `classes`.
    let dst = unsafe { std::slice::from_raw_parts_mut(classes, k) };
    for (d, s) in dst.iter_mut().zip(&top) {
        d.class_index = s.class as u32;
        d.prob = s.prob;
        d.label = [0; EP_LABEL_LEN];
        let mut end = s.label.len().min(EP_LABEL_LEN - 1);
        while !s.label.is_char_boundary(end) {
            end -= 1;
        }
        for (c, b) in d.label.iter_mut().zip(&s.label.as_bytes()[..end]) {
            *c = *b as c_char;
        }
    }
    *n_out = top.len();
    Ok(())
}

/// Classifies an RGB8 image (`width·height·3` bytes, rows top to bottom, any size: it is
/// resized and normalised here) with the active patch; writes up to `k` classes, best first,
/// to `classes` and their number to `*n_out`.
/// Threads: any number of threads at once on one runtime.
#[no_mangle]
pub extern "C" fn ep_predict_rgb8(
    rt: *mut EpRuntime,
    rgb: *const u8,
    width: u32,
    height: u32,
    k: usize,
    classes: *mut EpClass,
    n_out: *mut usize,
) -> i32 {
    guard(|| {
        let img = rgb8(rgb, width, height)?;
        write_top(runtime(rt)?, img, k, classes, n_out)
    })
}

/// Sets, for the whole process, the most pixels (width × height) an image file may have to be
/// decoded by `ep_predict_file` (default 33,554,432 = 2^25); larger files are refused from
/// their header with `EP_ERR_IMAGE` before any pixel is decoded. 0 is refused.
/// Threads: any thread; applies to the decodes that start after it.
#[no_mangle]
pub extern "C" fn ep_set_max_pixels(pixels: u64) -> i32 {
    guard(|| {
        if pixels == 0 {
            return Err(arg("the pixel limit must be at least 1"));
        }
        edgepatch::data::image::set_max_pixels(pixels);
        Ok(())
    })
}

/// Decodes a JPEG or PNG file (strictly: a truncated or damaged file is `EP_ERR_IMAGE`; see
/// `ep_set_max_pixels`) and classifies it like `ep_predict_rgb8`.
/// Threads: any number of threads at once on one runtime.
#[no_mangle]
pub extern "C" fn ep_predict_file(
    rt: *mut EpRuntime,
    path: *const c_char,
    k: usize,
    classes: *mut EpClass,
    n_out: *mut usize,
) -> i32 {
    guard(|| {
        let img = edgepatch::data::image::load(std::path::Path::new(cstr(path, "path")?))?;
        write_top(runtime(rt)?, img, k, classes, n_out)
    })
}
