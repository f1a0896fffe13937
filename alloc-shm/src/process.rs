//! This process as the pools see it: its pid (fork-safe), its identity (pid, start time, pid
//! namespace), whether another process is alive, and the process-wide memory barrier.
//!
//! **Fork.** Everything this layer keeps per process (the pid, each mapping's process record,
//! sessions, caches) is tagged with the pid it was made under; [`current_pid`] is read on every
//! entry point, destructors included, and state tagged with another pid belongs to the parent:
//! a fork child forgets it without touching shared memory and registers anew. The pid lives in a
//! page marked `MADV_WIPEONFORK`, which the kernel zeroes in every child that gets a copy of the
//! parent's memory (`fork`, a raw `clone` without `CLONE_VM`); a `pthread_atfork` hook does the
//! same where the advice is not supported. A child that shares its parent's memory (`vfork`,
//! `clone(CLONE_VM)` without `CLONE_THREAD`) shares that page too, and would use the pools as
//! its parent, whose death lets `reclaim_dead` take what the child is still using: such a
//! child must not call into a pool (POSIX allows a `vfork` child only `exec` or `_exit`).
//!
//! **Liveness.** A process is dead when its pid no longer exists, or exists with another start
//! time (a reused pid). A process recorded in another pid namespace than ours cannot be judged
//! from here (its pid means something else here): it is never declared dead.
//!
//! **Barrier.** Pools are created *asymmetric* when this process can register for and issue
//! `membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED)`: hazards are then published with a compiler
//! fence only, and the rare retirements issue the barrier. Registration is per process (redone
//! in fork children before their first operation).

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, Ordering};
use std::sync::Once;

use alloc_core::{ProcessIdentity, ProcessRecord, RecordState};

/// The word holding this process's pid (0: not known yet, e.g. in a new fork child).
fn pid_word() -> &'static AtomicU32 {
    static WORD: AtomicPtr<AtomicU32> = AtomicPtr::new(std::ptr::null_mut());
    static FALLBACK: AtomicU32 = AtomicU32::new(0);
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        extern "C" fn forget_in_child() {
            FALLBACK.store(0, Ordering::Relaxed);
            let word = WORD.load(Ordering::Relaxed);
            if !word.is_null() {
                // SAFETY: a non-null WORD points into the page mapped below, never unmapped.
                unsafe { &*word }.store(0, Ordering::Relaxed);
            }
        }
        // SAFETY: registers a handler that only stores to atomics (async-signal safe, as a fork
        // child handler must be).
        unsafe { libc::pthread_atfork(None, None, Some(forget_in_child)) };
        // SAFETY: an anonymous private page, never unmapped; the advice only affects children.
        let page = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if page != libc::MAP_FAILED {
            // SAFETY: advising our own page; on failure the atfork hook still covers `fork`.
            unsafe { libc::madvise(page, 4096, libc::MADV_WIPEONFORK) };
            WORD.store(page.cast(), Ordering::Release);
        }
    });
    let word = WORD.load(Ordering::Acquire);
    if word.is_null() {
        &FALLBACK
    } else {
        // SAFETY: the page is mapped for the life of the process and zero-initialised; an
        // `AtomicU32` is valid for any bit pattern.
        unsafe { &*word }
    }
}

/// This process's id. Fork-safe: a child never sees its parent's pid here.
#[inline]
pub fn current_pid() -> u32 {
    let word = pid_word();
    let cached = word.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    let pid = rustix::process::getpid().as_raw_nonzero().get() as u32;
    word.store(pid, Ordering::Relaxed);
    pid
}

/// This process's identity, as recorded in the pools it uses.
pub fn current_identity() -> ProcessIdentity {
    let pid = current_pid();
    ProcessIdentity {
        pid,
        start_time: start_time(pid).unwrap_or(0),
        namespace: pid_namespace("self").unwrap_or(0),
    }
}

/// The start time (clock ticks after boot) of process `pid`, from `/proc/<pid>/stat`.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 2 (comm) is in parentheses and may hold spaces: count fields after the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// The inode of the pid namespace of process `pid` ("self" for ours).
fn pid_namespace(pid: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/pid")).ok().map(|meta| meta.ino())
}

/// Whether process `pid` exists (EPERM: it exists, but is not ours to signal).
pub fn process_alive(pid: u32) -> bool {
    // Only real pids: 0 and anything above i32::MAX would name process groups (kill(-1, 0)
    // succeeds for root whatever the record says).
    let Some(pid) = i32::try_from(pid).ok().filter(|&pid| pid > 0).and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    match rustix::process::test_kill_process(pid) {
        Ok(()) => true,
        Err(errno) => errno != rustix::io::Errno::SRCH,
    }
}

