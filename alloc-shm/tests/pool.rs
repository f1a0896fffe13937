//! The pool API in one process: creation and naming rules, attach paths, descriptors, destroy,
//! RAII handles, and every bad input of SPEC that reaches this layer.

mod common;

use std::time::{Duration, Instant};

use alloc_shm::{AllocId, Owner, Pool, PoolError, PoolOptions};
use common::{unique_name, TestPool};

const MIB: u64 = 1 << 20;

#[test]
fn created_pools_are_private_files_rounded_to_pages() {
    let pool = TestPool::new("mode", 4 * MIB + 1);
    let meta = std::fs::metadata(pool.path()).expect("file exists");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(pool.size(), 4 * MIB + 4096);
    assert_eq!(pool.size(), meta.len());
    assert!(pool.data_bytes() > 4 * MIB * 95 / 100);
    pool.check().expect("fresh pool is consistent");
}

#[test]
fn bad_names_are_refused_before_touching_the_filesystem() {
    for name in ["", "a/b", "..", "../x", ".hidden", "nul\0", &"x".repeat(201)] {
        assert!(matches!(Pool::create(name, 4 * MIB), Err(PoolError::InvalidName { .. })), "{name:?}");
        assert!(matches!(Pool::attach_by_name(name), Err(PoolError::InvalidName { .. })), "{name:?}");
    }
}

#[test]
fn a_taken_name_is_an_error_and_create_or_attach_attaches() {
    let pool = TestPool::new("taken", 4 * MIB);
    assert!(matches!(Pool::create(pool.name(), 4 * MIB), Err(PoolError::AlreadyExists { .. })));
    let same = Pool::create_or_attach(pool.name(), 4 * MIB, &PoolOptions::default()).expect("attaches");
    assert_eq!(&same, pool.pool(), "one mapping per pool per process");
}

#[test]
fn impossible_sizes_are_refused() {
    for size in [0, 1, 4096, u64::MAX] {
        let name = unique_name("size");
        assert!(matches!(Pool::create(&name, size), Err(PoolError::InvalidSize { .. })), "{size}");
        assert!(!alloc_shm::name::path_in("/dev/shm".as_ref(), &name).exists());
    }
}

#[test]
fn attaching_a_missing_pool_says_not_found() {
    assert!(matches!(Pool::attach_by_name(&unique_name("missing")), Err(PoolError::NotFound { .. })));
}

/// An explicit expectation is enforced for everyone, root included (root ignored it before: seen
/// failing with the old assertion that root "may attach anything").
#[test]
fn attaching_checks_the_owner_uid() {
    let pool = TestPool::new("uid", 4 * MIB);
    let options = PoolOptions { uid: Some(12345), ..PoolOptions::default() };
    let result = Pool::attach_by_name_with(pool.name(), &options);
    assert!(
        matches!(result, Err(PoolError::WrongOwner { owner, expected: 12345, .. }) if owner == rustix_euid()),
        "{result:?}"
    );
    let anyone = PoolOptions { uid: Some(12345), any_owner: true, ..PoolOptions::default() };
    assert!(Pool::attach_by_name_with(pool.name(), &anyone).is_ok(), "asked for in so many words");
}

/// Root attaching another user's pool (a name squatted by that user, or a descriptor forged to
/// point at its file) must not happen unless asked for: that user would read what root writes.
/// Seen failing before the fix: root attached it by name and by descriptor. Needs root (to give
/// the file to another uid); elsewhere it says so and checks nothing more.
#[test]
fn root_attaches_another_users_pool_only_when_asked() {
    if rustix_euid() != 0 {
        eprintln!("SKIPPED: needs root to hand a pool file to another uid");
        return;
    }
    let pool = TestPool::new("squatted", 4 * MIB);
    let a = pool.alloc(64).expect("room");
    let descriptor = pool.alloc_descriptor(&a).expect("fits");
    let c_path = std::ffi::CString::new(pool.path().as_os_str().as_encoded_bytes()).expect("no NUL");
    // SAFETY: a valid C string; only the file's owner changes.
    assert_eq!(unsafe { libc::chown(c_path.as_ptr(), 4242, 4242) }, 0, "chown");
    // (Attaching checks the file's owner before it looks for this process's existing mapping.)
    let by_name = Pool::attach_by_name(pool.name());
    assert!(matches!(by_name, Err(PoolError::WrongOwner { owner: 4242, .. })), "{by_name:?}");
    let by_descriptor = Pool::attach_alloc(&descriptor).map(|_| ());
    assert!(matches!(by_descriptor, Err(PoolError::WrongOwner { owner: 4242, .. })), "{by_descriptor:?}");
    let asked = PoolOptions { any_owner: true, ..PoolOptions::default() };
    assert!(Pool::attach_by_name_with(pool.name(), &asked).is_ok(), "asked for in so many words");
}

