//! Pool files and their mappings.
//!
//! A pool is a file mapped shared and read-write in every process that uses it: a named file
//! (`name::path_in`, in `/dev/shm` or another directory, hugetlbfs included), or an anonymous
//! memfd, sealed against shrinking and growing, that processes hand each other as a file
//! descriptor and that the kernel frees when the last of them closes it. Each process maps a
//! pool once: attaching again (by name, by descriptor or by file descriptor) returns the same
//! [`Mapping`] (found by device and inode), and the mapping goes away with its last handle.
//!
//! The header's host words (see `alloc_core::layout::HOST_WORDS_START`) hold what this layer
//! keeps in the pool: a random nonce telling this pool from a later one with the same name, the
//! creator's pid and uid, and the creation time. Who is attached is the heap's process table.
//!
//! An *inspection* (`attach` with [`Access::ReadOnly`]) maps the file read-only and is never
//! shared with attachers: it only reads (the header, the process table, `Heap::inspect`), so a
//! tool looking at a pool changes nothing in it and needs only read access to its file.
//!
//! A mapping also knows this process's record in the pool (registered on first use, and anew in
//! a fork child), and hands each thread its own participant (a [`Session`], kept in
//! thread-local storage and given back when the thread ends); see [`Mapping::with_session`].

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use alloc_core::layout::{Geometry, DEFAULT_PAGE_SHIFT, HEADER_WORDS};
use alloc_core::primitive::{AtomicU64, Ordering};
use alloc_core::{Backing, Error as HeapError, Heap, Owner, Platform, ProcessIdentity, Region, Session};
use memmap2::{MmapOptions, MmapRaw};

use crate::error::{PoolError, Result};
use crate::name;
use crate::pool::{PoolOptions, Space};
use crate::process::{barrier, current_identity, current_pid};

/// Header words this layer keeps (all within the core's host range).
pub(crate) mod host {
    use alloc_core::layout::HOST_WORDS_START;

    /// Random, fixed at creation: tells this pool from a later one of the same name.
    pub const NONCE: usize = HOST_WORDS_START;
    /// Creator's pid (low 32 bits) and uid (high 32 bits).
    pub const CREATOR: usize = HOST_WORDS_START + 1;
    /// Creation time, seconds since the Unix epoch.
    pub const CREATED_AT: usize = HOST_WORDS_START + 2;
    /// The creator's start time (clock ticks after boot; 0: unknown).
    pub const CREATOR_STARTED: usize = HOST_WORDS_START + 3;
    /// The creator's pid namespace (inode; 0: unknown).
    pub const CREATOR_NAMESPACE: usize = HOST_WORDS_START + 4;
    /// The number the application knows the pool by (Dragon's `muid`; the nonce by default).
    pub const MUID: usize = HOST_WORDS_START + 5;
}
const _: () = assert!(host::MUID < HEADER_WORDS);

/// How long `attach` waits for a pool whose creator is still initialising it.
pub const READY_WAIT: Duration = Duration::from_secs(2);

/// One process's mapping of one pool.
pub(crate) struct Mapping {
    // Field order matters: `heap` borrows `map` and must be dropped first.
    heap: Heap<'static>,
    map: MmapRaw,
    /// Kept open for `back` (its descriptor is the heap's backing context) and `check_size`.
    file: File,
    name: String,
    /// The named file's path; for a memfd, `/proc/self/fd/N` of `file`.
    path: PathBuf,
    memfd: bool,
    device: u64,
    inode: u64,
    /// This process's record: `pid << 32 | owner index` (0: none yet). A value with another pid
    /// was made by the parent of this fork child.
    process: std::sync::atomic::AtomicU64,
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

    /// Whether the pool lives in a memfd (it has no name in any directory).
    pub(crate) fn is_memfd(&self) -> bool {
        self.memfd
    }

    /// The pool's file, for passing to another process.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    pub(crate) fn base(&self) -> *mut u8 {
        self.map.as_mut_ptr()
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

    pub(crate) fn muid(&self) -> u64 {
        self.host(host::MUID).load(Ordering::Relaxed)
    }

