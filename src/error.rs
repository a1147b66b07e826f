//! One error type for the whole crate: every public entry point returns `Result<T>`,
//! and bad input becomes a message that says what was wrong, never a panic.

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Shapes or dtypes that do not fit an op's contract.
    #[error("{op}: {msg}")]
    Shape { op: &'static str, msg: String },
    /// A value an op cannot accept (NaN/inf where finite is required, invalid CSR, bad attrs).
    #[error("{op}: invalid input: {msg}")]
    Invalid { op: &'static str, msg: String },
    /// Misuse of the graph API (unknown value, missing feed, wrong fetch).
    #[error("graph: {0}")]
    Graph(String),
    /// An op or dtype this backend does not implement.
    #[error("{backend}: unsupported: {what}")]
    Unsupported { backend: &'static str, what: String },
    /// CUDA driver, NVRTC or cuBLAS failure, or no usable GPU.
    #[error("cuda: {0}")]
    Cuda(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[cfg(feature = "model")]
    /// Dataset problems (missing or corrupt files, bad annotations), naming the file.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// Malformed file content (safetensors, JSON, PNG, config), naming the file.
    #[error("{path}: {msg}")]
    Format { path: String, msg: String },
    /// An allocation the machine cannot give (reported instead of aborting the process).
    #[error("out of memory: cannot allocate {bytes} bytes")]
    OutOfMemory { bytes: usize },
}

impl Error {
    pub fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape {
            op,
            msg: msg.into(),
        }
    }
    pub fn invalid(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Invalid {
            op,
            msg: msg.into(),
        }
    }
    pub fn graph(msg: impl Into<String>) -> Self {
        Error::Graph(msg.into())
    }
}

/// `ensure!(cond, err)` returns `Err(err)` when `cond` is false.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $err:expr) => {
        if !$cond {
            return Err($err);
        }
    };
}
