//! A patch store: a directory of task patches and an index naming them.
//!
//! ```text
//! DIR/index.json          {"format": 1, "generation": G, "entries": [Entry, …], "pending": [file, …]}
//! DIR/NAME.GEN.patch      one patch file per entry (never rewritten: a new version gets a new GEN)
//! DIR/.lock               writers hold an exclusive lock on it; readers take no lock
//! ```
//!
//! Every write is atomic and ordered so that a crash or a failed write at any point leaves the
//! old state or the new one: the name of the new patch file is first recorded in the index as
//! `pending`, then the file is created (never over an existing file) and synced, then the index
//! naming it is written to a temporary file, synced and renamed over `index.json` (and the
//! directory synced), and only then is the replaced file deleted (its name stays `pending` until
//! then). A crash leaves at most pending files that no entry names, which [`Store::verify`]
//! reports and the next write removes. Readers read the index (always whole, thanks to the
//! rename), then the file it names; a file deleted by a concurrent writer in between makes them
//! read the new index once more.
//!
//! **The store deletes only files it created**: names it recorded as `pending` before creating
//! them, and the files of entries it replaces or removes. Other files in the directory — a
//! user's own patches included — are never touched. A store is made only in a new or empty
//! directory; a non-empty directory without an index is refused.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use super::store_io::{OsIo, StoreIo};

use super::file::{self as patch_file, ValueType};
use super::Patch;
use crate::{Error, Result};

/// The index file's name inside the store directory.
pub const INDEX: &str = "index.json";
const LOCK: &str = ".lock";
const INDEX_TMP: &str = ".index.json.tmp";
const FORMAT: u32 = 1;
/// Largest index file read (an entry takes about 300 bytes).
const MAX_INDEX_BYTES: u64 = 64 << 20;
/// Longest task name.
pub const MAX_NAME_LEN: usize = 64;

/// One task in the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The task's name: letters, digits, `-`, `_` and `.` (not first), at most 64 bytes.
    pub name: String,
    /// The patch file, relative to the store directory.
    pub file: String,
    /// Size of the patch file.
    pub bytes: u64,
    /// The CRC-32 the patch file carries (its bytes 36..40).
    pub crc32: u32,
    /// Patch kinds, as `sb+logits`.
    pub kinds: String,
    /// The backbone fingerprint the patch was made for.
    pub fingerprint: String,
    pub resolution: u32,
    pub classes: usize,
    pub params: usize,
    /// `f32` or `f16`.
    pub values: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Index {
    format: u32,
    /// Incremented by every write; names new patch files.
    generation: u64,
    entries: Vec<Entry>,
    /// Files this store created, or is about to create, that no entry may name: the new file of
    /// an unfinished write, or the old file of a replaced or removed entry. The next write
    /// deletes those no entry names. Absent in stores written before it existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pending: Vec<String>,
}

/// What [`Store::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Entries whose files decode and match the index.
    pub entries: usize,
    /// Files the store created that no entry names (left by an interrupted write; removed by the
    /// next write). Files the store did not create are never listed or removed.
    pub unreferenced: Vec<String>,
}

/// A patch store in a directory (see the module documentation).
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// Refuses names that are empty, too long, start with `.` or hold anything but ASCII letters,
/// digits, `-`, `_` and `.`.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(Error::Patch(format!(
            "task name '{name}' is not allowed (1 to {MAX_NAME_LEN} ASCII letters, digits, '-', '_' or '.', not starting with '.')"
        )))
    }
}

/// A file name the store may create or name: `NAME.GEN.patch` with a valid task name, no path
/// separators, not hidden.
fn is_store_file_name(f: &str) -> bool {
    !f.contains(['/', '\\']) && !f.starts_with('.') && f.ends_with(".patch") && f.len() <= MAX_NAME_LEN + 32
}

impl Store {
    /// Opens the store in `dir`, which must hold an index.
    pub fn open(dir: &Path) -> Result<Self> {
        let store = Store { dir: dir.to_path_buf() };
        store.read_index()?;
        Ok(store)
    }