    /// Unlinks the pool's file if it is still this pool's (not a newer pool of the same name).
    /// A memfd has no name to remove.
    pub(crate) fn unlink(&self) -> io::Result<()> {
        if self.memfd {
            return Ok(());
        }
        match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if meta.dev() == self.device && meta.ino() == self.inode => {
                std::fs::remove_file(&self.path)
            }
            Ok(_) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// This process's record in the pool, registered on first use (again in a fork child).
    pub(crate) fn process(&self) -> Result<Owner> {
        let pid = current_pid();
        let known = self.process.load(std::sync::atomic::Ordering::Acquire);
        if known != 0 && known >> 32 == pid as u64 {
            return Ok(Owner(known as u16));
        }
        // A new process (or a fork child): receive barriers before publishing any hazard.
        if known != 0 {
            // A fork child: the metadata its parent mapped ahead is not in its page table.
            self.heap.forget_mapped_ahead();
        }
        if self.heap.is_asymmetric() && barrier().is_none() {
            return Err(PoolError::Unsupported {
                name: self.name.clone(),
                what: "membarrier registration failed",
            });
        }
        let owner = match self.heap.register_process(current_identity()) {
            Err(HeapError::TableFull { .. }) => {
                // Dead processes may hold records: give them back and try once more.
                self.reclaim_quietly();
                self.heap.register_process(current_identity())
            }
            other => other,
        }
        .map_err(|cause| PoolError::from_heap(&self.name, cause))?;
        self.process.store((pid as u64) << 32 | owner.0 as u64, std::sync::atomic::Ordering::Release);
        // Reclaiming needs a record of one's own, so a table full of dead processes could only
        // be cleared by a process registered before it filled up. Each newcomer that finds the
        // table three quarters full therefore gives dead processes' records back at once.
        if self.process_table_nearly_full() {
            self.reclaim_quietly();
        }
        Ok(owner)
    }

    /// Whether fewer than a quarter of the process records are free.
    fn process_table_nearly_full(&self) -> bool {
        let usable = self.heap.geometry().table_size - 1;
        let used = self.heap.processes().count() as u64;
        usable.saturating_sub(used) * 4 < usable
    }

    /// A new participant of this process (for a thread or a cache).
    pub(crate) fn new_session(&self) -> Result<Session> {
        let owner = self.process()?;
        match self.heap.register_participant(owner) {
            Err(HeapError::TableFull { .. }) => {
                self.reclaim_quietly();
                self.heap.register_participant(owner)
            }
            other => other,
        }
        .map_err(|cause| PoolError::from_heap(&self.name, cause))
    }

    /// Gives a participant back (its thread or cache is done), unless it is a fork parent's.
    pub(crate) fn end_session(&self, session: Session, pid: u32) {
        if pid == current_pid() {
            let _ = self.heap.release_participant(session);
        }
    }

    /// Runs `body` with this thread's participant of this pool (registered on first use; a
    /// session inherited from a fork parent is never used).
    pub(crate) fn with_session<R>(
        self: &Arc<Self>,
        body: impl FnOnce(&Heap<'static>, &mut Session) -> R,
    ) -> Result<R> {
        let pid = current_pid();
        let key = Arc::as_ptr(self) as usize;
        let mut body = Some(body);
        let mut outcome = None;
        let in_thread = SESSIONS.try_with(|sessions| -> Result<()> {
            let mut sessions = sessions.borrow_mut();
            let found =
                sessions.iter().position(|s| s.key == key && s.pid == pid && s.mapping.strong_count() > 0);
            let at = match found {
                Some(at) => at,
                None => {
                    let session = self.new_session()?;
                    sessions.retain(|s| s.mapping.strong_count() > 0);
                    sessions.push(ThreadSession {
                        key,
                        pid,
                        mapping: Arc::downgrade(self),
                        session: Some(session),
                    });
                    sessions.len() - 1
                }
            };
            let session = sessions[at].session.as_mut().expect("a thread session holds its session");
            outcome = body.take().map(|body| body(&self.heap, session));
            Ok(())
        });
        match in_thread {
            Ok(result) => result.map(|()| outcome.expect("ran")),
            // Thread-local storage is being torn down: a session for this call only.
            Err(_) => {
                let mut session = self.new_session()?;
                let result = body.take().map(|body| body(&self.heap, &mut session)).expect("not run yet");
                self.end_session(session, pid);
                Ok(result)
            }
        }
    }

    fn reclaim_quietly(&self) {
        let Ok(mut session) = self.new_session_unchecked() else { return };
        let _ = self.heap.reclaim_dead(&mut session, crate::process::record_is_dead, |_, _, _| {});
        let _ = self.heap.release_participant(session);
    }

    /// A participant without the table-full retry (for reclaiming when the table is full).
    fn new_session_unchecked(&self) -> std::result::Result<Session, HeapError> {
        let known = self.process.load(std::sync::atomic::Ordering::Acquire);
        let owner = if known != 0 && known >> 32 == current_pid() as u64 {
            Owner(known as u16)
        } else {
            self.heap.register_process(current_identity())?
        };
        self.heap.register_participant(owner)
    }

    fn new(file: &File, map: MmapRaw, name: &str, place: &Place, heap_of: HeapOf<'_>) -> Result<Mapping> {
        let meta = file.metadata().map_err(|source| PoolError::Attach { name: name.to_owned(), source })?;
        // SAFETY: (1) the mapping is `map.len()` readable bytes, page aligned, and stays mapped
        // while `map` lives, which is as long as the `Heap` built on it: both live in the
        // returned `Mapping`, whose field order drops the heap first, and the `'static` heap is
        // only ever lent out borrowed from the `Mapping`. It is writable too, except for an
        // inspection's, which is only ever read (an `Inspection` calls nothing else); (2) all
        // access to the bytes goes through the heap or through allocations their owners hand out.
        let region = unsafe { Region::from_raw(map.as_mut_ptr(), map.len()) }
            .map_err(|cause| PoolError::NotAPool { name: name.to_owned(), cause })?;
        // The file stays open with the mapping: claims of pages never used before first put
        // memory behind them through it (`back`), so that a full filesystem makes an allocation
        // fail instead of killing the process that writes into it. A mapping of huge pages
        // reserved all of them when the file was first mapped: nothing to back.
        let file = file.try_clone().map_err(|source| PoolError::Attach { name: name.to_owned(), source })?;
        let huge = rustix::fs::fstatfs(&file).is_ok_and(|stat| huge_page_of(&stat).is_some());
        let backing = Backing { context: file.as_raw_fd() as usize, back };
        let platform = Platform {
            heavy_fence: barrier(),
            backing: (!huge).then_some(backing),
            // Huge pages fault in 2 MiB at a time: few enough.
            prefault: (!huge).then_some(prefault),
        };
        let heap = heap_of(region, platform).map_err(|cause| PoolError::from_heap(name, cause))?;
        let (path, memfd) = match place {
            Place::Named(path) => (path.clone(), false),
            Place::Memfd => (PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd())), true),
        };
        let mapping = Mapping {
            heap,
            map,
            file,
            name: name.to_owned(),
            path,
            memfd,
            device: meta.dev(),
            inode: meta.ino(),
            process: std::sync::atomic::AtomicU64::new(0),
        };
        Ok(mapping)
    }