fn rustix_euid() -> u32 {
    // The test runs as whoever runs it; the file's owner is that uid.
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(0)
}

#[test]
fn symlinks_and_garbage_files_are_not_pools() {
    let name = unique_name("garbage");
    let path = alloc_shm::name::path_in("/dev/shm".as_ref(), &name);
    std::fs::write(&path, vec![0xAB; 1 << 20]).expect("write garbage");
    let result = Pool::attach_by_name(&name);
    std::fs::remove_file(&path).expect("cleanup");
    assert!(matches!(result, Err(PoolError::NotAPool { .. })), "{result:?}");

    let target = TestPool::new("link-target", 4 * MIB);
    let link_name = unique_name("link");
    let link = alloc_shm::name::path_in("/dev/shm".as_ref(), &link_name);
    std::os::unix::fs::symlink(target.path(), &link).expect("symlink");
    let result = Pool::attach_by_name(&link_name);
    std::fs::remove_file(&link).expect("cleanup");
    assert!(matches!(result, Err(PoolError::Attach { .. })), "symlinks are refused: {result:?}");
}

#[test]
fn a_truncated_pool_file_is_refused_on_attach() {
    let pool = TestPool::new("truncated", 4 * MIB);
    let name = pool.name().to_owned();
    let path = pool.path().to_owned();
    let descriptor = pool.descriptor().expect("fits");
    drop(pool); // destroys and unlinks
                // Recreate a file of that name holding a valid-looking but truncated header copy.
    let real = Pool::create(&name, 4 * MIB).expect("create");
    let header = std::fs::read(&path).expect("read")[..8192].to_vec();
    real.destroy().expect("destroy");
    drop(real);
    std::fs::write(&path, &header).expect("write truncated copy");
    let by_name = Pool::attach_by_name(&name);
    let by_descriptor = Pool::attach(&descriptor);
    std::fs::remove_file(&path).expect("cleanup");
    assert!(matches!(by_name, Err(PoolError::NotAPool { .. })), "{by_name:?}");
    assert!(by_descriptor.is_err());
}

#[test]
fn descriptors_attach_and_find_allocations() {
    let pool = TestPool::new("descriptors", 4 * MIB);
    let a = pool.alloc(100).expect("space");
    pool.write(a.id(), 0, b"payload").expect("in range");
    let pool_bytes = pool.descriptor().expect("fits");
    let alloc_bytes = pool.alloc_descriptor(&a).expect("fits");
    assert!(pool_bytes.len() <= 128 && alloc_bytes.len() <= 128);
    assert_eq!(&Pool::attach(&pool_bytes).expect("attaches"), pool.pool());
    let (same_pool, same) = Pool::attach_alloc(&alloc_bytes).expect("attaches");
    assert_eq!(same, a);
    let mut buffer = [0u8; 7];
    same_pool.read(same.id(), 0, &mut buffer).expect("in range");
    assert_eq!(&buffer, b"payload");
    // A pool descriptor is not an allocation descriptor and vice versa.
    assert!(matches!(Pool::attach_alloc(&pool_bytes), Err(PoolError::InvalidDescriptor(_))));
    assert!(matches!(Pool::attach(&alloc_bytes), Err(PoolError::InvalidDescriptor(_))));
    // Garbage, truncated and tampered descriptors.
    for bad in [vec![], vec![0u8; 40], alloc_bytes[..alloc_bytes.len() - 3].to_vec()] {
        assert!(matches!(Pool::attach_alloc(&bad), Err(PoolError::InvalidDescriptor(_))));
    }
    // A freed allocation's descriptor is stale.
    pool.free(a.id()).expect("live");
    assert!(matches!(Pool::attach_alloc(&alloc_bytes), Err(PoolError::InvalidAllocation { .. })));
}

