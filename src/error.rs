//! One error type for the whole crate: every public entry point returns `Result<T>`,
//! and bad input becomes a message that says what was wrong, never a panic.

/// The crate's result type: `std::result::Result` with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every error the crate reports; its message names the op, backend or file concerned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Shapes or dtypes that do not fit an op's contract.
    #[error("{op}: {msg}")]
    Shape {
        /// Name of the op that rejected its inputs.
        op: &'static str,
        /// What did not fit.
        msg: String,
    },
    /// A value an op cannot accept (NaN/inf where finite is required, invalid CSR, bad attrs).
    #[error("{op}: invalid input: {msg}")]
    Invalid {
        /// Name of the op that rejected the value.
        op: &'static str,
        /// What was wrong with it.
        msg: String,
    },
    /// Misuse of the graph API (unknown value, missing feed, wrong fetch).
    #[error("graph: {0}")]
    Graph(String),
    /// An op or dtype this backend does not implement.
    #[error("{backend}: unsupported: {what}")]
    Unsupported {
        /// Name of the backend (`cpu`, `cuda`).
        backend: &'static str,
        /// The op or dtype it lacks.
        what: String,
    },
    /// CUDA driver, NVRTC or cuBLAS failure, or no usable GPU.
    #[error("cuda: {0}")]
    Cuda(String),
    /// A file could not be read or written, naming the file.
    #[error("{path}: {source}")]
    Io {
        /// The file that failed.
        path: String,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    #[cfg(feature = "model")]
    /// Dataset problems (missing or corrupt files, bad annotations), naming the file.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// Malformed file content (safetensors, JSON, PNG, config), naming the file.
    #[error("{path}: {msg}")]
    Format {
        /// The file with bad content.
        path: String,
        /// What is malformed.
        msg: String,
    },
    /// An allocation the machine cannot give (reported instead of aborting the process).
    #[error("out of memory: cannot allocate {bytes} bytes")]
    OutOfMemory {
        /// Size of the allocation that failed, in bytes.
        bytes: usize,
    },
}

impl Error {
    /// An [`Error::Shape`] for `op` with message `msg`.
    pub fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape {
            op,
            msg: msg.into(),
        }
    }
    /// An [`Error::Invalid`] for `op` with message `msg`.
    pub fn invalid(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Invalid {
            op,
            msg: msg.into(),
        }
    }
    /// An [`Error::Graph`] with message `msg`.
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