    /// Checks, without creating anything, that [`Store::open_or_create`] would succeed on `dir`:
    /// it is a store, or a new or empty directory (so that a long job can fail before it
    /// starts, and leave nothing behind).
    pub fn check_target(dir: &Path) -> Result<()> {
        if dir.join(INDEX).exists() {
            return Store::open(dir).map(drop);
        }
        match std::fs::read_dir(dir) {
            Ok(items) => {
                let mut foreign = Vec::new();
                for item in items {
                    let name = item.map_err(|e| Error::io(dir, e))?.file_name().to_string_lossy().into_owned();
                    if name != LOCK && name != INDEX_TMP {
                        foreign.push(name);
                    }
                }
                if foreign.is_empty() {
                    return Ok(());
                }
                foreign.sort();
                Err(Error::Patch(format!(
                    "{} is not a patch store (no {INDEX}) and is not empty ({} entries, e.g. '{}'): \
                     give a new or empty directory; the store never adopts or removes files it did not write",
                    dir.display(),
                    foreign.len(),
                    foreign[0]
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
                Err(Error::Patch(format!("{} is not a directory", dir.display())))
            }
            Err(e) => Err(Error::io(dir, e)),
        }
    }

    /// Opens the store in `dir`, creating the directory and an empty index when `dir` is absent
    /// or empty. A non-empty directory without an index is refused ([`Store::check_target`]).
    pub fn open_or_create(dir: &Path) -> Result<Self> {
        let store = Store { dir: dir.to_path_buf() };
        if !dir.join(INDEX).exists() {
            Store::check_target(dir)?;
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            let _lock = store.lock()?;
            if !dir.join(INDEX).exists() {
                store.write_index(&mut OsIo, &Index { format: FORMAT, ..Index::default() })?;
            }
        }
        store.read_index()?;
        Ok(store)
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn read_index(&self) -> Result<Index> {
        let path = self.dir.join(INDEX);
        let bytes = crate::fsio::read_limited(&path, MAX_INDEX_BYTES, "a store index")?;
        let index: Index = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Patch(format!("{}: not a valid store index: {e}", path.display())))?;
        if index.format != FORMAT {
            return Err(Error::Patch(format!("{}: store format {} is not supported", path.display(), index.format)));
        }
        let mut names: Vec<&str> = index.entries.iter().map(|e| e.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::Patch(format!("{}: task '{}' is listed twice", path.display(), w[0])));
        }
        for e in &index.entries {
            check_name(&e.name)?;
            if !is_store_file_name(&e.file) {
                return Err(Error::Patch(format!("{}: entry '{}' names file '{}'", path.display(), e.name, e.file)));
            }
        }
        if let Some(f) = index.pending.iter().find(|f| !is_store_file_name(f)) {
            return Err(Error::Patch(format!("{}: pending file '{f}' is not a store file name", path.display())));
        }
        Ok(index)
    }

    fn write_index(&self, io: &mut dyn StoreIo, index: &Index) -> Result<()> {
        let tmp = self.dir.join(INDEX_TMP);
        let path = self.dir.join(INDEX);
        let json = serde_json::to_vec_pretty(index).map_err(|e| Error::Patch(format!("store index: {e}")))?;
        std::fs::remove_file(&tmp).ok();
        io.write_new(&tmp, &json).map_err(|e| Error::io(&tmp, e))?;
        io.rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        io.sync_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))
    }

    /// Holds the writers' lock until dropped (released by the OS if the process dies).
    fn lock(&self) -> Result<File> {
        let path = self.dir.join(LOCK);
        let f =
            File::options().create(true).truncate(false).write(true).open(&path).map_err(|e| Error::io(&path, e))?;
        f.lock().map_err(|e| Error::io(&path, e))?;
        Ok(f)
    }

    /// The tasks, in the order they were added.
    pub fn list(&self) -> Result<Vec<Entry>> {
        Ok(self.read_index()?.entries)
    }

    /// The patch stored as `name`.
    pub fn get(&self, name: &str) -> Result<Patch> {
        Ok(self.get_bytes(name)?.1)
    }

