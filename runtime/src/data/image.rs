//! Image decoding and the ImageNet preprocessing of torchvision's MobileNetV2: RGB, resize the
//! shorter side (bilinear, computed exactly as Pillow does), center crop, `/255`, mean/std, CHW.

use std::io::Cursor;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Error, Result};

/// An 8-bit RGB image, row-major `[height, width, 3]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgb8 {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

impl Rgb8 {
    /// Bytes of a `width × height` RGB image (`width·height·3`); an argument error for an empty
    /// size or one whose byte count overflows.
    pub fn byte_len(width: u32, height: u32) -> Result<usize> {
        let len = (width as usize).checked_mul(height as usize).and_then(|n| n.checked_mul(3));
        len.filter(|&n| n > 0).ok_or_else(|| Error::Argument(format!("bad image size {width}×{height}")))
    }

    /// A `width × height` image of `data` (`width·height·3` bytes, rows top to bottom, pixels
    /// R, G, B), checked ([`Rgb8::check`]).
    pub fn new(width: u32, height: u32, data: Vec<u8>) -> Result<Rgb8> {
        let img = Rgb8 { width, height, data };
        img.check()?;
        Ok(img)
    }

    /// An argument error unless the size is not empty and `data` holds exactly its bytes.
    pub fn check(&self) -> Result<()> {
        let (w, h, len) = (self.width, self.height, self.data.len());
        if Rgb8::byte_len(w, h)? != len {
            return Err(Error::Argument(format!("{len} bytes for a {w}×{h} RGB image (it takes {w}·{h}·3)")));
        }
        Ok(())
    }
}

/// ImageNet channel means (RGB, in `[0, 1]`).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// How a picture becomes a model input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Preprocess {
    /// The shorter side is resized to this many pixels first.
    pub resize: u32,
    /// Then a centered `crop × crop` square is taken.
    pub crop: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Preprocess {
    /// ImageNet evaluation preprocessing for a `crop`-pixel input: resize to `crop·256/224`.
    pub fn imagenet(crop: u32) -> Self {
        Preprocess { resize: (crop * 256).div_ceil(224), crop, mean: IMAGENET_MEAN, std: IMAGENET_STD }
    }

    /// Task preprocessing for a `size`-pixel input: the shorter side resized to `size`, then
    /// center-cropped (a square image is only resized).
    pub fn task(size: u32) -> Self {
        Preprocess { resize: size, crop: size, mean: IMAGENET_MEAN, std: IMAGENET_STD }
    }

    /// The image as a normalised `[3, crop, crop]` tensor.
    pub fn apply(&self, img: &Rgb8) -> Result<Vec<f32>> {
        let dst = self.resized(img)?;
        let (left, top) = (center_offset(dst.width, self.crop), center_offset(dst.height, self.crop));
        Ok(self.crop_normalize(&dst, left, top, false))
    }

    /// The image with its shorter side resized to `resize` (at least `crop` on both sides).
    pub fn resized(&self, img: &Rgb8) -> Result<Rgb8> {
        img.check()?;
        let (w, h) = (img.width as u64, img.height as u64);
        let r = self.resize as u64;
        let (nw, nh) = if w <= h { (r, r * h / w) } else { (r * w / h, r) };
        if nw.max(nh) > MAX_RESIZED_SIDE {
            return Err(Error::Input(format!(
                "a {w}×{h} image is too elongated to resize to {r} px on its shorter side"
            )));
        }
        let (nw, nh) = (nw as u32, nh.max(1) as u32);
        if nw < self.crop || nh < self.crop {
            return Err(Error::Input(format!("resize {} is smaller than crop {}", self.resize, self.crop)));
        }
        Ok(if (nw, nh) == (img.width, img.height) { img.clone() } else { resize_bilinear(img, nw, nh) })
    }

    /// The `crop × crop` square at `(left, top)` of a resized image, mirrored left–right when
    /// `flip`, normalised, as `[3, crop, crop]`.
    pub fn crop_normalize(&self, img: &Rgb8, left: u32, top: u32, flip: bool) -> Vec<f32> {
        let c = self.crop as usize;
        debug_assert!(left + self.crop <= img.width && top + self.crop <= img.height);
        let mut out = vec![0f32; 3 * c * c];
        for y in 0..c {
            for x in 0..c {
                let sx = if flip { c - 1 - x } else { x };
                let p = ((top as usize + y) * img.width as usize + left as usize + sx) * 3;
                for ch in 0..3 {
                    out[(ch * c + y) * c + x] = (img.data[p + ch] as f32 / 255.0 - self.mean[ch]) / self.std[ch];
                }
            }
        }
        out
    }
}

/// Longest side an image may have after its shorter side is resized (bounds the memory used).
const MAX_RESIZED_SIDE: u64 = 1 << 14;

/// Fixed-point precision of the resampling weights (Pillow's `PRECISION_BITS`).
const PRECISION_BITS: u32 = 22;

