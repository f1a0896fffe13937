//! Who uses the heap: process records and participant records, both in the region.
//!
//! A *process record* stands for one attached process: its pid, its start time and its pid
//! namespace as the host measures them (so a reused pid is not mistaken for it), and a state:
//! free, registering (identity being written), active, or dead (being reclaimed). It is the
//! unit of ownership: a live allocation's owner and a cached block's holder are process indices
//! ([`Owner`]); a cached block also carries the holder's incarnation. Only `reclaim_dead` frees
//! a record, after the process died and everything it owned or held was given back; a slow
//! reclaimer acts only after re-reading the record, so a new process at the same index is never
//! mistaken for the dead one.
//!
//! A *participant record* stands for one user of the heap at a time (one thread, or one
//! [`crate::Cache`]); a [`Session`] is the handle on it. It belongs to a process and holds, in
//! its own cache line:
//! - `HAZARD`: the page whose span the participant may be touching right now (see `heap`);
//! - `PENDING`: the first page of a claim, release or retirement it owns;
//! - `HANDOVER_*`: an ownership hand-over to another process in progress.
//!
//! Every registration a participant makes in shared memory is one of these words, so
//! `reclaim_dead` can finish or undo all of it when the participant's process is dead. A dead
//! participant's record is *adopted* by one reclaimer (a compare-exchange of its state word to
//! `Dead { adopter }`), and only the adopter touches its other words until it frees the record;
//! so no slow reclaimer ever writes into a record that was reused meanwhile.

use crate::error::Error;
use crate::heap::{Heap, Owner};
use crate::layout::{header, participant, process, BlockState, ParticipantState, ProcessState, RecordState};
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
    /// The process record's incarnation (low bits go into the state of blocks it caches).
    pub(crate) incarnation: u64,
    /// Precomputed for the fast paths: the region index of the record's hazard word, and the
    /// state-word bits (all but the tag) of a block this participant allocates or caches.
    pub(crate) hazard_word: usize,
    pub(crate) live_bits: u64,
    pub(crate) cached_bits: u64,
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
            // Registering first: until the identity is complete, a reclaimer judges the record
            // by its pid alone (a stale start time must not make a live process look dead).
            let registering = ProcessState {
                state: RecordState::Registering,
                incarnation: current.incarnation + 1,
                pid: identity.pid,
            };
            // ORDERING: Acquire on success: whatever the record's last user wrote is ours to
            // overwrite; the Release exchange below publishes the identity.
            if state
                .compare_exchange(
                    current.encode(),
                    registering.encode(),
                    Ordering::Acquire,
                    Ordering::Relaxed,
                )
                .is_err()
            {
                continue;
            }
            // ORDERING: Release so that a reader of the high-water mark sees the record taken.
            self.region().word(header::PROCESS_HWM).fetch_max(index + 1, Ordering::Release);
            self.process_word(index, process::START_TIME).store(identity.start_time, Ordering::Relaxed);
            self.process_word(index, process::NAMESPACE).store(identity.namespace, Ordering::Relaxed);
            let active = ProcessState { state: RecordState::Active, ..registering };
            // ORDERING: Release publishes the identity to whoever reads the record Active. A
            // reclaimer may have found us dead meanwhile (our pid gone): then we are not registered.
            if state
                .compare_exchange(registering.encode(), active.encode(), Ordering::Release, Ordering::Relaxed)
                .is_err()
            {
                return Err(Error::InvalidOwner { owner: index as u16 });
            }
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

    /// Every process record in use (registering, active or dead), lowest index first.
    pub fn processes(&self) -> impl Iterator<Item = ProcessRecord> + '_ {
        let hwm =
            self.region().word(header::PROCESS_HWM).load(Ordering::Acquire).min(self.geometry().table_size);
        (1..hwm)
            .filter_map(|index| self.process_record(Owner(index as u16)))
            .filter(|r| r.state != RecordState::Free)
    }

    /// An active process record whose pid is `pid` (the newest, if several).
    pub fn find_process(&self, pid: u32) -> Option<ProcessRecord> {
        self.processes()
            .filter(|record| record.state == RecordState::Active && record.identity.pid == pid)
            .last()
    }

    /// A new participant of process `owner`: the handle every operation needs.
    pub fn register_participant(&self, owner: Owner) -> Result<Session, Error> {
        self.ensure_ready()?;
        let size = self.geometry().table_size;
        let process = owner.0 as u64;
        let record = self.process_record(owner).filter(|record| record.state == RecordState::Active);
        let Some(record) = record else {
            return Err(Error::InvalidOwner { owner: owner.0 });
        };
        for index in 1..size {
            let state = self.participant_word(index, participant::STATE);
            let free = ParticipantState { state: RecordState::Free, process: 0, adopter: 0 }.encode();
            let taken = ParticipantState { state: RecordState::Active, process, adopter: 0 }.encode();
            // ORDERING: Acquire on success orders the previous user's last writes (its hazard
            // cleared) before ours.
            if state.compare_exchange(free, taken, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                // ORDERING: SeqCst: a scanner that reads the mark after its fence must see every
                // participant that may publish a hazard after its own fence (see `heap`).
                self.region().word(header::PARTICIPANT_HWM).fetch_max(index + 1, Ordering::SeqCst);
                return Ok(Session {
                    key: self.region().key(),
                    participant: index,
                    process,
                    incarnation: record.incarnation,
                    hazard_word: self.geometry().participant_field(index, participant::HAZARD),
                    live_bits: BlockState::live(process, 0, 0).encode(),
                    cached_bits: BlockState::cached(process, record.incarnation, 0).encode(),
                });
            }
        }
        Err(Error::TableFull { what: "participants", capacity: size - 1 })
    }

    /// Gives a participant record back (its thread is done with the heap). Its hazard and
    /// pending words are clear between operations, so there is nothing to undo.
    pub fn release_participant(&self, session: Session) -> Result<(), Error> {
        self.check_session(&session)?;
        let state = self.participant_word(session.participant, participant::STATE);
        let taken =
            ParticipantState { state: RecordState::Active, process: session.process, adopter: 0 }.encode();
        let free = ParticipantState { state: RecordState::Free, process: 0, adopter: 0 }.encode();
        // ORDERING: Release publishes our last writes (hazard cleared) to the next user.
        let _ = state.compare_exchange(taken, free, Ordering::Release, Ordering::Relaxed);
        Ok(())
    }

    /// Gives back every participant record of process `owner`: for a process detaching a pool
    /// while none of its threads is inside an operation on it.
    pub fn release_participants_of(&self, owner: Owner) {
        let active =
            ParticipantState { state: RecordState::Active, process: owner.0 as u64, adopter: 0 }.encode();
        let free = ParticipantState { state: RecordState::Free, process: 0, adopter: 0 }.encode();
        for index in 1..self.participant_hwm() {
            // ORDERING: Release publishes our last writes (hazards cleared) to the next user.
            let _ = self.participant_word(index, participant::STATE).compare_exchange(
                active,
                free,
                Ordering::Release,
                Ordering::Relaxed,
            );
        }
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