/// What this process can tell about another one a pool records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// Its pid exists here with the recorded start time (or no start time was recorded).
    Alive,
    /// Its pid is gone, or belongs to a process that started at another time.
    Dead,
    /// It lives in another pid namespace (another container): its pid means something else
    /// here, so nothing can be told. Such a process is never declared dead from here.
    Elsewhere,
}

impl std::fmt::Display for Liveness {
    /// How a process's liveness reads in messages: "live", "dead", "in another PID namespace".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Liveness::Alive => "live",
            Liveness::Dead => "dead",
            Liveness::Elsewhere => "in another PID namespace",
        })
    }
}

/// Judges the process of `identity` from here. A start time of 0 (not recorded, or still being
/// written) judges by the pid alone.
pub fn liveness(identity: &ProcessIdentity) -> Liveness {
    let ours = pid_namespace("self").unwrap_or(0);
    if identity.namespace != 0 && ours != 0 && identity.namespace != ours {
        return Liveness::Elsewhere;
    }
    if !process_alive(identity.pid) {
        return Liveness::Dead;
    }
    match identity.start_time {
        0 => Liveness::Alive,
        recorded if start_time(identity.pid).is_some_and(|started| started != recorded) => Liveness::Dead,
        _ => Liveness::Alive,
    }
}

/// Whether the process a pool records is dead, as far as this process can tell ([`liveness`];
/// a record whose identity is still being written is judged by its pid alone).
pub fn record_is_dead(record: &ProcessRecord) -> bool {
    let identity = match record.state {
        RecordState::Registering => ProcessIdentity { start_time: 0, ..record.identity },
        _ => record.identity,
    };
    liveness(&identity) == Liveness::Dead
}

/// The processes (of this pid namespace, whose `/proc/<pid>/maps` this process may read) that map
/// the file of device `device` and inode `inode`.
pub fn mapping_processes(device: u64, inode: u64) -> Vec<u32> {
    let wanted = format!("{:02x}:{:02x}", libc::major(device), libc::minor(device));
    let maps_it = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/maps")).is_ok_and(|maps| {
            maps.lines().any(|line| {
                let mut fields = line.split_whitespace().skip(3);
                fields.next() == Some(wanted.as_str())
                    && fields.next().and_then(|i| i.parse().ok()) == Some(inode)
            })
        })
    };
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| maps_it(pid))
        .collect()
}

const MEMBARRIER_CMD_QUERY: libc::c_int = 0;
const MEMBARRIER_CMD_GLOBAL_EXPEDITED: libc::c_int = 1 << 1;
const MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED: libc::c_int = 1 << 2;

fn membarrier(command: libc::c_int) -> libc::c_long {
    // SAFETY: membarrier takes (cmd, flags, cpu_id) and touches no memory of ours.
    unsafe { libc::syscall(libc::SYS_membarrier, command, 0, 0) }
}

/// The process-wide barrier handed to the core: a memory barrier on every CPU running a thread
/// of a registered process.
fn heavy_fence() -> bool {
    membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED) == 0
}

/// Registers this process (again, after a fork) to receive global expedited barriers. Returns
/// the barrier for the core if this process can both receive and issue it.
pub fn barrier() -> Option<fn() -> bool> {
    static SUPPORTED: AtomicBool = AtomicBool::new(false);
    static QUERIED: Once = Once::new();
    static REGISTERED_PID: AtomicU32 = AtomicU32::new(0);
    QUERIED.call_once(|| {
        let commands = membarrier(MEMBARRIER_CMD_QUERY);
        let wanted =
            (MEMBARRIER_CMD_GLOBAL_EXPEDITED | MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED) as libc::c_long;
        SUPPORTED.store(commands >= 0 && commands & wanted == wanted, Ordering::Relaxed);
    });
    if !SUPPORTED.load(Ordering::Relaxed) {
        return None;
    }
    let pid = current_pid();
    if REGISTERED_PID.load(Ordering::Acquire) != pid {
        if membarrier(MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED) != 0 {
            return None;
        }
        REGISTERED_PID.store(pid, Ordering::Release);
    }
    Some(heavy_fence)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_with_its_start_time_and_a_made_up_one_is_not() {
        let me = current_identity();
        assert_eq!(me.pid, std::process::id());
        assert!(me.start_time > 0);
        let record =
            |identity, state| ProcessRecord { owner: alloc_core::Owner(1), state, incarnation: 1, identity };
        assert!(!record_is_dead(&record(me, RecordState::Active)));
        let reused = ProcessIdentity { start_time: me.start_time + 1, ..me };
        assert!(record_is_dead(&record(reused, RecordState::Active)), "same pid, another start: dead");
        assert!(!record_is_dead(&record(reused, RecordState::Registering)), "registering: pid only");
        let elsewhere = ProcessIdentity { namespace: me.namespace.wrapping_add(1), ..reused };
        assert!(!record_is_dead(&record(elsewhere, RecordState::Active)), "another namespace: unknown");
    }
}
