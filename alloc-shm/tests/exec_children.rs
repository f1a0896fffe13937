//! A fork child that execs another program holds nothing in its parent's pools. Found by review
//! of the fork-time registration (both tests seen failing: an exec'd `sleep` was recorded as
//! attached, and sixteen of them locked a real process out of a small pool). Fork children are
//! no longer registered at fork; `gc` and `repair` see an unregistered fork child through the
//! file it maps instead.
mod common;

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

use common::TestPool;

const CHILD: &str = env!("CARGO_BIN_EXE_shmpool-child");

fn forked_sleep() -> Child {
    let mut command = Command::new("sleep");
    command.arg("30");
    // pre_exec forces std's fork+exec path (as preexec_fn does in Python's subprocess).
    // SAFETY: the closure does nothing (it is only there to force a real fork).
    unsafe { command.pre_exec(|| Ok(())) };
    command.spawn().expect("spawn sleep")
}

#[test]
fn an_execd_child_holds_no_record_in_its_parents_pools() {
    let pool = TestPool::new("execrec", 192 << 10);
    let a = pool.alloc(16).expect("alloc");
    let mut sleeper = forked_sleep();
    let info = pool.info();
    let held = info.other_users().any(|p| p.pid == sleeper.id());
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    pool.free(a.id()).expect("free");
    assert!(!held, "exec'd `sleep` (pid {}) is recorded as attached: {:?}", sleeper.id(), info.attached);
}

#[test]
fn execd_children_do_not_lock_real_processes_out_of_a_small_pool() {
    let pool = TestPool::new("execfull", 192 << 10);
    let a = pool.alloc(16).expect("alloc");
    let descriptor = alloc_shm::descriptor::to_hex(&pool.descriptor().expect("fits"));
    let mut sleepers: Vec<Child> = (0..16).map(|_| forked_sleep()).collect();
    let output = Command::new(CHILD).args(["own", &descriptor, "1", "16"]).output().expect("ran");
    for s in &mut sleepers {
        let _ = s.kill();
        let _ = s.wait();
    }
    pool.free(a.id()).expect("free");
    assert!(output.status.success(), "a real user was refused: {}", String::from_utf8_lossy(&output.stderr));
}
