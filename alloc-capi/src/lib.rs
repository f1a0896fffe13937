//! The C API of shmpool: plain functions over opaque pool handles, for C, C++ and Fortran
//! runtimes. Built as `libshmpool.so` and `libshmpool.a`; the header `include/shmpool.h` is
//! generated from this file by cbindgen (a test fails when the committed one is stale).
//!
//! Every function returns an `int` status: `SHMPOOL_OK` (0) or a negative `shmpool_status` per
//! kind of error, and `shmpool_last_error()` gives the message of the calling thread's last
//! failure. No function aborts or unwinds into C: a null or garbage argument is
//! `SHMPOOL_BAD_ARGUMENT` (or the error its content earns), and a panic (a bug) is caught and
//! reported as `SHMPOOL_INTERNAL`. A pool handle may be used from many threads at once.
//!
//! Ownership follows the data as in Python: an allocation belongs to the process that made it,
//! `shmpool_attach_alloc` adopts what it receives, and `shmpool_reclaim_dead` frees what dead
//! processes owned.

// C names: the types and constants keep the names C code sees.
#![allow(non_camel_case_types)]

use std::cell::RefCell;
use std::ffi::{c_char, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use alloc_shm::{AllocId, Allocation, Pool, PoolError};

/// Status codes: 0 is success, every error kind a negative number.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum shmpool_status {
    /// Success.
    SHMPOOL_OK = 0,
    /// No room for the request now (or ever, for this pool's size), or no room in the pool's
    /// tables for another process or thread.
    SHMPOOL_FULL = -1,
    /// A blocking allocation's timeout passed.
    SHMPOOL_TIMEOUT = -2,
    /// Bytes that are not a valid (current) pool or allocation descriptor.
    SHMPOOL_INVALID_DESCRIPTOR = -3,
    /// The allocation is not live: freed already, stale, or of another pool.
    SHMPOOL_INVALID_ALLOCATION = -4,
    /// The pool was destroyed.
    SHMPOOL_DESTROYED = -5,
    /// A pool with that name exists already.
    SHMPOOL_EXISTS = -6,
    /// No pool with that name exists.
    SHMPOOL_NOT_FOUND = -7,
    /// The pool belongs to another user, or may not be opened.
    SHMPOOL_PERMISSION = -8,
    /// A null pointer, a buffer too small, a bad name or size.
    SHMPOOL_BAD_ARGUMENT = -9,
    /// The filesystem (or memory) has no room for the pool.
    SHMPOOL_NO_SPACE = -10,
    /// The pool's metadata is inconsistent (or its file was truncated).
    SHMPOOL_CORRUPT = -11,
    /// Anything else the system refused (the message says what).
    SHMPOOL_SYSTEM = -12,
    /// A bug in shmpool, caught before it reached the caller.
    SHMPOOL_INTERNAL = -13,
    /// A file with the pool's name that is not a pool (another layout version, or garbage).
    SHMPOOL_NOT_A_POOL = -14,
    /// The pool is still being created by another process: try again.
    SHMPOOL_BUSY = -15,
}

use shmpool_status::*;

/// A pool attached in this process (opaque). Safe to use from many threads at once.
pub struct shmpool_pool {
    pool: Pool,
}

/// An allocation: its id (a 64-bit slot and a 60-bit generation), where it is in the pool, its
/// size and type, and a pointer to its bytes in this process.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct shmpool_allocation {
    /// The id's slot.
    pub id_slot: u64,
    /// The id's generation.
    pub id_generation: u64,
    /// Byte offset of the allocation in the pool.
    pub offset: u64,
    /// Bytes asked for.
    pub size: u64,
    /// The allocation's type (0-255; Dragon's types below 4).
    pub alloc_type: u8,
    /// The bytes, in this process's mapping of the pool.
    pub ptr: *mut c_void,
    /// The pool's nonce: an allocation passed to a handle of another pool is refused.
    pub pool_nonce: u64,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Keeps `message` as the thread's last failure (nothing, once the thread's storage is gone:
/// a call from a thread-exit destructor).
fn remember(message: String) {
    let message = CString::new(message.replace('\0', " ")).unwrap_or_default();
    let _ = LAST_ERROR.try_with(|last| {
        if let Ok(mut last) = last.try_borrow_mut() {
            *last = message;
        }
    });
}

