//! Pools in anonymous memfds (issue 8): sealed against truncation, handed to other processes
//! as file descriptors over Unix sockets, gone when the last process holding one closes it or
//! dies; and memfds of huge pages.

mod common;

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Child, Command, Stdio};

use alloc_shm::descriptor::{write_end, write_frame};
use alloc_shm::{verify, Pool, PoolError, PoolOptions, Space};
use common::{kernel_page_kib, unique_name};

const MIB: u64 = 1 << 20;

/// A listening socket at a unique path, removed when dropped.
struct Listener {
    path: std::path::PathBuf,
    listener: UnixListener,
}

impl Listener {
    fn new() -> Listener {
        let path = std::env::temp_dir().join(format!("shmpool-{}.sock", unique_name("socket")));
        let listener = UnixListener::bind(&path).expect("bind");
        Listener { path, listener }
    }

    /// The child role's pool argument: receive the pool from this socket.
    fn arg(&self) -> String {
        format!("unix:{}", self.path.display())
    }

    /// Sends `pool` to the next process that connects.
    fn send(&self, pool: &Pool) {
        let (stream, _) = self.listener.accept().expect("the child connects");
        pool.send(&stream).expect("sent");
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn child(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_shmpool-child"))
        .args(args)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawned")
}

/// Processes (pid, what) that map or hold open memfd pool `name`, from all of `/proc`.
fn holders(name: &str) -> Vec<(u32, &'static str)> {
    let memfd = format!("/memfd:shmpool-{name} ");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let maps = std::fs::read_to_string(entry.path().join("maps")).unwrap_or_default();
        if maps.contains(&memfd) {
            found.push((pid, "maps it"));
        }
        for fd in std::fs::read_dir(entry.path().join("fd")).into_iter().flatten().flatten() {
            let link = std::fs::read_link(fd.path()).unwrap_or_default();
            if format!("{} ", link.display()).starts_with(&memfd) {
                found.push((pid, "holds it open"));
            }
        }
    }
    found
}

fn memfd_pool(label: &str, size: u64) -> (String, Pool) {
    let name = unique_name(label);
    let pool = Pool::create_memfd(&name, size).expect("memfd pool");
    (name, pool)
}

/// A memfd pool goes to another process over a socket; allocation descriptors then resolve
/// there, its bytes are the same, and once both processes let go nothing of it is left.
#[test]
fn a_memfd_pool_travels_over_a_socket_and_vanishes_with_its_last_holder() {
    let (name, pool) = memfd_pool("memfd-travel", 8 * MIB);
    assert!(pool.is_memfd() && pool.path().starts_with("/proc/self/fd"));
    let listener = Listener::new();
    let mut receiver = child(&["receive", &listener.arg()]);
    listener.send(&pool);
    let mut stdin = receiver.stdin.take().expect("piped");
    for size in [8, 100, 5000, 3 * MIB] {
        let allocation = pool.alloc(size).expect("room");
        verify::fill(&pool, &allocation).expect("live");
        pool.give_to_pool(allocation.id()).expect("live");
        write_frame(&mut stdin, &pool.alloc_descriptor(&allocation).expect("fits")).expect("sent");
    }
    write_end(&mut stdin).expect("sent");
    stdin.flush().expect("sent");
    drop(stdin);
    let output = receiver.wait_with_output().expect("ran");
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && said.contains("@@ verified 4 failed 0"), "{said}");
    assert_eq!(pool.check().expect("consistent").live_allocations, 0, "the receiver freed them all");
    assert!(!holders(&name).is_empty(), "this process holds it");
    drop(pool);
    assert_eq!(holders(&name), [], "nothing is left once the last holder let go");
}

/// Issue 8: nobody can truncate a memfd pool under the others (the cause of SIGBUS in a named
/// pool), grow it, or add a seal that would stop others from mapping it writable.
#[test]
fn a_memfd_pool_is_sealed_against_resizing() {
    let (_, pool) = memfd_pool("memfd-sealed", 4 * MIB);
    let a = pool.alloc(64).expect("room");
    let file = std::fs::OpenOptions::new().read(true).write(true).open(pool.path()).expect("this process's");
    assert!(file.set_len(64 * 1024).is_err(), "shrunk");
    assert!(file.set_len(8 * MIB).is_err(), "grown");
    let write_seal = rustix::fs::fcntl_add_seals(&file, rustix::fs::SealFlags::FUTURE_WRITE);
    assert_eq!(write_seal, Err(rustix::io::Errno::PERM), "seals are sealed");
    assert_eq!(file.metadata().expect("stat").len(), 4 * MIB);
    pool.free(a.id()).expect("live");
    pool.check().expect("consistent");
}