    /// Fails if the pool's file is now shorter than the mapping (another process truncated it).
    pub(crate) fn check_size(&self) -> Result<()> {
        let file_bytes = self.file.metadata().map(|meta| meta.len()).unwrap_or(0);
        if file_bytes < self.len() {
            return Err(PoolError::Truncated { name: self.name.clone(), file_bytes, pool_bytes: self.len() });
        }
        Ok(())
    }

    /// The creator's pid and uid.
    pub(crate) fn creator(&self) -> (u32, u32) {
        let word = self.host(host::CREATOR).load(Ordering::Relaxed);
        (word as u32, (word >> 32) as u32)
    }

    /// Other processes of this pid namespace that map this pool's file (a fork child that never
    /// called into the pool included), as far as `/proc` lets this process see.
    pub(crate) fn mapped_by_others(&self) -> Vec<u32> {
        crate::process::mapping_processes(self.device, self.inode)
            .into_iter()
            .filter(|&pid| pid != current_pid())
            .collect()
    }

    pub(crate) fn created_at(&self) -> u64 {
        self.host(host::CREATED_AT).load(Ordering::Relaxed)
    }

    /// The creator's identity, as recorded at creation.
    pub(crate) fn creator_identity(&self) -> ProcessIdentity {
        ProcessIdentity {
            pid: self.creator().0,
            start_time: self.host(host::CREATOR_STARTED).load(Ordering::Relaxed),
            namespace: self.host(host::CREATOR_NAMESPACE).load(Ordering::Relaxed),
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // Nobody in this process can be inside an operation (each holds the mapping): give back
        // every participant of our process, the threads' included. Our process record stays: it
        // owns our allocations until we die (then `reclaim_dead` frees it).
        let known = self.process.load(std::sync::atomic::Ordering::Acquire);
        if known != 0 && known >> 32 == current_pid() as u64 {
            self.heap.release_participants_of(Owner(known as u16));
        }
    }
}

/// A thread's participant of one mapping.
struct ThreadSession {
    key: usize,
    pid: u32,
    mapping: Weak<Mapping>,
    session: Option<Session>,
}

impl Drop for ThreadSession {
    fn drop(&mut self) {
        if let (Some(mapping), Some(session)) = (self.mapping.upgrade(), self.session.take()) {
            mapping.end_session(session, self.pid);
        }
    }
}

thread_local! {
    static SESSIONS: RefCell<Vec<ThreadSession>> = const { RefCell::new(Vec::new()) };
}

/// Where a pool's file is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    /// A file with this path.
    Named(PathBuf),
    /// An anonymous memfd.
    Memfd,
}

