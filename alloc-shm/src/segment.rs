//! Pool files and their mappings.
//!
//! A pool is a file (`name::path_in`) mapped shared and read-write in every process that uses
//! it. Each process maps a pool once: attaching again returns the same [`Mapping`] (found by
//! device and inode), and the mapping goes away with its last handle.
//!
//! The header's host words (see `alloc_core::layout::HOST_WORDS_START`) hold what this layer
//! keeps in the pool: a random nonce telling this pool from a later one with the same name, the
//! creator's pid and uid, the creation time, and a table of attached processes for `gc`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex, Once, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use alloc_core::layout::{Geometry, DEFAULT_PAGE_SHIFT, HEADER_WORDS};
use alloc_core::primitive::{AtomicU64, Ordering};
use alloc_core::{Error as HeapError, Heap, Region};
use memmap2::MmapMut;

use crate::error::{PoolError, Result};
use crate::name;

/// Header words this layer keeps (all within the core's host range).
pub(crate) mod host {
    /// Random, fixed at creation: tells this pool from a later one of the same name.
    pub const NONCE: usize = 16;
    /// Creator's pid (low 32 bits) and uid (high 32 bits).
    pub const CREATOR: usize = 17;
    /// Creation time, seconds since the Unix epoch.
    pub const CREATED_AT: usize = 18;
    /// Attachments that found no free slot (then `gc` never removes the pool).
    pub const ATTACH_OVERFLOW: usize = 19;
    /// First of `ATTACH_SLOTS` words, each the pid of an attached process or 0.
    pub const ATTACH_TABLE: usize = 20;
    /// Attached processes tracked.
    pub const ATTACH_SLOTS: usize = 12;
}
const _: () = assert!(host::ATTACH_TABLE + host::ATTACH_SLOTS <= HEADER_WORDS);

/// How long `attach` waits for a pool whose creator is still initialising it.
pub const READY_WAIT: Duration = Duration::from_secs(2);

