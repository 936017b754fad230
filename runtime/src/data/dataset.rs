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

/// Checks that images `indices` of `ds` can be read and decoded (in parallel; the decoded
/// images are dropped at once): for checking a test or validation set before a long training
/// run rather than after it. An empty selection is an error: nothing could be scored on it.
pub fn check_readable(ds: &dyn Dataset, indices: &[usize], what: &str) -> Result<()> {
    use rayon::prelude::*;
    if indices.is_empty() {
        return Err(Error::dataset(ds.spec(), format!("the {what} selects no images")));
    }
    indices.par_iter().try_for_each(|&i| {
        ds.image(i).map(drop).map_err(|e| Error::dataset(ds.spec(), format!("{what}, image {i}: {e}")))
    })
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
    let file = if path.symlink_metadata().is_ok() { path.to_path_buf() } else { gz };
    crate::fsio::read_limited(&file, MAX_IDX_BYTES, "an IDX file").map_err(|e| match e {
        Error::Io { path, source } if source.kind() == std::io::ErrorKind::NotFound => {
            Error::dataset(spec, format!("cannot open {} (or without .gz): {source}", path.display()))
        }
        e => Error::dataset(spec, e.to_string()),
    })
}

/// The magic and dimensions of an IDX file of unsigned bytes, from its first `4 + 4·dims`
/// bytes: the shape and the size the whole file must have.
fn idx_header(spec: &str, name: &str, head: &[u8], dims: usize) -> Result<(Vec<usize>, usize)> {
    let bad = |why: String| Error::dataset(spec, format!("{name}: {why}"));
    if head.len() < 4 + 4 * dims {
        return Err(bad("truncated header".into()));
    }
    if head[..3] != [0, 0, 8] || head[3] as usize != dims {
        return Err(bad(format!("not an IDX file of unsigned bytes with {dims} dimensions")));
    }
    let shape: Vec<usize> = (0..dims)
        .map(|i| u32::from_be_bytes(head[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize)
        .collect();
    let size = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .and_then(|data| data.checked_add(4 + 4 * dims))
        .filter(|&n| n as u64 <= MAX_IDX_BYTES)
        .ok_or_else(|| bad(format!("dimensions {shape:?} declare more than {MAX_IDX_BYTES} bytes")))?;
    Ok((shape, size))
}

/// Parses an IDX file of unsigned bytes with `dims` dimensions: the dimensions and the data.
fn parse_idx(spec: &str, name: &str, bytes: &[u8], dims: usize) -> Result<(Vec<usize>, usize)> {
    let (shape, size) = idx_header(spec, name, bytes, dims)?;
    let head = 4 + 4 * dims;
    if bytes.len() != size {
        return Err(Error::dataset(
            spec,
            format!("{name}: header promises {} bytes of data, the file has {}", size - head, bytes.len() - head),
        ));
    }
    Ok((shape, head))
}

/// Class names from `labels.txt` beside the data when it has one line per class, else numbers.
fn class_names(dir: &Path, classes: usize) -> Vec<String> {
    let from_file = crate::fsio::read_limited(&dir.join("labels.txt"), 1 << 20, "a label list")
        .ok()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
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
        let images = gunzip_if_needed(spec, "images", images, 3)?;
        let labels = gunzip_if_needed(spec, "labels", labels, 1)?;
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
            // The decompressed file's buffer becomes the pixels (no second copy of them).
            pixels: match images {
                std::borrow::Cow::Owned(mut v) => {
                    v.drain(..ihead);
                    v
                }
                std::borrow::Cow::Borrowed(b) => b[ihead..].to_vec(),
            },
            labels,
            classes: names,
        })
    }
}

/// The bytes of an IDX file with `dims` dimensions, gunzipped when they start with the gzip
/// magic. Decompression is bounded by the size the header declares (checked against
/// [`MAX_IDX_BYTES`] first): a file that inflates beyond it is refused after at most one byte
/// more, whatever its compression ratio.
fn gunzip_if_needed<'a>(spec: &str, name: &str, bytes: &'a [u8], dims: usize) -> Result<std::borrow::Cow<'a, [u8]>> {
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return Ok(std::borrow::Cow::Borrowed(bytes));
    }
    let corrupt = |e: std::io::Error| Error::dataset(spec, format!("{name}: corrupt gzip data: {e}"));
    let mut inflate = flate2::read::GzDecoder::new(bytes);
    let mut out = Vec::new();
    (&mut inflate).take(4 + 4 * dims as u64).read_to_end(&mut out).map_err(corrupt)?;
    let (_, size) = idx_header(spec, name, &out, dims)?;
    // Room for exactly the declared size, so that the buffer does not grow past it by doubling
    // (address space only: the pages are touched as data arrives, and a header that declares
    // more than the stream holds fails below). If the room cannot be had, the buffer grows.
    let _ = out.try_reserve_exact(size + 1 - out.len());
    inflate.take((size - out.len()) as u64 + 1).read_to_end(&mut out).map_err(corrupt)?;
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
