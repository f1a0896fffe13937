//! All error mapping of the binding: every `PoolError` variant to one exception class of
//! `shmpool._exceptions` (defined in Python so that, say, `PoolFullError` can also be a
//! `MemoryError`), plus the argument checks that raise builtins.

use alloc_shm::PoolError;
use pyo3::exceptions::{PyBufferError, PyValueError};
use pyo3::prelude::*;

/// The exception class `name` of `shmpool._exceptions`.
fn class<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    py.import("shmpool._exceptions")?.getattr(name)
}

/// `shmpool.AllocType(alloc_type)`: a named member, or `USER_<n>` for the users' types.
pub fn alloc_type_member(py: Python<'_>, alloc_type: u8) -> PyResult<Py<PyAny>> {
    Ok(py.import("shmpool")?.getattr("AllocType")?.call1((alloc_type,))?.unbind())
}

/// A `shmpool._exceptions.{name}` error carrying `message`.
pub fn raise(py: Python<'_>, name: &str, message: String) -> PyErr {
    match class(py, name) {
        Ok(cls) => PyErr::from_type(cls.cast_into().expect("exception classes are types"), message),
        Err(error) => error,
    }
}

/// Maps a pool error to its Python exception.
pub fn to_py(py: Python<'_>, error: PoolError) -> PyErr {
    let name = match &error {
        PoolError::InvalidName { .. } => "InvalidNameError",
        PoolError::AlreadyExists { .. } => "PoolExistsError",
        PoolError::NotFound { .. } => "PoolNotFoundError",
        PoolError::PermissionDenied { .. } | PoolError::WrongOwner { .. } => "PoolPermissionError",
        PoolError::InvalidSize { .. }
        | PoolError::Create { .. }
        | PoolError::NoSpace { .. }
        | PoolError::NoMemory { .. }
        | PoolError::NoHugePages { .. } => "PoolCreateError",
        PoolError::Attach { .. }
        | PoolError::NotAPool { .. }
        | PoolError::NotReady { .. }
        | PoolError::NotReceived { .. } => "PoolAttachError",
        PoolError::Destroyed { .. } => "PoolDestroyedError",
        PoolError::Full { .. } | PoolError::TooLarge { .. } => "PoolFullError",
        PoolError::Timeout { .. } => "PoolTimeoutError",
        PoolError::InvalidAllocation { .. } => "InvalidAllocationError",
        PoolError::InvalidDescriptor(_) => "InvalidDescriptorError",
        PoolError::InvalidArgument(reason) => return PyValueError::new_err(*reason),
        PoolError::Corrupt { .. } | PoolError::Truncated { .. } => "PoolCorruptError",
        PoolError::TableFull { .. } => "PoolAttachError",
        PoolError::NoSuchProcess { .. } => return PyValueError::new_err(error.to_string()),
        PoolError::Unsupported { .. } | PoolError::Io { .. } => "PoolError",
    };
    raise(py, name, error.to_string())
}

/// Extension for `Result<T, PoolError>`: map to a Python exception.
pub trait IntoPy<T> {
    /// The value, or the pool error as a Python exception.
    fn py_err(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> IntoPy<T> for Result<T, PoolError> {
    fn py_err(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|error| to_py(py, error))
    }
}

/// A size argument: negative is a `ValueError`; beyond `u64` can never fit (`PoolFullError`).
pub fn size_arg(py: Python<'_>, size: i128) -> PyResult<u64> {
    if size < 0 {
        return Err(PyValueError::new_err(format!("size must not be negative, got {size}")));
    }
    u64::try_from(size)
        .map_err(|_| raise(py, "PoolFullError", format!("{size} bytes can never fit in a pool")))
}

/// An allocation type argument: 0 to 255 (`ValueError` naming it otherwise; an int beyond
/// 128 bits is pyo3's `OverflowError`, which names the argument too).
pub fn alloc_type_arg(alloc_type: i128) -> PyResult<u8> {
    u8::try_from(alloc_type)
        .map_err(|_| PyValueError::new_err(format!("alloc_type must be 0 to 255, got {alloc_type}")))
}

/// A timeout argument in seconds: `None`, infinity, or more seconds than a `Duration` holds
/// wait forever; negative or NaN is a `ValueError`.
pub fn timeout_arg(timeout: Option<f64>) -> PyResult<Option<std::time::Duration>> {
    match timeout {
        None => Ok(None),
        Some(t) if t.is_nan() || t < 0.0 => {
            Err(PyValueError::new_err(format!("timeout must be None or a number >= 0, got {t}")))
        }
        // Beyond ~5.8e11 years: as good as forever (and no overflow).
        Some(t) => Ok(std::time::Duration::try_from_secs_f64(t).ok()),
    }
}

/// The error for freeing or detaching while memoryviews of the memory are alive.
pub fn exported(what: &str, views: usize) -> PyErr {
    PyBufferError::new_err(format!("cannot {what}: {views} buffer view(s) of its memory are still alive"))
}