/// This process's id, cached: it is recorded as the owner of every allocation, and `getpid` is a
/// system call. A `fork` child must not record its parent's id, so the child forgets the cached
/// value (a `pthread_atfork` hook) and asks again.
pub fn current_pid() -> u32 {
    static PID: AtomicU32 = AtomicU32::new(0);
    static FORK_HOOK: Once = Once::new();
    extern "C" fn forget_pid_in_child() {
        PID.store(0, std::sync::atomic::Ordering::Relaxed);
    }
    let cached = PID.load(std::sync::atomic::Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    FORK_HOOK.call_once(|| {
        // SAFETY: registers a handler that only stores to an atomic, which is async-signal
        // safe as a fork child handler must be. If registration fails the cache is never
        // filled below, so a stale id is never used.
        let registered = unsafe { libc::pthread_atfork(None, None, Some(forget_pid_in_child)) } == 0;
        HOOKED.store(registered, std::sync::atomic::Ordering::Relaxed);
    });
    let pid = rustix::process::getpid().as_raw_nonzero().get() as u32;
    if HOOKED.load(std::sync::atomic::Ordering::Relaxed) {
        PID.store(pid, std::sync::atomic::Ordering::Relaxed);
    }
    pid
}

/// Whether the fork hook of [`current_pid`] is in place (only then is the id cached).
static HOOKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether process `pid` exists (EPERM: it exists, but is not ours to signal).
pub fn process_alive(pid: u32) -> bool {
    let Some(pid) = rustix::process::Pid::from_raw(pid as i32) else { return false };
    match rustix::process::test_kill_process(pid) {
        Ok(()) => true,
        Err(errno) => errno != rustix::io::Errno::SRCH,
    }
}

/// One process's mapping of one pool.
pub(crate) struct Mapping {
    // Field order matters: `heap` borrows `map` and must be dropped first.
    heap: Heap<'static>,
    map: MmapMut,
    name: String,
    path: PathBuf,
    device: u64,
    inode: u64,
    attach_slot: Option<usize>,
}

/// Every live mapping of this process, so that a pool is mapped once.
static MAPPINGS: Mutex<Vec<(u64, u64, Weak<Mapping>)>> = Mutex::new(Vec::new());

fn mappings() -> std::sync::MutexGuard<'static, Vec<(u64, u64, Weak<Mapping>)>> {
    // A panic while holding the lock cannot leave the list inconsistent (pushes and retains).
    MAPPINGS.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Mapping {
    pub(crate) fn heap(&self) -> &Heap<'static> {
        &self.heap
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn base(&self) -> *mut u8 {
        self.map.as_ptr() as *mut u8
    }

    pub(crate) fn len(&self) -> u64 {
        self.map.len() as u64
    }

    pub(crate) fn host(&self, word: usize) -> &AtomicU64 {
        // The host range is fixed by the core; these indices are constants inside it.
        self.heap.host_word(word).unwrap_or_else(|| unreachable!("host word {word} outside the host range"))
    }

    pub(crate) fn nonce(&self) -> u64 {
        self.host(host::NONCE).load(Ordering::Relaxed)
    }

    /// Unlinks the pool's file if it is still this pool's (not a newer pool of the same name).
    pub(crate) fn unlink(&self) -> io::Result<()> {
        match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if meta.dev() == self.device && meta.ino() == self.inode => {
                std::fs::remove_file(&self.path)
            }
            Ok(_) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(error),
        }
    }

    fn new(file: &File, map: MmapMut, name: &str, path: PathBuf, heap_of: HeapOf) -> Result<Mapping> {
        let meta = file.metadata().map_err(|source| PoolError::Attach { name: name.to_owned(), source })?;
        // SAFETY: (1) the mapping is `map.len()` readable and writable bytes, page aligned, and
        // stays mapped while `map` lives, which is as long as the `Heap` built on it: both live
        // in the returned `Mapping`, whose field order drops the heap first, and the `'static`
        // heap is only ever lent out borrowed from the `Mapping`; (2) all access to the bytes
        // goes through the heap or through allocations their owners hand out.
        let region = unsafe { Region::from_raw(map.as_ptr() as *mut u8, map.len()) }
            .map_err(|cause| PoolError::NotAPool { name: name.to_owned(), cause })?;
        let heap = heap_of(region).map_err(|cause| PoolError::from_heap(name, cause))?;
        let mut mapping = Mapping {
            heap,
            map,
            name: name.to_owned(),
            path,
            device: meta.dev(),
            inode: meta.ino(),
            attach_slot: None,
        };
        mapping.attach_slot = mapping.register();
        Ok(mapping)
    }

    /// Records this process in the attach table (reusing a dead process's slot if full).
    fn register(&self) -> Option<usize> {
        let pid = current_pid() as u64;
        let slot_word = |slot: usize| self.host(host::ATTACH_TABLE + slot);
        for slot in 0..host::ATTACH_SLOTS {
            if slot_word(slot).compare_exchange(0, pid, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
                return Some(slot);
            }
        }
        for slot in 0..host::ATTACH_SLOTS {
            let holder = slot_word(slot).load(Ordering::Relaxed);
            if holder != 0
                && !process_alive(holder as u32)
                && slot_word(slot).compare_exchange(holder, pid, Ordering::Relaxed, Ordering::Relaxed).is_ok()
            {
                return Some(slot);
            }
        }
        self.host(host::ATTACH_OVERFLOW).fetch_add(1, Ordering::Relaxed);
        None
    }

    /// The pids of the processes recorded as attached, and whether some went unrecorded.
    pub(crate) fn attached(&self) -> (Vec<u32>, bool) {
        let pids = (0..host::ATTACH_SLOTS)
            .map(|slot| self.host(host::ATTACH_TABLE + slot).load(Ordering::Relaxed) as u32)
            .filter(|&pid| pid != 0)
            .collect();
        (pids, self.host(host::ATTACH_OVERFLOW).load(Ordering::Relaxed) > 0)
    }

    /// The creator's pid and uid.
    pub(crate) fn creator(&self) -> (u32, u32) {
        let word = self.host(host::CREATOR).load(Ordering::Relaxed);
        (word as u32, (word >> 32) as u32)
    }

    pub(crate) fn created_at(&self) -> u64 {
        self.host(host::CREATED_AT).load(Ordering::Relaxed)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if let Some(slot) = self.attach_slot {
            let pid = current_pid() as u64;
            let word = self.host(host::ATTACH_TABLE + slot);
            let _ = word.compare_exchange(pid, 0, Ordering::Relaxed, Ordering::Relaxed);
        }
    }
}

