//! The bodies of the fuzz targets, shared by the libFuzzer entry points (`fuzz_targets/`) and
//! the stable seed tests (`tests/seeds.rs`). Each panics only on a real bug: a decoding that
//! does not round-trip, an operation that panics, breaks an invariant or writes outside its
//! region.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicU64;

use alloc_core::layout::{
    blocks_per_span, page, span_meta_bytes, PageInfo, CLASS_SIZES, GRANULE, PAGE_META_WORDS,
};
use alloc_core::{
    AllocId, AllocOptions, Cache, Error, Heap, Owner, Platform, ProcessIdentity, ProcessRecord, Reclaimed,
    Region, Session, WaitHost, Waited,
};
use alloc_shm::descriptor::{AllocDescriptor, PoolDescriptor, MAX_LEN};
use arbitrary::{Arbitrary, Unstructured};

/// Descriptor decoding: garbage is refused, and whatever decodes re-encodes to the same value.
pub fn descriptor(data: &[u8]) {
    if let Ok(decoded) = AllocDescriptor::from_bytes(data) {
        let bytes = decoded.to_bytes();
        assert!(bytes.len() <= MAX_LEN);
        assert_eq!(AllocDescriptor::from_bytes(&bytes).ok(), Some(decoded));
    }
    if let Ok(decoded) = PoolDescriptor::from_bytes(data) {
        let bytes = decoded.to_bytes();
        assert!(bytes.len() <= MAX_LEN);
        assert_eq!(PoolDescriptor::from_bytes(&bytes).ok(), Some(decoded));
    }
}

/// Words of canary on each side of a region.
const GUARD_WORDS: usize = 512;
/// What the guard words hold; any other value afterwards means a write outside the region.
const CANARY: u64 = 0xA5C3_5A3C_0DD5_EED5;

/// Zeroed, 8-byte aligned memory for a region, between two guard areas whose canaries are
/// verified when it is dropped (a write outside the region is a core bug).
struct Memory(Vec<u64>);

impl Memory {
    fn new(bytes: usize) -> Memory {
        let mut words = vec![CANARY; GUARD_WORDS];
        words.resize(GUARD_WORDS + bytes / 8, 0);
        words.resize(2 * GUARD_WORDS + bytes / 8, CANARY);
        Memory(words)
    }

    fn words(&mut self) -> &mut [u64] {
        let end = self.0.len() - GUARD_WORDS;
        &mut self.0[GUARD_WORDS..end]
    }

    fn region(&mut self) -> Region<'_> {
        let words = self.words();
        let len = words.len() * 8;
        // SAFETY: the vector outlives the region (it borrows `self` mutably) and is only used
        // through it.
        unsafe { Region::from_raw(words.as_mut_ptr().cast(), len) }.expect("vectors of u64 are aligned")
    }

    fn bytes(&mut self) -> &mut [u8] {
        let words = self.words();
        let len = words.len() * 8;
        // SAFETY: u8 has no alignment or validity requirements; the slice covers exactly the words.
        unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast(), len) }
    }
}

impl Drop for Memory {
    fn drop(&mut self) {
        let end = self.0.len() - GUARD_WORDS;
        let outside =
            self.0[..GUARD_WORDS].iter().chain(&self.0[end..]).filter(|&&word| word != CANARY).count();
        if outside != 0 && !std::thread::panicking() {
            panic!("{outside} words outside the region were written");
        }
    }
}

const REGION_BYTES: usize = 512 << 10;

/// A process identity for the fuzz targets' stand-in processes.
fn identity(pid: u32) -> ProcessIdentity {
    ProcessIdentity { pid, start_time: 1, namespace: 0 }
}

/// A participant of a new (or re-found) process `pid`.
fn join(heap: &Heap<'_>, pid: u32) -> Result<Session, Error> {
    let owner = heap.register_process(identity(pid))?;
    heap.register_participant(owner)
}

