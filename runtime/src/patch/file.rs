//! The patch file, format version 1: a fixed 40-byte prefix, then a postcard header (labels and
//! tensor descriptors), then a postcard body (the values), read and written through the
//! `embedded-io` traits so that the codec needs no file system.
//!
//! ```text
//! offset size field
//!      0    8 magic "EDGEPTCH"
//!      8    2 format version (u16 LE) = 1
//!     10    1 patch kinds (bit set, see PatchKinds::bits)
//!     11    1 reserved, 0
//!     12    8 backbone fingerprint (64 bits, big-endian as printed in hex)
//!     20    4 resolution (u32 LE)
//!     24    4 header length H (u32 LE)
//!     28    8 body length B (u64 LE)
//!     36    4 CRC-32 (IEEE) of bytes 0..36, the header and the body (u32 LE)
//!     40    H postcard Header { labels: Vec<String>, tensors: Vec<{ node: u32, role: u8, shape: Vec<u32> }> }
//!   40+H    B postcard Body { values: Vec<Vec<f32>> }, one vector per tensor, in header order
//! ```
//! Every length is checked against limits and against the header before anything is allocated.

use embedded_io::{Read, ReadExactError, Write};
use serde::{Deserialize, Serialize};

use super::{Patch, PatchKinds, PatchTensor, Role};
use crate::{Error, Result};

/// The first bytes of every patch file.
pub const MAGIC: [u8; 8] = *b"EDGEPTCH";
/// The format version this code writes.
pub const VERSION: u16 = 1;
/// Bytes in the fixed prefix.
pub const PREFIX_LEN: usize = 40;
/// Largest header accepted (labels and tensor descriptors).
pub const MAX_HEADER_LEN: u32 = 4 << 20;
/// Largest body accepted: 64 M values (more than a fully fine-tuned MobileNetV2 needs).
pub const MAX_BODY_LEN: u64 = 256 << 20;

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
struct Body {
    values: Vec<Vec<f32>>,
}

fn postcard_err(what: &str, e: postcard::Error) -> Error {
    Error::Patch(format!("cannot encode or decode the {what}: {e}"))
}

