//! Labelled image datasets: MNIST-family IDX files (`idx:DIR/PREFIX`) and image folders with one
//! subfolder per class (`folder:DIR`).

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::image::{self, Rgb8};
use crate::{Error, Result};

/// A labelled image collection. Images are decoded on demand.
pub trait Dataset: Send + Sync {
    /// The spec it was opened from (for messages).
    fn spec(&self) -> &str;
    /// Number of images.
    fn len(&self) -> usize;
    /// True when there are no images.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Class names; labels index into them.
    fn classes(&self) -> &[String];
    /// The label of image `i` (`< classes().len()`).
    fn label(&self, i: usize) -> usize;
    /// Image `i`, decoded to RGB (grayscale replicated to three channels).
    fn image(&self, i: usize) -> Result<Rgb8>;
}

/// Opens a dataset from a spec: `idx:DIR/PREFIX` or `folder:DIR`.
pub fn open(spec: &str) -> Result<Arc<dyn Dataset>> {
    if let Some(p) = spec.strip_prefix("idx:") {
        Ok(Arc::new(Idx::open(spec, Path::new(p))?))
    } else if let Some(p) = spec.strip_prefix("folder:") {
        Ok(Arc::new(Folder::open(spec, Path::new(p))?))
    } else {
        Err(Error::dataset(spec, "expected idx:DIR/PREFIX or folder:DIR"))
    }
}

/// Largest decompressed IDX file accepted.
const MAX_IDX_BYTES: u64 = 1 << 31;

/// Reads `PATH`, or `PATH.gz` when `PATH` does not exist.
fn read_maybe_gz(spec: &str, path: &Path) -> Result<Vec<u8>> {
    let gz = PathBuf::from(format!("{}.gz", path.display()));
    let file = if path.exists() { path.to_path_buf() } else { gz };
    let len = std::fs::metadata(&file)
        .map_err(|e| Error::dataset(spec, format!("cannot open {} (or without .gz): {e}", file.display())))?
        .len();
    if len > MAX_IDX_BYTES {
        return Err(Error::dataset(spec, format!("{} is larger than {MAX_IDX_BYTES} bytes", file.display())));
    }
    std::fs::read(&file).map_err(|e| Error::dataset(spec, format!("{}: {e}", file.display())))
}

/// Parses an IDX file of unsigned bytes with `dims` dimensions: the dimensions and the data.
fn parse_idx(spec: &str, name: &str, bytes: &[u8], dims: usize) -> Result<(Vec<usize>, usize)> {
    let bad = |why: String| Error::dataset(spec, format!("{name}: {why}"));
    let head = 4 + 4 * dims;
    if bytes.len() < head {
        return Err(bad("truncated header".into()));
    }
    if bytes[..3] != [0, 0, 8] || bytes[3] as usize != dims {
        return Err(bad(format!("not an IDX file of unsigned bytes with {dims} dimensions")));
    }
    let shape: Vec<usize> = (0..dims)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize)
        .collect();
    let want =
        shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| bad("dimensions overflow".into()))?;
    if bytes.len() - head != want {
        return Err(bad(format!("header promises {want} bytes of data, the file has {}", bytes.len() - head)));
    }
    Ok((shape, head))
}

/// Class names from `labels.txt` beside the data when it has one line per class, else numbers.
fn class_names(dir: &Path, classes: usize) -> Vec<String> {
    let from_file = std::fs::read_to_string(dir.join("labels.txt"))
        .ok()
        .map(|s| s.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect::<Vec<_>>());
    match from_file {
        Some(names) if names.len() == classes => names,
        _ => (0..classes).map(|i| i.to_string()).collect(),
    }
}

/// Checks that every class in `0..classes` has at least one image.
fn check_classes(spec: &str, labels: impl Iterator<Item = usize>, names: &[String]) -> Result<()> {
    let mut count = vec![0usize; names.len()];
    labels.for_each(|l| count[l] += 1);
    match count.iter().position(|&c| c == 0) {
        Some(c) => Err(Error::dataset(spec, format!("class {} ('{}') has no images", c, names[c]))),
        None => Ok(()),
    }
}

/// An MNIST-family dataset held in memory: `PREFIX-images-idx3-ubyte[.gz]` (N × rows × cols
/// grayscale) and `PREFIX-labels-idx1-ubyte[.gz]` (N labels).
pub struct Idx {
    spec: String,
    rows: usize,
    cols: usize,
    pixels: Vec<u8>,
    labels: Vec<u8>,
    classes: Vec<String>,
}

impl Idx {
    /// Opens `DIR/PREFIX`, checking the files agree (counts, sizes, every class present).
    pub fn open(spec: &str, prefix: &Path) -> Result<Self> {
        let with = |suffix: &str| PathBuf::from(format!("{}-{suffix}", prefix.display()));
        let images = read_maybe_gz(spec, &with("images-idx3-ubyte"))?;
        let labels = read_maybe_gz(spec, &with("labels-idx1-ubyte"))?;
        let dir = prefix.parent().unwrap_or(Path::new("."));
        Self::from_bytes(spec, &images, &labels, |k| class_names(dir, k))
    }

