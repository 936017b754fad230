//! The patch store and run-time switching: writes that fail after every possible number of
//! bytes leave the old patch or the new one, readers racing a writer see whole patches, damaged
//! files are refused, and a session switching between patches computes exactly what a fresh
//! session with each patch computes.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use edgepatch::data::image::Rgb8;
use edgepatch::patch::file::{self, ValueType};
use edgepatch::patch::store::{OsIo, Store, StoreIo};
use edgepatch::patch::{Patch, PatchTensor, Role};
use edgepatch::train::{TrainConfig, Trainer};
use edgepatch::{Backbone, Error, Session};
use edgepatch_tests::onnx_builder::{tiny_net, TinyNet};
use edgepatch_tests::random_values;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("edgepatch-store-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn small_patch(seed: u64, classes: usize) -> Patch {
    Patch {
        kinds: "sb+logits".parse().unwrap(),
        fingerprint: "0123456789abcdef".into(),
        resolution: 64,
        labels: (0..classes).map(|i| format!("class {i}")).collect(),
        tensors: vec![
            PatchTensor { node: 1, role: Role::Scale, shape: vec![4], values: random_values(4, seed, 1.0) },
            PatchTensor { node: 1, role: Role::Bias, shape: vec![4], values: random_values(4, seed + 1, 1.0) },
            PatchTensor {
                node: 9,
                role: Role::Weights,
                shape: vec![classes as u32, 3],
                values: random_values(3 * classes, seed + 2, 1.0),
            },
            PatchTensor { node: 9, role: Role::Bias, shape: vec![classes as u32], values: vec![0.5; classes] },
        ],
    }
}

/// The file system with a byte budget: `write_new` writes what the budget allows and then fails
/// like a full disk; once the budget is spent every further operation fails too (a crash).
struct FailAfter {
    budget: usize,
    dead: bool,
}

impl FailAfter {
    fn op(&mut self) -> io::Result<()> {
        if self.dead {
            Err(io::Error::new(io::ErrorKind::StorageFull, "injected: disk full"))
        } else {
            Ok(())
        }
    }
}

impl StoreIo for FailAfter {
    fn write_new(&mut self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        self.op()?;
        let n = bytes.len().min(self.budget);
        self.budget -= n;
        if n < bytes.len() {
            std::fs::write(path, &bytes[..n])?;
            self.dead = true;
            return Err(io::Error::new(io::ErrorKind::StorageFull, "injected: disk full"));
        }
        OsIo.write_new(path, bytes)
    }

    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        self.op()?;
        OsIo.rename(from, to)
    }

    fn remove(&mut self, path: &Path) -> io::Result<()> {
        self.op()?;
        OsIo.remove(path)
    }

    fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
        self.op()?;
        if self.budget == 0 {
            self.dead = true;
        }
        OsIo.sync_dir(dir)
    }
}

#[test]
fn add_list_get_replace_remove() {
    let dir = temp_dir("basic");
    let store = Store::open_or_create(&dir).unwrap();
    assert!(store.list().unwrap().is_empty());
    let (a, b) = (small_patch(1, 3), small_patch(2, 5));
    store.add("alpha", &a, ValueType::F32).unwrap();
    let e = store.add("beta", &b, ValueType::F16).unwrap();
    assert_eq!((e.classes, e.values.as_str(), e.kinds.as_str()), (5, "f16", "sb+logits"));
    assert_eq!(store.get("alpha").unwrap(), a);
    assert_eq!(store.get("beta").unwrap(), b.stored_as(ValueType::F16));
    store.add("alpha", &b, ValueType::F32).unwrap();
    assert_eq!(store.get("alpha").unwrap(), b);
    let names: Vec<String> = store.list().unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["alpha", "beta"]);
    let files = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|f| f.as_ref().unwrap().path().extension().is_some_and(|x| x == "patch"))
        .count();
    assert_eq!(files, 2, "the replaced file is deleted");
    store.remove("beta").unwrap();
    assert!(matches!(store.get("beta"), Err(Error::Patch(m)) if m.contains("no task 'beta'")));
    assert!(store.remove("beta").is_err());
    for bad in ["", ".hidden", "a/b", "../x", "sp ace", &"x".repeat(65)] {
        assert!(store.add(bad, &a, ValueType::F32).is_err(), "name {bad:?} accepted");
    }
    assert!(store.add_bytes("junk", b"EDGEPTCH but not a patch").is_err());
    assert_eq!(store.verify().unwrap().entries, 1);
    std::fs::remove_dir_all(&dir).ok();
}

/// Bytes an uninterrupted operation writes (patch file and index), counted by a generous budget.
fn bytes_written(op: &dyn Fn(&Store, &mut FailAfter) -> edgepatch::Result<()>, setup: &dyn Fn(&Store)) -> usize {
    let dir = temp_dir("count");
    let store = Store::open_or_create(&dir).unwrap();
    setup(&store);
    let mut io = FailAfter { budget: usize::MAX / 2, dead: false };
    op(&store, &mut io).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    usize::MAX / 2 - io.budget
}

