//! Image decoding and the ImageNet preprocessing of torchvision's MobileNetV2: RGB, resize the
//! shorter side (bilinear, PIL-equivalent convolution), center crop, `/255`, mean/std, CHW.

use std::path::Path;

use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

use crate::{Error, Result};

/// An 8-bit RGB image, row-major `[height, width, 3]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgb8 {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

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
        Preprocess {
            resize: (crop * 256).div_ceil(224),
            crop,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        }
    }

    /// The image as a normalised `[3, crop, crop]` tensor.
    pub fn apply(&self, img: &Rgb8) -> Result<Vec<f32>> {
        let (w, h) = (img.width as u64, img.height as u64);
        if w == 0 || h == 0 {
            return Err(Error::Input("empty image".into()));
        }
        let r = self.resize as u64;
        let (nw, nh) = if w <= h { (r, r * h / w) } else { (r * w / h, r) };
        let (nw, nh) = (nw as u32, nh.max(1) as u32);
        if nw < self.crop || nh < self.crop {
            return Err(Error::Input(format!("resize {} is smaller than crop {}", self.resize, self.crop)));
        }
        let src = Image::from_vec_u8(img.width, img.height, img.data.clone(), PixelType::U8x3)
            .map_err(|e| Error::Input(format!("image buffer: {e}")))?;
        let mut dst = Image::new(nw, nh, PixelType::U8x3);
        Resizer::new()
            .resize(&src, &mut dst, &ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear)))
            .map_err(|e| Error::Input(format!("resize: {e}")))?;
        let (left, top) = (center_offset(nw, self.crop), center_offset(nh, self.crop));
        let c = self.crop as usize;
        let buf = dst.buffer();
        let mut out = vec![0f32; 3 * c * c];
        for y in 0..c {
            for x in 0..c {
                let p = ((top as usize + y) * nw as usize + left as usize + x) * 3;
                for ch in 0..3 {
                    out[(ch * c + y) * c + x] = (buf[p + ch] as f32 / 255.0 - self.mean[ch]) / self.std[ch];
                }
            }
        }
        Ok(out)
    }
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

/// Decodes a JPEG or PNG file (grayscale, RGB or RGBA; alpha is dropped) into RGB8.
pub fn load(path: &Path) -> Result<Rgb8> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode(&bytes).map_err(|reason| Error::Image { path: path.to_path_buf(), reason })
}

/// Decodes JPEG or PNG bytes into RGB8; the error is a human-readable reason.
pub fn decode(bytes: &[u8]) -> std::result::Result<Rgb8, String> {
    let img = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    if img.format().is_none() {
        return Err("unknown image format (JPEG and PNG are supported)".into());
    }
    let rgb = img.decode().map_err(|e| e.to_string())?.to_rgb8();
    Ok(Rgb8 { width: rgb.width(), height: rgb.height(), data: rgb.into_raw() })
}
