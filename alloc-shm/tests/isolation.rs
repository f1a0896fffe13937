//! Isolation between processes that cannot see each other: liveness across PID namespaces
//! (containers sharing /dev/shm), and fork children that use a pool without ever calling it.

mod common;

use std::process::{Command, Stdio};

use common::{unique_name, TestPool};

const CHILD: &str = env!("CARGO_BIN_EXE_shmpool-child");
const TOOL: &str = env!("CARGO_BIN_EXE_shmpool");
const MIB: u64 = 1 << 20;

/// Runs the tool with `args` in a new PID namespace (with its own /proc), as a container sharing
/// /dev/shm would; `None` where this machine does not let us unshare.
fn tool_in_new_pid_namespace(args: &[&str]) -> Option<(bool, String)> {
    let probe = Command::new("unshare").args(["--pid", "--fork", "--mount-proc", "true"]).output();
    if !probe.is_ok_and(|output| output.status.success()) {
        eprintln!("SKIPPED: `unshare --pid --fork --mount-proc` is not permitted here");
        return None;
    }
    let output = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", TOOL])
        .args(args)
        .output()
        .expect("unshare ran");
    let text =
        String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    Some((output.status.success(), text))
}

/// Seen failing before the fix: `gc` in another PID namespace destroyed the pool of this live
/// process (its pid does not exist there), and `repair` ran without `--force` under it.
#[test]
fn a_process_in_another_pid_namespace_never_declares_this_one_dead() {
    let pool = TestPool::new("pidns", 8 * MIB);
    let mine = pool.alloc(1000).expect("room");
    let Some((ok, reclaimed)) = tool_in_new_pid_namespace(&["reclaim", pool.name()]) else { return };
    assert!(ok, "{reclaimed}");
    assert_eq!(
        pool.lookup(mine.id()).ok().map(|a| a.offset),
        Some(mine.offset),
        "reclaim freed a live allocation: {reclaimed}"
    );
    let (ok, collected) = tool_in_new_pid_namespace(&["gc"]).expect("unshare worked above");
    assert!(ok, "{collected}");
    assert!(!pool.is_destroyed() && pool.path().exists(), "gc destroyed a pool in use: {collected}");
    assert!(
        collected.contains(pool.name()) && collected.contains("namespace"),
        "gc says why it kept it: {collected}"
    );
    let (ok, repaired) = tool_in_new_pid_namespace(&["repair", pool.name()]).expect("unshare worked above");
    assert!(!ok && repaired.contains("namespace"), "repair ran under a live process: {repaired}");
    let (_, listed) = tool_in_new_pid_namespace(&["info", pool.name()]).expect("unshare worked above");
    assert!(listed.contains("another PID namespace"), "info says what it cannot judge: {listed}");
    pool.check().expect("consistent");
    pool.free(mine.id()).expect("still ours");
}

/// Seen failing before the fix: a process that used a pool forked and exited; its child
/// (which inherited the mapping, and may read what it points to, but never called into the
/// pool) was not recorded as attached, so `gc` destroyed the pool under it.
#[test]
fn a_fork_child_keeps_its_pool_from_being_collected() {
    let name = unique_name("forkgc");
    let run = |args: &[&str]| {
        let output = Command::new(CHILD).args(args).stderr(Stdio::piped()).output().expect("child ran");
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{args:?}: {stderr}");
        stderr
    };
    // Created by a process that exits, used by another that forks and exits: only the fork
    // child (and no process of this test) is left using it.
    run(&["create", &name, "8"]);
    let reported = run(&["fork-hold", &name, "60"]);
    let grandchild: i32 = reported
        .lines()
        .find_map(|line| line.strip_prefix("@@ forked "))
        .and_then(|pid| pid.trim().parse().ok())
        .expect("the child reports its fork");
    let path = alloc_shm::name::path_in("/dev/shm".as_ref(), &name);
    let collected = Command::new(TOOL).arg("gc").output().expect("gc ran");
    let kept = path.exists();
    // SAFETY: a plain signal to the process the child made (its pid was just reported).
    unsafe { libc::kill(grandchild, libc::SIGKILL) };
    let leftover = alloc_shm::Pool::attach_by_name(&name).and_then(|pool| pool.destroy());
    assert!(kept, "gc destroyed a pool a fork child uses: {}", String::from_utf8_lossy(&collected.stdout));
    leftover.expect("the pool was still there to destroy");
}

/// Runs `body` in a thread and fails if it takes longer than `limit` (a hang shows as a failure
/// instead of stopping the suite; the stuck thread is left behind).
fn within<T: Send + 'static>(
    limit: std::time::Duration,
    what: &str,
    body: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(body());
    });
    receiver.recv_timeout(limit).unwrap_or_else(|_| panic!("{what} hung"))
}

/// A file with a pool's name that another user (or a mistake) put in /dev/shm, removed when
/// dropped.
struct Planted(std::path::PathBuf);