#[test]
fn long_names_fit_in_descriptors_by_nonce() {
    let name = unique_name(&"long".repeat(40));
    assert!(name.len() > 150);
    let pool = Pool::create(&name, 4 * MIB).expect("create");
    let a = pool.alloc(10).expect("space");
    let bytes = pool.alloc_descriptor(&a).expect("fits by nonce");
    assert!(bytes.len() <= 128);
    let (found, same) = Pool::attach_alloc(&bytes).expect("found by nonce");
    assert_eq!(found, pool);
    assert_eq!(same, a);
    pool.destroy().expect("destroy");
}

#[test]
fn destroyed_pools_fail_cleanly_in_every_handle_and_descriptor() {
    let pool = TestPool::new("destroyed", 4 * MIB);
    let a = pool.alloc(64).expect("space");
    let descriptor = pool.alloc_descriptor(&a).expect("fits");
    let other_handle = pool.pool().clone();
    pool.destroy().expect("destroy");
    assert!(!pool.path().exists());
    assert!(other_handle.is_destroyed());
    assert!(matches!(other_handle.alloc(10), Err(PoolError::Destroyed { .. })));
    assert!(matches!(other_handle.free(a.id()), Err(PoolError::Destroyed { .. })));
    assert!(matches!(other_handle.lookup(a.id()), Err(PoolError::Destroyed { .. })));
    assert!(matches!(Pool::attach_alloc(&descriptor), Err(PoolError::Destroyed { .. })));
    // A new pool under the same name is not the old one.
    let reborn = Pool::create(pool.name(), 4 * MIB).expect("name is free again");
    assert!(matches!(Pool::attach_alloc(&descriptor), Err(PoolError::Destroyed { .. })));
    reborn.destroy().expect("destroy");
}

#[test]
fn bad_frees_and_reads_are_errors_and_change_nothing() {
    let pool = TestPool::new("bad-free", 4 * MIB);
    let keep = pool.alloc(64).expect("space");
    pool.write(keep.id(), 0, &[7; 64]).expect("in range");
    let gone = pool.alloc(64).expect("space");
    pool.free(gone.id()).expect("live");
    let before = pool.stats().expect("stats");
    assert!(matches!(pool.free(gone.id()), Err(PoolError::InvalidAllocation { .. })));
    assert!(matches!(pool.free(AllocId::from_u128(u128::MAX)), Err(PoolError::InvalidAllocation { .. })));
    assert!(matches!(
        pool.free(AllocId::from_u128(keep.id().to_u128() + 1)),
        Err(PoolError::InvalidAllocation { .. })
    ));
    assert!(matches!(pool.write(keep.id(), 60, &[0; 8]), Err(PoolError::InvalidAllocation { .. })));
    assert!(matches!(pool.read(keep.id(), u64::MAX, &mut [0; 2]), Err(PoolError::InvalidAllocation { .. })));
    assert!(matches!(pool.alloc(u64::MAX), Err(PoolError::TooLarge { .. })));
    assert_eq!(pool.stats().expect("stats"), before);
    let mut buffer = [0u8; 64];
    pool.read(keep.id(), 0, &mut buffer).expect("live");
    assert_eq!(buffer, [7; 64]);
    pool.check().expect("consistent");
}

#[test]
fn alloc_blocking_times_out_on_time_and_tries_once_with_zero() {
    let pool = TestPool::new("timeout", 4 * MIB);
    let mut held = Vec::new();
    while let Ok(a) = pool.alloc(64 * 1024) {
        held.push(a);
    }
    assert!(matches!(pool.alloc_blocking(64 * 1024, Some(Duration::ZERO)), Err(PoolError::Timeout { .. })));
    let started = Instant::now();
    let result = pool.alloc_blocking(64 * 1024, Some(Duration::from_millis(120)));
    let waited = started.elapsed();
    assert!(matches!(result, Err(PoolError::Timeout { .. })));
    assert!(waited >= Duration::from_millis(120) && waited < Duration::from_secs(3), "{waited:?}");
    assert_eq!(pool.waiters(), 0);
}

