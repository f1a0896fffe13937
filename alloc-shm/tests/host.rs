//! What the operating system does with a pool's file never turns into a crash or a cost the
//! user did not ask for: statistics on huge sparse pools, space on the filesystem.

mod common;

use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use alloc_shm::{Pool, PoolError, PoolOptions, Space};
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
    let options = PoolOptions { space: Space::Overcommit, ..PoolOptions::default() };
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

/// A filesystem mounted for one test; unmounted when dropped.
struct Mount(std::path::PathBuf);

impl Mount {
    /// A small tmpfs (as Docker's 64 MB /dev/shm).
    fn tmpfs(mib: u64) -> Option<Mount> {
        Mount::new("tmpfs", &format!("size={mib}m,mode=1777"))
    }

    /// A hugetlbfs of 2 MiB pages (as /dev/hugepages).
    fn hugetlbfs() -> Option<Mount> {
        Mount::new("hugetlbfs", "pagesize=2M,mode=1777")
    }

    fn new(kind: &str, options: &str) -> Option<Mount> {
        let dir = std::env::temp_dir().join(common::unique_name(kind));
        std::fs::create_dir(&dir).expect("mount point");
        let mounted = std::process::Command::new("mount")
            .args(["-t", kind, "-o", options, kind])
            .arg(&dir)
            .output()
            .is_ok_and(|output| output.status.success());
        if !mounted {
            let _ = std::fs::remove_dir(&dir);
            eprintln!("SKIPPED: mounting a {kind} is not permitted here");
            return None;
        }
        Some(Mount(dir))
    }

