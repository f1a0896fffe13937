//! Who uses the heap: process records and participant records, both in the region.
//!
//! A *process record* stands for one attached process: its pid, its start time and its pid
//! namespace as the host measures them (so a reused pid is not mistaken for it), and a state:
//! free, active, or dead (being reclaimed). It is the unit of ownership: a live allocation's
//! owner and a cached block's holder are process indices ([`Owner`]). Its index is never reused
//! while anything could still name it: only `reclaim_dead` frees a record, after the process
//! died and everything it owned or held was given back.
//!
//! A *participant record* stands for one user of the heap at a time (one thread, or one
//! [`crate::Cache`]); a [`Session`] is the handle on it. It belongs to a process and holds, in
//! its own cache line:
//! - `HAZARD`: the page whose span the participant may be touching right now (see `heap`);
//! - `PENDING`: the first page of a claim, release or retirement it owns;
//! - `HANDOVER_*`: an ownership hand-over to another process in progress.
//!
//! Every registration a participant makes in shared memory is one of these words, so
//! `reclaim_dead` can finish or undo all of it when the participant's process is dead.

use crate::error::Error;
use crate::heap::{Heap, Owner};
use crate::layout::{header, participant, process, ParticipantState, ProcessState, RecordState};
use crate::primitive::{AtomicU64, Ordering};

/// How the host identifies a process: enough to tell it from a later process with the same pid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProcessIdentity {
    /// Process id (in the namespace named by `namespace`).
    pub pid: u32,
    /// The process's start time as the host measures it (e.g. clock ticks since boot).
    pub start_time: u64,
    /// The pid namespace the pid belongs to (0 if unknown).
    pub namespace: u64,
}

/// A process as recorded in the heap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessRecord {
    /// Its index (what allocations name as their owner).
    pub owner: Owner,
    /// Free, active or dead.
    pub state: RecordState,
    /// Bumped each time the record is taken.
    pub incarnation: u64,
    /// Who it is.
    pub identity: ProcessIdentity,
}

/// One participant's handle on its record: what every operation needs. Use it from one thread
/// at a time (operations take `&mut Session`).
#[derive(Debug)]
pub struct Session {
    pub(crate) key: usize,
    pub(crate) participant: u64,
    pub(crate) process: u64,
}

impl Session {
    /// The process this participant belongs to (the owner of what it allocates by default).
    pub fn owner(&self) -> Owner {
        Owner(self.process as u16)
    }

    /// The participant's index.
    pub fn index(&self) -> u64 {
        self.participant
    }
}

impl<'a> Heap<'a> {
    pub(crate) fn process_word(&self, index: u64, field: usize) -> &AtomicU64 {
        self.region().word(self.geometry().process_field(index, field))
    }

    pub(crate) fn participant_word(&self, index: u64, field: usize) -> &AtomicU64 {
        self.region().word(self.geometry().participant_field(index, field))
    }

    /// Records `identity` as a process attached to this heap, or finds its existing record (a
    /// process that attaches again keeps its index, so its allocations keep their owner).
    pub fn register_process(&self, identity: ProcessIdentity) -> Result<Owner, Error> {
        self.ensure_ready()?;
        let size = self.geometry().table_size;
        let hwm = self.region().word(header::PROCESS_HWM).load(Ordering::Acquire).min(size);
        if let Some(found) = (1..hwm).find(|&index| {
            self.process_record(Owner(index as u16))
                .is_some_and(|record| record.state == RecordState::Active && record.identity == identity)
        }) {
            return Ok(Owner(found as u16));
        }
        for index in 1..size {
            let state = self.process_word(index, process::STATE);
            let current = ProcessState::decode(state.load(Ordering::Relaxed));
            if current.state != RecordState::Free {
                continue;
            }
            let taken = ProcessState {
                state: RecordState::Active,
                incarnation: current.incarnation + 1,
                pid: identity.pid,
            };
            // ORDERING: Acquire on success: whatever the record's last user wrote is ours to
            // overwrite; the Release stores below publish the identity.
            if state
                .compare_exchange(current.encode(), taken.encode(), Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            self.process_word(index, process::START_TIME).store(identity.start_time, Ordering::Release);
            self.process_word(index, process::NAMESPACE).store(identity.namespace, Ordering::Release);
            // ORDERING: Release so that a reader of the high-water mark sees the record taken.
            self.region().word(header::PROCESS_HWM).fetch_max(index + 1, Ordering::Release);
            return Ok(Owner(index as u16));
        }
        Err(Error::TableFull { what: "processes", capacity: size - 1 })
    }

    /// The process record of `owner` (None for the pool or an index outside the table).
    pub fn process_record(&self, owner: Owner) -> Option<ProcessRecord> {
        let index = owner.0 as u64;
        if owner == Owner::POOL || index >= self.geometry().table_size {
            return None;
        }
        // ORDERING: Acquire pairs with the registration's Release stores of the identity.
        let state = ProcessState::decode(self.process_word(index, process::STATE).load(Ordering::Acquire));
        Some(ProcessRecord {
            owner,
            state: state.state,
            incarnation: state.incarnation,
            identity: ProcessIdentity {
                pid: state.pid,
                start_time: self.process_word(index, process::START_TIME).load(Ordering::Acquire),
                namespace: self.process_word(index, process::NAMESPACE).load(Ordering::Acquire),
            },
        })
    }

    /// Every process record in use (active or dead), lowest index first.
    pub fn processes(&self) -> impl Iterator<Item = ProcessRecord> + '_ {
        let hwm = self.region().word(header::PROCESS_HWM).load(Ordering::Acquire).min(self.geometry().table_size);
        (1..hwm).filter_map(|index| self.process_record(Owner(index as u16))).filter(|r| r.state != RecordState::Free)
    }