fn status_of(error: &PoolError) -> shmpool_status {
    match error {
        PoolError::Full { .. } | PoolError::TooLarge { .. } | PoolError::TableFull { .. } => SHMPOOL_FULL,
        PoolError::Timeout { .. } => SHMPOOL_TIMEOUT,
        PoolError::InvalidDescriptor(_) => SHMPOOL_INVALID_DESCRIPTOR,
        PoolError::InvalidAllocation { .. } => SHMPOOL_INVALID_ALLOCATION,
        PoolError::Destroyed { .. } => SHMPOOL_DESTROYED,
        PoolError::AlreadyExists { .. } => SHMPOOL_EXISTS,
        PoolError::NotFound { .. } => SHMPOOL_NOT_FOUND,
        PoolError::PermissionDenied { .. } | PoolError::WrongOwner { .. } => SHMPOOL_PERMISSION,
        PoolError::InvalidName { .. }
        | PoolError::InvalidSize { .. }
        | PoolError::InvalidArgument(_)
        | PoolError::NoSuchProcess { .. } => SHMPOOL_BAD_ARGUMENT,
        PoolError::NoSpace { .. } | PoolError::NoMemory { .. } | PoolError::NoHugePages { .. } => {
            SHMPOOL_NO_SPACE
        }
        PoolError::Corrupt { .. } | PoolError::Truncated { .. } => SHMPOOL_CORRUPT,
        PoolError::NotAPool { .. } => SHMPOOL_NOT_A_POOL,
        PoolError::NotReady { .. } => SHMPOOL_BUSY,
        _ => SHMPOOL_SYSTEM,
    }
}

/// Runs `body`, turning its error (or a panic) into a status and the thread's last message.
fn run(body: impl FnOnce() -> Result<(), (shmpool_status, String)>) -> i32 {
    let outcome = catch_unwind(AssertUnwindSafe(|| match body() {
        Ok(()) => SHMPOOL_OK,
        Err((status, message)) => {
            remember(message);
            status
        }
    }));
    match outcome {
        Ok(status) => status as i32,
        Err(_) => {
            let _ = catch_unwind(|| {
                remember("internal error in shmpool (a bug): the operation was abandoned".into())
            });
            SHMPOOL_INTERNAL as i32
        }
    }
}

type Failure = (shmpool_status, String);

fn failed(error: PoolError) -> Failure {
    (status_of(&error), error.to_string())
}

fn bad(message: &str) -> Failure {
    (SHMPOOL_BAD_ARGUMENT, message.to_owned())
}

/// The pool behind a handle pointer.
///
/// # Safety
/// `pool` is null or a handle from this library not yet detached or destroyed.
unsafe fn pool_ref<'a>(pool: *const shmpool_pool) -> Result<&'a Pool, Failure> {
    // SAFETY: the caller passes null or a live handle.
    unsafe { pool.as_ref() }.map(|handle| &handle.pool).ok_or_else(|| bad("null pool handle"))
}

/// A C string argument.
///
/// # Safety
/// `text` is null or a NUL-terminated string.
unsafe fn str_arg<'a>(text: *const c_char, what: &str) -> Result<&'a str, Failure> {
    if text.is_null() {
        return Err(bad(&format!("null {what}")));
    }
    // SAFETY: the caller passes a NUL-terminated string.
    unsafe { CStr::from_ptr(text) }.to_str().map_err(|_| bad(&format!("{what} is not UTF-8")))
}

/// A byte-buffer argument.
///
/// # Safety
/// `bytes` is null or points to `len` readable bytes.
unsafe fn bytes_arg<'a>(bytes: *const u8, len: usize) -> Result<&'a [u8], Failure> {
    if bytes.is_null() {
        return Err(bad("null descriptor"));
    }
    // SAFETY: the caller passes `len` readable bytes.
    Ok(unsafe { std::slice::from_raw_parts(bytes, len) })
}

/// Runs `make` (only if `out` can take its result) and writes a new handle for the pool it made
/// to `out`.
///
/// # Safety
/// `out` is null or writable.
unsafe fn give_handle(
    out: *mut *mut shmpool_pool,
    make: impl FnOnce() -> Result<Pool, Failure>,
) -> Result<(), Failure> {
    if out.is_null() {
        return Err(bad("null output pointer"));
    }
    let pool = make()?;
    // SAFETY: `out` is writable (checked non-null; the caller's contract).
    unsafe { out.write(Box::into_raw(Box::new(shmpool_pool { pool }))) };
    Ok(())
}

