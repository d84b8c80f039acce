//! Typed storage errors, each carrying the negative errno the Elliptics wire protocol reports.

use std::io;

/// Result alias for every storage operation.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// What went wrong, in the vocabulary of the Elliptics statuses.
///
/// `is_retryable` separates "try again later / elsewhere" from "this will not work".
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The key is missing, removed, or not yet committed (`-ENOENT`).
    #[error("no such record")]
    NotFound,
    /// An offset past the end of the object, or data past a reservation (`-E2BIG`).
    #[error("out of range: {0}")]
    OutOfRange(String),
    /// A compare-and-swap precondition failed (`-EBADFD`).
    #[error("compare-and-swap mismatch: {0}")]
    CasMismatch(&'static str),
    /// Stored bytes failed their checksum; no data is returned (`-EILSEQ`).
    #[error("record is corrupt: {0}")]
    Corrupt(String),
    /// Not enough space for the write; nothing was written (`-ENOSPC`).
    #[error("no space left: {0}")]
    NoSpace(String),
    /// The backend refuses writes because it is read-only (`-EROFS`).
    #[error("backend is read-only")]
    ReadOnly,
    /// An fsync or write failed earlier; the backend refuses writes until reopened (`-EIO`).
    #[error("backend refuses writes after an I/O failure: {0}")]
    Poisoned(String),
    /// The request is malformed (`-EINVAL`).
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    /// A configured limit was hit (`-E2BIG` for sizes, `-EINVAL` otherwise is not used).
    #[error("limit exceeded: {0}")]
    Limit(String),
    /// The on-disk data could not be opened (bad magic, unknown version, unreadable directory).
    #[error("cannot open backend: {0}")]
    Open(String),
    /// The operation is not supported by this backend (`-ENOTSUP`).
    #[error("not supported: {0}")]
    NotSupported(&'static str),
    /// The same maintenance action is already running (`-EALREADY`).
    #[error("already in progress: {0}")]
    AlreadyRunning(&'static str),
    /// An I/O error from the device (`-EIO`, or the OS errno when there is one).
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

impl StorageError {
    /// The negative errno the Elliptics protocol carries for this error.
    pub fn errno(&self) -> i32 {
        const ENOENT: i32 = 2;
        const EIO: i32 = 5;
        const E2BIG: i32 = 7;
        const EINVAL: i32 = 22;
        const ENOSPC: i32 = 28;
        const EROFS: i32 = 30;
        const EBADFD: i32 = 77;
        const EILSEQ: i32 = 84;
        const ENOTSUP: i32 = 95;
        const EALREADY: i32 = 114;
        -match self {
            StorageError::NotFound => ENOENT,
            StorageError::OutOfRange(_) | StorageError::Limit(_) => E2BIG,
            StorageError::CasMismatch(_) => EBADFD,
            StorageError::Corrupt(_) => EILSEQ,
            StorageError::NoSpace(_) => ENOSPC,
            StorageError::ReadOnly => EROFS,
            StorageError::Poisoned(_) => EIO,
            StorageError::InvalidArgument(_) | StorageError::Open(_) => EINVAL,
            StorageError::NotSupported(_) => ENOTSUP,
            StorageError::AlreadyRunning(_) => EALREADY,
            StorageError::Io(e) => e.raw_os_error().unwrap_or(EIO),
        }
    }

    /// True when the same request may succeed later without anything changing on this side
    /// (a transient I/O error); false for answers about the data and for a poisoned backend.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StorageError::Io(_))
    }

    /// Maps an I/O error to `NoSpace` when the device is full, so callers see ENOSPC clearly.
    pub(crate) fn from_io(e: io::Error, what: &str) -> StorageError {
        if e.raw_os_error() == Some(28) || e.kind() == io::ErrorKind::StorageFull {
            StorageError::NoSpace(format!("{what}: {e}"))
        } else {
            StorageError::Io(e)
        }
    }
}