/// A process killed while it holds allocations of a memfd pool: `reclaim_dead` gives them
/// back, and once the survivors let go, the kernel has freed it (nothing to clean up).
#[test]
fn a_killed_holder_of_a_memfd_pool_is_reclaimed_and_leaves_nothing() {
    let (name, pool) = memfd_pool("memfd-killed", 16 * MIB);
    let listener = Listener::new();
    let mut churner = child(&["churn", &listener.arg(), "7"]);
    listener.send(&pool);
    common::wait_ready(&mut churner);
    std::thread::sleep(std::time::Duration::from_millis(50));
    churner.kill().expect("killed");
    churner.wait().expect("reaped");
    pool.reclaim_dead().expect("reclaimed");
    let stats = pool.check().expect("consistent");
    assert_eq!(stats.live_allocations, 0, "{stats:?}");
    assert!(pool.alloc(pool.data_bytes() / 2).is_ok(), "the dead process's pages came back");
    drop(pool);
    assert_eq!(holders(&name), []);
}

/// A memfd pool's descriptors resolve only in processes that have the pool; elsewhere the
/// error says what to do. A descriptor received twice, or the file descriptor attached again,
/// gives the same mapping.
#[test]
fn descriptors_of_a_memfd_pool_resolve_only_where_it_was_received() {
    let (_, pool) = memfd_pool("memfd-descriptors", 4 * MIB);
    let a = pool.alloc(64).expect("room");
    let descriptor = pool.alloc_descriptor(&a).expect("fits");
    assert!(descriptor.len() < 70, "no path in it: {} bytes", descriptor.len());
    let (same, found) = Pool::attach_alloc(&descriptor).expect("this process has it");
    assert!(same == pool && found.id() == a.id());
    let again = Pool::from_fd(rustix::io::dup(&pool).expect("dup")).expect("attached");
    assert!(again == pool, "one mapping per pool and process");

    let mut stranger = child(&["receive"]);
    let mut stdin = stranger.stdin.take().expect("piped");
    write_frame(&mut stdin, &descriptor).expect("sent");
    write_end(&mut stdin).expect("sent");
    drop(stdin);
    let output = stranger.wait_with_output().expect("ran");
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && said.contains("has not received"), "{said}");
    pool.free(a.id()).expect("live");

    let nonce = pool.nonce();
    let wrong_size = alloc_shm::descriptor::PoolDescriptor {
        location: alloc_shm::descriptor::Location::Memfd,
        nonce,
        bytes: 8 * MIB,
    };
    let wrong = Pool::attach(&wrong_size.to_bytes()).map(|_| ());
    assert!(matches!(wrong, Err(PoolError::NotReceived { .. })), "{wrong:?}");
    drop((pool, same, again));
    let described = alloc_shm::descriptor::PoolDescriptor {
        location: alloc_shm::descriptor::Location::Memfd,
        nonce,
        bytes: 4 * MIB,
    };
    let gone = Pool::attach(&described.to_bytes()).map(|_| ());
    assert!(matches!(gone, Err(PoolError::NotReceived { .. })), "{gone:?}");
}