impl Drop for Planted {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Plants a FIFO under a pool's name: as another user (uid 4242) where this test runs as root.
fn plant_fifo(label: &str) -> (String, Planted) {
    let name = unique_name(label);
    let path = alloc_shm::name::path_in("/dev/shm".as_ref(), &name);
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL");
    // SAFETY: a valid C string; mkfifo only creates the node.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o666) }, 0, "mkfifo");
    if rustix::process::geteuid().as_raw() == 0 {
        // SAFETY: as above; only the node's owner changes.
        assert_eq!(unsafe { libc::chown(c_path.as_ptr(), 4242, 4242) }, 0, "chown");
    } else {
        eprintln!("(not root: the FIFO is planted by this user, not another)");
    }
    (name, Planted(path))
}

/// Seen failing before the fix: finding a pool by its nonce opened every `shmpool-*` file for
/// reading without O_NONBLOCK, so a FIFO planted in /dev/shm hung `attach` forever.
#[test]
fn planted_fifos_never_hang_attach_or_the_tool() {
    let (fifo_name, _fifo) = plant_fifo("fifo");
    let (_, _own_fifo) = {
        let (name, planted) = plant_fifo("own-fifo");
        let path = planted.0.clone();
        let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL");
        let me = rustix::process::geteuid().as_raw();
        // SAFETY: a valid C string; the node is given back to this user.
        assert_eq!(unsafe { libc::chown(c_path.as_ptr(), me, me) }, 0, "chown");
        (name, planted)
    };
    let pool = TestPool::new("fifo-victim", 4 * MIB);
    let a = pool.alloc(64).expect("room");
    let mut described =
        alloc_shm::descriptor::AllocDescriptor::from_bytes(&pool.alloc_descriptor(&a).expect("fits"))
            .expect("valid");
    described.pool.location = alloc_shm::descriptor::Location::ByNonce;
    let bytes = described.to_bytes();
    let limit = std::time::Duration::from_secs(5);
    let found = within(limit, "attaching by nonce past a FIFO", move || {
        alloc_shm::Pool::attach_alloc(&bytes).map(|(_, allocation)| allocation.offset)
    });
    assert_eq!(found.ok(), Some(a.offset), "the pool is found past the FIFO");
    let name = fifo_name.clone();
    let attached =
        within(limit, "attaching a FIFO by name", move || alloc_shm::Pool::attach_by_name(&name).is_err());
    assert!(attached, "a FIFO is not a pool");
    for args in [vec!["ls"], vec!["gc"], vec!["info", fifo_name.as_str()], vec!["rm", fifo_name.as_str()]] {
        let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
        let shown = format!("shmpool {}", args.join(" "));
        within(limit, &shown, move || Command::new(TOOL).args(&args).output().expect("tool ran"));
    }
    pool.free(a.id()).expect("live");
}

/// Seen failing before the fix (2 s each): a zero-filled file with a pool's name, left long
/// ago, made every attach of it (and so `ls` and `gc`) wait for a creator that will never
/// finish initialising it.
#[test]
fn an_old_blank_file_is_reported_at_once() {
    let name = unique_name("blank");
    let path = alloc_shm::name::path_in("/dev/shm".as_ref(), &name);
    let _planted = Planted(path.clone());
    let file = std::fs::File::create(&path).expect("create");
    file.set_len(1 << 20).expect("size");
    let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    file.set_modified(long_ago).expect("backdate");
    drop(file);
    let started = std::time::Instant::now();
    let attached = alloc_shm::Pool::attach_by_name(&name);
    assert!(attached.is_err(), "a blank file is not a pool");
    assert!(
        started.elapsed() < std::time::Duration::from_millis(500),
        "attach waited {:?}",
        started.elapsed()
    );
}

/// Seen failing before the fix: `shmpool ls | head -1` (the reader gone before the tool writes)
/// panicked on the broken pipe instead of ending quietly.
#[test]
fn the_tool_ends_quietly_when_its_reader_goes_away() {
    let _pool = TestPool::new("pipe-reader", 4 * MIB);
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let output = Command::new(TOOL).arg("ls").stdout(writer).stderr(Stdio::piped()).output().expect("ran");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(output.status.code(), Some(101), "a panic's exit code");
}

/// Seen failing before the fix: a mode with setuid/setgid/sticky bits made such a pool file.
#[test]
fn a_pool_files_mode_keeps_only_permission_bits() {
    use std::os::unix::fs::PermissionsExt;
    let name = unique_name("mode");
    let options = alloc_shm::PoolOptions { mode: 0o6777, ..alloc_shm::PoolOptions::default() };
    let pool = alloc_shm::Pool::create_with(&name, 4 * MIB, &options).expect("created");
    let mode = std::fs::metadata(pool.path()).expect("exists").permissions().mode();
    pool.destroy().expect("destroyed");
    assert_eq!(mode & 0o7000, 0, "mode {mode:o}");
}

/// Seen failing before the fix: a recorded pid of 0xFFFFFFFF became `kill(-1, 0)`, which
/// succeeds for root (every process), so such a record looked alive for ever.
#[test]
fn pids_outside_the_pid_range_are_never_alive() {
    for pid in [0, u32::MAX, i32::MAX as u32 + 1] {
        assert!(!alloc_shm::process_alive(pid), "pid {pid}");
    }
    assert!(alloc_shm::process_alive(std::process::id()));
}

/// Seen failing before the fix: `rm` of a file it could not read as a pool (another layout
/// version, or anything else with a pool's name) unlinked it without a word, although
/// processes may be using it. It now refuses unless --force; and `rm` of a pool in use by
/// another live process warns before destroying it.
#[test]
fn rm_removes_what_it_cannot_read_as_a_pool_only_when_forced_and_warns_about_users() {
    let name = unique_name("notapool");
    let path = alloc_shm::name::path_in("/dev/shm".as_ref(), &name);
    let _planted = Planted(path.clone());
    std::fs::write(&path, vec![7u8; 1 << 16]).expect("write");
    let refused = Command::new(TOOL).args(["rm", &name]).output().expect("ran");
    assert!(!refused.status.success() && path.exists(), "{}", String::from_utf8_lossy(&refused.stdout));
    assert!(String::from_utf8_lossy(&refused.stdout).contains("--force"));
    let forced = Command::new(TOOL).args(["rm", "--force", &name]).output().expect("ran");
    assert!(forced.status.success() && !path.exists(), "{}", String::from_utf8_lossy(&forced.stdout));

    let pool = TestPool::new("rm-in-use", 4 * MIB);
    let _ = pool.alloc(64).expect("room: this process is attached and alive");
    let removed = Command::new(TOOL).args(["rm", pool.name()]).output().expect("ran");
    let said = String::from_utf8_lossy(&removed.stdout);
    assert!(removed.status.success() && pool.is_destroyed(), "{said}");
    assert!(said.contains("warning") && said.contains(&std::process::id().to_string()), "{said}");
}

/// Issue 13, defect 5 (v1: with 13 processes attached and the 12 recorded ones dead, `repair`
/// ran without --force under the unrecorded live one). Every process that operates on a pool
/// holds a record: when the table is full, registering gives dead processes' records back
/// first, and a process that still finds no room gets an error instead of running unrecorded.
/// So `repair` sees every live user.
#[test]
fn a_live_process_beyond_a_table_of_dead_ones_is_recorded_and_stops_repair() {
    let pool = TestPool::new("fulltable", 192 << 10);
    let descriptor = alloc_shm::descriptor::to_hex(&pool.descriptor().expect("fits"));
    for _ in 0..12 {
        let output = Command::new(CHILD).args(["own", &descriptor, "1", "16"]).output().expect("ran");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    let mut churner = Command::new(CHILD)
        .args(["churn", &descriptor, "7", "4"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    common::wait_ready(&mut churner);
    let repaired = Command::new(TOOL).args(["repair", pool.name()]).output().expect("ran");
    let said = String::from_utf8_lossy(&repaired.stdout);
    let _ = churner.kill();
    let _ = churner.wait();
    assert!(!repaired.status.success(), "repair ran under a live process: {said}");
    assert!(said.contains(&format!("{} (live)", churner.id())), "{said}");
}

/// Issue 13, item 7 (seen failing before the fix: `ls` and `info` registered themselves in the
/// pool's process table, and a reader of a pool it may only read could not inspect it).
/// Inspection is read-only: it maps the file read-only, takes no record, writes nothing.
#[test]
fn ls_and_info_leave_no_trace_and_need_only_read_access() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let pool = TestPool::new("inspect", 4 * MIB);
    let kept = pool.alloc(100).expect("room");
    let before = pool.info();
    for args in [vec!["ls"], vec!["info", pool.name()]] {
        let output = Command::new(TOOL).args(&args).output().expect("ran");
        let said = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success() && said.contains(pool.name()), "{args:?}: {said}");
    }
    let after = pool.info();
    assert_eq!(after.attached, before.attached, "the tool left a record");
    assert!(after.dead.is_empty());
    pool.check().expect("intact");

    // Another user who may read the file, and nothing more, sees the same figures.
    if rustix::process::geteuid().as_raw() != 0 {
        eprintln!("SKIPPED (second user): not root, so no other user can be made");
        return;
    }
    std::fs::set_permissions(pool.path(), std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let output = Command::new(TOOL)
        .args(["--any-owner", "info", pool.name()])
        .uid(4242)
        .gid(4242)
        .output()
        .expect("ran");
    let said =
        String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{said}");
    assert!(said.contains("live allocations 1 (100 bytes"), "{said}");
    assert_eq!(pool.info().attached, before.attached);
    pool.free(kept.id()).expect("still ours");
}
