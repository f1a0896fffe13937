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