    fn options(&self, space: Space) -> PoolOptions {
        PoolOptions { dir: self.0.clone(), space, ..PoolOptions::default() }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Issue 8 (seen failing before the fix: a 256 MiB pool was created on a 32 MiB tmpfs without
/// a word). A pool must fit in its filesystem's free space unless overcommit is asked for;
/// `Reserve` takes the space up front.
#[test]
fn a_pool_larger_than_its_filesystems_free_space_is_refused_unless_asked_for() {
    let Some(tmpfs) = Mount::tmpfs(32) else { return };
    let check = tmpfs.options(Space::Check);
    let refused = Pool::create_with("too-big", 256 * MIB, &check);
    match &refused {
        Err(error @ PoolError::NoSpace { needed, available, .. }) => {
            assert!(*needed >= 256 * MIB && *available <= 32 * MIB, "{error}");
            let said = error.to_string();
            assert!(said.contains(&tmpfs.0.display().to_string()) && said.contains("overcommit"), "{said}");
        }
        other => panic!("{other:?}"),
    }
    assert!(!tmpfs.0.join("shmpool-too-big").exists(), "nothing left behind");

    let reserved = Pool::create_with("reserved", 20 * MIB, &tmpfs.options(Space::Reserve)).expect("fits");
    assert!(resident(&reserved) >= 20 * MIB, "the whole file is allocated");
    let second = Pool::create_with("second", 16 * MIB, &check).map(|_| ());
    assert!(matches!(second, Err(PoolError::NoSpace { .. })), "{second:?}");
    let second = Pool::create_with("second", 16 * MIB, &tmpfs.options(Space::Reserve)).map(|_| ());
    assert!(matches!(second, Err(PoolError::NoSpace { .. })), "{second:?}");
    assert!(!tmpfs.0.join("shmpool-second").exists(), "nothing left behind");
    let sparse =
        Pool::create_with("sparse", 256 * MIB, &tmpfs.options(Space::Overcommit)).expect("asked for");
    let a = reserved.alloc(8 * MIB).expect("room");
    reserved.write(a.id(), 0, &[7; 4096]).expect("reserved pages never fault");
    reserved.check().expect("consistent");
    sparse.destroy().expect("removed");
    reserved.destroy().expect("removed");
}

/// Runs `shmpool-child fill` on `pool` (filling its filesystem with `hog` after the pool, if
/// given): the number of 1 MiB blocks it allocated and wrote and of the blocks it then put in
/// the hole of two of them, or how it died.
fn fill_in_child(pool: &Pool, hog: Option<&std::path::Path>) -> Result<(u64, u64), String> {
    let descriptor = alloc_shm::descriptor::to_hex(&pool.descriptor().expect("fits"));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_shmpool-child"))
        .args(["fill", &descriptor])
        .args(hog)
        .output()
        .expect("ran");
    let said = String::from_utf8_lossy(&output.stderr).into_owned();
    let count = |prefix| said.lines().find_map(|line| line.strip_prefix(prefix)?.parse().ok());
    match (count("@@ filled "), count("@@ refilled ")) {
        (Some(filled), Some(refilled)) if output.status.success() => Ok((filled, refilled)),
        _ => Err(format!("{:?}: {said}", output.status)),
    }
}

/// Issue 8 (seen failing before the fix: the writer died of SIGBUS). When the filesystem runs
/// out of space under a pool (another file took it, or the pool was overcommitted), the
/// allocation that would need new pages fails with `Full`; whatever was handed out can be
/// written. Review of issue 8 (seen failing before the fix: SIGBUS on the first class-list
/// word of a class, and on a bitmap word above the backed pages read by a search): allocations
/// of every size in the pages still backed touch no metadata without memory behind it.
#[test]
fn a_filesystem_running_out_of_space_fails_allocations_instead_of_killing_the_writer() {
    let Some(tmpfs) = Mount::tmpfs(32) else { return };
    let overcommitted =
        Pool::create_with("overcommitted", 256 * MIB, &tmpfs.options(Space::Overcommit)).expect("asked for");
    let hog = tmpfs.0.join("hog");
    let filled = fill_in_child(&overcommitted, Some(&hog));
    let _ = std::fs::remove_file(&hog);
    let held = overcommitted.stats().expect("stats").live_allocations;
    let checked = overcommitted.check();
    overcommitted.destroy().expect("removed");
    drop(overcommitted); // (its pages go back to the tmpfs with the last mapping)
    let (filled, refilled) = filled.expect("the writer lived");
    checked.expect("consistent");
    assert!((16..32).contains(&filled) && refilled > 0, "{filled} blocks, then {refilled}");
    assert_eq!(held, filled - 2 + refilled);

    // A checked pool that fit when created; then another file takes most of the space.
    let checked = Pool::create_with("checked", 24 * MIB, &tmpfs.options(Space::Check)).expect("fits");
    std::fs::write(&hog, vec![1u8; 20 << 20]).expect("room for the hog");
    let filled = fill_in_child(&checked, None);
    checked.check().expect("consistent");
    checked.destroy().expect("removed");
    let _ = std::fs::remove_file(&hog);
    let (filled, _) = filled.expect("the writer lived");
    assert!(filled < 16, "{filled} blocks");
}

/// Issue 8 (seen failing before: `create(n + 1 MiB).alloc(n)` failed for n = 100 MB, the
/// metadata's share being undocumented). `size_for_data(n)` is the smallest pool that holds one
/// allocation of `n` bytes, and `shmpool info` shows the overhead.
#[test]
fn a_pool_sized_for_its_data_holds_it_in_one_allocation() {
    for n in [1, 2048, 4097, 100_000_000, 3 << 30] {
        let size = Pool::size_for_data(n).expect("a size");
        let options = PoolOptions { space: Space::Overcommit, ..PoolOptions::default() };
        let pool = TestPool::with_options("for-data", size, &options);
        let a = pool.alloc(n).unwrap_or_else(|error| panic!("{n} in a pool of {size}: {error}"));
        pool.free(a.id()).expect("live");
        if n >= 1 << 20 {
            let smaller = TestPool::with_options("for-data-less", size - 64 * 1024, &options);
            assert!(smaller.alloc(n).is_err(), "{n}: {size} is not the smallest");
        }
    }
    assert!(Pool::size_for_data(u64::MAX).is_err());
    let pool = TestPool::new("overhead", 64 * MIB);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_shmpool"))
        .args(["info", pool.name()])
        .output()
        .expect("ran");
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(said.contains("metadata"), "{said}");
}

/// Issue 8 (seen failing before the fix: the next access after another process truncated the
/// pool's file died of SIGBUS). Attaching again and `check` look at the file's size first.
#[test]
fn a_truncated_pool_file_is_reported_not_touched() {
    let pool = TestPool::new("truncated", 4 * MIB);
    let a = pool.alloc(64).expect("room");
    let file = std::fs::OpenOptions::new().write(true).open(pool.path()).expect("ours");
    file.set_len(64 * 1024).expect("truncated");
    let again = Pool::attach_by_name(pool.name()).map(|_| ());
    assert!(matches!(again, Err(PoolError::Truncated { .. })), "{again:?}");
    let checked = pool.check().map(|_| ());
    match checked {
        Err(error @ PoolError::Truncated { .. }) => assert!(error.to_string().contains("memfd"), "{error}"),
        other => panic!("{other:?}"),
    }
    let _ = a;
}

/// Issue 8: a named pool in a hugetlbfs directory is made of huge pages (its size rounded up to
/// them), and works across processes as any named pool. Skipped (saying why) where mounting
/// is not permitted or too few huge pages are free; `scripts/test` reserves some where it may.
#[test]
fn a_named_pool_on_hugetlbfs_is_made_of_huge_pages() {
    if !common::huge_pages_free(8) {
        return;
    }
    let Some(mount) = Mount::hugetlbfs() else { return };
    let options = PoolOptions { dir: mount.0.clone(), huge_pages: true, ..PoolOptions::default() };
    let pool = Pool::create_with("huge", 13 * MIB, &options).expect("enough huge pages");
    assert_eq!(pool.size(), 14 * MIB, "rounded up to whole huge pages");
    assert_eq!(common::kernel_page_kib(&pool.path().display().to_string()), Some(2048));
    let again = Pool::attach_by_name_with("huge", &options).expect("attached");
    assert!(again == pool);
    let (filled, refilled) = fill_in_child(&pool, None).expect("the writer lived");
    let held = pool.stats().expect("stats").live_allocations;
    assert!(filled >= 8 && held == filled - 2 + refilled, "{filled}, then {refilled}");
    pool.check().expect("consistent");
    pool.destroy().expect("removed");
}

extern "C" fn ignore_signal(_: libc::c_int) {}

/// Review of issue 8 (seen failing before the fix, on a huge page pool: allocations failed
/// with `Full` in a pool with plenty of room). `fallocate` on hugetlbfs (and on tmpfs before
/// Linux 6.x) gives up with EINTR when a signal is pending, and a process that handles signals
/// (a timer, a profiler, Python's SIGINT) gets them at any time: backing pages retries.
#[test]
fn signals_during_the_backing_of_pages_do_not_fail_allocations() {
    // SAFETY: installs a handler that does nothing for SIGUSR1, which no other test uses.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = ignore_signal as extern "C" fn(libc::c_int) as usize;
        assert_eq!(libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut()), 0);
    }
    allocate_under_signals(&TestPool::new("signals", 512 * MIB));
    if common::huge_pages_free(16) {
        let options = PoolOptions { huge_pages: true, ..PoolOptions::default() };
        let pool = Pool::create_memfd_with("signals", 32 * MIB, &options).expect("enough huge pages");
        allocate_under_signals(&pool);
    }
}

/// Allocates 1 MiB blocks (three quarters of `pool`) while another thread sends this one
/// signals as fast as it can; every allocation must succeed.
fn allocate_under_signals(pool: &Pool) {
    let count = pool.size() / MIB * 3 / 4;
    // SAFETY: our own thread's handle, used while this thread runs (the sender is joined below).
    let me = unsafe { libc::pthread_self() } as usize;
    let (stop, sent) = (AtomicBool::new(false), AtomicU64::new(0));
    let held = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: the target thread is alive until `stop` is set and this thread joined.
                unsafe { libc::pthread_kill(me as libc::pthread_t, libc::SIGUSR1) };
                sent.fetch_add(1, Ordering::Relaxed);
            }
        });
        while sent.load(Ordering::Relaxed) == 0 {
            std::hint::spin_loop();
        }
        let held: Vec<_> = (0..count).map(|_| pool.alloc(MIB)).collect();
        stop.store(true, Ordering::Relaxed);
        held
    });
    let failed = held.iter().filter(|result| result.is_err()).count();
    assert_eq!(failed, 0, "{:?}", held.iter().find(|result| result.is_err()));
    pool.check().expect("consistent");
}
