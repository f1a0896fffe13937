//! Claims map the metadata of the pages they open into this process ahead of use (issue 9):
//! an allocation whose head's page metadata this process had never touched stopped for a page
//! fault, and on the arrays workload those faults were most of the allocations' p99.

mod common;

use alloc_core::layout::{Geometry, DEFAULT_PAGE_SHIFT};
use alloc_shm::{Pool, PoolOptions, Space};
use common::TestPool;

const HOST_PAGE: u64 = 4096;

/// Whether each host page of `start..end` (addresses in this process) is in its page table:
/// bit 63 of its entry in `/proc/self/pagemap`.
fn mapped(start: u64, end: u64) -> Vec<bool> {
    use std::os::unix::fs::FileExt;
    let pagemap = std::fs::File::open("/proc/self/pagemap").expect("pagemap");
    let first = start / HOST_PAGE;
    let mut entries = vec![0u8; (end.div_ceil(HOST_PAGE) - first) as usize * 8];
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

#[test]
fn a_claim_maps_the_metadata_of_every_page_below_it() {
    let pool = TestPool::new("mapped-ahead", 128 << 20);
    // A run of 32 MiB: the claim itself writes the metadata of its head page only.
    let run = pool.alloc(32 << 20).expect("room");
    let (region, geo) = region_of(&pool);
    let end_page = (run.offset + run.capacity - geo.data_offset) >> DEFAULT_PAGE_SHIFT;
    let meta = mapped(region + geo.page_meta_offset(0), region + geo.page_meta_offset(end_page));
    let unmapped = meta.iter().filter(|&&present| !present).count();
    assert_eq!(
        unmapped,
        0,
        "{unmapped} of the {} pages of page metadata below the run are not mapped",
        meta.len()
    );
    pool.free(run.id()).expect("live");
}

#[test]
fn a_sparse_pool_maps_only_the_metadata_of_the_pages_it_used() {
    let options = PoolOptions { space: Space::Overcommit, ..PoolOptions::default() };
    let pool = TestPool::with_options("mapped-ahead-sparse", 16 << 30, &options);
    let run = pool.alloc(1 << 20).expect("room");
    let (region, geo) = region_of(&pool);
    let meta = mapped(region + geo.page_meta_offset(0), region + geo.page_meta_offset(geo.num_pages));
    let present = meta.iter().filter(|&&present| present).count();
    // What the first 4 MiB of data pages need (one backing chunk: 1024 pages' metadata).
    let chunk = (geo.page_meta_offset(1024) - geo.page_meta_offset(0)).div_ceil(HOST_PAGE) as usize + 1;
    assert!(
        present <= chunk,
        "{present} pages of page metadata mapped, of {}; one chunk's is {chunk}",
        meta.len()
    );
    assert!(present > 0, "the metadata of the pages used is mapped");
    pool.free(run.id()).expect("live");
}
