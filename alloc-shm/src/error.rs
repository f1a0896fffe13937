//! Every error the shared-memory layer reports. Each variant names what failed and why; I/O
//! failures keep their `io::Error` (and so the errno), and heap errors keep the core's cause.

use std::io;

use alloc_core::Error as HeapError;

/// Errors of pool operations.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The name breaks the naming rules (`[A-Za-z0-9_.-]{1,200}`, not starting with `.`).
    #[error("invalid pool name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// `create` found a pool (or any file) with that name already.
    #[error("pool {name:?} already exists")]
    AlreadyExists {
        /// The pool's name.
        name: String,
    },
    /// No pool with that name exists.
    #[error("pool {name:?} does not exist")]
    NotFound {
        /// The pool's name.
        name: String,
    },
    /// The pool's file exists but may not be opened by this user.
    #[error("permission denied for pool {name:?}")]
    PermissionDenied {
        /// The pool's name.
        name: String,
    },
    /// The pool belongs to another user.
    #[error("pool {name:?} belongs to uid {owner}, not to uid {expected}")]
    WrongOwner {
        /// The pool's name.
        name: String,
        /// The file's owner.
        owner: u32,
        /// The uid asked for (by default, this process's effective uid).
        expected: u32,
    },
    /// The requested size cannot make a pool (too small for one span, or overflows).
    #[error("a pool of {size} bytes cannot be created: {reason}")]
    InvalidSize {
        /// Bytes asked for.
        size: u64,
        /// Why not.
        reason: &'static str,
    },
    /// The pool does not fit in the free space of its directory's filesystem (writing past
    /// that space would kill the writing process with SIGBUS).
    #[error(
        "pool {name:?} needs {needed} bytes but {} has {available} bytes free: create a smaller pool, \
         give the filesystem more room (docker run --shm-size=...), create it in another \
         directory, or ask for overcommit (a write past the free space then kills the writer \
         with SIGBUS)",
        dir.display()
    )]
    NoSpace {
        /// The pool's name.
        name: String,
        /// The directory the pool was to live in.
        dir: std::path::PathBuf,
        /// Bytes of the pool's file.
        needed: u64,
        /// Bytes free on that filesystem (for this user).
        available: u64,
    },
    /// A memfd pool does not fit in the memory available (writing past it would start the
    /// out-of-memory killer).
    #[error(
        "memfd pool {name:?} needs {needed} bytes but the system has {available} bytes of memory \
         available (MemAvailable): create a smaller pool, or ask for overcommit"
    )]
    NoMemory {
        /// The pool's name.
        name: String,
        /// Bytes of the pool.
        needed: u64,
        /// Bytes of memory available.
        available: u64,
    },
    /// Not enough free huge pages for a pool of huge pages (mapping it reserves every one).
    #[error(
        "pool {name:?} needs {needed} huge pages of {page_size} bytes but the system has {free} \
         free: reserve more (as root: sysctl vm.nr_hugepages=N), create a smaller pool, or one \
         without huge pages"
    )]
    NoHugePages {
        /// The pool's name.
        name: String,
        /// Huge pages the pool needs.
        needed: u64,
        /// Huge pages free and not reserved.
        free: u64,
        /// Bytes of one huge page.
        page_size: u64,
    },
    /// A descriptor names a memfd pool this process does not have: it must receive the pool's
    /// file descriptor first.
    #[error(
        "the descriptor names a memfd pool (nonce {nonce:#x}) this process has not received: pass \
         the pool itself first (Pool::send / Pool::receive, or pickle the MemoryPool)"
    )]
    NotReceived {
        /// The pool's nonce.
        nonce: u64,
    },
    /// Creating the pool's file or mapping failed.
    #[error("creating pool {name:?} failed: {source}")]
    Create {
        /// The pool's name.
        name: String,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// Opening or mapping an existing pool failed.
    #[error("attaching pool {name:?} failed: {source}")]
    Attach {
        /// The pool's name.
        name: String,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// The file is not a valid pool (bad magic, another layout version, a header that does not
    /// match the file: truncated or overwritten).
    #[error("pool {name:?} is not a valid shmpool pool: {cause}")]
    NotAPool {
        /// The pool's name.
        name: String,
        /// What the validation found.
        cause: HeapError,
    },
    /// The pool's file is shorter than the pool: another process truncated it. Touching the
    /// missing part kills a process with SIGBUS, so the pool is not used.
    #[error(
        "pool {name:?}: its file was truncated to {file_bytes} bytes (the pool has {pool_bytes}): \
         touching the missing part would kill this process; destroy the pool (pools in a sealed \
         memfd cannot be truncated)"
    )]
    Truncated {
        /// The pool's name.
        name: String,
        /// The file's size now.
        file_bytes: u64,
        /// The pool's size.
        pool_bytes: u64,
    },
    /// The pool's creator did not finish initialising it within the wait.
    #[error("pool {name:?} is still being initialised")]
    NotReady {
        /// The pool's name.
        name: String,
    },
    /// The pool was destroyed (by this or another process).
    #[error("pool {name:?} has been destroyed")]
    Destroyed {
        /// The pool's name.
        name: String,
    },
    /// No space for the request right now.
    #[error("pool {name:?} is full: no room for {requested} bytes")]
    Full {
        /// The pool's name.
        name: String,
        /// Bytes asked for.
        requested: u64,
    },
    /// The request can never fit in this pool.
    #[error("{requested} bytes can never fit in pool {name:?} ({capacity} bytes of data)")]
    TooLarge {
        /// The pool's name.
        name: String,
        /// Bytes asked for.
        requested: u64,
        /// Bytes in the pool's data area.
        capacity: u64,
    },
    /// `alloc_blocking`'s deadline passed.
    #[error("timed out waiting for {requested} bytes in pool {name:?}")]
    Timeout {
        /// The pool's name.
        name: String,
        /// Bytes asked for.
        requested: u64,
    },
    /// The allocation named is not live in this pool: freed already, a stale or foreign id, an
    /// offset that is no allocation's start, or a range outside it.
    #[error("invalid allocation in pool {name:?}: {cause}")]
    InvalidAllocation {
        /// The pool's name.
        name: String,
        /// The core's finding.
        cause: HeapError,
    },
    /// A descriptor could not be decoded (empty, truncated, tampered, another version...).
    #[error("invalid descriptor: {0}")]
    InvalidDescriptor(&'static str),
    /// An argument is out of its range (an alignment, a timeout...).
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// The pool's process or participant table is full (each attached process takes one
    /// record, each thread or cache using the pool one participant).
    #[error("pool {name:?}: its {what} table is full ({capacity} entries); reclaim dead processes, or use fewer threads or caches")]
    TableFull {
        /// The pool's name.
        name: String,
        /// Which table.
        what: &'static str,
        /// Its capacity.
        capacity: u64,
    },
    /// No process with this pid is attached to the pool.
    #[error("pool {name:?}: no attached process has pid {pid}")]
    NoSuchProcess {
        /// The pool's name.
        name: String,
        /// The pid asked for.
        pid: u32,
    },
    /// This process cannot do what the pool needs (e.g. the process-wide memory barrier).
    #[error("pool {name:?}: not possible in this process: {what}")]
    Unsupported {
        /// The pool's name.
        name: String,
        /// What is missing.
        what: &'static str,
    },
    /// The pool's metadata is inconsistent.
    #[error("pool {name:?} is corrupted: {cause}")]
    Corrupt {
        /// The pool's name.
        name: String,
        /// What the check found.
        cause: HeapError,
    },
    /// Another system error (the errno is kept).
    #[error("{operation} failed: {source}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The system's error.
        #[source]
        source: io::Error,
    },
}

