//! The file system at the runtime's edges: every input read with a size cap from a regular file
//! only, and every output written atomically to a regular file or a new path, never over a
//! device, FIFO, socket or directory.
//!
//! Symbolic links: an input may be a link to a regular file. An output path that is a link to a
//! regular file is **written through**: the file it names is replaced atomically (a temporary
//! beside it, renamed over it) and the link itself stays. A link to anything else, or a dangling
//! link, is refused.

use std::fs::{File, Metadata};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Largest ONNX model file read (the shipped model is 3.9 MB; MobileNetV2 in f32 14 MB).
pub const MAX_MODEL_BYTES: u64 = 512 << 20;
/// Largest patch file read (a full fine-tuning patch of MobileNetV2 in f32 is about 14 MB).
pub const MAX_PATCH_BYTES: u64 = 256 << 20;
/// Largest image file read (a 33.5-megapixel PNG, uncompressed, is about 100 MB).
pub const MAX_IMAGE_BYTES: u64 = 256 << 20;

/// What kind of file system object `m` describes, in words.
fn kind(m: &Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = m.file_type();
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if m.is_dir() {
        "a directory"
    } else if m.file_type().is_symlink() {
        "a symbolic link"
    } else if m.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
}

fn refused(path: &Path, what: &str, m: &Metadata) -> Error {
    Error::io(
        path,
        io::Error::new(io::ErrorKind::InvalidInput, format!("{what} must be a regular file; this is {}", kind(m))),
    )
}

/// Reads the regular file at `path` whole, refusing special files (devices, FIFOs, sockets,
/// directories) and files over `max` bytes, before reading more than `max + 1` bytes. `what`
/// names the file in errors ("a patch file").
pub fn read_limited(path: &Path, max: u64, what: &str) -> Result<Vec<u8>> {
    let (f, len) = open_limited(path, max, what)?;
    let mut out = Vec::with_capacity(len as usize);
    f.take(max + 1).read_to_end(&mut out).map_err(|e| Error::io(path, e))?;
    if out.len() as u64 > max {
        return Err(too_big(path, what, out.len() as u64, max));
    }
    Ok(out)
}

/// Opens the regular file at `path` ([`open_regular`]) if it holds at most `max` bytes; the
/// file and its length.
pub fn open_limited(path: &Path, max: u64, what: &str) -> Result<(File, u64)> {
    let f = open_regular(path, what)?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    if len > max {
        return Err(too_big(path, what, len, max));
    }
    Ok((f, len))
}

/// Opens `path` for reading if it is a regular file (or a link to one). The check is made on the
/// opened handle, so a file swapped after the check is still checked; a FIFO is opened without
/// blocking (and refused).
pub fn open_regular(path: &Path, what: &str) -> Result<File> {
    let mut options = File::options();
    options.read(true);
    // O_NONBLOCK: opening a FIFO with no writer would otherwise wait forever.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, 0o4000);
    #[cfg(any(target_os = "macos", target_os = "ios"))]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, 0x4);
    let f = options.open(path).map_err(|e| Error::io(path, e))?;
    let m = f.metadata().map_err(|e| Error::io(path, e))?;
    if !m.is_file() {
        return Err(refused(path, what, &m));
    }
    Ok(f)
}

fn too_big(path: &Path, what: &str, len: u64, max: u64) -> Error {
    Error::io(
        path,
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what} of {len} bytes is larger than the limit of {max} bytes"),
        ),
    )
}

/// Where an output for `path` goes: `path` itself when it is new or a regular file; the file
/// a symbolic link names when it is a regular file. Anything else is refused with the reason,
/// as is a path whose directory does not exist (it is not created).
pub fn output_target(path: &Path) -> Result<PathBuf> {
    if path.file_name().is_none() {
        return Err(Error::io(path, io::Error::new(io::ErrorKind::InvalidInput, "not a file path")));
    }
    let parent = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match std::fs::metadata(parent) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(Error::io(parent, io::Error::new(io::ErrorKind::InvalidInput, "not a directory"))),
        Err(e) => return Err(Error::io(parent, e)),
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(path.to_path_buf()),
        Err(e) => Err(Error::io(path, e)),
        Ok(m) if m.is_file() => Ok(path.to_path_buf()),
        Ok(m) if m.file_type().is_symlink() => match std::fs::metadata(path) {
            Ok(t) if t.is_file() => std::fs::canonicalize(path).map_err(|e| Error::io(path, e)),
            Ok(t) => Err(Error::io(
                path,
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("an output must be a regular file or a new path; this links to {}", kind(&t)),
                ),
            )),
            Err(_) => Err(Error::io(
                path,
                io::Error::new(io::ErrorKind::InvalidInput, "a dangling symbolic link is not written through"),
            )),
        },
        Ok(m) => Err(Error::io(
            path,
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("an output must be a regular file or a new path; this is {}", kind(&m)),
            ),
        )),
    }
}

/// Writes `bytes` to `path` atomically: a new temporary file in the same directory, synced,
/// renamed over the target ([`output_target`]: never a special file) and the directory synced,
/// so the target holds the old file or the new one, never a part of either. On an error the
/// temporary is removed and the target is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let target = output_target(path)?;
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = target.file_name().expect("output_target returns a file path").to_string_lossy().into_owned();
    let (tmp, mut f) = create_temporary(&dir, &name)?;
    let result = (|| {
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        // The target may have become a special file since it was checked: check again, as late
        // as possible.
        if let Ok(m) = std::fs::symlink_metadata(&target) {
            if !m.is_file() {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("the output became {}", kind(&m))));
            }
        }
        std::fs::rename(&tmp, &target)?;
        if let Ok(d) = File::open(&dir) {
            d.sync_all().ok();
        }
        Ok(())
    })();
    result.map_err(|e| {
        std::fs::remove_file(&tmp).ok();
        Error::io(path, e)
    })
}

/// A new file `.NAME.tmpPID[.N]` in `dir`, created exclusively (an existing file of that name is
/// never truncated).
fn create_temporary(dir: &Path, name: &str) -> Result<(PathBuf, File)> {
    for n in 0..100u32 {
        let suffix = if n == 0 { String::new() } else { format!(".{n}") };
        let tmp = dir.join(format!(".{name}.tmp{}{suffix}", std::process::id()));
        match File::options().write(true).create_new(true).open(&tmp) {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(&tmp, e)),
        }
    }
    Err(Error::io(dir, io::Error::new(io::ErrorKind::AlreadyExists, "no free temporary file name")))
}
