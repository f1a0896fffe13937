//! The core's one error type. It is `Copy` and carries its cause in the variant, so the host can
//! map each variant to its own error (alloc-shm's `PoolError`, Python's exceptions) one to one.

use core::fmt;

/// What went wrong. Every failing operation leaves the heap exactly as it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// No free space large enough for the request right now.
    OutOfMemory {
        /// Bytes asked for.
        requested: u64,
    },
    /// The request can never fit: it is larger than the whole data area (or the budget).
    TooLarge {
        /// Bytes asked for.
        requested: u64,
        /// Bytes in the data area.
        capacity: u64,
    },
    /// The alignment is not a power of two, or exceeds the page size.
    BadAlignment {
        /// Alignment asked for.
        align: u64,
    },
    /// The id names no slot of this heap (it was made up, or belongs to another pool).
    InvalidId {
        /// The id.
        id: u128,
    },
    /// The id names a slot, but no live allocation with that id is there: it was freed already
    /// (a double free), or the slot has been reused since (a stale id).
    NotAllocated {
        /// The id.
        id: u128,
    },
    /// The region is smaller than one span, or its length or address is not 8-byte aligned.
    RegionTooSmall {
        /// Bytes offered.
        bytes: u64,
    },
    /// The region does not start with the pool magic.
    BadMagic,
    /// The region was made by another layout version.
    UnsupportedVersion {
        /// Version found.
        found: u64,
    },
    /// The header's geometry does not match the region it sits in.
    HeaderMismatch,
    /// The page size is not a power of two between 64 bytes and 8 KiB.
    BadPageSize {
        /// log2 of the page size asked for.
        page_shift: u32,
    },
    /// A budget's limit is 0 or too large, or its count limit too large (see
    /// [`crate::budget`]).
    BadBudget,
    /// The region's creator has not finished writing its header.
    NotReady,
    /// The pool was destroyed.
    Destroyed,
    /// A blocking allocation's deadline passed before space became free.
    TimedOut {
        /// Bytes asked for.
        requested: u64,
    },
    /// A cache made for another heap's mapping was passed in.
    ForeignCache,
    /// A session made for another heap's mapping was passed in.
    ForeignSession,
    /// The process or participant table is full.
    TableFull {
        /// Which table.
        what: &'static str,
        /// Its capacity.
        capacity: u64,
    },
    /// The owner named is not a process attached to this pool.
    InvalidOwner {
        /// The owner's index.
        owner: u16,
    },
    /// The operation needs a process-wide memory barrier this process cannot issue (the pool
    /// was created by a process that could).
    NoHeavyFence,
    /// Metadata read from the region is inconsistent (a corrupted or hostile region). `page`
    /// is the data page where it was found.
    Corrupt {
        /// What is wrong.
        what: &'static str,
        /// The page it concerns.
        page: u64,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::OutOfMemory { requested } => write!(f, "no free space for {requested} bytes"),
            Error::TooLarge { requested, capacity } => {
                write!(f, "{requested} bytes can never fit in a data area of {capacity} bytes")
            }
            Error::BadAlignment { align } => {
                write!(f, "alignment {align} is not a power of two no larger than the page size")
            }
            Error::InvalidId { id } => {
                write!(f, "allocation id {id:#x} does not belong to this pool")
            }
            Error::NotAllocated { id } => {
                write!(f, "allocation {id:#x} is not live (already freed, or a stale id)")
            }
            Error::RegionTooSmall { bytes } => {
                write!(f, "a region of {bytes} bytes is too small or not 8-byte aligned")
            }
            Error::BadMagic => write!(f, "the region is not a shmpool heap (bad magic)"),
            Error::UnsupportedVersion { found } => write!(f, "unsupported layout version {found}"),
            Error::HeaderMismatch => write!(f, "the header's geometry does not match the region"),
            Error::BadPageSize { page_shift } => {
                write!(f, "page size 2^{page_shift} is outside 64 B..8 KiB")
            }
            Error::BadBudget => write!(
                f,
                "a budget needs a limit of 1 to 2^47 - 1 bytes and at most 65535 allocations"
            ),
            Error::NotReady => write!(f, "the pool is still being initialised"),
            Error::Destroyed => write!(f, "the pool has been destroyed"),
            Error::TimedOut { requested } => {
                write!(f, "timed out waiting for {requested} bytes to become free")
            }
            Error::ForeignCache => write!(f, "the cache belongs to another pool's mapping"),
            Error::ForeignSession => write!(f, "the session belongs to another pool's mapping"),
            Error::TableFull { what, capacity } => {
                write!(f, "the pool's {what} table is full ({capacity} entries); reclaim dead processes or detach some")
            }
            Error::InvalidOwner { owner } => write!(f, "owner {owner} is not a process attached to this pool"),
            Error::NoHeavyFence => write!(
                f,
                "this process cannot issue the process-wide memory barrier (membarrier) the pool requires for this operation"
            ),
            Error::Corrupt { what, page } => write!(f, "corrupted heap at page {page}: {what}"),
        }
    }
}

impl core::error::Error for Error {}
