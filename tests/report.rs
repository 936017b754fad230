//! The HTML training report, rendered in a real browser (Debian's headless Chromium): no console
//! errors, and every chart has as many marks as the runs have epochs, runs, classes and images.
//! Without Chromium the test skips with a message, unless `EDGEPATCH_REQUIRE_BROWSER=1` (CI).

mod cli_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use cli_support::run;
use edgepatch_tests::onnx_builder::{tiny_net, TinyNet};
use edgepatch_tests::reference_dir;

fn chromium() -> Option<PathBuf> {
    let found = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].iter().map(PathBuf::from).find(|p| p.exists());
    if found.is_none() {
        assert!(
            std::env::var("EDGEPATCH_REQUIRE_BROWSER").as_deref() != Ok("1"),
            "EDGEPATCH_REQUIRE_BROWSER=1 but Chromium is not installed (apt-get install chromium)"
        );
        eprintln!("skipped: no Chromium (apt-get install chromium)");
    }
    found
}

/// The page as Chromium's DOM after scripts ran, and Chromium's log lines of the page's console.
fn render(browser: &Path, page: &Path, profile: &Path) -> (String, Vec<String>) {
    let out = Command::new(browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"])
        .args(["--disable-component-update", "--disable-sync", "--enable-logging=stderr", "--v=0", "--dump-dom"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("Chromium starts");
    assert!(out.status.success(), "Chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    let console =
        String::from_utf8_lossy(&out.stderr).lines().filter(|l| l.contains("CONSOLE")).map(String::from).collect();
    (String::from_utf8_lossy(&out.stdout).into_owned(), console)
}

/// The chart mark counts the page's self-check wrote into the DOM.
fn counts(dom: &str) -> serde_json::Value {
    let start = dom.find("<pre id=\"selfcheck\">").expect("the self-check element") + "<pre id=\"selfcheck\">".len();
    let end = start + dom[start..].find("</pre>").expect("closed");
    serde_json::from_str(&dom[start..end])
        .unwrap_or_else(|e| panic!("the self-check did not run ({e}): {:?}", &dom[start..end]))
}

fn classes(root: &Path, per_class: usize) -> String {
    for (c, photo) in [("cat", "chelsea.png"), ("cup", "coffee.png")] {
        std::fs::create_dir_all(root.join(c)).unwrap();
        for i in 0..per_class {
            std::fs::copy(reference_dir().join(photo), root.join(c).join(format!("{i}.png"))).unwrap();
        }
    }
    format!("folder:{}", root.display())
}

#[test]
fn the_report_renders_in_chromium_with_every_point() {
    let Some(browser) = chromium() else { return };
    let d = std::env::temp_dir().join(format!("edgepatch-report-{}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    let model = d.join("tiny.onnx");
    std::fs::write(&model, tiny_net(TinyNet::default(), 2)).unwrap();
    let (train, test) = (classes(&d.join("train"), 5), classes(&d.join("test"), 3));
    let mut summaries = Vec::new();
    for (kinds, epochs) in [("logits", "3"), ("sb+logits", "4")] {
        let out = d.join(format!("{kinds}.patch"));
        let report = d.join(format!("report-{kinds}"));
        let args = ["train", "--train", &train, "--test", &test, "--patch", kinds, "--model", model.to_str().unwrap()];
        let more = ["--out", out.to_str().unwrap(), "--resolution", "32", "--epochs", epochs, "--validate", "2"];
        let o = run(&[&args[..], &more[..], &["--json", "--report", report.to_str().unwrap()]].concat());
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(summary["history"].as_array().unwrap().len(), epochs.parse::<usize>().unwrap());
        let json = d.join(format!("{kinds}.json"));
        std::fs::write(&json, &o.stdout).unwrap();
        summaries.push(json);

        let (dom, console) = render(&browser, &report.join("report.html"), &d.join("profile"));
        assert!(console.is_empty(), "console messages: {console:?}");
        let c = counts(&dom);
        let n: u64 = epochs.parse().unwrap();
        assert_eq!(c["loss"], n, "{c}");
        assert_eq!(c["accuracy"], 2 * n, "training and validation: {c}");
        assert_eq!(c["tradeoff"], 1, "{c}");
        assert_eq!(c["confusion-1"], 4, "{c}");
        assert_eq!(c["per-class-1"], 2, "{c}");
        assert_eq!(dom.matches("<img ").count(), 6, "one thumbnail per test image");
    }
    // Several runs on one page: one trade-off point per run.
    let page = d.join("both");
    let args: Vec<&str> = summaries.iter().map(|p| p.to_str().unwrap()).collect();
    let o = run(&[&["report"][..], &args, &["--out", page.to_str().unwrap()]].concat());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (dom, console) = render(&browser, &page.join("report.html"), &d.join("profile"));
    assert!(console.is_empty(), "console messages: {console:?}");
    let c = counts(&dom);
    assert_eq!(c["tradeoff"], 2, "{c}");
    assert_eq!(c["loss"], 3 + 4, "{c}");
    assert_eq!(c["confusion-2"], 4, "{c}");
    std::fs::remove_dir_all(&d).ok();
}