type HeapOf<'f> = &'f dyn Fn(Region<'static>, Platform) -> std::result::Result<Heap<'static>, HeapError>;

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

/// The smallest pool size (whole pages) whose data area holds one allocation of `data` bytes.
pub(crate) fn size_for_data(data: u64) -> Result<u64> {
    let too_large = || PoolError::InvalidSize { size: data, reason: "no pool can hold that much" };
    let heap_page = 1u64 << DEFAULT_PAGE_SHIFT;
    let largest_block = alloc_core::layout::CLASS_SIZES[alloc_core::layout::NUM_CLASSES - 1] as u64;
    let pages = if data <= largest_block { alloc_core::layout::SPAN_PAGES } else { data.div_ceil(heap_page) };
    let os_page = rustix::param::page_size() as u64;
    let holds =
        |bytes: u64| Geometry::compute(bytes, DEFAULT_PAGE_SHIFT).is_some_and(|g| g.num_pages >= pages);
    // Double up to a size that holds it, then bisect (in whole pages of the system).
    let mut high = pages.checked_mul(heap_page).ok_or_else(too_large)?;
    while !holds(high) {
        high = high.checked_mul(2).filter(|&bytes| bytes < 1 << 62).ok_or_else(too_large)?;
    }
    let (mut low, mut high) = (0, high.div_ceil(os_page));
    while low + 1 < high {
        let middle = low + (high - low) / 2;
        if holds(middle * os_page) {
            high = middle;
        } else {
            low = middle;
        }
    }
    Ok(high * os_page)
}

/// Bytes of the file for a pool of `size` bytes (rounded up to whole pages of `page` bytes),
/// and its layout.
fn file_bytes(size: u64, page: u64) -> Result<(u64, Geometry)> {
    let bytes = size
        .checked_add(page - 1)
        .map(|bytes| bytes / page * page)
        .ok_or(PoolError::InvalidSize { size, reason: "it overflows when rounded to pages" })?;
    let geo = Geometry::compute(bytes, DEFAULT_PAGE_SHIFT)
        .ok_or(PoolError::InvalidSize { size, reason: "a pool needs room for at least one 64 KiB span" })?;
    Ok((bytes, geo))
}

/// Puts memory behind `len` bytes at `offset` of the pool file whose descriptor is `fd`.
fn back(fd: usize, offset: u64, len: u64) -> bool {
    // SAFETY: `fd` is the descriptor of the `File` the mapping holds for as long as its heap
    // (the only caller) lives.
    let file = unsafe { BorrowedFd::borrow_raw(fd as i32) };
    // A signal arriving meanwhile interrupts it (tmpfs before Linux 6.x, hugetlbfs): try again,
    // a bounded number of times (a storm of signals is not worth a hang).
    for _ in 0..64 {
        match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::KEEP_SIZE, offset, len) {
            Ok(()) => return true,
            // A filesystem without fallocate cannot be backed ahead: its writes take their chances.
            Err(rustix::io::Errno::OPNOTSUPP) => return true,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return false,
        }
    }
    false
}

/// Maps `len` bytes from `start` of a pool's mapping into this process's page table ahead of
/// their first use (memory is behind them already): `MADV_POPULATE_WRITE`, Linux 5.14 on; where
/// it fails, the pages fault in when first used, as without it.
fn prefault(start: *mut u8, len: usize) {
    let page = rustix::param::page_size();
    let first = start as usize / page * page;
    let end = (start as usize).saturating_add(len).next_multiple_of(page);
    // SAFETY: the heap passes ranges of its region, which the mapping covers whole pages of; a
    // populate changes no byte and, unlike a write, reports a page it cannot fault in as an
    // error instead of a SIGBUS.
    unsafe { libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_POPULATE_WRITE) };
}

