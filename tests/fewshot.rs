//! Few-shot from the binary: `prototype` makes an instant `logits` patch that is a patch like any
//! other (evaluated, stored, predicted with, exported), and `train --head prototypes --shots K`
//! starts a trained patch from that head; `adapt` rewrites a patch from unlabeled images.

use edgepatch_tests::{reference_dir, repo_root};

mod cli_support;
use cli_support::{assert_failed_run, json, run, tmp};

fn mini(split: &str) -> String {
    format!("idx:{}/models/datasets/fashion-mnist-mini/{split}", repo_root().display())
}

#[test]
fn a_prototype_patch_is_a_patch_like_any_other() {
    let (train, test) = (mini("train"), mini("t10k"));
    let out = tmp("proto.patch", b"");
    let o = out.to_str().unwrap();
    let args = ["prototype", "--train", &train, "--shots", "10", "--resolution", "64", "--test", &test, "--json"];
    let r = json(&run(&[&args[..], &["--out", o]].concat()));
    assert_eq!(r["train_images"], 100, "10 images of each of 10 classes");
    assert_eq!(r["patch_params"], 1280 * 10 + 10);
    let acc = r["test_accuracy"].as_f64().unwrap();
    // Chance is 0.1; ten images per class reach about 0.6 here.
    assert!(acc > 0.45, "prototype head accuracy {acc}");
    assert!(r["seconds"].as_f64().unwrap() > 0.0);

    let e = json(&run(&["eval", "--test", &test, "--patch", o, "--json"]));
    assert_eq!(e["accuracy"].as_f64().unwrap(), acc, "eval scores the patch as prototype did");

    let store = std::env::temp_dir().join(format!("edgepatch-fewshot-store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&store);
    let s = store.to_str().unwrap();
    assert!(run(&["store", "add", s, "shoes", o]).status.success());
    let cat = reference_dir().join("chelsea.png");
    let p = json(&run(&["predict", cat.to_str().unwrap(), "--store", s, "--task", "shoes", "--json"]));
    assert_eq!(p[0]["top"].as_array().unwrap().len(), 5);
    let onnx = tmp("proto.onnx", b"");
    let x = json(&run(&["export", "--patch", o, "--out", onnx.to_str().unwrap(), "--json"]));
    assert!(x.is_object());
    assert!(std::fs::metadata(&onnx).unwrap().len() > 1_000_000);

    // Training that starts from the prototypes and (nearly) does not move starts where `prototype`
    // ends: the same values, so the same file.
    let still = tmp("proto-still.patch", b"");
    let t = [
        "train",
        "--train",
        &train,
        "--patch",
        "logits",
        "--head",
        "prototypes",
        "--shots",
        "10",
        "--resolution",
        "64",
        "--epochs",
        "1",
        "--lr",
        "1e-30",
        "--clip-norm",
        "0",
        "--device",
        "cpu",
        "--out",
        still.to_str().unwrap(),
    ];
    assert!(run(&t).status.success());
    assert_eq!(std::fs::read(&still).unwrap(), std::fs::read(&out).unwrap());
    let _ = std::fs::remove_dir_all(&store);
}

#[test]
fn few_shot_training_starts_from_the_prototypes() {
    let (train, test) = (mini("train"), mini("t10k"));
    let out = tmp("fewshot-sb.patch", b"");
    let o = out.to_str().unwrap();
    let common = ["--train", &train, "--test", &test, "--shots", "5", "--resolution", "64", "--device", "cpu"];
    let args = [&["train", "--patch", "sb+logits", "--few-shot"][..], &common, &["--out", o, "--json"]].concat();
    let r = json(&run(&args));
    assert_eq!(r["train_images"], 50);
    assert_eq!(r["head"], "prototypes");
    // The few-shot schedule: batch 16, about 150 steps (4 an epoch: 38 epochs), augmentation.
    assert_eq!((r["batch"].as_u64(), r["epochs"].as_u64(), r["augment"].as_bool()), (Some(16), Some(38), Some(true)));
    assert_eq!(r["shots"], 5);
    assert!(r["test_accuracy"].as_f64().unwrap() > 0.3);

    let bad =
        run(&[&["train", "--patch", "sb", "--head", "prototypes", "--epochs", "1"][..], &common, &["--out", o]]
            .concat());
    assert_failed_run(&bad, "no new classifier");
    let none = run(&["prototype", "--train", &train, "--limit", "3", "--resolution", "64", "--out", o]);
    assert_failed_run(&none, "has no image");
}

#[test]
fn adapt_rewrites_a_patch_from_unlabeled_images_and_refuses_without_a_reference() {
    let (train, test) = (mini("train"), mini("t10k"));
    let src = tmp("adapt-src.patch", b"");
    let s = src.to_str().unwrap();
    let args = ["prototype", "--train", &train, "--shots", "10", "--resolution", "64", "--out", s];
    assert!(run(&args).status.success());
    let out = tmp("adapt-out.patch", b"");
    let o = out.to_str().unwrap();
    // The test images as the "new" conditions, the training images as the source: both from the
    // same distribution, so adaptation must not lose accuracy.
    let a = [
        "adapt",
        "--patch",
        s,
        "--unlabeled",
        &test,
        "--limit",
        "64",
        "--source",
        &train,
        "--source-limit",
        "64",
        "--test",
        &test,
        "--test-limit",
        "200",
        "--out",
        o,
        "--json",
    ];
    let r = json(&run(&a));
    assert_eq!(r["patch"], "sb+logits");
    assert_eq!(r["unlabeled_images"], 64);
    assert_eq!(r["affines"], 52);
    let (before, after) = (r["test_accuracy_before"].as_f64().unwrap(), r["test_accuracy_after"].as_f64().unwrap());
    assert!(after > before - 0.05, "same conditions: {before} before, {after} after");
    let e = json(&run(&["eval", "--test", &test, "--test-limit", "200", "--patch", o, "--json"]));
    assert_eq!(e["accuracy"].as_f64().unwrap(), after);
    let mut entropy = a.to_vec();
    entropy.extend(["--method", "entropy", "--epochs", "1", "--lr", "1e-4"]);
    let r = json(&run(&entropy));
    assert_eq!(r["method"], "entropy");
    assert!(r["test_accuracy_after"].as_f64().unwrap() > before - 0.05);

    let none = run(&["adapt", "--patch", s, "--unlabeled", &test, "--out", o]);
    assert_failed_run(&none, "give --source");
}