    /// An active process record whose pid is `pid` (the newest, if several).
    pub fn find_process(&self, pid: u32) -> Option<ProcessRecord> {
        self.processes().filter(|record| record.state == RecordState::Active && record.identity.pid == pid).last()
    }

    /// A new participant of process `owner`: the handle every operation needs.
    pub fn register_participant(&self, owner: Owner) -> Result<Session, Error> {
        self.ensure_ready()?;
        let size = self.geometry().table_size;
        let process = owner.0 as u64;
        if owner == Owner::POOL || process >= size {
            return Err(Error::InvalidOwner { owner: owner.0 });
        }
        for index in 1..size {
            let state = self.participant_word(index, participant::STATE);
            let free = ParticipantState { state: RecordState::Free, process: 0 }.encode();
            let taken = ParticipantState { state: RecordState::Active, process }.encode();
            // ORDERING: Acquire on success orders the previous user's last writes (its hazard
            // cleared) before ours.
            if state.compare_exchange(free, taken, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                // ORDERING: SeqCst: a scanner that reads the mark after its fence must see every
                // participant that may publish a hazard after its own fence (see `heap`).
                self.region().word(header::PARTICIPANT_HWM).fetch_max(index + 1, Ordering::SeqCst);
                return Ok(Session { key: self.region().key(), participant: index, process });
            }
        }
        Err(Error::TableFull { what: "participants", capacity: size - 1 })
    }

    /// Gives a participant record back (its thread is done with the heap). Its hazard and
    /// pending words are clear between operations, so there is nothing to undo.
    pub fn release_participant(&self, session: Session) -> Result<(), Error> {
        self.check_session(&session)?;
        let state = self.participant_word(session.participant, participant::STATE);
        let taken = ParticipantState { state: RecordState::Active, process: session.process }.encode();
        let free = ParticipantState { state: RecordState::Free, process: 0 }.encode();
        // ORDERING: Release publishes our last writes (hazard cleared) to the next user.
        let _ = state.compare_exchange(taken, free, Ordering::Release, Ordering::Relaxed);
        Ok(())
    }

    /// Forgets a session without touching its record: for a `fork` child, whose inherited
    /// sessions are its parent's (the parent keeps using them).
    pub fn forget_session(&self, session: Session) {
        let _ = session;
    }

    pub(crate) fn check_session(&self, session: &Session) -> Result<(), Error> {
        if session.key != self.region().key() {
            return Err(Error::ForeignSession);
        }
        Ok(())
    }

    /// One past the highest participant index ever handed out.
    pub(crate) fn participant_hwm(&self) -> u64 {
        // ORDERING: SeqCst, see `register_participant`.
        self.region().word(header::PARTICIPANT_HWM).load(Ordering::SeqCst).min(self.geometry().table_size)
    }

    /// The participant's state word.
    pub(crate) fn participant_state(&self, index: u64) -> ParticipantState {
        ParticipantState::decode(self.participant_word(index, participant::STATE).load(Ordering::Acquire))
    }
}