/// Where a new pool's memory comes from, which bounds how large it can be.
enum Room<'a> {
    /// Pages of a filesystem (tmpfs) holding the pool's directory.
    Filesystem(&'a Path),
    /// The system's memory (a memfd, whose internal filesystem has no size of its own).
    Memory,
    /// The system's pool of huge pages of this many bytes (hugetlbfs or a hugetlb memfd).
    HugePages(u64),
}

impl Room<'_> {
    /// The page size of the pool's file.
    fn page(&self) -> u64 {
        match self {
            Room::HugePages(page) => *page,
            _ => rustix::param::page_size() as u64,
        }
    }

    /// Fails unless a file of `bytes` fits. Huge pages are always checked: mapping a file of
    /// them reserves every page at once, so they cannot be overcommitted.
    fn check(&self, name: &str, bytes: u64, space: Space) -> Result<()> {
        if space == Space::Overcommit && !matches!(self, Room::HugePages(_)) {
            return Ok(());
        }
        match self.available(name)? {
            available if bytes > available => Err(self.exhausted(name, bytes, available)),
            _ => Ok(()),
        }
    }

    /// Bytes available now.
    fn available(&self, name: &str) -> Result<u64> {
        let create_error =
            |errno: rustix::io::Errno| PoolError::Create { name: name.to_owned(), source: errno.into() };
        match self {
            Room::Filesystem(dir) => {
                let stat = rustix::fs::statvfs(*dir).map_err(create_error)?;
                Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
            }
            Room::Memory => Ok(meminfo_kib("MemAvailable:").unwrap_or(u64::MAX / 1024).saturating_mul(1024)),
            Room::HugePages(page) => Ok(free_huge_pages(*page).saturating_mul(*page)),
        }
    }

    /// The error for a pool of `bytes` that does not fit in `available`.
    fn exhausted(&self, name: &str, needed: u64, available: u64) -> PoolError {
        let name = name.to_owned();
        match self {
            Room::Filesystem(dir) => PoolError::NoSpace { name, dir: dir.to_path_buf(), needed, available },
            Room::Memory => PoolError::NoMemory { name, needed, available },
            Room::HugePages(page) => PoolError::NoHugePages {
                name,
                needed: needed.div_ceil(*page),
                free: available / page,
                page_size: *page,
            },
        }
    }

    /// The error for running out while creating a pool of `bytes` (ENOSPC, ENOMEM).
    fn ran_out(&self, name: &str, needed: u64) -> PoolError {
        self.exhausted(name, needed, self.available(name).unwrap_or(0))
    }
}

/// The huge page size of a filesystem, if it is hugetlbfs.
fn huge_page_of(stat: &rustix::fs::StatFs) -> Option<u64> {
    const HUGETLBFS_MAGIC: u64 = 0x9584_58f6;
    (stat.f_type as u64 == HUGETLBFS_MAGIC).then_some(stat.f_bsize as u64)
}

/// Huge pages of `page` bytes free and not reserved by any mapping, system-wide.
fn free_huge_pages(page: u64) -> u64 {
    let dir = format!("/sys/kernel/mm/hugepages/hugepages-{}kB", page / 1024);
    let read = |file: &str| {
        std::fs::read_to_string(format!("{dir}/{file}")).ok().and_then(|text| text.trim().parse::<u64>().ok())
    };
    read("free_hugepages").unwrap_or(0).saturating_sub(read("resv_hugepages").unwrap_or(0))
}

/// A figure of `/proc/meminfo`, in KiB.
fn meminfo_kib(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|line| line.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

fn create_error(name: &str) -> impl Fn(io::Error) -> PoolError + '_ {
    move |source| PoolError::Create { name: name.to_owned(), source }
}