#[test]
fn alloc_blocking_is_woken_by_a_free_from_another_thread() {
    let pool = TestPool::new("wake", 4 * MIB);
    let mut held = Vec::new();
    while let Ok(a) = pool.alloc(64 * 1024) {
        held.push(a);
    }
    let victim = held.pop().expect("something was allocated");
    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| pool.alloc_blocking(64 * 1024, Some(Duration::from_secs(20))));
        let watchdog = Instant::now();
        while pool.waiters() == 0 {
            assert!(watchdog.elapsed() < Duration::from_secs(20), "waiter never blocked");
            std::thread::sleep(Duration::from_millis(1));
        }
        pool.free(victim.id()).expect("live");
        let got = waiter.join().expect("no panic").expect("woken by the free");
        // In the room the free made; not always at its first page: a try that meets the end of the
        // free may find that page still marked by the freer, and claims never wait for another.
        assert!((victim.offset..victim.offset + victim.size).contains(&got.offset), "{got:?} {victim:?}");
    });
}

#[test]
fn owned_handles_and_arenas_free_what_they_hold() {
    let pool = TestPool::new("raii", 4 * MIB);
    {
        let owned = pool.alloc_owned(1000).expect("space");
        assert!(pool.contains(owned.allocation().id()));
        let arena = pool.arena();
        for size in [1, 100, 10_000] {
            arena.alloc(size).expect("space");
        }
        assert_eq!(arena.len(), 3);
        assert_eq!(pool.stats().expect("stats").live_allocations, 4);
    }
    assert_eq!(pool.stats().expect("stats").live_allocations, 0);
    let kept = pool.alloc_owned(10).expect("space").into_inner();
    assert!(pool.contains(kept.id()), "into_inner keeps the allocation");
    pool.check().expect("consistent");
}

#[test]
fn local_pools_cache_blocks_and_give_them_back_on_drop() {
    let pool = TestPool::new("local", 4 * MIB);
    {
        let mut local = pool.local();
        let blocks: Vec<_> = (0..100).map(|_| local.alloc(64).expect("space")).collect();
        for a in &blocks {
            local.free(a.id()).expect("live");
        }
        assert!(pool.stats().expect("stats").cached_blocks > 0);
    }
    let stats = pool.check().expect("consistent");
    assert_eq!((stats.live_allocations, stats.cached_blocks), (0, 0));
}

#[test]
fn ownership_can_be_handed_over_or_given_to_the_pool() {
    let pool = TestPool::new("owner", 4 * MIB);
    let a = pool.alloc(64).expect("space");
    let me = pool.me().expect("registered");
    assert_eq!(a.owner, me);
    assert_eq!(pool.pid_of(me), Some(std::process::id()));
    pool.give_to_pool(a.id()).expect("live");
    assert_eq!(pool.lookup(a.id()).expect("live").owner, Owner::POOL);
    assert_eq!(pool.pid_of(Owner::POOL), None);
    let report = pool.reclaim_dead().expect("consistent");
    assert!(report.freed.is_empty(), "pool-owned allocations are never reclaimed");
    pool.adopt(a.id()).expect("live");
    assert_eq!(pool.lookup(a.id()).expect("live").owner, me);
    assert!(matches!(pool.owner_of(999_999_999), Err(PoolError::NoSuchProcess { .. })));
    assert!(matches!(pool.set_owner(a.id(), Owner(4000)), Err(PoolError::InvalidArgument(_))));
    assert_eq!(pool.lookup(a.id()).expect("live").owner, me, "a refused hand-over changes nothing");
}