type HeapOf = fn(Region<'static>) -> std::result::Result<Heap<'static>, HeapError>;

fn open_error(name: &str, error: io::Error, creating: bool) -> PoolError {
    let name = name.to_owned();
    match error.kind() {
        io::ErrorKind::AlreadyExists => PoolError::AlreadyExists { name },
        io::ErrorKind::NotFound if !creating => PoolError::NotFound { name },
        io::ErrorKind::PermissionDenied => PoolError::PermissionDenied { name },
        _ if creating => PoolError::Create { name, source: error },
        _ => PoolError::Attach { name, source: error },
    }
}

fn random_nonce() -> u64 {
    let mut bytes = [0u8; 8];
    if let Ok(mut urandom) = File::open("/dev/urandom") {
        let _ = io::Read::read_exact(&mut urandom, &mut bytes);
    }
    let time = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    // Never 0, so a zeroed header never matches a descriptor.
    (u64::from_le_bytes(bytes) ^ time.rotate_left(17) ^ current_pid() as u64) | 1
}

/// Bytes of the file for a pool of `size` bytes: rounded up to whole pages.
pub(crate) fn file_bytes(size: u64) -> Result<u64> {
    let page = rustix::param::page_size() as u64;
    let bytes = size
        .checked_add(page - 1)
        .map(|bytes| bytes / page * page)
        .ok_or(PoolError::InvalidSize { size, reason: "it overflows when rounded to pages" })?;
    if Geometry::compute(bytes, DEFAULT_PAGE_SHIFT).is_none() {
        return Err(PoolError::InvalidSize {
            size,
            reason: "a pool needs room for at least one 64 KiB span",
        });
    }
    Ok(bytes)
}

/// Creates pool `name` of `size` bytes in `dir` with permissions `mode`.
pub(crate) fn create(name: &str, size: u64, dir: &Path, mode: u32) -> Result<Arc<Mapping>> {
    name::validate(name)?;
    let bytes = file_bytes(size)?;
    let path = name::path_in(dir, name);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc_flags::NOFOLLOW | libc_flags::CLOEXEC)
        .open(&path)
        .map_err(|error| open_error(name, error, true))?;
    let built = (|| {
        file.set_len(bytes).map_err(|source| PoolError::Create { name: name.to_owned(), source })?;
        // SAFETY: a shared read-write mapping of the whole file we just sized; the file stays
        // at that size (pool files are only ever resized by their creator, here).
        let map = unsafe { MmapMut::map_mut(&file) }
            .map_err(|source| PoolError::Create { name: name.to_owned(), source })?;
        write_host_words(&map);
        Mapping::new(&file, map, name, path.clone(), |region| Heap::create(region, DEFAULT_PAGE_SHIFT))
    })();
    match built {
        Ok(mapping) => Ok(remember(mapping)),
        Err(error) => {
            let _ = std::fs::remove_file(&path);
            Err(error)
        }
    }
}

/// Writes this layer's header words into a fresh mapping, before the heap is marked ready (whose
/// Release store publishes them).
fn write_host_words(map: &MmapMut) {
    let words = map.as_ptr() as *const AtomicU64;
    let store = |index: usize, value: u64| {
        // SAFETY: the mapping is page aligned and longer than the header, so word `index`
        // (inside the header) is a valid, aligned atomic; nobody else has the file yet.
        unsafe { &*words.add(index) }.store(value, Ordering::Relaxed)
    };
    let uid = rustix::process::geteuid().as_raw() as u64;
    store(host::NONCE, random_nonce());
    store(host::CREATOR, uid << 32 | current_pid() as u64);
    store(host::CREATED_AT, SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()));
}

fn remember(mapping: Mapping) -> Arc<Mapping> {
    let mapping = Arc::new(mapping);
    let mut list = mappings();
    list.retain(|(_, _, weak)| weak.strong_count() > 0);
    list.push((mapping.device, mapping.inode, Arc::downgrade(&mapping)));
    mapping
}

