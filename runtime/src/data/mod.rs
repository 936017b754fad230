//! Input data: decoding and preprocessing images.

pub mod image;