/// Fills `out` with `allocation` and its pointer in `pool`'s mapping.
///
/// # Safety
/// `out` is null or writable.
unsafe fn describe(
    pool: &Pool,
    allocation: &Allocation,
    out: *mut shmpool_allocation,
) -> Result<(), Failure> {
    if out.is_null() {
        return Err(bad("null output pointer"));
    }
    let ptr = pool.ptr_of(allocation).map_err(failed)?;
    let id = allocation.id();
    let described = shmpool_allocation {
        id_slot: id.slot(),
        id_generation: id.generation(),
        offset: allocation.offset,
        size: allocation.size,
        alloc_type: allocation.alloc_type,
        ptr: ptr.cast(),
        pool_nonce: pool.nonce(),
    };
    // SAFETY: `out` is writable (checked non-null; the caller's contract).
    unsafe { out.write(described) };
    Ok(())
}

/// Describes the allocation just made in `pool` in `out`, or gives it back if it cannot be
/// described (its pool destroyed meanwhile): nothing is left owned that the caller never saw.
///
/// # Safety
/// `out` is null or writable.
unsafe fn hand_over(
    pool: &Pool,
    made: Result<Allocation, PoolError>,
    out: *mut shmpool_allocation,
) -> Result<(), Failure> {
    let allocation = made.map_err(failed)?;
    // SAFETY: forwarded from the caller's contract.
    unsafe { describe(pool, &allocation, out) }.inspect_err(|_| drop(pool.free(allocation.id())))
}

/// Copies `bytes` to `buf` (capacity `cap`), its length to `len`.
///
/// # Safety
/// `buf` is null or has `cap` writable bytes; `len` is null or writable.
unsafe fn copy_out(bytes: &[u8], buf: *mut u8, cap: usize, len: *mut usize) -> Result<(), Failure> {
    if len.is_null() {
        return Err(bad("null length pointer"));
    }
    // SAFETY: `len` is writable (checked non-null; the caller's contract).
    unsafe { len.write(bytes.len()) };
    if buf.is_null() || cap < bytes.len() {
        return Err(bad(&format!("the buffer holds {cap} bytes; the descriptor needs {}", bytes.len())));
    }
    // SAFETY: `buf` has at least `bytes.len()` writable bytes (checked above).
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf, bytes.len()) };
    Ok(())
}

/// The id an allocation struct names, if it is one of `pool`'s (an allocation of another pool is
/// `SHMPOOL_INVALID_ALLOCATION`: ids alone do not say which pool they are of).
///
/// # Safety
/// `a` is null or readable.
unsafe fn id_arg(pool: &Pool, a: *const shmpool_allocation) -> Result<AllocId, Failure> {
    // SAFETY: the caller passes null or a readable struct.
    let a = unsafe { a.as_ref() }.ok_or_else(|| bad("null allocation"))?;
    let id = AllocId::new(a.id_slot, a.id_generation);
    if a.pool_nonce != pool.nonce() {
        let message = format!("allocation {:#x} is not of pool {:?}", id.to_u128(), pool.name());
        return Err((SHMPOOL_INVALID_ALLOCATION, message));
    }
    Ok(id)
}

/// Creates pool `name` (in /dev/shm) of `size` bytes, checked against the free space there, and
/// writes its handle to `out`.
///
/// # Safety
/// `name` is null or a NUL-terminated string; `out` is null or writable.
#[no_mangle]
pub unsafe extern "C" fn shmpool_create(name: *const c_char, size: u64, out: *mut *mut shmpool_pool) -> i32 {
    run(|| {
        // SAFETY: forwarded from the caller's contract.
        let name = unsafe { str_arg(name, "name") }?;
        // SAFETY: forwarded from the caller's contract.
        unsafe { give_handle(out, || Pool::create(name, size).map_err(failed)) }
    })
}

/// Attaches the pool a descriptor (from `shmpool_descriptor`) names.
///
/// # Safety
/// `descriptor` is null or has `len` readable bytes; `out` is null or writable.
#[no_mangle]
pub unsafe extern "C" fn shmpool_attach(
    descriptor: *const u8,
    len: usize,
    out: *mut *mut shmpool_pool,
) -> i32 {
    run(|| {
        // SAFETY: forwarded from the caller's contract.
        let descriptor = unsafe { bytes_arg(descriptor, len) }?;
        // SAFETY: forwarded from the caller's contract.
        unsafe { give_handle(out, || Pool::attach(descriptor).map_err(failed)) }
    })
}

