//! Hostile files and paths, end to end: special files at output paths, store folders holding
//! other people's files, lying patch headers, zero-sized layers, truncated JPEGs, oversized
//! images, decompression bombs, endless inputs (`/dev/zero`), bad flags and test sets that fail
//! only after training. Each must give a clear error and lose nothing — never a panic, a
//! replaced device node or a deleted file.

mod cli_support;

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use cli_support::{assert_clean_error, assert_failed_run, json, run};
use edgepatch::patch::file::{self as patch_file};
use edgepatch::patch::store::Store;
use edgepatch::{Backbone, Patch};
use edgepatch_tests::onnx_builder::{int, ints, tiny_net, OnnxBuilder, TinyNet};
use edgepatch_tests::reference_dir;

/// A fresh directory for one test.
fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("edgepatch-hostile-{}-{name}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The tiny test backbone written to `d/tiny.onnx`, and an `sb+logits` patch for it.
fn tiny(d: &Path) -> (PathBuf, Patch) {
    let bytes = tiny_net(TinyNet::default(), 3);
    let model = d.join("tiny.onnx");
    std::fs::write(&model, &bytes).unwrap();
    let b = Backbone::from_onnx_bytes(&bytes).unwrap();
    let labels = (0..5).map(|i| format!("class {i}")).collect();
    let patch = Patch::extract(b.graph(), "sb+logits".parse().unwrap(), b.fingerprint(), 32, labels).unwrap();
    (model, patch)
}

fn file_type(p: &Path) -> std::fs::FileType {
    std::fs::symlink_metadata(p).unwrap().file_type()
}

#[test]
fn outputs_never_replace_special_files_and_write_through_links() {
    let d = dir("outputs");
    let (model, patch) = tiny(&d);
    let pf = d.join("p.patch");
    patch_file::save(&patch, &pf).unwrap();
    let export = |out: &Path| run(&["export", "--model", s(&model), "--patch", s(&pf), "--out", s(out)]);

    let fifo = d.join("fifo");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let sock = d.join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    // A character device node of our own (as root); elsewhere the FIFO and socket stand in.
    let dev = d.join("null-dev");
    let have_dev =
        std::process::Command::new("mknod").args([s(&dev), "c", "1", "3"]).status().is_ok_and(|st| st.success());
    let mut specials = vec![(fifo, "FIFO"), (sock, "socket")];
    if have_dev {
        specials.push((dev, "character device"));
    }
    for (p, what) in &specials {
        let before = file_type(p);
        assert_clean_error(&export(p), what);
        assert_failed_run(&run(&["demo", "--out", s(p)]), what);
        // The few-label commands check their output before any work, too.
        let mini =
            format!("idx:{}", edgepatch_tests::repo_root().join("models/datasets/fashion-mnist-mini/t10k").display());
        let m = s(&model);
        let proto = ["prototype", "--model", m, "--train", &mini, "--shots", "1", "--resolution", "32", "--out", s(p)];
        assert_failed_run(&run(&proto), what);
        let adapt = ["adapt", "--model", m, "--patch", s(&pf), "--unlabeled", &mini, "--source", &mini, "--out", s(p)];
        assert_failed_run(&run(&adapt), what);
        let e = edgepatch::fsio::write_atomic(p, b"x").unwrap_err().to_string();
        assert!(e.contains("regular file"), "{e}");
        assert_eq!(file_type(p), before, "{what} was replaced");
    }
    assert_clean_error(&export(&d), "directory");
    // A directory that does not exist is refused before any work (the demo would train first).
    assert_failed_run(&run(&["demo", "--out", s(&d.join("no/such/dir/x.patch"))]), "No such file or directory");

    // A link to a regular file is written through; the link stays a link.
    let target = d.join("model-target.onnx");
    std::fs::write(&target, b"old").unwrap();
    let link = d.join("link.onnx");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    assert!(export(&link).status.success());
    assert!(file_type(&link).is_symlink());
    assert!(std::fs::metadata(&target).unwrap().len() > 1000, "the link's target holds the model");
    // A dangling link or a link to a FIFO is refused and left as it is.
    let dangling = d.join("dangling.onnx");
    std::os::unix::fs::symlink(d.join("nowhere/x.onnx"), &dangling).unwrap();
    assert_clean_error(&export(&dangling), "dangling");
    assert!(file_type(&dangling).is_symlink());
    let to_fifo = d.join("to-fifo");
    std::os::unix::fs::symlink(&specials[0].0, &to_fifo).unwrap();
    assert_clean_error(&export(&to_fifo), "FIFO");
    assert!(file_type(&specials[0].0).is_fifo());
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn the_store_never_deletes_files_it_did_not_write() {
    let d = dir("store");
    let (model, patch) = tiny(&d);
    let bytes = patch_file::to_bytes(&patch).unwrap();
    // A folder of the user's own patches is not a store: refused, nothing touched.
    let mine = d.join("mine");
    std::fs::create_dir(&mine).unwrap();
    for f in ["a.patch", "b.patch", "notes.txt"] {
        std::fs::write(mine.join(f), &bytes).unwrap();
    }
    let out = run(&["store", "add", s(&mine), "task", s(&mine.join("a.patch")), "--model", s(&model)]);
    assert_clean_error(&out, "not a patch store");
    assert_eq!(std::fs::read_dir(&mine).unwrap().count(), 3);
    assert_eq!(std::fs::read(mine.join("a.patch")).unwrap(), bytes);

    // In a store, files dropped beside the index survive every write — even under the very
    // name the store would generate next.
    let st = d.join("st");
    json(&run(&["store", "add", s(&st), "one", s(&mine.join("a.patch")), "--model", s(&model), "--json"]));
    std::fs::write(st.join("mine.patch"), b"the user's").unwrap();
    for g in 2..6 {
        std::fs::write(st.join(format!("two.{g}.patch")), b"also the user's").unwrap();
    }
    std::fs::copy(mine.join("b.patch"), st.join("b.patch")).unwrap();
    json(&run(&["store", "add", s(&st), "two", s(&st.join("b.patch")), "--model", s(&model), "--json"]));
    json(&run(&["store", "add", s(&st), "one", s(&st.join("b.patch")), "--model", s(&model), "--json"]));
    assert!(run(&["store", "remove", s(&st), "two"]).status.success());
    let store = Store::open(&st).unwrap();
    store.add("three", &patch, patch_file::ValueType::F16).unwrap();
    assert_eq!(std::fs::read(st.join("mine.patch")).unwrap(), b"the user's");
    assert_eq!(std::fs::read(st.join("b.patch")).unwrap(), bytes);
    for g in 2..6 {
        assert_eq!(std::fs::read(st.join(format!("two.{g}.patch"))).unwrap(), b"also the user's");
    }
    let v = store.verify().unwrap();
    assert!(v.unreferenced.is_empty(), "{:?}", v.unreferenced);
    assert_eq!(store.list().unwrap().len(), 2);

    // train-multi refuses a non-empty folder before training, and a failed run leaves no store.
    let task = format!("t=idx:{}", mini("train"));
    let out = run(&["train-multi", "--task", &task, "--out-dir", s(&mine), "--model", s(&model)]);
    assert_failed_run(&out, "not a patch store");
    let fresh = d.join("fresh");
    let out = run(&[
        "train-multi",
        "--task",
        &task,
        "--out-dir",
        s(&fresh),
        "--lr",
        "nan",
        "--model",
        s(&model),
        "--resolution",
        "32",
    ]);
    assert_failed_run(&out, "learning rate");
    assert!(!fresh.exists(), "a failed train-multi left a store behind");
    std::fs::remove_dir_all(&d).ok();
}

/// The committed Fashion-MNIST subset, as `DIR/PREFIX`.
fn mini(split: &str) -> String {
    format!("{}/{split}", edgepatch_tests::repo_root().join("models/datasets/fashion-mnist-mini").display())
}

/// A patch file with one field changed after encoding (re-encoded, so the checksum is right).
fn patch_with(patch: &Patch, change: impl Fn(&mut edgepatch_format::RawPatch)) -> Vec<u8> {
    let mut raw = edgepatch_format::decode(&patch_file::to_bytes(patch).unwrap()).unwrap();
    change(&mut raw);
    edgepatch_format::encode(&raw).unwrap()
}

#[test]
fn lying_patch_headers_are_refused_on_read() {
    let d = dir("headers");
    let (model, patch) = tiny(&d);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("res0", patch_with(&patch, |r| r.resolution = 0), "resolution 0"),
        ("res33", patch_with(&patch, |r| r.resolution = 33), "resolution 33"),
        ("res4096", patch_with(&patch, |r| r.resolution = 4096), "resolution 4096"),
        ("escape", patch_with(&patch, |r| r.labels[1] = "\u{1b}[2J\u{1b}[31mgotcha".into()), "control characters"),
        ("labels", patch_with(&patch, |r| r.labels.truncate(3)), "3 labels for a classifier of 5 outputs"),
        ("twice", patch_with(&patch, |r| r.tensors.push(r.tensors[0].clone())), "appears twice"),
    ];
    for (name, bytes, needle) in &cases {
        let e = patch_file::from_bytes(bytes).unwrap_err().to_string();
        assert!(e.contains(needle), "{name}: {e}");
        let f = d.join(format!("{name}.patch"));
        std::fs::write(&f, bytes).unwrap();
        assert_clean_error(&run(&["patch", "inspect", s(&f)]), needle);
        assert_failed_run(
            &run(&["predict", "--model", s(&model), "--patch", s(&f), s(&reference_dir().join("chelsea.png"))]),
            needle,
        );
        assert_clean_error(&run(&["store", "add", s(&d.join("st")), "t", s(&f), "--model", s(&model)]), needle);
    }
    // Kinds that say more than the tensors hold (sb+logits without the S/B tensors) decode but
    // never apply: `store add` refuses them, `store verify` finds them in a store.
    let logits_only = patch_with(&patch, |r| {
        let head = r.tensors.iter().map(|t| t.node).max().unwrap();
        r.tensors.retain(|t| t.node == head);
    });
    let f = d.join("kinds.patch");
    std::fs::write(&f, &logits_only).unwrap();
    assert_clean_error(&run(&["store", "add", s(&d.join("st")), "t", s(&f), "--model", s(&model)]), "parameters");
    let st = d.join("st2");
    Store::open_or_create(&st).unwrap().add_bytes("bad", &logits_only).unwrap();
    assert_clean_error(&run(&["store", "verify", s(&st), "--model", s(&model)]), "cannot be applied");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn zero_sized_layers_are_refused_at_import() {
    let mut b = OnnxBuilder::new(13);
    b.f32("w", &[0, 3, 3, 3], vec![]).f32("fc.w", &[5, 0], vec![]).f32("fc.b", &[5], vec![0.0; 5]);
    b.node("Conv", &["input", "w"], "conv", vec![ints("kernel_shape", &[3, 3]), ints("pads", &[1; 4])]);
    b.node("GlobalAveragePool", &["conv"], "pool", vec![]);
    b.node("Flatten", &["pool"], "flat", vec![int("axis", 1)]);
    b.node("Gemm", &["flat", "fc.w", "fc.b"], "logits", vec![int("transB", 1)]);
    let bytes = b.build("input", "logits");
    let e = Backbone::from_onnx_bytes(&bytes).unwrap_err().to_string();
    assert!(e.contains("zero-sized layer"), "{e}");
    let d = dir("zero");
    let model = d.join("zero.onnx");
    std::fs::write(&model, &bytes).unwrap();
    assert_clean_error(&run(&["info", "--model", s(&model)]), "zero-sized layer");
    let cat = reference_dir().join("chelsea.png");
    assert_failed_run(&run(&["predict", "--model", s(&model), s(&cat)]), "zero-sized layer");
    std::fs::remove_dir_all(&d).ok();
}

fn jpeg_of(path: &Path) -> Vec<u8> {
    let img = edgepatch::data::image::load(path).unwrap();
    let rgb = image::RgbImage::from_raw(img.width, img.height, img.data).unwrap();
    let mut out = std::io::Cursor::new(Vec::new());
    rgb.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

/// A PNG claiming `w × h` RGB pixels whose image data is a few zero bytes: a valid header,
/// an IDAT chunk far too short for it, and the end chunk.
fn png_header(w: u32, h: u32) -> Vec<u8> {
    use std::io::Write as _;
    let chunk = |out: &mut Vec<u8>, kind: &[u8], data: &[u8]| {
        let body = [kind, data].concat();
        out.extend((data.len() as u32).to_be_bytes());
        out.extend(&body);
        out.extend(crc32fast::hash(&body).to_be_bytes());
    };
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &[&w.to_be_bytes()[..], &h.to_be_bytes(), &[8, 2, 0, 0, 0]].concat());
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&[0; 64]).unwrap();
    chunk(&mut out, b"IDAT", &z.finish().unwrap());
    chunk(&mut out, b"IEND", &[]);
    out
}

#[test]
fn truncated_jpegs_and_oversized_images_are_errors() {
    use edgepatch::data::image::decode;
    let d = dir("images");
    let jpeg = jpeg_of(&reference_dir().join("chelsea.png"));
    assert!(decode(&jpeg).is_ok());
    for cut in [2000, jpeg.len() / 2, jpeg.len() - 10] {
        let e = decode(&jpeg[..cut]).unwrap_err();
        assert!(e.contains("JPEG"), "cut at {cut}: {e}");
    }
    let cut = d.join("cut.jpg");
    std::fs::write(&cut, &jpeg[..2000]).unwrap();
    assert_failed_run(&run(&["predict", s(&cut)]), "damaged JPEG");

    // A 20000 × 20000 header is refused before any pixel is decoded; --max-pixels lowers the bar.
    let e = decode(&png_header(20_000, 20_000)).unwrap_err();
    assert!(e.contains("more than 33554432 pixels"), "{e}");
    let cat = reference_dir().join("chelsea.png");
    assert_failed_run(&run(&["predict", "--max-pixels", "1000", s(&cat)]), "more than 1000 pixels");
    assert!(run(&["predict", "--max-pixels", "200000", s(&cat)]).status.success());
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn endless_special_and_huge_inputs_are_refused_before_reading() {
    let d = dir("endless");
    let zero = "/dev/zero";
    assert_failed_run(&run(&["predict", zero]), "character device");
    assert_clean_error(&run(&["info", "--model", zero]), "character device");
    assert_clean_error(&run(&["patch", "inspect", zero]), "character device");
    std::fs::create_dir_all(d.join("idx")).unwrap();
    std::os::unix::fs::symlink(zero, d.join("idx/z-images-idx3-ubyte")).unwrap();
    std::os::unix::fs::symlink(zero, d.join("idx/z-labels-idx1-ubyte")).unwrap();
    let spec = format!("idx:{}/idx/z", d.display());
    let e = edgepatch::data::open(&spec).err().expect("refused").to_string();
    assert!(e.contains("character device"), "{e}");
    // A FIFO with no writer is refused at once, not waited on.
    let fifo = d.join("fifo.png");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    assert_failed_run(&run(&["predict", s(&fifo)]), "FIFO");
    // A 300 MB (sparse) patch file is refused from its size.
    let big = d.join("big.patch");
    std::fs::File::create(&big).unwrap().set_len(300 << 20).unwrap();
    assert_clean_error(&run(&["patch", "inspect", s(&big)]), "larger than the limit");
    // Under the limits, a file's signature is checked before the rest is read: a 200 MB file of
    // zeros is refused at once as a patch and as an image.
    let zeros = d.join("zeros.bin");
    std::fs::File::create(&zeros).unwrap().set_len(200 << 20).unwrap();
    let started = std::time::Instant::now();
    assert_clean_error(&run(&["patch", "inspect", s(&zeros)]), "bad magic");
    assert_failed_run(&run(&["predict", s(&zeros)]), "unknown image format");
    assert!(started.elapsed().as_secs_f64() < 5.0, "{:?}", started.elapsed());
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn idx_decompression_stops_at_the_declared_size() {
    use std::io::Write as _;
    // A header for 2 images of 28 × 28, then 64 MiB of zeros: about 64 KB gzipped.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let mut head = vec![0, 0, 8, 3];
    for d in [2u32, 28, 28] {
        head.extend(d.to_be_bytes());
    }
    gz.write_all(&head).unwrap();
    let block = vec![0u8; 1 << 20];
    for _ in 0..64 {
        gz.write_all(&block).unwrap();
    }
    let images = gz.finish().unwrap();
    assert!(images.len() < 1 << 20);
    let labels = [vec![0, 0, 8, 1, 0, 0, 0, 2], vec![0, 1]].concat();
    let e = edgepatch::data::dataset::Idx::from_bytes("bomb", &images, &labels, |k| {
        (0..k).map(|i| i.to_string()).collect()
    })
    .err()
    .expect("refused")
    .to_string();
    assert!(e.contains("header promises 1568 bytes of data, the file has 1569"), "{e}");
}

/// `root/{a,b}/…`: two classes of copies of a reference photo, `broken` PNG headers in `b`.
fn folder_set(root: &Path, per_class: usize, broken: usize) -> String {
    for c in ["a", "b"] {
        std::fs::create_dir_all(root.join(c)).unwrap();
        for i in 0..per_class {
            std::fs::copy(reference_dir().join("camera.png"), root.join(c).join(format!("{i}.png"))).unwrap();
        }
    }
    for i in 0..broken {
        std::fs::write(root.join("b").join(format!("broken{i}.png")), png_header(64, 64)).unwrap();
    }
    format!("folder:{}", root.display())
}

#[test]
fn bad_flags_and_unreadable_test_sets_fail_before_training() {
    let d = dir("flags");
    let (model, _) = tiny(&d);
    let out = d.join("out.patch");
    let train_spec = folder_set(&d.join("train"), 2, 0);
    let go = |extra: &[&str]| {
        let mut a = vec!["train", "--train", &train_spec, "--patch", "logits", "--out", s(&out), "--model", s(&model)];
        a.extend(["--resolution", "32", "--epochs", "1"]);
        a.extend_from_slice(extra);
        run(&a)
    };
    for (flag, value, needle) in [
        ("--clip-norm", "nan", "clipping norm NaN"),
        ("--clip-norm", "-1", "clipping norm -1"),
        ("--weight-decay", "-1", "weight decay -1"),
        ("--weight-decay", "nan", "weight decay NaN"),
        ("--lr", "inf", "learning rate inf"),
    ] {
        assert_failed_run(&go(&[&format!("{flag}={value}")]), needle);
        assert!(!out.exists());
    }
    let top0 = run(&["predict", "--top", "0", s(&reference_dir().join("chelsea.png"))]);
    assert!(!top0.status.success() && String::from_utf8_lossy(&top0.stderr).contains("--top"));

    // An unreadable image in the test set fails the run before training, leaving no patch; so
    // does an empty test selection.
    let test_spec = folder_set(&d.join("test"), 1, 1);
    assert_failed_run(&go(&["--test", &test_spec]), "test set, image");
    assert!(!out.exists(), "a failed run left a patch at --out");
    assert_failed_run(&go(&["--test", &test_spec, "--test-limit", "0"]), "selects no images");
    assert!(!out.exists());
    // The same run with a readable test set trains and writes the patch.
    let good = folder_set(&d.join("good"), 1, 0);
    assert!(go(&["--test", &good]).status.success());
    assert!(out.exists());
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn evaluating_on_no_images_is_an_error() {
    let b = Backbone::embedded().unwrap();
    let ds = edgepatch::data::open(&format!("idx:{}", mini("t10k"))).unwrap();
    let mut g = b.graph().clone();
    edgepatch::patch::new_head(&mut g, ds.classes().len(), 0).unwrap();
    let e = edgepatch::train::evaluate(&g, ds, &[], 32).unwrap_err().to_string();
    assert!(e.contains("no images"), "{e}");
}
