//! The allocators the benchmarks compare, behind one small trait, and the workloads they run.
//! Each thread gets its own `Subject` (a process's view of the pool, for the shared-memory
//! allocators), as it would in real use.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use alloc_core::{AllocId, AllocOptions, Cache, Heap, ProcessIdentity, Region, Session};

/// One participant's handle on an allocator.
pub trait Subject {
    /// What an allocation is known by.
    type Block: Copy;
    /// Allocates `size` bytes; panics when the allocator is out of memory (a bench bug).
    fn alloc(&mut self, size: u64) -> Self::Block;
    /// Frees a block this subject's allocator handed out.
    fn free(&mut self, block: Self::Block);
}

/// Anonymous shared memory (as a pool file would be), unmapped on drop.
pub struct SharedMemory {
    base: *mut u8,
    bytes: usize,
}

// SAFETY: the mapping is plain memory shared by design; all access goes through `Region`.
unsafe impl Sync for SharedMemory {}
// SAFETY: as above; the owner may move between threads.
unsafe impl Send for SharedMemory {}

impl SharedMemory {
    /// Maps `bytes` of zeroed shared memory.
    pub fn new(bytes: usize) -> SharedMemory {
        // SAFETY: a fresh anonymous mapping; unmapped in `drop`.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED, "mmap of {bytes} bytes failed");
        SharedMemory { base: base.cast(), bytes }
    }

    /// The mapping as a region.
    pub fn region(&self) -> Region<'_> {
        // SAFETY: the mapping lives as long as `self` and is used only through regions and
        // allocation-owned byte accesses.
        unsafe { Region::from_raw(self.base, self.bytes) }.expect("page aligned")
    }

    /// Creates a heap in it and returns the creator's view, with the fences a pool of alloc-shm
    /// uses on this machine (asymmetric with membarrier where the kernel offers it).
    pub fn create_heap(&self) -> Heap<'_> {
        Heap::create(self.region(), alloc_core::layout::DEFAULT_PAGE_SHIFT, platform()).expect("large enough")
    }

    /// Another participant's view of the heap made by [`SharedMemory::create_heap`].
    pub fn open_heap(&self) -> Heap<'_> {
        Heap::open(self.region(), platform()).expect("valid")
    }
}

/// What alloc-shm hands the core on this machine (see `alloc_shm::process::barrier`).
pub fn platform() -> alloc_core::Platform {
    alloc_core::Platform { heavy_fence: alloc_shm::process::barrier(), ..alloc_core::Platform::SYMMETRIC }
}

impl Drop for SharedMemory {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping; every borrow of it has ended.
        unsafe { libc::munmap(self.base.cast(), self.bytes) };
    }
}

/// A process identity for a bench participant that stands in for a process of its own: a
/// made-up pid that no other such participant of this run gets (namespace 0: unknown). The
/// core never asks whether it is alive; only `reclaim_dead` would, and the benches never call it.
pub fn bench_process() -> ProcessIdentity {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    ProcessIdentity { pid: NEXT.fetch_add(1, Ordering::Relaxed), start_time: 1, namespace: 0 }
}

/// Registers a new process on `heap` (see [`bench_process`]) and one participant of it.
pub fn register(heap: &Heap<'_>) -> Session {
    let owner = heap.register_process(bench_process()).expect("room in the process table");
    heap.register_participant(owner).expect("room in the participant table")
}

/// How a [`Shm`] participant reaches the heap.
enum Participant {
    /// Through its cache (which holds its session).
    Cached(Box<Cache>),
    /// Straight to the shared spans.
    Uncached(Session),
}

/// shmpool's heap, one view per participant (each standing in for a process: its own `Heap`
/// view, process record and participant record), with its own cache (the fast path a host
/// uses) or without one (every operation on the shared spans).
pub struct Shm<'a> {
    heap: Heap<'a>,
    participant: Participant,
}