/// Attaches pool `name` (in /dev/shm, this user's).
///
/// # Safety
/// `name` is null or a NUL-terminated string; `out` is null or writable.
#[no_mangle]
pub unsafe extern "C" fn shmpool_attach_by_name(name: *const c_char, out: *mut *mut shmpool_pool) -> i32 {
    run(|| {
        // SAFETY: forwarded from the caller's contract.
        let name = unsafe { str_arg(name, "name") }?;
        // SAFETY: forwarded from the caller's contract.
        unsafe { give_handle(out, || Pool::attach_by_name(name).map_err(failed)) }
    })
}

/// Writes the pool's descriptor (at most 128 bytes) to `buf` and its length to `len`; with a
/// buffer too small, `SHMPOOL_BAD_ARGUMENT` and the length needed in `len`.
///
/// # Safety
/// `pool` is null or a live handle; `buf` is null or has `cap` writable bytes; `len` is null or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn shmpool_descriptor(
    pool: *const shmpool_pool,
    buf: *mut u8,
    cap: usize,
    len: *mut usize,
) -> i32 {
    run(|| {
        // SAFETY: forwarded from the caller's contract.
        let pool = unsafe { pool_ref(pool) }?;
        let descriptor = pool.descriptor().map_err(failed)?;
        // SAFETY: forwarded from the caller's contract.
        unsafe { copy_out(&descriptor, buf, cap, len) }
    })
}

/// Allocates `size` bytes (owned by this process) and describes the allocation in `out`.
///
/// # Safety
/// `pool` is null or a live handle; `out` is null or writable.
#[no_mangle]
pub unsafe extern "C" fn shmpool_alloc(
    pool: *mut shmpool_pool,
    size: u64,
    out: *mut shmpool_allocation,
) -> i32 {
    run(|| {
        // SAFETY: forwarded from the caller's contract.
        let pool = unsafe { pool_ref(pool) }?;
        if out.is_null() {
            return Err(bad("null output pointer"));
        }
        // SAFETY: forwarded from the caller's contract.
        unsafe { hand_over(pool, pool.alloc(size), out) }
    })
}

/// Allocates, waiting for a free in any process while the pool is full: `timeout_ns` nanoseconds
/// at most (0 tries once, a negative number waits for ever).
///
/// # Safety
/// `pool` is null or a live handle; `out` is null or writable.
#[no_mangle]
pub unsafe extern "C" fn shmpool_alloc_blocking(
    pool: *mut shmpool_pool,
    size: u64,
    timeout_ns: i64,
    out: *mut shmpool_allocation,
) -> i32 {
    run(|| {
        // SAFETY: forwarded from the caller's contract.
        let pool = unsafe { pool_ref(pool) }?;
        if out.is_null() {
            return Err(bad("null output pointer"));
        }
        let timeout = u64::try_from(timeout_ns).ok().map(Duration::from_nanos);
        // SAFETY: forwarded from the caller's contract.
        unsafe { hand_over(pool, pool.alloc_blocking(size, timeout), out) }
    })
}

/// Frees the allocation `a` names. A double free or a stale id is
/// `SHMPOOL_INVALID_ALLOCATION` and changes nothing.
///
/// # Safety
/// `pool` is null or a live handle; `a` is null or readable.
#[no_mangle]
pub unsafe extern "C" fn shmpool_free(pool: *mut shmpool_pool, a: *const shmpool_allocation) -> i32 {
    run(|| {
        // SAFETY: forwarded from the caller's contract.
        let pool = unsafe { pool_ref(pool) }?;
        // SAFETY: forwarded from the caller's contract.
        let id = unsafe { id_arg(pool, a) }?;
        pool.free(id).map_err(failed)
    })
}