impl PoolError {
    /// Maps a heap error met during an operation on pool `name`.
    pub(crate) fn from_heap(name: &str, cause: HeapError) -> PoolError {
        let name = name.to_owned();
        match cause {
            HeapError::OutOfMemory { requested } => PoolError::Full { name, requested },
            HeapError::TooLarge { requested, capacity } => PoolError::TooLarge { name, requested, capacity },
            HeapError::TimedOut { requested } => PoolError::Timeout { name, requested },
            HeapError::Destroyed => PoolError::Destroyed { name },
            HeapError::NotReady => PoolError::NotReady { name },
            HeapError::BadAlignment { .. } => {
                PoolError::InvalidArgument("alignment must be a power of two no larger than the page size")
            }
            HeapError::ForeignCache => PoolError::InvalidArgument("cache belongs to another pool"),
            HeapError::ForeignSession => PoolError::InvalidArgument("session belongs to another pool"),
            HeapError::TableFull { what, capacity } => PoolError::TableFull { name, what, capacity },
            HeapError::InvalidOwner { .. } => {
                PoolError::InvalidArgument("the new owner is not a process attached to the pool (or it died)")
            }
            HeapError::NoHeavyFence => PoolError::Unsupported {
                name,
                what: "this process cannot issue the membarrier the pool needs",
            },
            HeapError::InvalidId { .. } | HeapError::NotAllocated { .. } => {
                PoolError::InvalidAllocation { name, cause }
            }
            HeapError::Corrupt { .. } => PoolError::Corrupt { name, cause },
            HeapError::RegionTooSmall { .. }
            | HeapError::BadMagic
            | HeapError::UnsupportedVersion { .. }
            | HeapError::HeaderMismatch
            | HeapError::BadPageSize { .. } => PoolError::NotAPool { name, cause },
            HeapError::BadBudget => PoolError::InvalidArgument(
                "a budget needs a limit of 1 to 2^47 - 1 bytes and at most 65535 allocations",
            ),
        }
    }
}

/// Results of pool operations.
pub type Result<T, E = PoolError> = std::result::Result<T, E>;