impl<'a> Shm<'a> {
    /// A participant using a cache.
    pub fn cached(heap: Heap<'a>) -> Shm<'a> {
        let cache = Box::new(Cache::new(register(&heap)));
        Shm { heap, participant: Participant::Cached(cache) }
    }

    /// A participant going to the shared spans for every operation.
    pub fn uncached(heap: Heap<'a>) -> Shm<'a> {
        let session = register(&heap);
        Shm { heap, participant: Participant::Uncached(session) }
    }
}

impl Subject for Shm<'_> {
    type Block = AllocId;
    #[inline]
    fn alloc(&mut self, size: u64) -> AllocId {
        let options = AllocOptions::default();
        match &mut self.participant {
            Participant::Cached(cache) => self.heap.alloc_with(cache, size, options),
            Participant::Uncached(session) => self.heap.alloc(session, size, options),
        }
        .expect("bench pool large enough")
        .id()
    }
    #[inline]
    fn free(&mut self, block: AllocId) {
        let _ = match &mut self.participant {
            Participant::Cached(cache) => self.heap.free_with(cache, block),
            Participant::Uncached(session) => self.heap.free(session, block),
        }
        .expect("live");
    }
}

/// A pointer that may cross threads (each block is used by one thread at a time).
#[derive(Clone, Copy)]
pub struct Ptr(pub NonNull<u8>);
// SAFETY: the benchmark hands each block to one thread at a time.
unsafe impl Send for Ptr {}

/// glibc `malloc`/`free` (std's `System` allocator on Linux calls exactly these).
pub struct Glibc;

impl Subject for Glibc {
    type Block = Ptr;
    #[inline]
    fn alloc(&mut self, size: u64) -> Ptr {
        // SAFETY: plain malloc; the result is checked for null.
        Ptr(NonNull::new(unsafe { libc::malloc(size as usize) }.cast()).expect("malloc"))
    }
    #[inline]
    fn free(&mut self, block: Ptr) {
        // SAFETY: `block` came from malloc and is freed once.
        unsafe { libc::free(block.0.as_ptr().cast()) }
    }
}

/// rts-alloc, the lock-free shared-memory allocator from Anza, one worker per participant.
pub struct Rts(pub rts_alloc::Allocator);

/// The largest request rts-alloc serves.
pub const RTS_MAX_SIZE: u64 = 4096;

impl Rts {
    /// Creates an rts-alloc pool of `bytes` in a memfd, for up to `workers` participants.
    pub fn create(bytes: usize, workers: u32) -> Rts {
        // SAFETY: memfd_create with a static name; the fd is owned by the File below.
        let fd = unsafe { libc::memfd_create(c"rts-bench".as_ptr(), 0) };
        assert!(fd >= 0, "memfd_create failed");
        // SAFETY: `fd` is a fresh descriptor we own.
        let file = unsafe { File::from_raw_fd(fd) };
        // SAFETY: created once for this file; others join it.
        Rts(unsafe { rts_alloc::Allocator::create(&file, bytes, workers, 1 << 20) }.expect("rts create"))
    }

    /// Another participant on the same mapping.
    pub fn join(&self) -> Rts {
        Rts(rts_alloc::Allocator::join_from_existing(&self.0).expect("a free worker slot"))
    }
}

impl Subject for Rts {
    type Block = Ptr;
    #[inline]
    fn alloc(&mut self, size: u64) -> Ptr {
        Ptr(self.0.allocate(size as u32).expect("rts pool large enough"))
    }
    #[inline]
    fn free(&mut self, block: Ptr) {
        // SAFETY: `block` came from this pool's allocate and is freed once.
        unsafe { self.0.free(block.0) }
    }
}

/// Sizes log-uniform in `lo..=hi`, from a fixed seed, so every allocator sees the same list.
pub fn log_uniform_sizes(count: usize, lo: u64, hi: u64, seed: u64) -> Vec<u64> {
    let mut state = seed | 1;
    let (ln_lo, ln_hi) = ((lo as f64).ln(), (hi as f64).ln());
    (0..count)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let unit = (state >> 11) as f64 / (1u64 << 53) as f64;
            ((ln_lo + unit * (ln_hi - ln_lo)).exp() as u64).clamp(lo, hi)
        })
        .collect()
}

/// `iters` alloc+free pairs with nothing else live. `sizes.len()` is a power of two, so that
/// picking a size costs a mask, not a division.
#[inline(never)]
pub fn pairs_without_working_set<S: Subject>(subject: &mut S, sizes: &[u64], iters: u64) {
    let mask = size_mask(sizes);
    for i in 0..iters as usize {
        let block = subject.alloc(sizes[i & mask]);
        subject.free(std::hint::black_box(block));
    }
}

fn size_mask(sizes: &[u64]) -> usize {
    assert!(sizes.len().is_power_of_two(), "size lists have a power-of-two length");
    sizes.len() - 1
}

/// Blocks kept live in the working-set workloads.
pub const WORKING_SET: usize = 1024;

/// `iters` alloc+free pairs against a ring of `WORKING_SET` live blocks: each pair frees the
/// oldest block and allocates its replacement.
#[inline(never)]
pub fn pairs_with_working_set<S: Subject>(subject: &mut S, sizes: &[u64], iters: u64) {
    let mask = size_mask(sizes);
    let mut ring: Vec<S::Block> = (0..WORKING_SET).map(|i| subject.alloc(sizes[i & mask])).collect();
    for i in 0..iters as usize {
        let slot = i % WORKING_SET;
        subject.free(ring[slot]);
        ring[slot] = subject.alloc(sizes[(i + 7) & mask]);
    }
    for block in ring {
        subject.free(block);
    }
}

/// Builds the Boost.Interprocess peer `benches/cpp/NAME.cpp` next to the running benchmark
/// (only where the Boost headers are installed); its path, or `None` without Boost.
pub fn build_boost(name: &str) -> Option<std::path::PathBuf> {
    if !std::path::Path::new("/usr/include/boost/interprocess/managed_shared_memory.hpp").exists() {
        return None;
    }
    let source = format!("{}/cpp/{name}.cpp", env!("CARGO_MANIFEST_DIR"));
    let binary = std::env::current_exe().ok()?.with_file_name(name);
    let built = std::process::Command::new("g++")
        .args(["-O2", "-std=c++17", &source, "-o"])
        .arg(&binary)
        .args(["-lrt", "-lpthread"])
        .status()
        .ok()?;
    built.success().then_some(binary)
}

/// The value after the command-line flag `name` (`--pages 1024`), or `default`.
pub fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The next number of the splitmix64 sequence from `state` (the arrays workload's generator).
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