fn fingerprint_bytes(fp: &str) -> Result<[u8; 8]> {
    let bad = || Error::Patch(format!("fingerprint '{fp}' is not 16 hex digits"));
    if fp.len() != 16 {
        return Err(bad());
    }
    let mut out = [0u8; 8];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(fp.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// The encoded file as bytes (what [`write`] writes).
pub fn to_bytes(patch: &Patch) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    write(patch, &mut out)?;
    Ok(out)
}

/// Encodes `patch` into `w`.
pub fn write<W: Write>(patch: &Patch, w: &mut W) -> Result<()> {
    let header = Header {
        labels: patch.labels.clone(),
        tensors: patch
            .tensors
            .iter()
            .map(|t| TensorDesc { node: t.node, role: t.role.code(), shape: t.shape.clone() })
            .collect(),
    };
    let body = Body { values: patch.tensors.iter().map(|t| t.values.clone()).collect() };
    let h = postcard::to_allocvec(&header).map_err(|e| postcard_err("header", e))?;
    let b = postcard::to_allocvec(&body).map_err(|e| postcard_err("body", e))?;
    if h.len() as u64 > MAX_HEADER_LEN as u64 || b.len() as u64 > MAX_BODY_LEN {
        return Err(Error::Patch("patch too large for the format".into()));
    }
    let mut prefix = [0u8; PREFIX_LEN];
    prefix[..8].copy_from_slice(&MAGIC);
    prefix[8..10].copy_from_slice(&VERSION.to_le_bytes());
    prefix[10] = patch.kinds.bits();
    prefix[12..20].copy_from_slice(&fingerprint_bytes(&patch.fingerprint)?);
    prefix[20..24].copy_from_slice(&patch.resolution.to_le_bytes());
    prefix[24..28].copy_from_slice(&(h.len() as u32).to_le_bytes());
    prefix[28..36].copy_from_slice(&(b.len() as u64).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&prefix[..36]);
    crc.update(&h);
    crc.update(&b);
    prefix[36..40].copy_from_slice(&crc.finalize().to_le_bytes());
    let io = |_| Error::Patch("write failed".into());
    w.write_all(&prefix).map_err(io)?;
    w.write_all(&h).map_err(io)?;
    w.write_all(&b).map_err(io)?;
    w.flush().map_err(io)
}

fn read_exact<R: Read>(r: &mut R, buf: &mut [u8], what: &str) -> Result<()> {
    r.read_exact(buf).map_err(|e| match e {
        ReadExactError::UnexpectedEof => Error::Patch(format!("truncated file (in the {what})")),
        ReadExactError::Other(e) => Error::Patch(format!("read failed in the {what}: {e:?}")),
    })
}

/// Bytes of `n` as a postcard varint.
fn varint_len(n: u64) -> u64 {
    let mut len = 1;
    while len < 10 && n >> (7 * len) != 0 {
        len += 1;
    }
    len
}

/// Decodes a patch from `r`, which must hold exactly one patch file from its start.
pub fn read<R: Read>(r: &mut R) -> Result<Patch> {
    let mut prefix = [0u8; PREFIX_LEN];
    read_exact(r, &mut prefix, "fixed prefix")?;
    if prefix[..8] != MAGIC {
        return Err(Error::Patch("not an edgepatch patch file (bad magic)".into()));
    }
    let le32 = |i: usize| u32::from_le_bytes(prefix[i..i + 4].try_into().expect("4 bytes"));
    let version = u16::from_le_bytes([prefix[8], prefix[9]]);
    if version != VERSION {
        return Err(Error::Patch(format!("format version {version} is not supported (this build reads {VERSION})")));
    }
    let kinds = PatchKinds::from_bits(prefix[10])?;
    if prefix[11] != 0 {
        return Err(Error::Patch("reserved byte is not zero".into()));
    }
    let fingerprint: String = prefix[12..20].iter().map(|b| format!("{b:02x}")).collect();
    let resolution = le32(20);
    let header_len = le32(24);
    let body_len = u64::from_le_bytes(prefix[28..36].try_into().expect("8 bytes"));
    let crc_want = le32(36);
    if header_len > MAX_HEADER_LEN || body_len > MAX_BODY_LEN {
        return Err(Error::Patch(format!("header ({header_len} B) or body ({body_len} B) over the format's limits")));
    }
    let mut h = vec![0u8; header_len as usize];
    read_exact(r, &mut h, "header")?;
    let header: Header = postcard::from_bytes(&h).map_err(|e| postcard_err("header", e))?;
    let mut expect = varint_len(header.tensors.len() as u64);
    for t in &header.tensors {
        let n = t.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64)).filter(|&n| n <= MAX_BODY_LEN / 4);
        let n = n.ok_or_else(|| Error::Patch("a tensor shape is over the format's limits".into()))?;
        expect += varint_len(n) + 4 * n;
    }
    if expect != body_len {
        return Err(Error::Patch(format!("body length {body_len} does not match the tensor shapes ({expect})")));
    }
    let mut b = vec![0u8; body_len as usize];
    read_exact(r, &mut b, "body")?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&prefix[..36]);
    crc.update(&h);
    crc.update(&b);
    if crc.finalize() != crc_want {
        return Err(Error::Patch("checksum mismatch: the file is corrupt".into()));
    }
    let body: Body = postcard::from_bytes(&b).map_err(|e| postcard_err("body", e))?;
    if body.values.len() != header.tensors.len() {
        return Err(Error::Patch("body and header disagree on the tensor count".into()));
    }
    let mut tensors = Vec::with_capacity(header.tensors.len());
    for (d, values) in header.tensors.into_iter().zip(body.values) {
        if values.len() as u64 != d.shape.iter().map(|&x| x as u64).product::<u64>() {
            return Err(Error::Patch("a tensor's values do not match its shape".into()));
        }
        if values.iter().any(|v| !v.is_finite()) {
            return Err(Error::Patch(format!("tensor for node {} holds non-finite values", d.node)));
        }
        tensors.push(PatchTensor { node: d.node, role: Role::from_code(d.role)?, shape: d.shape, values });
    }
    let mut extra = [0u8; 1];
    if r.read(&mut extra).map_err(|e| Error::Patch(format!("read failed: {e:?}")))? != 0 {
        return Err(Error::Patch("trailing bytes after the body".into()));
    }
    Ok(Patch { kinds, fingerprint, resolution, labels: header.labels, tensors })
}

/// Decodes a patch from bytes.
pub fn from_bytes(mut bytes: &[u8]) -> Result<Patch> {
    read(&mut bytes)
}

/// Reads a patch file.
pub fn load(path: &std::path::Path) -> Result<Patch> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    from_bytes(&bytes).map_err(|e| match e {
        Error::Patch(m) => Error::Patch(format!("{}: {m}", path.display())),
        e => e,
    })
}

/// Writes a patch file atomically: a temporary file in the same directory, synced, then renamed
/// over `path` and the directory synced, so `path` holds the old file or the new one, never a
/// part of either.
pub fn save(patch: &Patch, path: &std::path::Path) -> Result<()> {
    use std::io::Write as _;
    let bytes = to_bytes(patch)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| Error::Patch(format!("{} is not a file path", path.display())))?;
    let tmp = dir.join(format!(".{}.tmp{}", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(&dir) {
            d.sync_all().ok();
        }
        Ok(())
    })();
    result.map_err(|e| {
        std::fs::remove_file(&tmp).ok();
        Error::io(path, e)
    })
}