#[test]
fn a_forked_child_records_its_own_pid_as_owner() {
    let pool = TestPool::new("fork", 4 * MIB);
    let parent = pool.alloc(64).expect("space");
    assert_eq!(pool.pid_of(parent.owner), Some(std::process::id()));
    let (reader, mut writer) = std::io::pipe().expect("pipe");
    // SAFETY: the child only allocates, writes to a pipe and leaves with `_exit`; it touches
    // no lock another thread of the test harness could have held at the fork.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let child = pool.alloc(64).is_ok_and(|a| pool.pid_of(a.owner) == Some(std::process::id()));
        let _ = std::io::Write::write_all(&mut writer, &[u8::from(child)]);
        // SAFETY: leaves the forked copy of the test harness without running its destructors.
        unsafe { libc::_exit(0) };
    }
    assert!(pid > 0, "fork failed");
    drop(writer);
    let mut verdict = [0u8; 1];
    std::io::Read::read_exact(&mut &reader, &mut verdict).expect("child reported");
    assert_eq!(verdict[0], 1, "the child recorded its own pid, not the parent's");
}

#[test]
fn attach_waits_for_a_pool_that_is_still_being_created() {
    // A private directory keeps this test's files apart from /dev/shm's other pools.
    let dir = std::path::PathBuf::from(format!("/dev/shm/shmpool-test-dir-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let options = PoolOptions { dir: dir.clone(), ..PoolOptions::default() };
    let finished = Pool::create_with("finished", 4 * MIB, &options).expect("create");
    let image = std::fs::read(finished.path()).expect("read");
    finished.destroy().expect("destroy");
    // Another "creator" has just opened the file, empty, and finishes it 200 ms later the way
    // `Pool::create` does: size the file, write everything, the state word last.
    let path = alloc_shm::name::path_in(&dir, "slow");
    std::fs::write(&path, b"").expect("empty file");
    let writer = std::thread::spawn({
        let path = path.clone();
        move || {
            use std::os::unix::fs::FileExt;
            std::thread::sleep(Duration::from_millis(200));
            let file = std::fs::OpenOptions::new().write(true).open(&path).expect("open");
            file.set_len(image.len() as u64).expect("size");
            let status_at = 8 * alloc_core::layout::header::STATUS;
            let mut without_status = image.clone();
            without_status[status_at..status_at + 8].fill(0);
            file.write_all_at(&without_status, 0).expect("contents");
            file.write_all_at(&image[status_at..status_at + 8], status_at as u64).expect("ready");
        }
    });
    let started = Instant::now();
    let attached = Pool::attach_by_name_with("slow", &options);
    writer.join().expect("writer");
    assert!(started.elapsed() >= Duration::from_millis(150), "attach did not wait");
    let pool = attached.expect("attached once the creator finished");
    pool.check().expect("a valid pool");
    // A file that never gets finished is reported as not ready, after a bounded wait.
    let stuck = alloc_shm::name::path_in(&dir, "stuck");
    std::fs::write(&stuck, b"").expect("empty file");
    let started = Instant::now();
    let result = Pool::attach_by_name_with("stuck", &options);
    assert!(matches!(result, Err(PoolError::NotReady { .. })), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    pool.detach();
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// Issue 13, defect 4, with a real second user: a name squatted by a pool that user created
/// (a process running as uid 4242) is not attached by root's `create_or_attach`, nor by name,
/// unless asked for. Needs root (to run a process as another uid).
#[test]
fn root_never_attaches_a_pool_another_user_created_under_its_name() {
    use std::os::unix::process::CommandExt;
    if rustix_euid() != 0 {
        eprintln!("SKIPPED: needs root to run a process as another uid");
        return;
    }
    let name = common::unique_name("squatter");
    let created = std::process::Command::new(env!("CARGO_BIN_EXE_shmpool-child"))
        .args(["create", &name, "1"])
        .uid(4242)
        .gid(4242)
        .output()
        .expect("ran");
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let anyone = PoolOptions { any_owner: true, ..PoolOptions::default() };
    let squatted = Pool::attach_by_name_with(&name, &anyone).expect("the squatter's pool");
    let outcome = Pool::create_or_attach(&name, 4 * MIB, &PoolOptions::default()).map(|_| ());
    let by_name = Pool::attach_by_name(&name).map(|_| ());
    squatted.destroy().expect("removed");
    assert!(matches!(outcome, Err(PoolError::WrongOwner { owner: 4242, .. })), "{outcome:?}");
    assert!(matches!(by_name, Err(PoolError::WrongOwner { owner: 4242, .. })), "{by_name:?}");
}