/// A wait host that never waits: `alloc_blocking` tries, registers, tries again and gives up.
struct NoWait;

impl WaitHost for NoWait {
    fn wait(&mut self, _word: &AtomicU64, _seen: u64, _registered: bool) -> Waited {
        Waited::TimedOut
    }
}

/// Stand-in processes of [`corrupted_region`].
const PID_MAIN: u32 = 1;
const PID_CACHED: u32 = 2;
const PID_DOOMED: u32 = 3;
const PID_LATE: u32 = 4;

/// Opening a region whose header and metadata hold bytes of the input: every call returns (an
/// error or a value), none panics, hangs or touches memory outside the region.
///
/// Before the corruption, three processes use the heap: one with live allocations of every
/// kind (small, large, zero-sized, some freed again), one with a cache holding blocks, and one
/// that also owns allocations and caches blocks and is later reclaimed as dead. The input is
/// then (position, byte) triples: a position below 0x8000 lands in the out-of-band metadata
/// (header, waiter owners, process and participant tables, page bitmap, class lists, empty set,
/// page meta), one above it in the first span's in-band arrays (its blocks' state and extra
/// words). Afterwards the surviving participants and new ones run every operation.
pub fn corrupted_region(data: &[u8]) {
    let mut memory = Memory::new(REGION_BYTES);
    let (ids, mut cached, mut doomed, geometry) = {
        let heap = Heap::create_default(memory.region()).expect("fits");
        let mut main = join(&heap, PID_MAIN).expect("room");
        let mut cached = Cache::new(join(&heap, PID_CACHED).expect("room"));
        let mut doomed = Cache::new(join(&heap, PID_DOOMED).expect("room"));
        let options = AllocOptions::default();
        let mut ids: Vec<AllocId> = [0u64, 16, 64, 100, 2048, 5000, 20_000, 16, 16, 16, 16]
            .iter()
            .filter_map(|&size| heap.alloc(&mut main, size, options).ok().map(|a| a.id()))
            .collect();
        // Freed blocks on the lists, between live ones (their ids stay known, as stale ids).
        for &id in ids.iter().skip(7).step_by(2) {
            let _ = heap.free(&mut main, id);
        }
        for size in [16, 16, 64, 3000] {
            if let Ok(a) = heap.alloc_with(&mut cached, size, options) {
                ids.push(a.id());
            }
            if let Ok(a) = heap.alloc_with(&mut doomed, size, options) {
                ids.push(a.id());
            }
        }
        if let Some(&last) = ids.last() {
            let _ = heap.free_with(&mut doomed, last);
        }
        if let (Some(&first), Some(&second)) = (ids.first(), ids.get(1)) {
            let _ = heap.set_owner(&mut main, first, Owner::POOL);
            let _ = heap.set_owner(&mut main, second, doomed.session().owner());
        }
        (ids, cached, doomed, *heap.geometry())
    };
    let meta_end = (geometry.page_meta_word + geometry.num_pages as usize * PAGE_META_WORDS) * 8;
    // The first span's state and extra words (or the first page, if page 0 is not a span).
    let data_offset = geometry.data_offset as usize;
    let in_band = match PageInfo::decode(memory.words()[geometry.page_word(0, page::INFO)]) {
        Some(PageInfo::SpanHead { class, .. }) => {
            let blocks = blocks_per_span(CLASS_SIZES[class] as u64, geometry.span_bytes());
            data_offset..data_offset + span_meta_bytes(blocks) as usize
        }
        _ => data_offset..data_offset + 4096,
    };
    let bytes = memory.bytes();
    for triple in data.chunks_exact(3) {
        let position = u16::from_le_bytes([triple[0], triple[1]]) as usize;
        let at = if position < 0x8000 {
            position % meta_end
        } else {
            in_band.start + (position - 0x8000) % in_band.len()
        };
        bytes[at] = triple[2];
    }
    let Ok(heap) = Heap::open(memory.region(), Platform::SYMMETRIC) else { return };
    let options = AllocOptions::default();
    // A participant that kept running through the corruption (its cache still holds blocks).
    observe(&heap, cached.session(), &ids);
    for size in [16, 64, 512, 3000] {
        if let Ok(a) = heap.alloc_with(&mut cached, size, options) {
            let _ = heap.free_with(&mut cached, a.id());
        }
    }
    let _ = heap.flush(&mut cached);
    // A process that attaches after it, with an uncached and a cached participant.
    let Ok(mut late) = join(&heap, PID_LATE) else { return };
    let mut late_cache = heap.register_participant(late.owner()).ok().map(Cache::new);
    if let Some(cache) = &mut late_cache {
        for size in [16, 64, 512, 3000, 70_000] {
            if let Ok(a) = heap.alloc_with(cache, size, options) {
                let _ = heap.free_with(cache, a.id());
            }
        }
        let _ = heap.flush(cache);
    }
    observe(&heap, &mut late, &ids);
    dispose(&heap, &mut late, &ids[..ids.len() / 2]);
    // The doomed process dies; then it goes on using its cache as a zombie would (its blocks
    // were reclaimed: one more way for the metadata to be wrong); then everyone else dies too.
    let doomed_owner = doomed.session().owner();
    let _ = heap.reclaim_dead(&mut late, |record: &ProcessRecord| record.owner == doomed_owner, |_, _, _| {});
    let _ = heap.alloc_with(&mut doomed, 64, options);
    let _ =
        heap.reclaim_dead(&mut late, |record: &ProcessRecord| record.identity.pid != PID_LATE, |_, _, _| {});
    let _ = heap.repair(&mut late);
    observe(&heap, &mut late, &ids);
    dispose(&heap, &mut late, &ids);
    if let Some(cache) = late_cache {
        let _ = heap.release_participant(cache.into_session());
    }
    let _ = heap.release_participant(late);
}