    /// A dataset from the two files' bytes (gzipped or not), named by `names(classes)`.
    pub fn from_bytes(
        spec: &str,
        images: &[u8],
        labels: &[u8],
        names: impl FnOnce(usize) -> Vec<String>,
    ) -> Result<Self> {
        let images = gunzip_if_needed(spec, images)?;
        let labels = gunzip_if_needed(spec, labels)?;
        let (ishape, ihead) = parse_idx(spec, "images", &images, 3)?;
        let (lshape, lhead) = parse_idx(spec, "labels", &labels, 1)?;
        if ishape[0] != lshape[0] {
            return Err(Error::dataset(spec, format!("{} images but {} labels", ishape[0], lshape[0])));
        }
        if ishape[0] == 0 || ishape[1] == 0 || ishape[2] == 0 {
            return Err(Error::dataset(spec, "no images"));
        }
        let labels = labels[lhead..].to_vec();
        let classes = *labels.iter().max().expect("not empty") as usize + 1;
        let names = names(classes);
        if names.len() != classes {
            return Err(Error::dataset(spec, format!("{} class names for {classes} classes", names.len())));
        }
        check_classes(spec, labels.iter().map(|&l| l as usize), &names)?;
        Ok(Idx {
            spec: spec.to_string(),
            rows: ishape[1],
            cols: ishape[2],
            pixels: images[ihead..].to_vec(),
            labels,
            classes: names,
        })
    }
}

/// The bytes, gunzipped when they start with the gzip magic (at most [`MAX_IDX_BYTES`]).
fn gunzip_if_needed<'a>(spec: &str, bytes: &'a [u8]) -> Result<std::borrow::Cow<'a, [u8]>> {
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return Ok(std::borrow::Cow::Borrowed(bytes));
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .take(MAX_IDX_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::dataset(spec, format!("corrupt gzip data: {e}")))?;
    if out.len() as u64 > MAX_IDX_BYTES {
        return Err(Error::dataset(spec, format!("more than {MAX_IDX_BYTES} bytes once decompressed")));
    }
    Ok(std::borrow::Cow::Owned(out))
}

impl Dataset for Idx {
    fn spec(&self) -> &str {
        &self.spec
    }
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn classes(&self) -> &[String] {
        &self.classes
    }
    fn label(&self, i: usize) -> usize {
        self.labels[i] as usize
    }
    fn image(&self, i: usize) -> Result<Rgb8> {
        let n = self.rows * self.cols;
        let data = self.pixels[i * n..(i + 1) * n].iter().flat_map(|&v| [v, v, v]).collect();
        Ok(Rgb8 { width: self.cols as u32, height: self.rows as u32, data })
    }
}

/// A folder with one subfolder per class (sorted by name) holding JPEG or PNG files.
pub struct Folder {
    spec: String,
    files: Vec<(PathBuf, usize)>,
    classes: Vec<String>,
}

fn sorted_entries(spec: &str, dir: &Path) -> Result<Vec<std::fs::DirEntry>> {
    let mut v = std::fs::read_dir(dir)
        .and_then(|r| r.collect::<std::io::Result<Vec<_>>>())
        .map_err(|e| Error::dataset(spec, format!("{}: {e}", dir.display())))?;
    v.sort_by_key(|e| e.file_name());
    Ok(v)
}

impl Folder {
    /// Lists `dir`: every subfolder is a class and must hold at least one image.
    pub fn open(spec: &str, dir: &Path) -> Result<Self> {
        let mut classes = Vec::new();
        let mut files = Vec::new();
        for entry in sorted_entries(spec, dir)? {
            if !entry.path().is_dir() || entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let class = classes.len();
            let name = entry.file_name().to_string_lossy().into_owned();
            let before = files.len();
            for f in sorted_entries(spec, &entry.path())? {
                let p = f.path();
                let ext = p.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
                if p.is_file() && matches!(ext.as_str(), "png" | "jpg" | "jpeg") {
                    files.push((p, class));
                }
            }
            if files.len() == before {
                return Err(Error::dataset(spec, format!("class folder '{name}' has no JPEG or PNG images")));
            }
            classes.push(name);
        }
        if classes.len() < 2 {
            return Err(Error::dataset(spec, "needs at least two class subfolders"));
        }
        Ok(Folder { spec: spec.to_string(), files, classes })
    }
}

impl Dataset for Folder {
    fn spec(&self) -> &str {
        &self.spec
    }
    fn len(&self) -> usize {
        self.files.len()
    }
    fn classes(&self) -> &[String] {
        &self.classes
    }
    fn label(&self, i: usize) -> usize {
        self.files[i].1
    }
    fn image(&self, i: usize) -> Result<Rgb8> {
        image::load(&self.files[i].0)
    }
}

/// Decoded images held in memory with their labels (what an app feeding a trainer builds).
pub struct Memory {
    spec: String,
    images: Vec<(Rgb8, usize)>,
    classes: Vec<String>,
}

impl Memory {
    /// A dataset of `images` (each with a label `< classes.len()`); every class needs an image.
    pub fn new(spec: &str, images: Vec<(Rgb8, usize)>, classes: Vec<String>) -> Result<Self> {
        if let Some((_, l)) = images.iter().find(|(_, l)| *l >= classes.len()) {
            return Err(Error::dataset(spec, format!("label {l} for {} classes", classes.len())));
        }
        if let Some((img, _)) = images.iter().find(|(i, _)| i.data.len() != i.width as usize * i.height as usize * 3) {
            return Err(Error::dataset(
                spec,
                format!("a {}×{} image with {} bytes", img.width, img.height, img.data.len()),
            ));
        }
        check_classes(spec, images.iter().map(|(_, l)| *l), &classes)?;
        Ok(Memory { spec: spec.to_string(), images, classes })
    }
}

impl Dataset for Memory {
    fn spec(&self) -> &str {
        &self.spec
    }
    fn len(&self) -> usize {
        self.images.len()
    }
    fn classes(&self) -> &[String] {
        &self.classes
    }
    fn label(&self, i: usize) -> usize {
        self.images[i].1
    }
    fn image(&self, i: usize) -> Result<Rgb8> {
        Ok(self.images[i].0.clone())
    }
}