#[test]
fn a_write_failing_after_any_number_of_bytes_leaves_the_old_or_the_new_patch() {
    let (old, new) = (small_patch(10, 3), small_patch(20, 4));
    let old_bytes = file::to_bytes(&old).unwrap();
    let new_bytes = file::to_bytes(&new).unwrap();
    let setup = |s: &Store| {
        s.add("task", &old, ValueType::F32).unwrap();
        s.add("other", &old, ValueType::F16).unwrap();
    };
    type Op<'a> = (&'a str, Box<dyn Fn(&Store, &mut FailAfter) -> edgepatch::Result<()> + 'a>);
    let ops: Vec<Op> = vec![
        ("replace", Box::new(|s, io| s.add_bytes_with(io, "task", &new_bytes).map(drop))),
        ("add", Box::new(|s, io| s.add_bytes_with(io, "fresh", &new_bytes).map(drop))),
        ("remove", Box::new(|s, io| s.remove_with(io, "task").map(drop))),
    ];
    let dir = temp_dir("faults");
    for (what, op) in &ops {
        let total = bytes_written(op.as_ref(), &setup);
        assert!(total > old_bytes.len().min(300), "{what}: {total} bytes");
        let (mut failed, mut succeeded) = (0, 0);
        for budget in 0..=total {
            std::fs::remove_dir_all(&dir).ok();
            let store = Store::open_or_create(&dir).unwrap();
            setup(&store);
            let result = op(&store, &mut FailAfter { budget, dead: false });
            let store = Store::open(&dir).unwrap();
            let v = store.verify().unwrap_or_else(|e| panic!("{what} failing after {budget} B: verify: {e}"));
            assert_eq!(store.get("other").unwrap(), old.stored_as(ValueType::F16), "{what} @ {budget}");
            let (task, fresh) = (store.get("task").ok(), store.get("fresh").ok());
            let committed = match *what {
                "replace" => {
                    assert!(task == Some(old.clone()) || task == Some(new.clone()), "{what} @ {budget}: {task:?}");
                    task == Some(new.clone())
                }
                "add" => {
                    assert_eq!(task, Some(old.clone()));
                    assert!(fresh.is_none() || fresh == Some(new.clone()));
                    fresh.is_some()
                }
                _ => {
                    assert!(task.is_none() || task == Some(old.clone()));
                    task.is_none()
                }
            };
            assert_eq!(v.entries, store.list().unwrap().len());
            if result.is_err() {
                failed += 1;
            } else {
                succeeded += 1;
                assert!(committed, "{what} @ {budget}: reported success but not committed");
            }
            // The next write clears what the failed one left.
            store.add("later", &old, ValueType::F32).unwrap();
            assert!(store.verify().unwrap().unreferenced.is_empty(), "{what} @ {budget}");
        }
        assert!(failed >= total && succeeded >= 1, "{what}: {failed} failed, {succeeded} succeeded of {total}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn readers_racing_a_writer_always_see_a_whole_patch() {
    let dir = temp_dir("race");
    let store = Store::open_or_create(&dir).unwrap();
    let (a, b) = (small_patch(1, 3), small_patch(2, 7));
    store.add("task", &a, ValueType::F32).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (store, done, a, b) = (store.clone(), done.clone(), a.clone(), b.clone());
            std::thread::spawn(move || {
                let mut reads = 0;
                while !done.load(Ordering::Relaxed) || reads < 50 {
                    let got = store.get("task").unwrap();
                    assert!(got == a || got == b);
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    let writer = {
        let store = Store::open(&dir).unwrap();
        let (a, b) = (a.clone(), b.clone());
        std::thread::spawn(move || {
            for i in 0..200 {
                store.add("task", if i % 2 == 0 { &b } else { &a }, ValueType::F32).unwrap();
            }
        })
    };
    writer.join().unwrap();
    done.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() >= 50);
    }
    assert_eq!(store.verify().unwrap().unreferenced, Vec::<String>::new());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn damaged_stores_are_refused_with_the_file_named() {
    let dir = temp_dir("damage");
    let store = Store::open_or_create(&dir).unwrap();
    let e = store.add("task", &small_patch(3, 3), ValueType::F32).unwrap();
    let path = dir.join(&e.file);
    let good = std::fs::read(&path).unwrap();
    for i in [0, 11, 40, good.len() / 2, good.len() - 1] {
        let mut bad = good.clone();
        bad[i] ^= 0x10;
        std::fs::write(&path, &bad).unwrap();
        let err = store.verify().unwrap_err().to_string();
        assert!(err.contains(&e.file), "{err}");
        assert!(store.get("task").is_err());
    }
    std::fs::write(&path, &good[..good.len() - 3]).unwrap();
    assert!(store.verify().unwrap_err().to_string().contains("truncated"));
    // A valid patch file that is not the one the index names.
    std::fs::write(&path, file::to_bytes(&small_patch(4, 3)).unwrap()).unwrap();
    assert!(store.verify().unwrap_err().to_string().contains("not the one the index names"));
    std::fs::write(&path, &good).unwrap();
    store.verify().unwrap();
    let index = dir.join("index.json");
    let text = std::fs::read_to_string(&index).unwrap();
    std::fs::write(&index, &text[..text.len() / 2]).unwrap();
    assert!(Store::open(&dir).unwrap_err().to_string().contains("not a valid store index"));
    std::fs::write(&index, text.replace(&e.file, "../etc.patch")).unwrap();
    assert!(Store::open(&dir).is_err());
    std::fs::remove_dir_all(&dir).ok();
}

fn backbone() -> Backbone {
    Backbone::from_onnx_bytes(&tiny_net(TinyNet { quantized: true, ..TinyNet::default() }, 7)).unwrap()
}

/// A patch of `kinds` over `b` with values moved away from the backbone's.
fn trained_like(b: &Backbone, kinds: &str, classes: usize, resolution: u32, seed: u64) -> Patch {
    let mut config = TrainConfig::new(kinds.parse().unwrap());
    config.resolution = resolution;
    config.seed = seed;
    let labels = (0..classes).map(|i| format!("{kinds} {i}")).collect();
    let mut p = Trainer::new(b, config, labels).unwrap().patch().unwrap();
    for (i, t) in p.tensors.iter_mut().enumerate() {
        let noise = random_values(t.values.len(), seed * 100 + i as u64, 0.2);
        t.values.iter_mut().zip(noise).for_each(|(v, n)| *v += n);
    }
    p
}

fn images() -> Vec<Rgb8> {
    (0..3u64)
        .map(|i| {
            let data = random_values(50 * 40 * 3, 90 + i, 1.0).iter().map(|v| ((v + 1.0) * 127.0) as u8).collect();
            Rgb8 { width: 50, height: 40, data }
        })
        .collect()
}

#[test]
fn switching_patches_equals_a_fresh_session_with_each() {
    let b = backbone();
    let classes = b.graph().num_classes();
    let patches = [
        trained_like(&b, "sb+logits", 3, 64, 1),
        trained_like(&b, "dw+logits", 5, 32, 2),
        trained_like(&b, "bias", classes, 64, 3),
        trained_like(&b, "full", 4, 96, 4),
        trained_like(&b, "sb", classes, 32, 5),
        trained_like(&b, "sb+logits", 3, 64, 6),
    ];
    let x = images();
    let fresh: Vec<Vec<f32>> =
        patches.iter().map(|p| Session::with_patch(b.clone(), p).unwrap().logits(&x).unwrap().into_data()).collect();
    let mut session = Session::new(b.clone());
    let backbone_logits = session.logits(&x).unwrap().into_data();
    for round in 0..2 {
        for (i, p) in patches.iter().enumerate().rev().skip(round) {
            session.set_patch(p).unwrap();
            assert_eq!(session.logits(&x).unwrap().data, fresh[i], "patch {i} ({}), round {round}", p.kinds);
            assert_eq!(session.labels(), p.labels.as_slice());
        }
    }
    session.clear_patch().unwrap();
    assert_eq!(session.logits(&x).unwrap().data, backbone_logits);

    session.set_patch(&patches[1]).unwrap();
    let mut other = patches[0].clone();
    other.fingerprint = "0000000000000000".into();
    let mut misfit = patches[0].clone();
    misfit.tensors[0].shape = vec![1, misfit.tensors[0].values.len() as u32];
    let mut few_labels = patches[0].clone();
    few_labels.labels.pop();
    for bad in [other, misfit, few_labels] {
        assert!(matches!(session.set_patch(&bad), Err(Error::Patch(_))));
        assert_eq!(session.logits(&x).unwrap().data, fresh[1], "a refused patch changed the session");
    }
}

#[test]
fn a_session_switches_by_store_name() {
    let b = backbone();
    let dir = temp_dir("session");
    let store = Store::open_or_create(&dir).unwrap();
    let (p, q) = (trained_like(&b, "sb+logits", 3, 64, 11), trained_like(&b, "dw+logits", 4, 64, 12));
    store.add("p", &p, ValueType::F32).unwrap();
    store.add("q", &q, ValueType::F16).unwrap();
    let x = images();
    let mut s = Session::new(b.clone());
    s.set_task(&store, "q").unwrap();
    let want = Session::with_patch(b.clone(), &q.stored_as(ValueType::F16)).unwrap().logits(&x).unwrap().into_data();
    assert_eq!(s.logits(&x).unwrap().data, want);
    s.set_task(&store, "p").unwrap();
    assert_eq!(s.logits(&x).unwrap().data, Session::with_patch(b, &p).unwrap().logits(&x).unwrap().into_data());
    assert!(s.set_task(&store, "absent").is_err());
    assert_eq!(s.labels(), p.labels.as_slice());
    std::fs::remove_dir_all(&dir).ok();
}