/// Separable bilinear (triangle) resampling weights from `input` to `output` samples, widened
/// by the scale when downsampling (antialiasing), as Pillow computes them: for each output
/// sample, the first input index and the fixed-point weights.
fn bilinear_weights(input: usize, output: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = input as f64 / output as f64;
    let filter_scale = scale.max(1.0);
    let support = filter_scale;
    (0..output)
        .map(|o| {
            let center = (o as f64 + 0.5) * scale;
            let lo = ((center - support + 0.5) as i64).max(0) as usize;
            let hi = ((center + support + 0.5) as i64).min(input as i64) as usize;
            let w: Vec<f64> =
                (lo..hi).map(|i| (1.0 - ((i as f64 - center + 0.5) / filter_scale).abs()).max(0.0)).collect();
            let sum: f64 = w.iter().sum();
            let fixed = w
                .iter()
                .map(|&x| {
                    let x = if sum != 0.0 { x / sum } else { x } * (1u64 << PRECISION_BITS) as f64;
                    (if x < 0.0 { x - 0.5 } else { x + 0.5 }) as i32
                })
                .collect();
            (lo, fixed)
        })
        .collect()
}

fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes RGB8 to `w × h`: a horizontal pass into an 8-bit intermediate, then a vertical pass,
/// each rounding like Pillow's `Image.resize(…, BILINEAR)`, so inputs match the reference.
pub fn resize_bilinear(img: &Rgb8, w: u32, h: u32) -> Rgb8 {
    let (sw, sh, w, h) = (img.width as usize, img.height as usize, w as usize, h as usize);
    let half = 1i64 << (PRECISION_BITS - 1);
    let horiz = if w == sw { None } else { Some(bilinear_weights(sw, w)) };
    let mid: Vec<u8> = match &horiz {
        None => img.data.clone(),
        Some(cols) => {
            let mut mid = vec![0u8; sh * w * 3];
            for (y, row) in mid.chunks_exact_mut(w * 3).enumerate() {
                let src = &img.data[y * sw * 3..(y + 1) * sw * 3];
                for (x, (lo, k)) in cols.iter().enumerate() {
                    for c in 0..3 {
                        let acc: i64 =
                            k.iter().enumerate().map(|(j, &kw)| src[(lo + j) * 3 + c] as i64 * kw as i64).sum();
                        row[x * 3 + c] = clip8(acc + half);
                    }
                }
            }
            mid
        }
    };
    if h == sh {
        return Rgb8 { width: w as u32, height: h as u32, data: mid };
    }
    let rows = bilinear_weights(sh, h);
    let mut out = vec![0u8; h * w * 3];
    for (y, (lo, k)) in rows.iter().enumerate() {
        for i in 0..w * 3 {
            let acc: i64 = k.iter().enumerate().map(|(j, &kw)| mid[(lo + j) * w * 3 + i] as i64 * kw as i64).sum();
            out[y * w * 3 + i] = clip8(acc + half);
        }
    }
    Rgb8 { width: w as u32, height: h as u32, data: out }
}

/// torchvision's center-crop offset: `round((size − crop) / 2)` with Python's half-to-even rounding.
fn center_offset(size: u32, crop: u32) -> u32 {
    let d = size - crop;
    let k = d / 2;
    if d % 2 == 1 && k % 2 == 1 {
        k + 1
    } else {
        k
    }
}

/// Default of [`max_pixels`]: 2²⁵ = 33,554,432 pixels (an 8192 × 4096 image, 100 MB as RGB8).
pub const DEFAULT_MAX_PIXELS: u64 = 1 << 25;

static MAX_PIXELS: AtomicU64 = AtomicU64::new(DEFAULT_MAX_PIXELS);

/// The most pixels (width × height) an image may have to be decoded, process-wide; larger
/// images are refused from their header, before any pixel is decoded.
pub fn max_pixels() -> u64 {
    MAX_PIXELS.load(Ordering::Relaxed)
}

/// Sets [`max_pixels`] for the whole process (at least one pixel).
pub fn set_max_pixels(pixels: u64) {
    MAX_PIXELS.store(pixels.max(1), Ordering::Relaxed);
}

/// Decodes a JPEG or PNG file (grayscale, RGB or RGBA; alpha is dropped) into RGB8. The file
/// must be a regular file of at most [`crate::fsio::MAX_IMAGE_BYTES`]; see [`decode`].
pub fn load(path: &Path) -> Result<Rgb8> {
    use std::io::Read as _;
    let bad = |reason: String| Error::Image { path: path.to_path_buf(), reason };
    let (mut f, len) = crate::fsio::open_limited(path, crate::fsio::MAX_IMAGE_BYTES, "an image file")?;
    // The signature first: a file that is neither PNG nor JPEG is refused unread.
    let mut bytes = Vec::with_capacity(len as usize);
    (&mut f).take(8).read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    if !bytes.starts_with(b"\x89PNG") && !bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        return Err(bad("unknown image format (JPEG and PNG are supported)".into()));
    }
    f.take(crate::fsio::MAX_IMAGE_BYTES + 1 - bytes.len() as u64)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > crate::fsio::MAX_IMAGE_BYTES {
        return Err(bad(format!("more than the limit of {} bytes", crate::fsio::MAX_IMAGE_BYTES)));
    }
    decode(&bytes).map_err(bad)
}