/// Creates pool `name` of `size` bytes as `options` say (directory, mode, muid, space).
pub(crate) fn create(name: &str, size: u64, options: &PoolOptions) -> Result<Arc<Mapping>> {
    name::validate(name)?;
    let dir = options.dir.as_path();
    let huge_page = huge_page_of(&rustix::fs::statfs(dir).map_err(|errno| create_error(name)(errno.into()))?);
    let room = match huge_page {
        Some(page) => Room::HugePages(page),
        None if options.huge_pages => {
            return Err(PoolError::InvalidArgument(
                "huge pages for a named pool need a directory on hugetlbfs (such as /dev/hugepages), or use a memfd pool",
            ))
        }
        None => Room::Filesystem(dir),
    };
    let (bytes, geo) = file_bytes(size, room.page())?;
    room.check(name, bytes, options.space)?;
    let path = name::path_in(dir, name);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        // Permission bits only: never a setuid, setgid or sticky pool file.
        .mode(options.mode & 0o777)
        .custom_flags(libc_flags::NOFOLLOW | libc_flags::CLOEXEC)
        .open(&path)
        .map_err(|error| open_error(name, error, true))?;
    let place = Place::Named(path.clone());
    match initialise(&file, name, (bytes, &geo), options, &room, &place).and_then(remember) {
        Ok(mapping) => Ok(mapping),
        Err(error) => {
            let _ = std::fs::remove_file(&path);
            Err(error)
        }
    }
}

/// Creates pool `name` of `size` bytes in a new memfd (huge pages if `options` ask for them),
/// sealed so that its size never changes.
pub(crate) fn create_memfd(name: &str, size: u64, options: &PoolOptions) -> Result<Arc<Mapping>> {
    use rustix::fs::MemfdFlags;
    name::validate(name)?;
    let mut flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
    if options.huge_pages {
        flags |= MemfdFlags::HUGETLB;
    }
    // Named as a pool file is, so that `/proc/PID/maps` shows `/memfd:shmpool-NAME`.
    let file_name = format!("{}{name}", name::FILE_PREFIX);
    let file =
        File::from(rustix::fs::memfd_create(file_name.as_str(), flags).map_err(|errno| match errno {
            rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS if options.huge_pages => {
                PoolError::Unsupported { name: name.to_owned(), what: "huge page memfds (MFD_HUGETLB)" }
            }
            _ => create_error(name)(errno.into()),
        })?);
    let room = match options.huge_pages {
        true => Room::HugePages(
            rustix::fs::fstatfs(&file).map_err(|errno| create_error(name)(errno.into()))?.f_bsize as u64,
        ),
        false => Room::Memory,
    };
    let (bytes, geo) = file_bytes(size, room.page())?;
    room.check(name, bytes, options.space)?;
    initialise(&file, name, (bytes, &geo), options, &room, &Place::Memfd).and_then(remember)
}

/// Sizes a new pool's file, puts memory behind what must never fault, seals a memfd, maps it
/// and builds the heap.
fn initialise(
    file: &File,
    name: &str,
    (bytes, geo): (u64, &Geometry),
    options: &PoolOptions,
    room: &Room<'_>,
    place: &Place,
) -> Result<Mapping> {
    file.set_len(bytes).map_err(create_error(name))?;
    // Memory behind what must never fault: everything (Reserve), the metadata (Check: data
    // pages are backed as they are first claimed), the header and tables (Overcommit).
    let backed = match options.space {
        Space::Reserve => bytes,
        Space::Check => geo.data_offset,
        Space::Overcommit => geo.bitmap_word as u64 * 8,
    };
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::KEEP_SIZE, 0, backed) {
        Ok(()) | Err(rustix::io::Errno::OPNOTSUPP) => {}
        Err(rustix::io::Errno::NOSPC | rustix::io::Errno::NOMEM) => return Err(room.ran_out(name, bytes)),
        Err(errno) => return Err(create_error(name)(errno.into())),
    }
    if *place == Place::Memfd {
        // No process may shrink the pool under the others (SIGBUS), grow it, or add seals
        // (a write seal would keep everyone else from mapping it writable).
        use rustix::fs::SealFlags;
        rustix::fs::fcntl_add_seals(file, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
            .map_err(|errno| create_error(name)(errno.into()))?;
    }
    // A shared read-write mapping of the whole file we just sized; the file stays at that size
    // (pool files are only ever resized by their creator, here). A mapping of huge pages
    // reserves them all now, or fails.
    let map = MmapOptions::new().map_raw(file).map_err(|source| match source.raw_os_error() {
        Some(code) if code == rustix::io::Errno::NOMEM.raw_os_error() => room.ran_out(name, bytes),
        _ => create_error(name)(source),
    })?;
    write_host_words(&map, options.muid);
    let budget = options.budget;
    Mapping::new(file, map, name, place, &move |region, platform| {
        Heap::create_with_budget(region, DEFAULT_PAGE_SHIFT, platform, budget)
    })
}

