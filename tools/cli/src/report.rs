//! The training report: one self-contained HTML page (inline SVG charts, images as data URIs,
//! no script or style fetched from anywhere) from one or more runs' JSON summaries.
//!
//! Every chart is an `<svg data-chart="NAME">` whose marks carry `data-point` (a point of a
//! curve), `data-cell` (a confusion-matrix cell) or `data-bar` (a bar), so a browser test can
//! count them. Charts: loss per epoch and accuracy per epoch (training solid, validation dashed;
//! one curve per run), test accuracy against patch bytes (one point per run, labelled with its
//! patch kinds), and per run with a test set: the confusion matrix as a heat map and the
//! accuracy per class; then a grid of test images with their predictions, and the settings.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::Value;

/// A test image with the patch's prediction.
pub struct Sample {
    /// PNG bytes of a small copy of the image.
    pub png: Vec<u8>,
    pub label: String,
    pub predicted: String,
    pub prob: f32,
}

const COLORS: [&str; 8] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"];
const W: f64 = 460.0;
const H: f64 = 260.0;
const PAD: f64 = 56.0;

/// HTML-escaped text.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// One curve of a chart.
struct Series {
    name: String,
    points: Vec<(f64, f64)>,
    color: &'static str,
    dashed: bool,
}

/// A line chart with axes, ticks and a legend; `log_x` for a base-10 logarithmic x axis.
fn line_chart(id: &str, title: &str, x_label: &str, y_label: &str, series: &[Series], log_x: bool) -> String {
    let all: Vec<(f64, f64)> =
        series.iter().flat_map(|s| s.points.iter().copied()).filter(|p| p.1.is_finite()).collect();
    let fx = |x: f64| if log_x { x.max(1.0).log10() } else { x };
    let (mut x0, mut x1) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(fx(p.0)), b.max(fx(p.0))));
    let (mut y0, mut y1) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    if all.is_empty() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 - x0 < 1e-9 {
        (x0, x1) = (x0 - 0.5, x1 + 0.5);
    }
    if y1 - y0 < 0.02 {
        let mid = (y0 + y1) / 2.0;
        (y0, y1) = (mid - 0.01, mid + 0.01);
    }
    let margin = (y1 - y0) * 0.08;
    (y0, y1) = (y0 - margin, y1 + margin);
    let px = |x: f64| PAD + (fx(x) - x0) / (x1 - x0) * (W - PAD - 12.0);
    let py = |y: f64| H - PAD + 10.0 - (y - y0) / (y1 - y0) * (H - PAD - 10.0);
    // Epoch-like axes (a few whole numbers) are ticked at their values, others in quarters.
    let mut xs: Vec<f64> = all.iter().map(|p| p.0).collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    let whole = !log_x && xs.len() <= 12 && xs.iter().all(|x| x.fract() == 0.0);
    let total_h = H + 16.0 * series.len() as f64;
    let mut o = String::new();
    let _ = write!(
        o,
        r#"<figure><figcaption>{}</figcaption><svg data-chart="{id}" viewBox="0 0 {W} {total_h}" width="{W}" height="{total_h}" role="img">"#,
        esc(title)
    );
    let _ = write!(
        o,
        r##"<line x1="{PAD}" y1="{b}" x2="{r}" y2="{b}" stroke="#444"/><line x1="{PAD}" y1="10" x2="{PAD}" y2="{b}" stroke="#444"/>"##,
        b = H - PAD + 10.0,
        r = W - 12.0
    );
    let step = (y1 - y0) / 4.0;
    for i in 0..=4 {
        let y = y0 + step * i as f64;
        let _ = write!(
            o,
            r##"<text x="{}" y="{:.1}" font-size="10" text-anchor="end" fill="#444">{}</text>"##,
            PAD - 4.0,
            py(y) + 3.0,
            tick_at(y, step)
        );
    }
    let x_ticks: Vec<f64> = if whole {
        xs.clone()
    } else {
        (0..=4).map(|i| x0 + (x1 - x0) * i as f64 / 4.0).map(|x| if log_x { 10f64.powf(x) } else { x }).collect()
    };
    for x in x_ticks {
        let _ = write!(
            o,
            r##"<text x="{:.1}" y="{}" font-size="10" text-anchor="middle" fill="#444">{}</text>"##,
            px(x),
            H - PAD + 24.0,
            tick(x)
        );
    }
    let _ = write!(
        o,
        r##"<text x="{}" y="{}" font-size="11" text-anchor="middle">{}</text>"##,
        (W + PAD) / 2.0,
        H - 6.0,
        esc(x_label)
    );
    let _ = write!(
        o,
        r##"<text x="12" y="{}" font-size="11" text-anchor="middle" transform="rotate(-90 12 {})">{}</text>"##,
        H / 2.0,
        H / 2.0,
        esc(y_label)
    );
    for (k, s) in series.iter().enumerate() {
        let pts: Vec<(f64, f64)> = s.points.iter().copied().filter(|p| p.1.is_finite()).collect();
        let path: Vec<String> = pts.iter().map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y))).collect();
        let dash = if s.dashed { r#" stroke-dasharray="5 3""# } else { "" };
        if pts.len() > 1 {
            let _ = write!(
                o,
                r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"{dash}/>"#,
                path.join(" "),
                s.color
            );
        }
        for &(x, y) in &pts {
            let _ = write!(
                o,
                r#"<circle data-point="" cx="{:.1}" cy="{:.1}" r="3.5" fill="{}"><title>{}: {} → {}</title></circle>"#,
                px(x),
                py(y),
                s.color,
                esc(&s.name),
                tick(x),
                tick(y)
            );
        }
        // The legend below the plot, one row per curve.
        let ly = H + 8.0 + 16.0 * k as f64;
        let _ = write!(
            o,
            r#"<line x1="{a}" y1="{ly}" x2="{b}" y2="{ly}" stroke="{c}" stroke-width="2"{dash}/><text x="{t}" y="{}" font-size="11">{}</text>"#,
            ly + 4.0,
            esc(&s.name),
            a = PAD,
            b = PAD + 24.0,
            c = s.color,
            t = PAD + 30.0
        );
    }
    o.push_str("</svg></figure>");
    o
}

