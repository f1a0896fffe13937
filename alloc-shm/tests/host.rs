//! What the operating system does with a pool's file never turns into a crash or a cost the
//! user did not ask for: statistics on huge sparse pools, space on the filesystem.

mod common;

use std::os::unix::fs::MetadataExt;

use alloc_shm::{Pool, PoolOptions};
use common::TestPool;

const MIB: u64 = 1 << 20;
const TIB: u64 = 1 << 40;

/// Bytes of the file actually allocated (tmpfs: pages in memory).
fn resident(pool: &Pool) -> u64 {
    std::fs::metadata(pool.path()).expect("exists").blocks() * 512
}

/// Issue 8 (seen failing before the fix: stats on a 1 TiB pool walked the whole page bitmap,
/// and reading untouched tmpfs pages allocates them: 64 MiB more resident per call). Every
/// walk (stats, check, iteration, inspection, reclaim) stops at the highest page ever claimed.
#[test]
fn walks_of_a_huge_sparse_pool_touch_only_what_it_used() {
    let options = PoolOptions { space: alloc_shm::Space::Overcommit, ..PoolOptions::default() };
    let pool = TestPool::with_options("sparse", TIB, &options);
    let small = pool.alloc(64).expect("room");
    let large = pool.alloc(3 * MIB).expect("room");
    let before = resident(&pool);
    let stats = pool.stats().expect("stats");
    assert_eq!(stats.live_allocations, 2);
    assert!(stats.largest_free_run > stats.data_bytes - 64 * MIB, "{stats:?}");
    pool.check().expect("consistent");
    assert_eq!(pool.iter().count(), 2);
    pool.reclaim_dead().expect("nothing dead");
    let inspected = Pool::inspect_by_name_with(pool.name(), &PoolOptions::default()).expect("readable");
    assert_eq!(inspected.stats().expect("stats").live_allocations, 2);
    let grown = resident(&pool) - before;
    assert!(grown <= MIB, "walks made {grown} bytes of the pool resident");
    pool.free(small.id()).expect("live");
    pool.free(large.id()).expect("live");
}
