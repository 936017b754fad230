//! The one error type of the runtime, grouped by pipeline stage.

use std::path::PathBuf;

/// Everything that can go wrong between reading a model and printing a prediction.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The bytes are not a parseable ONNX protobuf (truncated, random, or not ONNX at all).
    #[error("not a valid ONNX model: {0}")]
    OnnxParse(String),
    /// The ONNX graph parses but uses an operator the runtime does not implement.
    #[error("unsupported ONNX operator {op} at node '{node}'")]
    UnsupportedOp { node: String, op: String },
    /// The ONNX graph uses a supported operator in a way the runtime cannot run.
    #[error("ONNX node '{node}': {reason}")]
    InvalidNode { node: String, reason: String },
    /// The ONNX graph as a whole does not describe an image classifier the runtime can run.
    #[error("invalid ONNX model: {0}")]
    InvalidModel(String),

    /// An image file could not be decoded.
    #[error("{path}: not a readable image: {reason}")]
    Image { path: PathBuf, reason: String },
    /// An input tensor does not have the shape the model needs.
    #[error("bad input: {0}")]
    Input(String),
    /// A dataset cannot be read or is unusable (inconsistent files, a class without images).
    #[error("dataset {spec}: {reason}")]
    Dataset { spec: String, reason: String },

    /// A patch file or patch cannot be used: corrupt, truncated, of an unknown version, or made
    /// for another backbone.
    #[error("patch: {0}")]
    Patch(String),
    /// A training configuration that cannot run.
    #[error("training: {0}")]
    Train(String),

    /// No usable GPU, a GPU that failed (validation, out of memory, device lost), or an
    /// operation the GPU backend does not implement.
    #[error("GPU: {0}")]
    Gpu(String),

    /// A caller passed something the API refuses: an unknown patch name, a label out of
    /// range, an option out of its range. The message says which and why.
    #[error("{0}")]
    Argument(String),

    /// Training stopped because it was cancelled ([`crate::train::Cancel`]); with a checkpoint
    /// it can be resumed.
    #[error("training cancelled: {0}")]
    Cancelled(String),
}

/// The runtime's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn node(node: &str, reason: impl Into<String>) -> Self {
        Error::InvalidNode { node: node.to_string(), reason: reason.into() }
    }

    /// A dataset error for `spec`.
    pub fn dataset(spec: &str, reason: impl Into<String>) -> Self {
        Error::Dataset { spec: spec.to_string(), reason: reason.into() }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}
