//! The image decoder's target: seeds are PNGs (RGB, RGBA, grey, 16-bit) and JPEGs (colour and
//! grey) made here. Mutations change bytes, or rewrite the size fields — a PNG's IHDR width and
//! height (CRC fixed, so the header is believed) and a JPEG's frame height and width — or a PNG
//! chunk's length, or cut the file. A decoded image must also go through the model's
//! preprocessing without a panic.

use std::io::Cursor;

use edgepatch::data::image::{decode, Preprocess};

use crate::{blank_numbers, mutate_bytes, Rng};

fn encode(img: ::image::DynamicImage, format: ::image::ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("a seed encodes");
    out.into_inner()
}

pub fn seeds(rng: &mut Rng) -> Vec<Vec<u8>> {
    use ::image::{DynamicImage, ImageBuffer, ImageFormat};
    let (w, h) = (37u32, 23u32);
    let mut px = |n: usize| (0..n).map(|_| rng.next_u64() as u8).collect::<Vec<u8>>();
    let rgb = DynamicImage::ImageRgb8(ImageBuffer::from_raw(w, h, px((w * h * 3) as usize)).expect("size"));
    let rgba = DynamicImage::ImageRgba8(ImageBuffer::from_raw(w, h, px((w * h * 4) as usize)).expect("size"));
    let grey = DynamicImage::ImageLuma8(ImageBuffer::from_raw(w, h, px((w * h) as usize)).expect("size"));
    let deep: Vec<u16> = px((w * h * 3) as usize).iter().map(|&v| v as u16 * 257).collect();
    let rgb16 = DynamicImage::ImageRgb16(ImageBuffer::from_raw(w, h, deep).expect("size"));
    vec![
        encode(rgb.clone(), ImageFormat::Png),
        encode(rgba, ImageFormat::Png),
        encode(grey.clone(), ImageFormat::Png),
        encode(rgb16, ImageFormat::Png),
        encode(rgb, ImageFormat::Jpeg),
        encode(grey, ImageFormat::Jpeg),
    ]
}

const SIZES: [u32; 8] = [0, 1, 2, 255, 4096, 20_000, 65_535, u32::MAX];

/// Rewrites a PNG's IHDR width or height and fixes its CRC.
fn png_size(b: &mut [u8], rng: &mut Rng) {
    if b.len() < 33 || &b[12..16] != b"IHDR" {
        return;
    }
    let at = 16 + 4 * rng.below(2);
    b[at..at + 4].copy_from_slice(&SIZES[rng.below(SIZES.len())].to_be_bytes());
    let crc = crc32fast::hash(&b[12..29]);
    b[29..33].copy_from_slice(&crc.to_be_bytes());
}

/// Rewrites a JPEG frame's height or width (after an SOF0/1/2 marker).
fn jpeg_size(b: &mut [u8], rng: &mut Rng) {
    let Some(at) = b.windows(2).position(|w| w[0] == 0xff && matches!(w[1], 0xc0..=0xc2)) else { return };
    let field = at + 5 + 2 * rng.below(2);
    if field + 2 <= b.len() {
        let v = SIZES[rng.below(SIZES.len())].min(65_535) as u16;
        b[field..field + 2].copy_from_slice(&v.to_be_bytes());
    }
}

pub fn mutate(input: &[u8], corpus: &[Vec<u8>], rng: &mut Rng) -> Vec<u8> {
    let mut b = input.to_vec();
    for _ in 0..1 + rng.below(3) {
        match rng.below(6) {
            0 => png_size(&mut b, rng),
            1 => jpeg_size(&mut b, rng),
            2 if b.len() > 40 => {
                // A chunk or segment length: the first length field after the PNG signature.
                let at = 33 + rng.below(b.len() - 40);
                let v = SIZES[rng.below(SIZES.len())];
                b[at..at + 4].copy_from_slice(&v.to_be_bytes());
            }
            _ => mutate_bytes(&mut b, corpus, rng),
        }
    }
    b
}

/// `text` with the PNG decoder's chunk descriptions (`ChunkType { type: …, safecopy: … }`)
/// shortened to `ChunkType`: they vary with every mutated byte and would fill the corpus with one
/// outcome in many spellings.
fn without_chunk_types(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("ChunkType {") {
        out.push_str(&rest[..i + "ChunkType".len()]);
        let after = &rest[i..];
        let end = after.find("safecopy: ").and_then(|k| after[k..].find('}').map(|e| k + e + 1)).unwrap_or(after.len());
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// Decodes `input`; a decoded image is then preprocessed for a 32-pixel input.
pub fn execute(input: &[u8]) -> String {
    match decode(input) {
        Err(e) => blank_numbers(&without_chunk_types(&format!("decode: {e}"))),
        Ok(img) => match Preprocess::task(32).apply(&img) {
            Ok(_) => "accepted".into(),
            Err(e) => blank_numbers(&format!("preprocess: {e}")),
        },
    }
}
