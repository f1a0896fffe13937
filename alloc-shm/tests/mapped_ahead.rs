//! Claims map the metadata of the pages they open into this process ahead of use (issue 9):
//! an allocation whose head's page metadata this process had never touched stopped for a page
//! fault, and on the arrays workload those faults were most of the allocations' p99.

mod common;

use alloc_core::layout::{Geometry, DEFAULT_PAGE_SHIFT};
use alloc_shm::{Pool, PoolOptions, Space};
use common::TestPool;

const MIB: u64 = 1 << 20;

/// This machine's page size.
fn host_page() -> u64 {
    // SAFETY: sysconf reads a constant.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as u64 }
}

/// Whether the kernel can map pages ahead (`MADV_POPULATE_WRITE`, Linux 5.14 on) and this
/// process can see its page table (`/proc/self/pagemap`); if not, says that the test is skipped
/// and why (pages then fault in as they are first used).
fn can_map_ahead() -> bool {
    let page = host_page() as usize;
    // SAFETY: a private anonymous page of our own, advised, then unmapped.
    let supported = unsafe {
        let at = libc::mmap(
            std::ptr::null_mut(),
            page,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(at, libc::MAP_FAILED, "mmap of one page");
        let advised = libc::madvise(at, page, libc::MADV_POPULATE_WRITE) == 0;
        libc::munmap(at, page);
        advised
    };
    if !supported {
        eprintln!("skipped: this kernel has no MADV_POPULATE_WRITE (pages fault in when first used)");
        return false;
    }
    let readable = std::fs::File::open("/proc/self/pagemap").is_ok();
    if !readable {
        eprintln!("skipped: /proc/self/pagemap cannot be read here, so what is mapped cannot be seen");
    }
    readable
}

/// Whether each host page of `start..end` (addresses in this process) is in its page table:
/// bit 63 of its entry in `/proc/self/pagemap`.
fn mapped(start: u64, end: u64) -> Vec<bool> {
    use std::os::unix::fs::FileExt;
    let pagemap = std::fs::File::open("/proc/self/pagemap").expect("pagemap");
    let first = start / host_page();
    let mut entries = vec![0u8; (end.div_ceil(host_page()) - first) as usize * 8];
    pagemap.read_exact_at(&mut entries, first * 8).expect("pagemap entries");
    entries.chunks_exact(8).map(|entry| entry[7] >> 7 == 1).collect()
}

/// The address of `pool`'s region in this process, and its layout.
fn region_of(pool: &Pool) -> (u64, Geometry) {
    let probe = pool.alloc(64).expect("room");
    let region = pool.bytes_ptr(probe.id()).expect("live").0 as u64 - probe.offset;
    pool.free(probe.id()).expect("live");
    (region, Geometry::compute(pool.size(), DEFAULT_PAGE_SHIFT).expect("geometry"))
}

/// How many host pages of the page metadata of data pages `0..end` are not mapped here.
fn unmapped_metadata(pool: &Pool, end: u64) -> (usize, usize) {
    let (region, geo) = region_of(pool);
    let meta = mapped(region + geo.page_meta_offset(0), region + geo.page_meta_offset(end));
    (meta.iter().filter(|&&present| !present).count(), meta.len())
}

/// The data pages below the end of `run`.
fn pages_below_end(pool: &Pool, run: &alloc_shm::Allocation) -> u64 {
    let (_, geo) = region_of(pool);
    (run.offset + run.capacity - geo.data_offset) >> DEFAULT_PAGE_SHIFT
}

#[test]
fn a_claim_maps_the_metadata_of_every_page_below_it() {
    if !can_map_ahead() {
        return;
    }
    let pool = TestPool::new("mapped-ahead", 128 * MIB);
    // A run of 32 MiB: the claim itself writes the metadata of its head page only.
    let run = pool.alloc(32 * MIB).expect("room");
    let (unmapped, of) = unmapped_metadata(&pool, pages_below_end(&pool, &run));
    assert_eq!(unmapped, 0, "{unmapped} of the {of} pages of page metadata below the run are not mapped");
    pool.free(run.id()).expect("live");
}

#[test]
fn a_fork_child_maps_ahead_for_itself() {
    if !can_map_ahead() {
        return;
    }
    let pool = TestPool::new("mapped-ahead-fork", 128 * MIB);
    let run = pool.alloc(32 * MIB).expect("room");
    pool.free(run.id()).expect("live");
    // SAFETY: the child claims, looks at its own page table, and exits with what it found.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // The parent's page-table entries of the shared mapping are not the child's.
        let unmapped = match pool.alloc(32 * MIB) {
            Ok(run) => unmapped_metadata(&pool, pages_below_end(&pool, &run)).0.min(100) as i32,
            Err(_) => 101,
        };
        // SAFETY: exits at once, with the count as status.
        unsafe { libc::_exit(unmapped) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(libc::WIFEXITED(status), "the child did not exit");
    let unmapped = libc::WEXITSTATUS(status);
    assert_ne!(unmapped, 101, "the child's allocation failed");
    assert_eq!(unmapped, 0, "in the child, {unmapped} pages of page metadata below its run are not mapped");
}

/// Whether this pool's pages may be huge (a tmpfs mounted `huge=` other than `never`, or
/// shared huge pages forced): one fault then maps 2 MiB, and what is mapped says nothing of
/// what was mapped ahead; if so, says that the test is skipped and why.
fn small_pages_only(pool: &Pool) -> bool {
    let forced = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/shmem_enabled")
        .is_ok_and(|text| text.contains("[force]"));
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let huge_mount = mounts
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() > 3 && pool.path().starts_with(fields[1]))
                .then(|| (fields[1].len(), fields[3].to_owned()))
        })
        .max()
        .is_some_and(|(_, options)| options.split(',').any(|o| o.starts_with("huge=") && o != "huge=never"));
    if forced || huge_mount {
        eprintln!("skipped: the pool's pages may be huge here (tmpfs huge= or shmem_enabled=force)");
    }
    !(forced || huge_mount)
}

#[test]
fn a_sparse_pool_maps_only_the_metadata_of_the_pages_it_used() {
    let options = PoolOptions { space: Space::Overcommit, ..PoolOptions::default() };
    let pool = TestPool::with_options("mapped-ahead-sparse", 16 << 30, &options);
    if !can_map_ahead() || !small_pages_only(&pool) {
        return;
    }
    let run = pool.alloc(MIB).expect("room");
    let (region, geo) = region_of(&pool);
    let meta = mapped(region + geo.page_meta_offset(0), region + geo.page_meta_offset(geo.num_pages));
    let present = meta.iter().filter(|&&present| present).count();
    // What the first 4 MiB of data pages need (one backing chunk: 1024 pages' metadata).
    let chunk = (geo.page_meta_offset(1024) - geo.page_meta_offset(0)).div_ceil(host_page()) as usize + 1;
    assert!(
        present <= chunk,
        "{present} pages of page metadata mapped, of {}; one chunk's is {chunk}",
        meta.len()
    );
    assert!(present > 0, "the metadata of the pages used is mapped");
    pool.free(run.id()).expect("live");
}