/// Writes this layer's header words into a fresh mapping, before the heap is marked ready (whose
/// Release store publishes them).
fn write_host_words(map: &MmapRaw, muid: Option<u64>) {
    let words = map.as_ptr() as *const AtomicU64;
    let store = |index: usize, value: u64| {
        // SAFETY: the mapping is page aligned and longer than the header, so word `index`
        // (inside the header) is a valid, aligned atomic; nobody else has the file yet.
        unsafe { &*words.add(index) }.store(value, Ordering::Relaxed)
    };
    let uid = rustix::process::geteuid().as_raw() as u64;
    let me = current_identity();
    let nonce = random_nonce();
    store(host::NONCE, nonce);
    store(host::MUID, muid.unwrap_or(nonce));
    store(host::CREATOR, uid << 32 | me.pid as u64);
    store(host::CREATOR_STARTED, me.start_time);
    store(host::CREATOR_NAMESPACE, me.namespace);
    store(host::CREATED_AT, SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()));
}

/// Makes `mapping` the one this process shares for its file, in one step under the lock: if
/// another thread mapped the same file meanwhile, that mapping (ours is dropped); a memfd pool
/// claiming the nonce of another memfd pool already mapped is refused (so that memfd
/// descriptors resolve to one pool).
fn remember(mapping: Mapping) -> Result<Arc<Mapping>> {
    let mut list = mappings();
    list.retain(|(_, _, weak)| weak.strong_count() > 0);
    let live = || list.iter().filter_map(|(_, _, weak)| weak.upgrade());
    if let Some(existing) =
        live().find(|other| (other.device, other.inode) == (mapping.device, mapping.inode))
    {
        return Ok(existing);
    }
    if mapping.memfd && live().any(|other| other.memfd && other.nonce() == mapping.nonce()) {
        return Err(refused(
            &mapping.name,
            "another memfd pool with the same nonce is attached (a copy of it?)",
        ));
    }
    let mapping = Arc::new(mapping);
    list.push((mapping.device, mapping.inode, Arc::downgrade(&mapping)));
    Ok(mapping)
}

/// Which user must own a pool file for this process to attach it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Owned {
    /// This user (`None`: this process's effective uid), root included.
    By(Option<u32>),
    /// Anyone (asked for in so many words; the file's permissions still apply).
    ByAnyone,
}

/// What a mapping may do with its pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// Attach: allocate, free, everything.
    ReadWrite,
    /// Inspect: read only (a mapping of this process's that can write serves too).
    ReadOnly,
}

/// Attaches pool `name` whose file is `path`, owned as `owned` says.
pub(crate) fn attach(name: &str, path: &Path, owned: Owned, access: Access) -> Result<Arc<Mapping>> {
    // Never blocks (a FIFO planted under a pool's name), never follows a link.
    let file = OpenOptions::new()
        .read(true)
        .write(access == Access::ReadWrite)
        .custom_flags(libc_flags::NOFOLLOW | libc_flags::CLOEXEC | libc_flags::NONBLOCK)
        .open(path)
        .map_err(|error| open_error(name, error, false))?;
    attach_file(file, name, &Place::Named(path.to_owned()), owned, access)
}

/// Attaches the pool whose file another process handed this one as `fd` (whoever owns it:
/// holding the descriptor is the permission).
pub(crate) fn attach_fd(fd: OwnedFd) -> Result<Arc<Mapping>> {
    let file = File::from(fd);
    // What the kernel calls the file: `/memfd:NAME (deleted)` for a memfd, else its path.
    let link = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).unwrap_or_default();
    let link = link.to_string_lossy();
    let (name, place) = match link.strip_prefix("/memfd:") {
        Some(rest) => {
            let file_name = rest.strip_suffix(" (deleted)").unwrap_or(rest);
            (name::from_file_name(file_name).unwrap_or(file_name).to_owned(), Place::Memfd)
        }
        None if link.starts_with('/') => {
            let path = PathBuf::from(link.strip_suffix(" (deleted)").unwrap_or(&link));
            let file_name = path.file_name().and_then(|f| f.to_str()).unwrap_or_default();
            (name::from_file_name(file_name).unwrap_or(file_name).to_owned(), Place::Named(path))
        }
        // No /proc to ask: treat it as anonymous (nothing to unlink).
        None => ("<received>".to_owned(), Place::Memfd),
    };
    if place == Place::Memfd {
        // Whoever sent it could otherwise shrink it under us (SIGBUS on the next access).
        let needed = rustix::fs::SealFlags::SHRINK | rustix::fs::SealFlags::GROW;
        if !rustix::fs::fcntl_get_seals(&file).is_ok_and(|seals| seals.contains(needed)) {
            return Err(refused(&name, "the memfd is not sealed against shrinking and growing"));
        }
    }
    attach_file(file, &name, &place, Owned::ByAnyone, Access::ReadWrite)
}