/// Writes the descriptor of allocation `a` (at most 128 bytes: another process attaches it with
/// `shmpool_attach_alloc`) to `buf`, its length to `len`.
///
/// # Safety
/// `pool` is null or a live handle; `a` is null or readable; `buf` is null or has `cap`
/// writable bytes; `len` is null or writable.
#[no_mangle]
pub unsafe extern "C" fn shmpool_alloc_descriptor(
    pool: *const shmpool_pool,
    a: *const shmpool_allocation,
    buf: *mut u8,
    cap: usize,
    len: *mut usize,
) -> i32 {
    run(|| {
        // SAFETY: forwarded from the caller's contract.
        let pool = unsafe { pool_ref(pool) }?;
        // SAFETY: forwarded from the caller's contract.
        let id = unsafe { id_arg(pool, a) }?;
        let allocation = pool.lookup(id).map_err(failed)?;
        let descriptor = pool.alloc_descriptor(&allocation).map_err(failed)?;
        // SAFETY: forwarded from the caller's contract.
        unsafe { copy_out(&descriptor, buf, cap, len) }
    })
}

/// Attaches the allocation a descriptor names (and its pool: a new handle in `pool_out`, to
/// detach when done) and adopts it: it is this process's from now on.
///
/// # Safety
/// `descriptor` is null or has `len` readable bytes; `pool_out` and `out` are null or writable.
#[no_mangle]
pub unsafe extern "C" fn shmpool_attach_alloc(
    descriptor: *const u8,
    len: usize,
    pool_out: *mut *mut shmpool_pool,
    out: *mut shmpool_allocation,
) -> i32 {
    run(|| {
        // SAFETY: forwarded from the caller's contract.
        let descriptor = unsafe { bytes_arg(descriptor, len) }?;
        if pool_out.is_null() || out.is_null() {
            return Err(bad("null output pointer"));
        }
        let (pool, allocation) = Pool::attach_alloc(descriptor).map_err(failed)?;
        let adopted = pool.adopt(allocation.id()).map(|()| allocation);
        // SAFETY: forwarded from the caller's contract.
        unsafe { hand_over(&pool, adopted, out) }?;
        // SAFETY: forwarded from the caller's contract.
        unsafe { give_handle(pool_out, || Ok(pool)) }
    })
}

/// Gives back what processes that no longer exist held or left half done (online); the number of
/// their allocations freed goes to `freed` (if not null).
///
/// # Safety
/// `pool` is null or a live handle; `freed` is null or writable.
#[no_mangle]
pub unsafe extern "C" fn shmpool_reclaim_dead(pool: *mut shmpool_pool, freed: *mut u64) -> i32 {
    run(|| {
        // SAFETY: forwarded from the caller's contract.
        let pool = unsafe { pool_ref(pool) }?;
        let report = pool.reclaim_dead().map_err(failed)?;
        if !freed.is_null() {
            // SAFETY: `freed` is writable (checked non-null; the caller's contract).
            unsafe { freed.write(report.freed.len() as u64) };
        }
        Ok(())
    })
}

/// Verifies every invariant of the pool's heap (`SHMPOOL_CORRUPT` with the first violation).
///
/// # Safety
/// `pool` is null or a live handle.
#[no_mangle]
pub unsafe extern "C" fn shmpool_check(pool: *mut shmpool_pool) -> i32 {
    run(|| {
        // SAFETY: forwarded from the caller's contract.
        let pool = unsafe { pool_ref(pool) }?;
        pool.check().map(drop).map_err(failed)
    })
}

/// Lets go of a handle (the pool stays for others). The handle is invalid afterwards.
///
/// # Safety
/// `pool` is null or a live handle, not used again.
#[no_mangle]
pub unsafe extern "C" fn shmpool_detach(pool: *mut shmpool_pool) -> i32 {
    run(|| {
        if pool.is_null() {
            return Err(bad("null pool handle"));
        }
        // SAFETY: a live handle from `Box::into_raw`, given back once.
        drop(unsafe { Box::from_raw(pool) });
        Ok(())
    })
}

/// Destroys the pool in every process (others get `SHMPOOL_DESTROYED`) and lets go of the
/// handle, which is invalid afterwards (also when the destruction fails).
///
/// # Safety
/// `pool` is null or a live handle, not used again.
#[no_mangle]
pub unsafe extern "C" fn shmpool_destroy(pool: *mut shmpool_pool) -> i32 {
    run(|| {
        if pool.is_null() {
            return Err(bad("null pool handle"));
        }
        // SAFETY: a live handle from `Box::into_raw`, given back once.
        let handle = unsafe { Box::from_raw(pool) };
        handle.pool.destroy().map_err(failed)
    })
}