/// A socket message that is not a pool (no file descriptor, or the descriptor of another pool)
/// is refused with a clear error, and what came with it is closed.
#[test]
fn receiving_something_else_than_a_pool_is_refused() {
    let (_, pool) = memfd_pool("memfd-refused", 4 * MIB);
    let (_, other) = memfd_pool("memfd-other", 4 * MIB);
    let (mut ours, theirs) = UnixStream::pair().expect("pair");
    ours.write_all(&pool.descriptor().expect("fits")).expect("sent");
    let no_fd = Pool::receive(&theirs).map(|_| ());
    assert!(matches!(no_fd, Err(PoolError::InvalidDescriptor(_))), "{no_fd:?}");
    // Another pool's descriptor, with this pool's file descriptor: a mix-up, refused.
    let mixed = other.descriptor().expect("fits");
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
    let fds = [std::os::fd::AsFd::as_fd(&pool)];
    assert!(control.push(rustix::net::SendAncillaryMessage::ScmRights(&fds)));
    rustix::net::sendmsg(
        &ours,
        &[std::io::IoSlice::new(&mixed)],
        &mut control,
        rustix::net::SendFlags::empty(),
    )
    .expect("sent");
    let mixed = Pool::receive(&theirs).map(|_| ());
    assert!(matches!(mixed, Err(PoolError::InvalidDescriptor(_))), "{mixed:?}");
    drop(ours);
    let closed = Pool::receive(&theirs).map(|_| ());
    assert!(matches!(closed, Err(PoolError::Io { .. })), "{closed:?}");
}

/// A memfd pool must fit in the memory available, unless overcommit is asked for (a sparse
/// memfd pool then costs what it uses).
#[test]
fn a_memfd_pool_larger_than_memory_is_refused_unless_asked_for() {
    let name = unique_name("memfd-huge-sparse");
    let refused = Pool::create_memfd(&name, 1 << 50).map(|_| ());
    match refused {
        Err(error @ PoolError::NoMemory { .. }) => {
            assert!(error.to_string().contains("overcommit"), "{error}")
        }
        other => panic!("{other:?}"),
    }
    let options = PoolOptions { space: Space::Overcommit, ..PoolOptions::default() };
    let sparse = Pool::create_memfd_with(&name, 1 << 40, &options).expect("asked for");
    let a = sparse.alloc(MIB).expect("room");
    let stats = sparse.check().expect("consistent");
    assert_eq!(stats.live_allocations, 1);
    sparse.free(a.id()).expect("live");
    assert!(holders(&name).len() >= 2, "mapped and held by this process");
    drop(sparse);
    assert_eq!(holders(&name), []);
}