/// The operations that leave known allocations alone, through `session`: lookups of the ids
/// known from before the corruption, the walks, and new allocations resized and freed.
fn observe(heap: &Heap<'_>, session: &mut Session, ids: &[AllocId]) {
    for &id in ids {
        let _ = heap.lookup(session, id);
        let _ = heap.contains(session, id);
    }
    let mut visited = 0u64;
    let _ = heap.for_each_allocation(session, |_| visited += 1);
    let _ = heap.stats(session);
    let _ = heap.check(session);
    let _ = heap.processes().take(10_000).count();
    let _ = heap.waiters();
    for size in [16, 64, 512, 3000, 70_000] {
        if let Ok(a) = heap.alloc(session, size, AllocOptions::default()) {
            let _ = heap.realloc(session, a.id(), size * 2);
            let _ = heap.free(session, a.id());
        }
    }
    let to_pool = AllocOptions { owner: Some(Owner::POOL), align: 256, ..AllocOptions::default() };
    if let Ok(a) = heap.alloc_blocking(session, 48, to_pool, &mut NoWait) {
        let _ = heap.set_owner(session, a.id(), session.owner());
        let _ = heap.free(session, a.id());
    }
}

/// Hands over, resizes and frees the known allocations `ids` through `session`.
fn dispose(heap: &Heap<'_>, session: &mut Session, ids: &[AllocId]) {
    let owner = session.owner();
    for &id in ids {
        let _ = heap.set_owner(session, id, owner);
        let _ = heap.set_owner(session, id, Owner(2));
        let _ = heap.realloc(session, id, 300);
        let _ = heap.free(session, id);
    }
}

/// Who acts in one step of [`operations`].
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Who {
    /// The surviving process, which also reclaims.
    Main,
    /// The process that is killed (and replaced) by [`Op::Kill`].
    Doomed,
}

