//! The edgepatch patch file: a fixed 40-byte prefix, a postcard header (labels and tensor
//! descriptors) and a postcard body (the values), read and written through the `embedded-io`
//! traits. `no_std` + `alloc`: the codec needs no file system and builds for bare-metal targets.
//!
//! ```text
//! offset size field
//!      0    8 magic "EDGEPTCH"
//!      8    2 format version (u16 LE): 2 (this crate writes it), 1 (read)
//!     10    1 patch kinds (bit set: 0 logits, 1 sb, 2 bias, 3 dw, 4 full, 5 se)
//!     11    1 value type: 0 f32, 1 f16 (version 1: reserved, always 0)
//!     12    8 backbone fingerprint (64 bits, big-endian as printed in hex)
//!     20    4 resolution (u32 LE)
//!     24    4 header length H (u32 LE)
//!     28    8 body length B (u64 LE)
//!     36    4 CRC-32 (IEEE) of bytes 0..36, the header and the body (u32 LE)
//!     40    H postcard Header { labels: Vec<String>, tensors: Vec<{ node: u32, role: u8, shape: Vec<u32> }> }
//!   40+H    B postcard Body, one vector per tensor in header order:
//!             f32: Vec<Vec<f32>> (4 bytes LE per value)
//!             f16: Vec<Vec<[u8; 2]>> (IEEE binary16 LE per value)
//! ```
//!
//! Reading checks, before allocating anything, that the header and body lengths are within
//! [`MAX_HEADER_LEN`] / [`MAX_BODY_LEN`] and that the body length is exactly what the header's
//! tensor shapes imply; then the checksum, then every value (finite) and that nothing follows
//! the body. Meaning (which kinds and roles exist, whether the tensors fit a backbone) is the
//! caller's to check.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use embedded_io::{Read, ReadExactError, Write};
use half::f16;
use serde::{Deserialize, Serialize};

/// The first bytes of every patch file.
pub const MAGIC: [u8; 8] = *b"EDGEPTCH";
/// The format version this crate writes.
pub const VERSION: u16 = 2;
/// Bytes in the fixed prefix.
pub const PREFIX_LEN: usize = 40;
/// Largest header accepted (labels and tensor descriptors).
pub const MAX_HEADER_LEN: u32 = 4 << 20;
/// Largest body accepted: 64 M f32 values (more than a fully fine-tuned MobileNetV2 needs).
pub const MAX_BODY_LEN: u64 = 256 << 20;
/// The bytes after the prefix that a file's prefix declares (header plus body length, as
/// stored: not yet checked against the limits).
pub fn declared_len(prefix: &[u8; PREFIX_LEN]) -> u64 {
    let header = u32::from_le_bytes([prefix[24], prefix[25], prefix[26], prefix[27]]) as u64;
    let mut body = [0u8; 8];
    body.copy_from_slice(&prefix[28..36]);
    header.saturating_add(u64::from_le_bytes(body))
}

/// Bits of the kinds set (six kinds; a reader from before `se` refuses bit 5 as unknown).
const KIND_BITS: u32 = 6;

/// How the values are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum ValueType {
    /// IEEE binary32: exact.
    #[default]
    F32,
    /// IEEE binary16 (rounded to nearest even): half the bytes, about 3 significant digits.
    F16,
}

impl ValueType {
    fn code(self) -> u8 {
        match self {
            ValueType::F32 => 0,
            ValueType::F16 => 1,
        }
    }

    /// Bytes per stored value.
    pub fn width(self) -> u64 {
        match self {
            ValueType::F32 => 4,
            ValueType::F16 => 2,
        }
    }

    /// `v` as it reads back after storing it with this type.
    pub fn round(self, v: f32) -> f32 {
        match self {
            ValueType::F32 => v,
            ValueType::F16 => f16::from_f32(v).to_f32(),
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ValueType::F32 => "f32",
            ValueType::F16 => "f16",
        })
    }
}