/// Issue 8: asking for more huge pages than the system has is refused, naming the way out.
#[test]
fn pools_of_huge_pages_are_refused_clearly_where_too_few_are_free() {
    let total: u64 = std::fs::read_to_string("/proc/sys/vm/nr_hugepages")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0);
    let options = PoolOptions { huge_pages: true, ..PoolOptions::default() };
    let name = unique_name("huge-refused");
    let refused = Pool::create_memfd_with(&name, (total + 1) * 2 * MIB, &options).map(|_| ());
    match refused {
        Err(error @ PoolError::NoHugePages { needed, free, page_size, .. }) => {
            assert!(needed > free && page_size == 2 * MIB, "{error}");
            assert!(error.to_string().contains("nr_hugepages"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(holders(&name), [], "nothing left of the refused pool");
    let named = Pool::create_with(&name, 4 * MIB, &options).map(|_| ());
    assert!(matches!(named, Err(PoolError::InvalidArgument(_))), "/dev/shm has no huge pages: {named:?}");
}

/// A memfd pool of huge pages where the system has some: backed by 2 MiB pages, sized in
/// them, and usable from another process. Skipped (saying why) where too few are free;
/// `scripts/test` reserves some where it may.
#[test]
fn a_memfd_pool_of_huge_pages_is_backed_by_them() {
    if !common::huge_pages_free(8) {
        return;
    }
    let name = unique_name("huge-memfd");
    let options = PoolOptions { huge_pages: true, ..PoolOptions::default() };
    let pool = Pool::create_memfd_with(&name, 15 * MIB, &options).expect("enough huge pages");
    assert_eq!(pool.size(), 16 * MIB, "rounded up to whole huge pages");
    assert_eq!(kernel_page_kib(&format!("memfd:shmpool-{name}")), Some(2048));
    let listener = Listener::new();
    let mut receiver = child(&["receive", &listener.arg()]);
    listener.send(&pool);
    let allocation = pool.alloc(3 * MIB).expect("room");
    verify::fill(&pool, &allocation).expect("live");
    let mut stdin = receiver.stdin.take().expect("piped");
    write_frame(&mut stdin, &pool.alloc_descriptor(&allocation).expect("fits")).expect("sent");
    write_end(&mut stdin).expect("sent");
    drop(stdin);
    let output = receiver.wait_with_output().expect("ran");
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && said.contains("@@ verified 1 failed 0"), "{said}");
    pool.check().expect("consistent");
}

/// A copy of `pool`'s bytes in a new memfd, sealed as a pool's (`sealed`) or not at all.
fn copy_of(pool: &Pool, sealed: bool) -> std::os::fd::OwnedFd {
    use std::os::unix::fs::FileExt;
    let mut bytes = vec![0; pool.size() as usize];
    let source = std::fs::File::from(rustix::io::dup(pool).expect("dup"));
    source.read_exact_at(&mut bytes, 0).expect("read");
    let flags = match sealed {
        true => rustix::fs::MemfdFlags::ALLOW_SEALING,
        false => rustix::fs::MemfdFlags::empty(),
    };
    let copy = std::fs::File::from(rustix::fs::memfd_create("shmpool-look-alike", flags).expect("memfd"));
    copy.write_all_at(&bytes, 0).expect("written");
    if sealed {
        let seals = rustix::fs::SealFlags::SHRINK | rustix::fs::SealFlags::GROW;
        rustix::fs::fcntl_add_seals(&copy, seals).expect("sealed");
    }
    copy.into()
}

/// Review of issue 8 (seen failing before the fix: both were attached). A memfd that is not
/// sealed against shrinking could be truncated under this process by whoever sent it (SIGBUS
/// on the next access): it is refused. A memfd pool whose header claims the nonce of another
/// memfd pool this process holds (a copy, or a forgery) is refused too, so that descriptors
/// naming that nonce keep resolving to the pool they were made for.
#[test]
fn an_unsealed_memfd_or_a_look_alike_of_a_held_pool_is_refused() {
    let (_, pool) = memfd_pool("memfd-look-alike", 4 * MIB);
    let a = pool.alloc(64).expect("room");
    let unsealed = Pool::from_fd(copy_of(&pool, false)).map(|_| ());
    match &unsealed {
        Err(error @ PoolError::Attach { .. }) => assert!(error.to_string().contains("sealed"), "{error}"),
        other => panic!("{other:?}"),
    }
    let look_alike = Pool::from_fd(copy_of(&pool, true)).map(|_| ());
    match &look_alike {
        Err(error @ PoolError::Attach { .. }) => assert!(error.to_string().contains("nonce"), "{error}"),
        other => panic!("{other:?}"),
    }
    let descriptor = pool.alloc_descriptor(&a).expect("fits");
    let (found, _) = Pool::attach_alloc(&descriptor).expect("resolves");
    assert!(found == pool);
    pool.free(a.id()).expect("live");
}

/// Review 9 of issue 8, finding 5 (seen failing before the fix: 7 to 11 of 2000 attaches
/// refused in each of 5 runs). Thread A and thread B each get a duplicate descriptor of one memfd pool that
/// this process does not map yet. Both miss the (device, inode) lookup, both map it, A
/// remembers its mapping, then B's `find_mapped(nonce)` finds A's and B is refused with
/// "another memfd pool with the same nonce is attached (a copy of it?)": its own pool.
#[test]
fn two_threads_attaching_one_memfd_pool_at_once_both_succeed() {
    let mut failures = Vec::new();
    for _ in 0..1000 {
        let fd: std::os::fd::OwnedFd = {
            let pool = Pool::create_memfd(&unique_name("race"), 4 << 20).expect("created");
            std::os::fd::AsFd::as_fd(&pool).try_clone_to_owned().expect("dup")
            // The pool's mapping goes; the memfd lives on in `fd`.
        };
        let barrier = std::sync::Barrier::new(2);
        let results: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    let fd = fd.try_clone().expect("dup");
                    let barrier = &barrier;
                    scope.spawn(move || {
                        barrier.wait();
                        Pool::from_fd(fd).map(|_| ()).map_err(|e| e.to_string())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("no panic")).collect()
        });
        failures.extend(results.into_iter().filter_map(Result::err));
    }
    assert!(failures.is_empty(), "{} of 2000 attaches failed, e.g. {}", failures.len(), failures[0]);
}