/// Attaches pool `name` whose file is `path`, checking that `expected_uid` owns it.
pub(crate) fn attach(name: &str, path: &Path, expected_uid: Option<u32>) -> Result<Arc<Mapping>> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc_flags::NOFOLLOW | libc_flags::CLOEXEC)
        .open(path)
        .map_err(|error| open_error(name, error, false))?;
    let meta = file.metadata().map_err(|source| PoolError::Attach { name: name.to_owned(), source })?;
    if !meta.file_type().is_file() {
        return Err(PoolError::Attach {
            name: name.to_owned(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
        });
    }
    let euid = rustix::process::geteuid().as_raw();
    let expected = expected_uid.unwrap_or(euid);
    if meta.uid() != expected && euid != 0 {
        return Err(PoolError::WrongOwner { name: name.to_owned(), owner: meta.uid(), expected });
    }
    {
        let list = mappings();
        let existing = list
            .iter()
            .find(|(device, inode, _)| *device == meta.dev() && *inode == meta.ino())
            .and_then(|(_, _, weak)| weak.upgrade());
        if let Some(mapping) = existing {
            return Ok(mapping);
        }
    }
    let deadline = Instant::now() + READY_WAIT;
    loop {
        match map_existing(&file, name, path) {
            Ok(mapping) => return Ok(remember(mapping)),
            // The creator has not sized the file or written the header yet: wait a little.
            Err(PoolError::NotReady { .. })
            | Err(PoolError::NotAPool { cause: HeapError::RegionTooSmall { .. }, .. })
                if Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(PoolError::NotAPool { cause: HeapError::RegionTooSmall { .. }, .. }) => {
                return Err(PoolError::NotReady { name: name.to_owned() })
            }
            Err(other) => return Err(other),
        }
    }
}

fn map_existing(file: &File, name: &str, path: &Path) -> Result<Mapping> {
    let len = file.metadata().map_err(|source| PoolError::Attach { name: name.to_owned(), source })?.len();
    if len < (HEADER_WORDS * 8) as u64 {
        return Err(PoolError::NotAPool {
            name: name.to_owned(),
            cause: HeapError::RegionTooSmall { bytes: len },
        });
    }
    // SAFETY: a shared read-write mapping of the whole file as it is now; its size was checked
    // against the header by `Heap::open` before any use beyond the header.
    let map = unsafe { MmapMut::map_mut(file) }
        .map_err(|source| PoolError::Attach { name: name.to_owned(), source })?;
    let mapping = Mapping::new(file, map, name, path.to_owned(), Heap::open);
    match mapping {
        // A header still zero (magic not yet written) is a pool being created.
        Err(PoolError::NotAPool { cause: HeapError::BadMagic, .. }) if header_is_blank(file) => {
            Err(PoolError::NotReady { name: name.to_owned() })
        }
        other => other,
    }
}

fn header_is_blank(file: &File) -> bool {
    let mut header = [0u8; 64];
    std::os::unix::fs::FileExt::read_exact_at(file, &mut header, 0).is_ok() && header.iter().all(|&b| b == 0)
}

/// The names of the pools in `dir`.
pub(crate) fn list(dir: &Path) -> io::Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| entry.file_name().to_str().and_then(name::from_file_name).map(str::to_owned))
        .collect();
    names.sort();
    Ok(names)
}

/// Reads the nonce of the pool file at `path` without mapping it.
pub(crate) fn read_nonce(path: &Path) -> Option<u64> {
    let file = OpenOptions::new().read(true).custom_flags(libc_flags::NOFOLLOW).open(path).ok()?;
    let mut word = [0u8; 8];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut word, (host::NONCE * 8) as u64).ok()?;
    Some(u64::from_le_bytes(word))
}

/// `open(2)` flags std does not name.
mod libc_flags {
    pub const NOFOLLOW: i32 = rustix::fs::OFlags::NOFOLLOW.bits() as i32;
    pub const CLOEXEC: i32 = rustix::fs::OFlags::CLOEXEC.bits() as i32;
}
