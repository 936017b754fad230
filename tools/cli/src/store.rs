//! `edgepatch store`: a directory of task patches with an index (see `edgepatch::patch::store`).

use std::path::Path;

use edgepatch::patch::file::{self as patch_file, ValueType};
use edgepatch::patch::store::{Entry, Store};
use edgepatch::Error;
use serde_json::json;

fn entry_json(e: &Entry) -> serde_json::Value {
    serde_json::to_value(e).expect("an entry serialises")
}

fn entry_line(e: &Entry) -> String {
    format!(
        "{:<24} {:<14} {:>4} px {:>4} classes {:>9} values {:>10} B  {}  {}\n",
        e.name, e.kinds, e.resolution, e.classes, e.params, e.bytes, e.values, e.fingerprint
    )
}

pub fn list(dir: &Path, as_json: bool) -> edgepatch::Result<String> {
    let entries = Store::open(dir)?.list()?;
    if as_json {
        let v: Vec<_> = entries.iter().map(entry_json).collect();
        return Ok(format!("{}\n", serde_json::to_string_pretty(&json!({"tasks": v})).expect("json")));
    }
    if entries.is_empty() {
        return Ok(format!("{}: no tasks\n", dir.display()));
    }
    Ok(entries.iter().map(entry_line).collect())
}

/// Adds `file` as `name`, re-encoding its values as `values` when given.
/// A patch must apply to the backbone (`--model`, or the shipped one) to enter a store.
pub fn add(
    dir: &Path,
    name: &str,
    file: &Path,
    values: Option<ValueType>,
    model: Option<&Path>,
    as_json: bool,
) -> edgepatch::Result<String> {
    let bytes = patch_file::read_bytes(file)?;
    let named = |e: Error| match e {
        Error::Patch(m) => Error::Patch(format!("{}: {m}", file.display())),
        e => e,
    };
    let (patch, stored) = patch_file::from_bytes_typed(&bytes).map_err(named)?;
    let backbone = crate::load(model)?;
    patch.check(backbone.graph(), backbone.fingerprint()).map_err(named)?;
    let store = Store::open_or_create(dir)?;
    let entry = match values {
        Some(v) if v != stored => store.add(name, &patch, v)?,
        _ => store.add_bytes(name, &bytes)?,
    };
    if as_json {
        return Ok(format!("{}\n", serde_json::to_string_pretty(&entry_json(&entry)).expect("json")));
    }
    Ok(format!("added {}", entry_line(&entry)))
}

pub fn remove(dir: &Path, name: &str) -> edgepatch::Result<String> {
    let e = Store::open(dir)?.remove(name)?;
    Ok(format!("removed {}", entry_line(&e)))
}

/// Checks the store, and that every patch in it applies to the backbone (`--model`, or the
/// shipped one).
pub fn verify(dir: &Path, model: Option<&Path>, as_json: bool) -> edgepatch::Result<String> {
    let store = Store::open(dir)?;
    let v = store.verify()?;
    let backbone = crate::load(model)?;
    for e in store.list()? {
        let patch = store.get(&e.name)?;
        patch
            .check(backbone.graph(), backbone.fingerprint())
            .map_err(|err| Error::Patch(format!("task '{}' cannot be applied to the backbone: {err}", e.name)))?;
    }
    if as_json {
        let out = json!({"ok": true, "tasks": v.entries, "unreferenced": v.unreferenced});
        return Ok(format!("{}\n", serde_json::to_string_pretty(&out).expect("json")));
    }
    let mut o = format!("{}: {} tasks, every patch decodes and matches the index\n", dir.display(), v.entries);
    if !v.unreferenced.is_empty() {
        o += &format!(
            "{} unreferenced files (left by an interrupted write; the next write removes them): {}\n",
            v.unreferenced.len(),
            v.unreferenced.join(", ")
        );
    }
    Ok(o)
}