fn check_pixels(width: u64, height: u64) -> std::result::Result<(), String> {
    let limit = max_pixels();
    match width.checked_mul(height) {
        Some(0) => Err(format!("a {width}×{height} image has no pixels")),
        Some(n) if n <= limit => Ok(()),
        _ => {
            Err(format!("a {width}×{height} image has more than {limit} pixels (the limit; `--max-pixels` changes it)"))
        }
    }
}

/// Decodes JPEG or PNG bytes into RGB8; the error is a human-readable reason. The size is read
/// from the header and checked against [`max_pixels`] before decoding. JPEGs are decoded
/// strictly: a truncated or damaged file is refused, never completed with grey; PNGs are
/// checked by their CRCs and must be complete.
pub fn decode(bytes: &[u8]) -> std::result::Result<Rgb8, String> {
    let reader = || image::ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| e.to_string());
    match reader()?.format() {
        None => Err("unknown image format (JPEG and PNG are supported)".into()),
        Some(image::ImageFormat::Jpeg) => decode_jpeg(bytes),
        Some(_) => {
            let (w, h) = reader()?.into_dimensions().map_err(|e| e.to_string())?;
            check_pixels(w as u64, h as u64)?;
            let mut r = reader()?;
            let mut limits = image::Limits::default();
            // 16-bit RGBA is the widest PNG layout: 8 bytes a pixel.
            limits.max_alloc = Some(8 * w as u64 * h as u64 + (1 << 20));
            r.limits(limits);
            let rgb = r.decode().map_err(|e| e.to_string())?.into_rgb8();
            Ok(Rgb8 { width: rgb.width(), height: rgb.height(), data: rgb.into_raw() })
        }
    }
}

fn decode_jpeg(bytes: &[u8]) -> std::result::Result<Rgb8, String> {
    use zune_jpeg::zune_core::{colorspace::ColorSpace, options::DecoderOptions};
    let options = DecoderOptions::default()
        .set_strict_mode(true)
        .jpeg_set_out_colorspace(ColorSpace::RGB)
        .set_max_width(1 << 20)
        .set_max_height(1 << 20);
    let mut d = zune_jpeg::JpegDecoder::new_with_options(Cursor::new(bytes), options);
    let jpeg_err = |e: zune_jpeg::errors::DecodeErrors| format!("damaged JPEG: {e}");
    d.decode_headers().map_err(jpeg_err)?;
    let (w, h) = d.dimensions().ok_or("a JPEG without dimensions")?;
    check_pixels(w as u64, h as u64)?;
    let data = d.decode().map_err(jpeg_err)?;
    if data.len() != w * h * 3 {
        return Err(format!("a {w}×{h} JPEG decoded to {} bytes, not RGB", data.len()));
    }
    Ok(Rgb8 { width: w as u32, height: h as u32, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn solid(width: u32, height: u32, v: u8) -> Rgb8 {
        Rgb8 { width, height, data: vec![v; (width * height * 3) as usize] }
    }

    #[test]
    fn constant_image_stays_constant_through_resize() {
        let out = resize_bilinear(&solid(451, 300, 200), 384, 256);
        assert!(out.data.iter().all(|&v| v == 200));
    }

    #[test]
    fn tiny_and_elongated_images() {
        let pp = Preprocess::imagenet(224);
        assert_eq!(pp.apply(&solid(1, 1, 9)).unwrap().len(), 3 * 224 * 224);
        assert!(matches!(pp.apply(&solid(1, 100_000, 9)), Err(Error::Input(_))));
        assert!(matches!(pp.apply(&solid(0, 5, 9)), Err(Error::Argument(_))));
    }

    #[test]
    fn images_are_checked_against_their_size() {
        assert_eq!(Rgb8::new(2, 3, vec![1; 18]).unwrap().data.len(), 18);
        for (w, h, len) in [(2, 3, 17), (2, 3, 19), (0, 3, 0), (3, 0, 0), (u32::MAX, u32::MAX, 3)] {
            let e = Rgb8::new(w, h, vec![0; len]).unwrap_err();
            assert!(matches!(e, Error::Argument(_)), "{w}×{h} with {len} bytes: {e}");
        }
        // A malformed image built by hand is refused where it is used, not read past its end.
        let short = Rgb8 { width: 40, height: 40, data: vec![0; 100] };
        assert!(matches!(Preprocess::imagenet(224).apply(&short), Err(Error::Argument(_))));
    }

    #[test]
    fn center_offset_rounds_half_to_even() {
        assert_eq!(center_offset(384, 224), 80);
        assert_eq!(center_offset(227, 224), 2);
        assert_eq!(center_offset(229, 224), 2);
        assert_eq!(center_offset(225, 224), 0);
    }
}