/// An owner to name in a step of [`operations`].
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Target {
    /// The acting participant's process (`AllocOptions::owner: None`).
    Caller,
    Pool,
    Main,
    Doomed,
    /// A process index no process holds.
    Nobody,
}

/// One step of [`operations`].
#[derive(Arbitrary, Debug)]
enum Op {
    Alloc {
        who: Who,
        size: u16,
        large: bool,
        alloc_type: u8,
        owner: Target,
        align_shift: u8,
    },
    AllocBlocking {
        who: Who,
        size: u16,
    },
    Free {
        who: Who,
        pick: u8,
    },
    Realloc {
        who: Who,
        pick: u8,
        size: u16,
    },
    Lookup {
        who: Who,
        pick: u8,
    },
    SetOwner {
        who: Who,
        pick: u8,
        owner: Target,
    },
    AllocCached {
        who: Who,
        size: u16,
    },
    FreeCached {
        who: Who,
        pick: u8,
    },
    Flush {
        who: Who,
    },
    /// The doomed process dies; the main one reclaims what it owned and cached.
    Kill,
    Repair,
    Iterate,
}

/// What [`operations`] expects of a live allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Expected {
    size: u64,
    owner: Owner,
    alloc_type: u8,
}

/// A stand-in process of [`operations`]: an uncached participant and a cached one.
struct Process {
    pid: u32,
    owner: Owner,
    session: Session,
    cache: Cache,
}

impl Process {
    fn join(heap: &Heap<'_>, pid: u32) -> Process {
        let owner = heap.register_process(identity(pid)).expect("room for a process");
        let session = heap.register_participant(owner).expect("room for a participant");
        let cache = Cache::new(heap.register_participant(owner).expect("room for a participant"));
        Process { pid, owner, session, cache }
    }
}

/// The process acting in a step.
fn actor<'p>(who: Who, main: &'p mut Process, doomed: &'p mut Process) -> &'p mut Process {
    match who {
        Who::Main => main,
        Who::Doomed => doomed,
    }
}