/// A y tick with enough decimals to tell ticks `step` apart.
fn tick_at(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 { 0 } else { (-step.log10()).ceil() as usize + 1 };
    if v.abs() >= 10_000.0 {
        tick(v)
    } else {
        format!("{v:.decimals$}")
    }
}

fn tick(v: f64) -> String {
    let a = v.abs();
    if a >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if a >= 100.0 || (v.fract() == 0.0 && a >= 1.0) {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

/// The confusion matrix as a heat map (rows: true class, columns: predicted; shade by the
/// row's share).
fn confusion_chart(id: &str, labels: &[String], m: &[Vec<u64>]) -> String {
    let k = m.len().max(1);
    let cell = (360.0 / k as f64).clamp(6.0, 40.0);
    let left = 110.0;
    let size = left + cell * k as f64 + 10.0;
    let mut o = format!(
        r#"<figure><figcaption>Confusion matrix (rows: true class, columns: predicted)</figcaption><svg data-chart="{id}" viewBox="0 0 {size} {size}" width="{size}" height="{size}" role="img">"#
    );
    for (r, row) in m.iter().enumerate() {
        let total = row.iter().sum::<u64>().max(1) as f64;
        let name = labels.get(r).map_or(String::new(), |l| esc(&l.chars().take(16).collect::<String>()));
        let _ = write!(
            o,
            r#"<text x="{}" y="{:.1}" font-size="10" text-anchor="end">{name}</text>"#,
            left - 4.0,
            left + cell * (r as f64 + 0.6)
        );
        for (c, &v) in row.iter().enumerate() {
            let share = v as f64 / total;
            let light = (97.0 - 62.0 * share).round();
            let _ = write!(
                o,
                r#"<rect data-cell="" x="{:.1}" y="{:.1}" width="{cell:.1}" height="{cell:.1}" fill="hsl(215,70%,{light}%)"><title>{} → {}: {v}</title></rect>"#,
                left + cell * c as f64,
                left + cell * r as f64,
                esc(labels.get(r).map_or("", |s| s)),
                esc(labels.get(c).map_or("", |s| s))
            );
        }
    }
    for c in 0..k {
        let name = labels.get(c).map_or(String::new(), |l| esc(&l.chars().take(16).collect::<String>()));
        let (x, y) = (left + cell * (c as f64 + 0.6), left - 4.0);
        let _ =
            write!(o, r#"<text x="{x:.1}" y="{y}" font-size="10" transform="rotate(-60 {x:.1} {y})">{name}</text>"#);
    }
    o.push_str("</svg></figure>");
    o
}

/// Accuracy per class as horizontal bars.
fn per_class_chart(id: &str, labels: &[String], acc: &[f64]) -> String {
    let row = 18.0;
    let (left, width) = (120.0, 300.0);
    let height = 10.0 + row * acc.len() as f64;
    let mut o = format!(
        r#"<figure><figcaption>Test accuracy per class</figcaption><svg data-chart="{id}" viewBox="0 0 {w} {height}" width="{w}" height="{height}" role="img">"#,
        w = left + width + 60.0
    );
    for (c, &a) in acc.iter().enumerate() {
        let y = 5.0 + row * c as f64;
        let name = labels.get(c).map_or(String::new(), |l| esc(&l.chars().take(18).collect::<String>()));
        let shown = if a.is_finite() { a } else { 0.0 };
        let _ = write!(
            o,
            r##"<text x="{}" y="{:.1}" font-size="10" text-anchor="end">{name}</text><rect data-bar="" x="{left}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="#2ca02c"/><text x="{:.1}" y="{:.1}" font-size="10">{}</text>"##,
            left - 4.0,
            y + row * 0.65,
            width * shown,
            row - 4.0,
            left + width * shown + 4.0,
            y + row * 0.65,
            if a.is_finite() { format!("{a:.3}") } else { "no images".into() }
        );
    }
    o.push_str("</svg></figure>");
    o
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn run_name(r: &Value, i: usize) -> String {
    format!("run {} · {}", i + 1, r["patch"].as_str().unwrap_or("?"))
}

/// The page for `runs` (each a `train --json` summary) and `samples` (may be empty).
pub fn html(runs: &[Value], samples: &[Sample]) -> String {
    let mut o = String::from("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>edgepatch training report</title><style>body{font:14px system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}h1{font-size:22px}h2{font-size:17px;margin-top:28px}figure{display:inline-block;margin:8px 16px 8px 0;vertical-align:top}figcaption{font-weight:600;margin-bottom:4px}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}.grid{display:flex;flex-wrap:wrap;gap:10px}.grid figure{width:100px;margin:0;font-size:11px}.grid img{width:96px;height:96px;image-rendering:pixelated;border:2px solid #2ca02c}.grid .wrong img{border-color:#d62728}</style></head><body>\n<h1>edgepatch training report</h1>\n");
    let mut loss = Vec::new();
    let mut acc = Vec::new();
    let mut trade = Vec::new();
    for (i, r) in runs.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let history = r["history"].as_array().cloned().unwrap_or_default();
        let at = |key: &str| history.iter().map(|h| (num(&h["epoch"]), num(&h[key]))).collect::<Vec<_>>();
        loss.push(Series { name: run_name(r, i), points: at("loss"), color, dashed: false });
        acc.push(Series {
            name: format!("{} train", run_name(r, i)),
            points: at("train_accuracy"),
            color,
            dashed: false,
        });
        if history.iter().any(|h| h["validation_accuracy"].is_number()) {
            acc.push(Series {
                name: format!("{} validation", run_name(r, i)),
                points: at("validation_accuracy"),
                color,
                dashed: true,
            });
        }
        if let (Some(b), Some(a)) = (r["patch_bytes"].as_f64(), r["test_accuracy"].as_f64()) {
            trade.push(Series { name: run_name(r, i), points: vec![(b, a)], color, dashed: false });
        }
    }
    o.push_str("<h2>Training</h2>\n");
    o += &line_chart("loss", "Training loss per epoch", "epoch", "loss", &loss, false);
    o += &line_chart("accuracy", "Accuracy per epoch (dashed: validation)", "epoch", "accuracy", &acc, false);
    if !trade.is_empty() {
        o.push_str("<h2>Accuracy per byte of patch</h2>\n");
        o += &line_chart(
            "tradeoff",
            "Test accuracy against patch bytes (one point per run)",
            "patch bytes (log scale)",
            "test accuracy",
            &trade,
            true,
        );
    }
    for (i, r) in runs.iter().enumerate() {
        let labels: Vec<String> = r["labels"]
            .as_array()
            .map(|a| a.iter().map(|l| l.as_str().unwrap_or("").to_string()).collect())
            .unwrap_or_default();
        if let Some(m) = r["confusion"].as_array() {
            let m: Vec<Vec<u64>> = m
                .iter()
                .map(|row| row.as_array().map_or(vec![], |c| c.iter().map(|v| v.as_u64().unwrap_or(0)).collect()))
                .collect();
            let per: Vec<f64> = r["per_class"].as_array().map_or(vec![], |a| a.iter().map(num).collect());
            let _ = writeln!(
                o,
                "<h2>Test set: {} ({} images, accuracy {:.4})</h2>",
                esc(&run_name(r, i)),
                r["test_images"],
                num(&r["test_accuracy"])
            );
            o += &confusion_chart(&format!("confusion-{}", i + 1), &labels, &m);
            o += &per_class_chart(&format!("per-class-{}", i + 1), &labels, &per);
        }
    }
    if !samples.is_empty() {
        o.push_str("<h2>Test images and predictions</h2>\n<div class=\"grid\">");
        for s in samples {
            let wrong = if s.label == s.predicted { "" } else { " class=\"wrong\"" };
            let _ = write!(
                o,
                r#"<figure{wrong}><img alt="{}" src="data:image/png;base64,{}"><figcaption>{} ({:.0}%)<br>true: {}</figcaption></figure>"#,
                esc(&s.label),
                base64::engine::general_purpose::STANDARD.encode(&s.png),
                esc(&s.predicted),
                100.0 * s.prob,
                esc(&s.label)
            );
        }
        o.push_str("</div>\n");
    }
    o.push_str("<h2>Settings</h2>\n");
    for (i, r) in runs.iter().enumerate() {
        let _ = write!(o, "<table><caption>{}</caption>", esc(&run_name(r, i)));
        if let Some(obj) = r.as_object() {
            for (k, v) in
                obj.iter().filter(|(k, _)| !matches!(k.as_str(), "history" | "confusion" | "per_class" | "labels"))
            {
                let _ = write!(o, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(&v.to_string()));
            }
        }
        o.push_str("</table>\n");
    }
    // Counts of every chart's marks as the browser parsed them (read by the browser test).
    o.push_str("<pre id=\"selfcheck\"></pre><script>window.addEventListener('load',function(){var c={};document.querySelectorAll('svg[data-chart]').forEach(function(s){c[s.dataset.chart]=s.querySelectorAll('[data-point],[data-cell],[data-bar]').length;});document.getElementById('selfcheck').textContent=JSON.stringify(c);});</script>\n</body></html>\n");
    o
}

/// Writes `DIR/report.html` (atomically) and returns its path.
pub fn write(dir: &Path, runs: &[Value], samples: &[Sample]) -> edgepatch::Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| edgepatch::Error::Io { path: dir.to_path_buf(), source: e })?;
    let path = dir.join("report.html");
    edgepatch::fsio::write_atomic(&path, html(runs, samples).as_bytes())?;
    Ok(path)
}

/// `edgepatch report RUN.json… --out DIR`: the page over several runs' `train --json` output.
pub fn from_files(files: &[PathBuf], dir: &Path) -> edgepatch::Result<String> {
    let mut runs = Vec::new();
    for f in files {
        let bytes = edgepatch::fsio::read_limited(f, 64 << 20, "a run summary")?;
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| edgepatch::Error::Train(format!("{}: not a run's JSON summary: {e}", f.display())))?;
        if !v["history"].is_array() {
            return Err(edgepatch::Error::Train(format!("{}: not a `train --json` summary (no history)", f.display())));
        }
        runs.push(v);
    }
    let path = write(dir, &runs, &[])?;
    Ok(format!("wrote {} ({} runs)\n", path.display(), runs.len()))
}