/// `f32` or `f16`.
impl core::str::FromStr for ValueType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(ValueType::F32),
            "f16" => Ok(ValueType::F16),
            _ => Err(alloc::format!("unknown value type '{s}' (expected f32 or f16)")),
        }
    }
}

/// One tensor: the new value of parameter `role` of graph node `node`.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    pub node: u32,
    /// 0 scale, 1 bias, 2 weights (meaning checked by the caller).
    pub role: u8,
    pub shape: Vec<u32>,
    /// Row-major, `shape.product()` values.
    pub values: Vec<f32>,
}

/// A patch file's contents, fields as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RawPatch {
    /// Bit set of patch kinds (non-empty, bits 0..6).
    pub kinds: u8,
    /// The backbone's fingerprint.
    pub fingerprint: [u8; 8],
    /// Input height and width the patch was trained at.
    pub resolution: u32,
    /// How the values are (or were) stored.
    pub value_type: ValueType,
    /// Class names, one per output of the task's classifier.
    pub labels: Vec<String>,
    pub tensors: Vec<RawTensor>,
}

/// Why a patch cannot be encoded or decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum FormatError {
    /// The stream ended inside the named part.
    Truncated(&'static str),
    /// The reader or writer failed.
    Io(&'static str),
    BadMagic,
    UnsupportedVersion(u16),
    UnknownKinds(u8),
    UnknownValueType(u8),
    /// Version 1's reserved byte is not zero.
    Reserved(u8),
    /// A header, body or tensor size over the limits.
    TooLarge(&'static str),
    /// The body length does not match the header's shapes.
    BodyLength {
        stored: u64,
        expected: u64,
    },
    Checksum,
    /// postcard could not encode or decode the named part.
    Postcard(&'static str, postcard::Error),
    /// A tensor's value count disagrees with its shape or the header.
    Mismatch(&'static str),
    /// A value is NaN or infinite (when read), or out of the value type's range (when written).
    NonFinite {
        node: u32,
    },
    TrailingBytes,
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormatError::Truncated(part) => write!(f, "truncated file (in the {part})"),
            FormatError::Io(part) => write!(f, "read or write failed in the {part}"),
            FormatError::BadMagic => f.write_str("not an edgepatch patch file (bad magic)"),
            FormatError::UnsupportedVersion(v) => {
                write!(f, "format version {v} is not supported (this build reads 1 and {VERSION})")
            }
            FormatError::UnknownKinds(b) => write!(f, "unknown patch kinds (bits {b:#04x})"),
            FormatError::UnknownValueType(t) => write!(f, "unknown value type {t}"),
            FormatError::Reserved(b) => write!(f, "reserved byte is {b}, not zero"),
            FormatError::TooLarge(part) => write!(f, "the {part} is over the format's limits"),
            FormatError::BodyLength { stored, expected } => {
                write!(f, "body length {stored} does not match the tensor shapes ({expected})")
            }
            FormatError::Checksum => f.write_str("checksum mismatch: the file is corrupt"),
            FormatError::Postcard(part, e) => write!(f, "cannot encode or decode the {part}: {e}"),
            FormatError::Mismatch(what) => write!(f, "{what}"),
            FormatError::NonFinite { node } => write!(f, "tensor for node {node} holds non-finite values"),
            FormatError::TrailingBytes => f.write_str("trailing bytes after the body"),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct TensorDesc {
    node: u32,
    role: u8,
    shape: Vec<u32>,
}

#[derive(Serialize, Deserialize)]
struct Header {
    labels: Vec<String>,
    tensors: Vec<TensorDesc>,
}

#[derive(Serialize, Deserialize)]
struct BodyF32 {
    values: Vec<Vec<f32>>,
}

#[derive(Serialize, Deserialize)]
struct BodyF16 {
    values: Vec<Vec<[u8; 2]>>,
}

/// Bytes of `n` as a postcard varint.
fn varint_len(n: u64) -> u64 {
    let mut len = 1;
    while len < 10 && n >> (7 * len) != 0 {
        len += 1;
    }
    len
}

/// Values in a tensor of `shape`, if within the body limit.
fn count(shape: &[u32]) -> Option<u64> {
    shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64)).filter(|&n| n <= MAX_BODY_LEN / 2)
}

/// The body length the header's shapes imply.
fn body_len(shapes: impl ExactSizeIterator<Item = u64>, width: u64) -> u64 {
    varint_len(shapes.len() as u64) + shapes.map(|n| varint_len(n) + width * n).sum::<u64>()
}

fn kinds_ok(bits: u8) -> bool {
    bits != 0 && (bits as u32) >> KIND_BITS == 0
}

/// Bytes of the encoded patch (what [`write`] writes).
pub fn encode(patch: &RawPatch) -> Result<Vec<u8>, FormatError> {
    if !kinds_ok(patch.kinds) {
        return Err(FormatError::UnknownKinds(patch.kinds));
    }
    let header = Header {
        labels: patch.labels.clone(),
        tensors: patch
            .tensors
            .iter()
            .map(|t| TensorDesc { node: t.node, role: t.role, shape: t.shape.clone() })
            .collect(),
    };
    for t in &patch.tensors {
        if count(&t.shape) != Some(t.values.len() as u64) {
            return Err(FormatError::Mismatch("a tensor's values do not match its shape"));
        }
        if t.values.iter().any(|&v| !patch.value_type.round(v).is_finite()) {
            return Err(FormatError::NonFinite { node: t.node });
        }
    }
    let h = postcard::to_allocvec(&header).map_err(|e| FormatError::Postcard("header", e))?;
    let b = match patch.value_type {
        ValueType::F32 => {
            let body = BodyF32 { values: patch.tensors.iter().map(|t| t.values.clone()).collect() };
            postcard::to_allocvec(&body)
        }
        ValueType::F16 => {
            let values = patch
                .tensors
                .iter()
                .map(|t| t.values.iter().map(|&v| f16::from_f32(v).to_le_bytes()).collect())
                .collect();
            postcard::to_allocvec(&BodyF16 { values })
        }
    }
    .map_err(|e| FormatError::Postcard("body", e))?;
    if h.len() as u64 > MAX_HEADER_LEN as u64 {
        return Err(FormatError::TooLarge("header"));
    }
    if b.len() as u64 > MAX_BODY_LEN {
        return Err(FormatError::TooLarge("body"));
    }
    let mut out = Vec::with_capacity(PREFIX_LEN + h.len() + b.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.push(patch.kinds);
    out.push(patch.value_type.code());
    out.extend_from_slice(&patch.fingerprint);
    out.extend_from_slice(&patch.resolution.to_le_bytes());
    out.extend_from_slice(&(h.len() as u32).to_le_bytes());
    out.extend_from_slice(&(b.len() as u64).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out);
    crc.update(&h);
    crc.update(&b);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(&b);
    Ok(out)
}

/// Encodes `patch` into `w` (one `write_all` of the whole file, then `flush`).
pub fn write<W: Write>(patch: &RawPatch, w: &mut W) -> Result<(), FormatError> {
    let bytes = encode(patch)?;
    w.write_all(&bytes).map_err(|_| FormatError::Io("file"))?;
    w.flush().map_err(|_| FormatError::Io("file"))
}

fn read_exact<R: Read>(r: &mut R, buf: &mut [u8], part: &'static str) -> Result<(), FormatError> {
    r.read_exact(buf).map_err(|e| match e {
        ReadExactError::UnexpectedEof => FormatError::Truncated(part),
        ReadExactError::Other(_) => FormatError::Io(part),
    })
}

/// Decodes a patch from `r`, which must hold exactly one patch file (version 1 or 2) from its
/// start. Values come back as f32 whatever the stored type.
pub fn read<R: Read>(r: &mut R) -> Result<RawPatch, FormatError> {
    let mut prefix = [0u8; PREFIX_LEN];
    read_exact(r, &mut prefix, "fixed prefix")?;
    if prefix[..8] != MAGIC {
        return Err(FormatError::BadMagic);
    }
    let le32 = |i: usize| u32::from_le_bytes([prefix[i], prefix[i + 1], prefix[i + 2], prefix[i + 3]]);
    let version = u16::from_le_bytes([prefix[8], prefix[9]]);
    if version != 1 && version != 2 {
        return Err(FormatError::UnsupportedVersion(version));
    }
    let kinds = prefix[10];
    if !kinds_ok(kinds) {
        return Err(FormatError::UnknownKinds(kinds));
    }
    let value_type = match (version, prefix[11]) {
        (_, 0) => ValueType::F32,
        (1, b) => return Err(FormatError::Reserved(b)),
        (_, 1) => ValueType::F16,
        (_, t) => return Err(FormatError::UnknownValueType(t)),
    };
    let mut fingerprint = [0u8; 8];
    fingerprint.copy_from_slice(&prefix[12..20]);
    let resolution = le32(20);
    let header_len = le32(24);
    let mut b8 = [0u8; 8];
    b8.copy_from_slice(&prefix[28..36]);
    let stored_body = u64::from_le_bytes(b8);
    let crc_want = le32(36);
    if header_len > MAX_HEADER_LEN {
        return Err(FormatError::TooLarge("header"));
    }
    if stored_body > MAX_BODY_LEN {
        return Err(FormatError::TooLarge("body"));
    }
    let mut h = vec![0u8; header_len as usize];
    read_exact(r, &mut h, "header")?;
    let header: Header = postcard::from_bytes(&h).map_err(|e| FormatError::Postcard("header", e))?;
    let counts = header
        .tensors
        .iter()
        .map(|t| count(&t.shape).ok_or(FormatError::TooLarge("tensor shape")))
        .collect::<Result<Vec<u64>, _>>()?;
    let expected = body_len(counts.iter().copied(), value_type.width());
    if expected != stored_body {
        return Err(FormatError::BodyLength { stored: stored_body, expected });
    }
    let mut b = vec![0u8; stored_body as usize];
    read_exact(r, &mut b, "body")?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&prefix[..36]);
    crc.update(&h);
    crc.update(&b);
    if crc.finalize() != crc_want {
        return Err(FormatError::Checksum);
    }
    let values: Vec<Vec<f32>> = match value_type {
        ValueType::F32 => postcard::from_bytes::<BodyF32>(&b).map_err(|e| FormatError::Postcard("body", e))?.values,
        ValueType::F16 => postcard::from_bytes::<BodyF16>(&b)
            .map_err(|e| FormatError::Postcard("body", e))?
            .values
            .into_iter()
            .map(|v| v.into_iter().map(|x| f16::from_le_bytes(x).to_f32()).collect())
            .collect(),
    };
    if values.len() != header.tensors.len() {
        return Err(FormatError::Mismatch("body and header disagree on the tensor count"));
    }
    let mut tensors = Vec::with_capacity(values.len());
    for ((d, values), n) in header.tensors.into_iter().zip(values).zip(counts) {
        if values.len() as u64 != n {
            return Err(FormatError::Mismatch("a tensor's values do not match its shape"));
        }
        if values.iter().any(|v| !v.is_finite()) {
            return Err(FormatError::NonFinite { node: d.node });
        }
        tensors.push(RawTensor { node: d.node, role: d.role, shape: d.shape, values });
    }
    let mut extra = [0u8; 1];
    if r.read(&mut extra).map_err(|_| FormatError::Io("end of file"))? != 0 {
        return Err(FormatError::TrailingBytes);
    }
    Ok(RawPatch { kinds, fingerprint, resolution, value_type, labels: header.labels, tensors })
}

/// Decodes a patch from bytes.
pub fn decode(mut bytes: &[u8]) -> Result<RawPatch, FormatError> {
    read(&mut bytes)
}