fn refused(name: &str, why: &str) -> PoolError {
    PoolError::Attach { name: name.to_owned(), source: io::Error::new(io::ErrorKind::InvalidInput, why) }
}

/// The memfd pool with this nonce among those mapped in this process (there is at most one:
/// `remember` refuses a memfd pool claiming the nonce of one already mapped).
pub(crate) fn find_mapped(nonce: u64) -> Option<Arc<Mapping>> {
    let list = mappings();
    list.iter()
        .filter_map(|(_, _, weak)| weak.upgrade())
        .find(|mapping| mapping.memfd && mapping.nonce() == nonce)
}

fn attach_file(file: File, name: &str, place: &Place, owned: Owned, access: Access) -> Result<Arc<Mapping>> {
    let meta = file.metadata().map_err(|source| PoolError::Attach { name: name.to_owned(), source })?;
    if !meta.file_type().is_file() {
        return Err(PoolError::Attach {
            name: name.to_owned(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
        });
    }
    if let Owned::By(expected) = owned {
        let expected = expected.unwrap_or_else(|| rustix::process::geteuid().as_raw());
        if meta.uid() != expected {
            return Err(PoolError::WrongOwner { name: name.to_owned(), owner: meta.uid(), expected });
        }
    }
    {
        let list = mappings();
        let existing = list
            .iter()
            .find(|(device, inode, _)| *device == meta.dev() && *inode == meta.ino())
            .and_then(|(_, _, weak)| weak.upgrade());
        if let Some(mapping) = existing {
            mapping.check_size()?;
            return Ok(mapping);
        }
    }
    // A creator initialises its file within READY_WAIT: a file nobody wrote for that long will
    // never become ready, so it is reported at once.
    let written = meta.modified().ok().and_then(|at| at.elapsed().ok()).unwrap_or(Duration::ZERO);
    let deadline = Instant::now() + READY_WAIT.saturating_sub(written);
    loop {
        match map_existing(&file, name, place, access) {
            // A read-only mapping is never shared: an attacher needs one it can write.
            Ok(mapping) if access == Access::ReadOnly => return Ok(Arc::new(mapping)),
            Ok(mapping) => return remember(mapping),
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

fn map_existing(file: &File, name: &str, place: &Place, access: Access) -> Result<Mapping> {
    let len = file.metadata().map_err(|source| PoolError::Attach { name: name.to_owned(), source })?.len();
    if len < (HEADER_WORDS * 8) as u64 {
        return Err(PoolError::NotAPool {
            name: name.to_owned(),
            cause: HeapError::RegionTooSmall { bytes: len },
        });
    }
    // A shared mapping of the whole file as it is now; its size is checked against the header
    // by `Heap::open` before any use beyond the header.
    let map = match access {
        Access::ReadWrite => MmapOptions::new().map_raw(file),
        Access::ReadOnly => MmapOptions::new().map_raw_read_only(file),
    }
    .map_err(|source| PoolError::Attach { name: name.to_owned(), source })?;
    let mapping = Mapping::new(file, map, name, place, &Heap::open);
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

/// Reads the nonce of the pool file at `path` without mapping it; `None` unless it is a regular
/// file this user owns (a descriptor without a name is only ever resolved to one of ours).
pub(crate) fn read_nonce(path: &Path) -> Option<u64> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc_flags::NOFOLLOW | libc_flags::CLOEXEC | libc_flags::NONBLOCK)
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    if !meta.file_type().is_file() || meta.uid() != rustix::process::geteuid().as_raw() {
        return None;
    }
    let mut word = [0u8; 8];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut word, (host::NONCE * 8) as u64).ok()?;
    Some(u64::from_le_bytes(word))
}

/// `open(2)` flags std does not name.
mod libc_flags {
    pub const NOFOLLOW: i32 = rustix::fs::OFlags::NOFOLLOW.bits() as i32;
    pub const CLOEXEC: i32 = rustix::fs::OFlags::CLOEXEC.bits() as i32;
    pub const NONBLOCK: i32 = rustix::fs::OFlags::NONBLOCK.bits() as i32;
}
