//! Patch files: the `edgepatch-format` codec (format version 2, reading version 1; layout in
//! that crate's documentation) plus the file system: atomic saves and loads that name the file.
//!
//! Encoding refuses values the chosen type cannot hold; decoding checks every length against
//! limits and the header before allocating, the checksum, every value, the kinds and the roles.

use edgepatch_format::{RawPatch, RawTensor};
pub use edgepatch_format::{ValueType, MAGIC, MAX_BODY_LEN, MAX_HEADER_LEN, PREFIX_LEN, VERSION};
use embedded_io::{Read, Write};

use super::{Patch, PatchKinds, PatchTensor, Role};
use crate::{Error, Result};

fn format_err(e: edgepatch_format::FormatError) -> Error {
    Error::Patch(e.to_string())
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

fn to_raw(patch: &Patch, value_type: ValueType) -> Result<RawPatch> {
    Ok(RawPatch {
        kinds: patch.kinds.bits(),
        fingerprint: fingerprint_bytes(&patch.fingerprint)?,
        resolution: patch.resolution,
        value_type,
        labels: patch.labels.clone(),
        tensors: patch
            .tensors
            .iter()
            .map(|t| RawTensor { node: t.node, role: t.role.code(), shape: t.shape.clone(), values: t.values.clone() })
            .collect(),
    })
}

fn from_raw(raw: RawPatch) -> Result<(Patch, ValueType)> {
    let tensors = raw
        .tensors
        .into_iter()
        .map(|t| Ok(PatchTensor { node: t.node, role: Role::from_code(t.role)?, shape: t.shape, values: t.values }))
        .collect::<Result<_>>()?;
    let patch = Patch {
        kinds: PatchKinds::from_bits(raw.kinds)?,
        fingerprint: raw.fingerprint.iter().map(|b| format!("{b:02x}")).collect(),
        resolution: raw.resolution,
        labels: raw.labels,
        tensors,
    };
    check_fields(&patch)?;
    Ok((patch, raw.value_type))
}

/// Longest class name, in bytes.
pub const MAX_LABEL_LEN: usize = 256;

/// The checks a patch passes without its backbone (the codec has checked lengths, checksum and
/// values): a resolution the trainer can make (a multiple of 32 in `32..=1024`), each parameter
/// at most once, one label per classifier output, labels of 1 to [`MAX_LABEL_LEN`] bytes with
/// no control characters (they reach terminals). [`Patch::check`] does the rest against a
/// backbone.
pub fn check_fields(patch: &Patch) -> Result<()> {
    let r = patch.resolution;
    if !(32..=1024).contains(&r) || !r.is_multiple_of(32) {
        return Err(Error::Patch(format!("resolution {r} is not a multiple of 32 between 32 and 1024")));
    }
    if patch.tensors.is_empty() {
        return Err(Error::Patch("the patch holds no tensors".into()));
    }
    if patch.slots().len() != patch.tensors.len() {
        return Err(Error::Patch("a parameter appears twice".into()));
    }
    for (i, l) in patch.labels.iter().enumerate() {
        if l.is_empty() || l.len() > MAX_LABEL_LEN || l.chars().any(char::is_control) {
            return Err(Error::Patch(format!(
                "label {i} ({:?}) is empty, longer than {MAX_LABEL_LEN} bytes or holds control characters",
                l.chars().take(40).collect::<String>()
            )));
        }
    }
    // Only the classifier has 2-D weights: its rows are the classes.
    for t in patch.tensors.iter().filter(|t| t.role == Role::Weights && t.shape.len() == 2) {
        let outputs = t.shape[0] as usize;
        if patch.labels.len() != outputs {
            return Err(Error::Patch(format!("{} labels for a classifier of {outputs} outputs", patch.labels.len())));
        }
        let bias = patch.tensors.iter().find(|b| b.node == t.node && b.role == Role::Bias);
        if bias.is_some_and(|b| b.values.len() != outputs) {
            return Err(Error::Patch("the classifier's weights and bias disagree".into()));
        }
    }
    Ok(())
}

/// The encoded file with f32 values (what [`write`] writes).
pub fn to_bytes(patch: &Patch) -> Result<Vec<u8>> {
    to_bytes_as(patch, ValueType::F32)
}

/// The encoded file with values stored as `value_type` (f16 refuses values beyond ±65504).
pub fn to_bytes_as(patch: &Patch, value_type: ValueType) -> Result<Vec<u8>> {
    edgepatch_format::encode(&to_raw(patch, value_type)?).map_err(format_err)
}

/// Encodes `patch` with f32 values into `w`.
pub fn write<W: Write>(patch: &Patch, w: &mut W) -> Result<()> {
    edgepatch_format::write(&to_raw(patch, ValueType::F32)?, w).map_err(format_err)
}

/// Decodes a patch from `r`, which must hold exactly one patch file from its start.
pub fn read<R: Read>(r: &mut R) -> Result<Patch> {
    Ok(from_raw(edgepatch_format::read(r).map_err(format_err)?)?.0)
}

/// Decodes a patch from bytes.
pub fn from_bytes(bytes: &[u8]) -> Result<Patch> {
    Ok(from_bytes_typed(bytes)?.0)
}

/// Decodes a patch from bytes, with the type its values were stored as.
pub fn from_bytes_typed(bytes: &[u8]) -> Result<(Patch, ValueType)> {
    from_raw(edgepatch_format::decode(bytes).map_err(format_err)?)
}

/// Reads a patch file.
pub fn load(path: &std::path::Path) -> Result<Patch> {
    from_bytes(&read_bytes(path)?).map_err(|e| named(path, e))
}

fn named(path: &std::path::Path, e: Error) -> Error {
    match e {
        Error::Patch(m) => Error::Patch(format!("{}: {m}", path.display())),
        e => e,
    }
}

/// The bytes of a patch file, read with bounded memory: from a regular file only, its magic
/// and declared lengths checked from the first 40 bytes before the rest is read, and no more
/// than the declared length (never more than [`crate::fsio::MAX_PATCH_BYTES`]) read. Decode
/// them with [`from_bytes`] or [`from_bytes_typed`].
pub fn read_bytes(path: &std::path::Path) -> Result<Vec<u8>> {
    use std::io::Read as _;
    let (mut f, _) = crate::fsio::open_limited(path, crate::fsio::MAX_PATCH_BYTES, "a patch file")?;
    let mut bytes = Vec::with_capacity(PREFIX_LEN);
    (&mut f).take(PREFIX_LEN as u64).read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    if bytes.len() >= MAGIC.len() && bytes[..MAGIC.len()] != MAGIC {
        return Err(named(path, Error::Patch("not an edgepatch patch file (bad magic)".into())));
    }
    if let Ok(prefix) = <&[u8; PREFIX_LEN]>::try_from(bytes.as_slice()) {
        // The codec checks the declared lengths against its limits when it decodes.
        let rest = edgepatch_format::declared_len(prefix).min(crate::fsio::MAX_PATCH_BYTES);
        f.take(rest + 1).read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    }
    Ok(bytes)
}

/// Writes a patch file atomically ([`crate::fsio::write_atomic`]): a temporary file in the same
/// directory, synced, then renamed over `path` and the directory synced, so `path` holds the old
/// file or the new one, never a part of either. A special file at `path` is refused.
pub fn save(patch: &Patch, path: &std::path::Path) -> Result<()> {
    save_as(patch, path, ValueType::F32)
}

/// [`save`] with values stored as `value_type`.
pub fn save_as(patch: &Patch, path: &std::path::Path, value_type: ValueType) -> Result<()> {
    write_atomic(path, &to_bytes_as(patch, value_type)?)
}

pub use crate::fsio::write_atomic;
