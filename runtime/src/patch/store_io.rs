//! The file operations of a patch store's writes, behind a trait so that tests can make them
//! fail at any byte (a full disk, a crash) and check that the store keeps the old state or the
//! new one.

use std::fs::File;
use std::io::{self, Write as _};
use std::path::Path;

/// The file operations a write performs, so that tests can make them fail.
pub trait StoreIo {
    /// Creates `path` (which must not exist), writes `bytes` and syncs it to disk.
    fn write_new(&mut self, path: &Path, bytes: &[u8]) -> io::Result<()>;
    /// Renames `from` over `to`.
    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()>;
    /// Deletes a file.
    fn remove(&mut self, path: &Path) -> io::Result<()>;
    /// Syncs a directory (its entries) to disk.
    fn sync_dir(&mut self, dir: &Path) -> io::Result<()>;
}

/// The real file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsIo;

impl StoreIo for OsIo {
    fn write_new(&mut self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut f = File::options().write(true).create_new(true).open(path)?;
        f.write_all(bytes)?;
        f.sync_all()
    }

    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&mut self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
        match File::open(dir) {
            Ok(d) => d.sync_all().or(Ok(())),
            Err(_) => Ok(()),
        }
    }
}