    /// The index entry, the patch and the file's bytes of task `name`.
    pub fn get_bytes(&self, name: &str) -> Result<(Entry, Patch, Vec<u8>)> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let index = self.read_index()?;
            let entry = index
                .entries
                .into_iter()
                .find(|e| e.name == name)
                .ok_or_else(|| Error::Patch(format!("no task '{name}' in the store {}", self.dir.display())))?;
            let path = self.dir.join(&entry.file);
            match crate::fsio::read_limited(&path, crate::fsio::MAX_PATCH_BYTES, "a patch file") {
                Ok(bytes) => {
                    let patch = self.check_file(&entry, &bytes)?;
                    return Ok((entry, patch, bytes));
                }
                Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound && attempt < 3 => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn check_file(&self, entry: &Entry, bytes: &[u8]) -> Result<Patch> {
        let path = self.dir.join(&entry.file);
        let named = |m: String| Error::Patch(format!("{} (task '{}'): {m}", path.display(), entry.name));
        let patch = patch_file::from_bytes(bytes).map_err(|e| named(e.to_string()))?;
        let crc = u32::from_le_bytes(bytes[36..40].try_into().expect("a decoded file has a prefix"));
        if bytes.len() as u64 != entry.bytes || crc != entry.crc32 {
            return Err(named("the file is not the one the index names (size or checksum differ)".into()));
        }
        Ok(patch)
    }

    /// Stores `patch` as `name` with values stored as `value_type`, replacing any patch of that
    /// name (atomically: see the module documentation).
    pub fn add(&self, name: &str, patch: &Patch, value_type: ValueType) -> Result<Entry> {
        self.add_bytes_with(&mut OsIo, name, &patch_file::to_bytes_as(patch, value_type)?)
    }

    /// Stores the encoded patch file `bytes` as `name` (decoded first: a bad file is refused).
    pub fn add_bytes(&self, name: &str, bytes: &[u8]) -> Result<Entry> {
        self.add_bytes_with(&mut OsIo, name, bytes)
    }

    /// [`Store::add_bytes`] through `io`.
    pub fn add_bytes_with(&self, io: &mut dyn StoreIo, name: &str, bytes: &[u8]) -> Result<Entry> {
        check_name(name)?;
        let (patch, value_type) = patch_file::from_bytes_typed(bytes)?;
        let _lock = self.lock()?;
        let mut index = self.read_index()?;
        self.remove_unreferenced(io, &mut index);
        // A generated name a file already holds (not the store's: it deletes its own pending
        // files above) is skipped, never overwritten.
        index.generation += 1;
        while self.dir.join(format!("{name}.{}.patch", index.generation)).symlink_metadata().is_ok() {
            index.generation += 1;
        }
        let file = format!("{name}.{}.patch", index.generation);
        index.pending.push(file.clone());
        self.write_index(io, &index)?;
        let entry = Entry {
            name: name.to_string(),
            file,
            bytes: bytes.len() as u64,
            crc32: u32::from_le_bytes(bytes[36..40].try_into().expect("a decoded file has a prefix")),
            kinds: patch.kinds.to_string(),
            fingerprint: patch.fingerprint.clone(),
            resolution: patch.resolution,
            classes: patch.labels.len(),
            params: patch.params(),
            values: value_type.to_string(),
        };
        let path = self.dir.join(&entry.file);
        if let Err(e) = io.write_new(&path, bytes) {
            if e.kind() == io::ErrorKind::AlreadyExists {
                // Someone else's file took the name meanwhile: it must not stay pending.
                index.pending.retain(|f| *f != entry.file);
                self.write_index(io, &index).ok();
            }
            return Err(Error::io(&path, e));
        }
        index.pending.retain(|f| *f != entry.file);
        let old = match index.entries.iter_mut().find(|e| e.name == name) {
            Some(e) => Some(std::mem::replace(e, entry.clone())),
            None => {
                index.entries.push(entry.clone());
                None
            }
        };
        if let Some(old) = &old {
            index.pending.push(old.file.clone());
        }
        self.write_index(io, &index)?;
        if let Some(old) = old {
            self.remove_file(io, &old.file);
        }
        Ok(entry)
    }

    /// Removes task `name` (an error when absent).
    pub fn remove(&self, name: &str) -> Result<Entry> {
        self.remove_with(&mut OsIo, name)
    }

    /// [`Store::remove`] through `io`.
    pub fn remove_with(&self, io: &mut dyn StoreIo, name: &str) -> Result<Entry> {
        let _lock = self.lock()?;
        let mut index = self.read_index()?;
        self.remove_unreferenced(io, &mut index);
        let at = index
            .entries
            .iter()
            .position(|e| e.name == name)
            .ok_or_else(|| Error::Patch(format!("no task '{name}' in the store {}", self.dir.display())))?;
        let old = index.entries.remove(at);
        index.pending.push(old.file.clone());
        index.generation += 1;
        self.write_index(io, &index)?;
        self.remove_file(io, &old.file);
        Ok(old)
    }

    fn remove_file(&self, io: &mut dyn StoreIo, file: &str) {
        if let Err(e) = io.remove(&self.dir.join(file)).and_then(|()| io.sync_dir(&self.dir)) {
            log::warn!("store {}: could not remove {file} ({e}); the next write retries", self.dir.display());
        }
    }

    /// Pending files (created by this store) that exist and that no entry names.
    fn unreferenced(&self, index: &Index) -> Vec<String> {
        let mut out: Vec<String> = index
            .pending
            .iter()
            .filter(|f| !index.entries.iter().any(|e| e.file == **f))
            .filter(|f| self.dir.join(f).symlink_metadata().is_ok())
            .cloned()
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Deletes the pending files no entry names and forgets those that are gone; a file that
    /// could not be deleted stays pending. Only `index` changes: the caller writes it.
    fn remove_unreferenced(&self, io: &mut dyn StoreIo, index: &mut Index) {
        let pending = std::mem::take(&mut index.pending);
        for f in pending {
            if index.entries.iter().any(|e| e.file == f) || index.pending.contains(&f) {
                continue;
            }
            match io.remove(&self.dir.join(&f)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    log::warn!("store {}: could not remove {f} ({e}); the next write retries", self.dir.display());
                    index.pending.push(f);
                }
            }
        }
    }

    /// Checks the index and every patch it names (decoded in full: checksum, lengths, values;
    /// size and checksum equal to the index's). Unreferenced files are reported, not errors.
    pub fn verify(&self) -> Result<Verified> {
        let index = self.read_index()?;
        for e in &index.entries {
            let path = self.dir.join(&e.file);
            let bytes = crate::fsio::read_limited(&path, crate::fsio::MAX_PATCH_BYTES, "a patch file")?;
            self.check_file(e, &bytes)?;
        }
        Ok(Verified { entries: index.entries.len(), unreferenced: self.unreferenced(&index) })
    }
}