/// Random operation sequences of two processes against a map of what should be live, with
/// `check()` after each step. One of the processes is killed now and then: `reclaim_dead`
/// must free exactly what it owned and give back what its caches held.
pub fn operations(data: &[u8]) {
    let mut input = Unstructured::new(data);
    let mut memory = Memory::new(REGION_BYTES);
    let heap = Heap::create_default(memory.region()).expect("fits");
    let mut main = Process::join(&heap, 1);
    let mut doomed = Process::join(&heap, 2);
    let mut live: BTreeMap<AllocId, Expected> = BTreeMap::new();
    let pick = |live: &BTreeMap<AllocId, Expected>, index: u8| {
        (!live.is_empty()).then(|| *live.keys().nth(index as usize % live.len()).expect("in range"))
    };
    for _ in 0..64 {
        // (Once the input is used up, `arbitrary` would only repeat the first variant.)
        if input.is_empty() {
            break;
        }
        let Ok(op) = Op::arbitrary(&mut input) else { break };
        let (main_owner, doomed_owner) = (main.owner, doomed.owner);
        let owner_of = |target: Target, me: Owner| match target {
            Target::Caller => me,
            Target::Pool => Owner::POOL,
            Target::Main => main_owner,
            Target::Doomed => doomed_owner,
            Target::Nobody => Owner(4000),
        };
        let valid = |owner: Owner| owner == Owner::POOL || owner == main_owner || owner == doomed_owner;
        match op {
            Op::Alloc { who, size, large, alloc_type, owner, align_shift } => {
                let process = actor(who, &mut main, &mut doomed);
                let size = if large { size as u64 * 4 } else { size as u64 % 2100 };
                let align = 1u64 << (align_shift % 14);
                let named = owner_of(owner, process.owner);
                let options = AllocOptions {
                    align,
                    alloc_type,
                    owner: (!matches!(owner, Target::Caller)).then_some(named),
                };
                match heap.alloc(&mut process.session, size, options) {
                    Ok(a) => {
                        assert!(valid(named), "alloc for a process that does not exist: {a:?}");
                        assert!(align <= 4096, "alignment {align} beyond the page size accepted");
                        assert_eq!(a.offset % GRANULE.max(align), 0, "misaligned: {a:?}");
                        assert_eq!((a.size, a.owner, a.alloc_type), (size, named, alloc_type));
                        let expected = Expected { size, owner: named, alloc_type };
                        assert!(live.insert(a.id(), expected).is_none(), "an id was handed out twice");
                    }
                    Err(Error::OutOfMemory { .. } | Error::TooLarge { .. }) => {}
                    Err(Error::InvalidOwner { .. }) if !valid(named) => {}
                    Err(Error::BadAlignment { .. }) if align > 4096 => {}
                    Err(other) => panic!("alloc({size}, {options:?}): {other}"),
                }
            }
            Op::AllocBlocking { who, size } => {
                let process = actor(who, &mut main, &mut doomed);
                let size = size as u64 * 8;
                match heap.alloc_blocking(&mut process.session, size, AllocOptions::default(), &mut NoWait) {
                    Ok(a) => {
                        let expected = Expected { size, owner: process.owner, alloc_type: 0 };
                        assert!(live.insert(a.id(), expected).is_none(), "an id was handed out twice");
                    }
                    Err(Error::TimedOut { .. } | Error::TooLarge { .. }) => {}
                    Err(other) => panic!("alloc_blocking({size}): {other}"),
                }
            }
            Op::AllocCached { who, size } => {
                let process = actor(who, &mut main, &mut doomed);
                let size = size as u64 % 2100;
                match heap.alloc_with(&mut process.cache, size, AllocOptions::default()) {
                    Ok(a) => {
                        assert_eq!(a.owner, process.owner);
                        let expected = Expected { size, owner: process.owner, alloc_type: 0 };
                        assert!(live.insert(a.id(), expected).is_none(), "an id was handed out twice");
                    }
                    Err(Error::OutOfMemory { .. }) => {}
                    Err(other) => panic!("alloc_with({size}): {other}"),
                }
            }
            Op::Free { who, pick: index } | Op::FreeCached { who, pick: index } => {
                let process = actor(who, &mut main, &mut doomed);
                if let Some(id) = pick(&live, index) {
                    let result = match op {
                        Op::Free { .. } => heap.free(&mut process.session, id),
                        _ => heap.free_with(&mut process.cache, id),
                    };
                    let _ = result.expect("a live allocation frees");
                    live.remove(&id);
                    assert!(heap.free(&mut process.session, id).is_err(), "a double free is refused");
                    assert!(heap.free_with(&mut process.cache, id).is_err(), "a double free is refused");
                }
            }
            Op::Realloc { who, pick: index, size } => {
                let process = actor(who, &mut main, &mut doomed);
                if let Some(id) = pick(&live, index) {
                    let before = live[&id];
                    match heap.realloc(&mut process.session, id, size as u64) {
                        Ok(moved) => {
                            assert_eq!((moved.owner, moved.alloc_type), (before.owner, before.alloc_type));
                            live.remove(&id);
                            let expected = Expected { size: size as u64, ..before };
                            assert!(
                                live.insert(moved.id(), expected).is_none(),
                                "an id was handed out twice"
                            );
                            if moved.id() != id {
                                assert!(
                                    !heap.contains(&mut process.session, id),
                                    "moved, but the original lives"
                                );
                            }
                        }
                        Err(Error::OutOfMemory { .. } | Error::TooLarge { .. }) => {
                            assert!(
                                heap.contains(&mut process.session, id),
                                "failed realloc kept the original"
                            )
                        }
                        Err(other) => panic!("realloc: {other}"),
                    }
                }
            }
            Op::Lookup { who, pick: index } => {
                let process = actor(who, &mut main, &mut doomed);
                if let Some(id) = pick(&live, index) {
                    let found = heap.lookup(&mut process.session, id).expect("live");
                    let expected =
                        Expected { size: found.size, owner: found.owner, alloc_type: found.alloc_type };
                    assert_eq!(expected, live[&id]);
                }
            }
            Op::SetOwner { who, pick: index, owner } => {
                let process = actor(who, &mut main, &mut doomed);
                if let Some(id) = pick(&live, index) {
                    let named = owner_of(owner, process.owner);
                    match heap.set_owner(&mut process.session, id, named) {
                        Ok(()) => {
                            assert!(valid(named), "handed to a process that does not exist");
                            live.get_mut(&id).expect("picked").owner = named;
                        }
                        Err(Error::InvalidOwner { .. }) if !valid(named) => {}
                        Err(other) => panic!("set_owner({named:?}): {other}"),
                    }
                }
            }
            Op::Flush { who } => {
                let process = actor(who, &mut main, &mut doomed);
                let _ = heap.flush(&mut process.cache).expect("same heap");
                assert_eq!(process.cache.held(), 0);
            }
            Op::Kill => {
                let dead = doomed.owner;
                let cached_before = heap.still_cached(&doomed.cache) as u64;
                let mut freed = BTreeMap::new();
                let reclaimed = heap
                    .reclaim_dead(
                        &mut main.session,
                        |record| record.owner == dead,
                        |id, owner, size| {
                            assert_eq!(owner, dead, "reclaimed an allocation of another owner");
                            assert!(freed.insert(id, size).is_none(), "reclaimed twice");
                        },
                    )
                    .expect("reclaim");
                let expected: BTreeMap<AllocId, u64> =
                    live.iter().filter(|(_, e)| e.owner == dead).map(|(&id, e)| (id, e.size)).collect();
                assert_eq!(freed, expected, "reclaim_dead freed exactly the dead owner's allocations");
                assert_eq!(reclaimed.allocations, expected.len() as u64);
                assert_eq!(reclaimed.cached_blocks, cached_before);
                assert_eq!((reclaimed.deferred, reclaimed.participants), (0, 2), "{reclaimed:?}");
                assert_eq!(reclaimed.released_processes, 1, "{reclaimed:?}");
                live.retain(|_, e| e.owner != dead);
                let again = heap.reclaim_dead(&mut main.session, |record| record.owner == dead, |_, _, _| {});
                assert_eq!(again.expect("reclaim"), Reclaimed::default(), "a second reclaim finds nothing");
                // A new process takes its place (often at the same index). The dead process's
                // cache is dropped without a flush: its blocks were reclaimed.
                let pid = doomed.pid + 1;
                let _ = std::mem::replace(&mut doomed, Process::join(&heap, pid)).cache.into_session();
            }
            Op::Repair => {
                let repaired = heap.repair(&mut main.session).expect("repair");
                assert!(repaired.is_clean(), "repair of a consistent heap changed something: {repaired:?}");
            }
            Op::Iterate => {
                let mut seen = BTreeSet::new();
                heap.for_each_allocation(&mut main.session, |a| {
                    let expected = Expected { size: a.size, owner: a.owner, alloc_type: a.alloc_type };
                    assert_eq!(live.get(&a.id()), Some(&expected), "for_each_allocation: {a:?}");
                    assert!(seen.insert(a.id()), "visited twice: {a:?}");
                })
                .expect("walk");
                assert_eq!(seen.len(), live.len());
            }
        }
        let stats = heap.check(&mut main.session).expect("check() after every operation");
        assert_eq!(stats.live_allocations, live.len() as u64);
        assert_eq!(stats.live_bytes, live.values().map(|e| e.size).sum::<u64>());
        assert_eq!(
            stats.cached_blocks,
            (heap.still_cached(&main.cache) + heap.still_cached(&doomed.cache)) as u64
        );
    }
}