/// A per-thread cached view of a pool (opaque), for hot loops: freed small blocks and runs are
/// kept for the next allocation of their size. Use it from one thread at a time; after `fork`,
/// the child's copy starts empty (its parent's cached blocks stay the parent's).
pub struct shmpool_local {
    local: alloc_shm::LocalPool,
}

/// A cached view of `pool` for the calling thread (it holds its own reference to the pool:
/// detaching `pool` later leaves it usable).
///
/// # Safety
/// `pool` is null or a live handle; `out` is null or writable.
#[no_mangle]
pub unsafe extern "C" fn shmpool_local_new(pool: *const shmpool_pool, out: *mut *mut shmpool_local) -> i32 {
    run(|| {
        // SAFETY: forwarded from the caller's contract.
        let pool = unsafe { pool_ref(pool) }?;
        if out.is_null() {
            return Err(bad("null output pointer"));
        }
        let local = Box::new(shmpool_local { local: pool.local() });
        // SAFETY: `out` is writable (checked non-null; the caller's contract).
        unsafe { out.write(Box::into_raw(local)) };
        Ok(())
    })
}

/// The cached view behind a pointer.
///
/// # Safety
/// `local` is null or a live cached view used by this thread only.
unsafe fn local_mut<'a>(local: *mut shmpool_local) -> Result<&'a mut alloc_shm::LocalPool, Failure> {
    // SAFETY: the caller passes null or a live view no other thread uses now.
    unsafe { local.as_mut() }.map(|handle| &mut handle.local).ok_or_else(|| bad("null cached view"))
}

/// `shmpool_alloc` through the cache.
///
/// # Safety
/// `local` is null or a live cached view used by this thread only; `out` is null or writable.
#[no_mangle]
pub unsafe extern "C" fn shmpool_local_alloc(
    local: *mut shmpool_local,
    size: u64,
    out: *mut shmpool_allocation,
) -> i32 {
    run(|| {
        // SAFETY: forwarded from the caller's contract.
        let local = unsafe { local_mut(local) }?;
        if out.is_null() {
            return Err(bad("null output pointer"));
        }
        let made = local.alloc(size);
        // SAFETY: forwarded from the caller's contract.
        unsafe { hand_over(local.pool(), made, out) }
    })
}

/// `shmpool_free` through the cache (a double free or a stale id still fails and changes
/// nothing).
///
/// # Safety
/// `local` is null or a live cached view used by this thread only; `a` is null or readable.
#[no_mangle]
pub unsafe extern "C" fn shmpool_local_free(local: *mut shmpool_local, a: *const shmpool_allocation) -> i32 {
    run(|| {
        // SAFETY: forwarded from the caller's contract.
        let local = unsafe { local_mut(local) }?;
        // SAFETY: forwarded from the caller's contract.
        let id = unsafe { id_arg(local.pool(), a) }?;
        local.free(id).map_err(failed)
    })
}

/// Gives everything the cache holds back to the pool (it stays usable).
///
/// # Safety
/// `local` is null or a live cached view used by this thread only.
#[no_mangle]
pub unsafe extern "C" fn shmpool_local_flush(local: *mut shmpool_local) -> i32 {
    run(|| {
        // SAFETY: forwarded from the caller's contract.
        unsafe { local_mut(local) }?.flush().map_err(failed)
    })
}

/// Gives the cache back and lets go of the view, which is invalid afterwards.
///
/// # Safety
/// `local` is null or a live cached view, not used again.
#[no_mangle]
pub unsafe extern "C" fn shmpool_local_close(local: *mut shmpool_local) -> i32 {
    run(|| {
        if local.is_null() {
            return Err(bad("null cached view"));
        }
        // SAFETY: a live view from `Box::into_raw`, given back once.
        let mut view = unsafe { Box::from_raw(local) };
        view.local.flush().map_err(failed)
    })
}

/// The message of this thread's last failure ("" if none): valid until this thread's next
/// failing call.
#[no_mangle]
pub extern "C" fn shmpool_last_error() -> *const c_char {
    // (Once the thread's storage is gone, in a thread-exit destructor: an empty message.)
    let kept = LAST_ERROR.try_with(|last| last.try_borrow().map(|message| message.as_ptr()).ok());
    kept.ok().flatten().unwrap_or(c"".as_ptr())
}
