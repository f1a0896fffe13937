//! Model test: random sequences of alloc / free / realloc / lookup / iterate against a plain
//! map of what should be live. After every step: `check()` holds, live allocations lie inside
//! the data area and never overlap, every allocation still holds the bytes written into it, and
//! the heap's figures agree with the model. A second process allocates too and is killed at
//! random moments (its cache full of blocks); `reclaim_dead` must give back exactly what it
//! owned and held. At the end, freeing everything empties the heap and one allocation of most of
//! the data area succeeds.

mod common;

use std::collections::BTreeMap;

use alloc_core::{AllocId, AllocOptions, Allocation, Cache, Error, Heap, Owner, Platform};
use common::{fill, holds, prefix, Participant, TestMemory};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Alloc {
        size: u64,
        alloc_type: u8,
    },
    Free {
        pick: usize,
    },
    Realloc {
        pick: usize,
        size: u64,
    },
    Lookup {
        pick: usize,
    },
    FreeStale {
        pick: usize,
    },
    Iterate,
    /// The other process allocates (through its cache), to be lost when it dies.
    AllocOther {
        size: u64,
    },
    /// The other process dies; `reclaim_dead` runs.
    KillOther,
    /// The same operations through a participant's cache.
    AllocCached {
        size: u64,
    },
    FreeCached {
        pick: usize,
    },
    Flush,
}

fn size() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0u64..=128,
        3 => 129u64..=2048,
        2 => 2049u64..=20_000,
        1 => 20_000u64..=200_000,
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (size(), any::<u8>()).prop_map(|(size, alloc_type)| Op::Alloc { size, alloc_type }),
        4 => any::<usize>().prop_map(|pick| Op::Free { pick }),
        2 => (any::<usize>(), size()).prop_map(|(pick, size)| Op::Realloc { pick, size }),
        2 => any::<usize>().prop_map(|pick| Op::Lookup { pick }),
        1 => any::<usize>().prop_map(|pick| Op::FreeStale { pick }),
        1 => Just(Op::Iterate),
        2 => size().prop_map(|size| Op::AllocOther { size }),
        1 => Just(Op::KillOther),
        4 => size().prop_map(|size| Op::AllocCached { size }),
        3 => any::<usize>().prop_map(|pick| Op::FreeCached { pick }),
        1 => Just(Op::Flush),
    ]
}

/// What the model knows of one live allocation.
#[derive(Clone, Copy, Debug)]
struct Expected {
    allocation: Allocation,
    seed: u64,
}

fn verify(
    p: &mut Participant<'_, '_>,
    live: &BTreeMap<AllocId, Expected>,
    others: &BTreeMap<AllocId, Allocation>,
) {
    let heap = p.heap;
    let stats = p.check().expect("check() after every step");
    assert!(heap.run_index_is_exact(), "the run index summarises the page bitmap after every step");
    assert_eq!(stats.live_allocations, (live.len() + others.len()) as u64);
    let bytes =
        live.values().map(|e| e.allocation.size).sum::<u64>() + others.values().map(|a| a.size).sum::<u64>();
    assert_eq!(stats.live_bytes, bytes);
    let geo = heap.geometry();
    let mut spans: Vec<(u64, u64)> = live
        .values()
        .map(|e| &e.allocation)
        .chain(others.values())
        .map(|a| (a.offset, a.offset + a.size.max(1)))
        .collect();
    spans.sort();
    for (start, end) in &spans {
        assert!(*start >= geo.data_offset && *end <= geo.data_offset + geo.data_bytes());
    }
    for pair in spans.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "allocations overlap: {pair:?}");
    }
    for expected in live.values() {
        assert!(holds(heap, &expected.allocation, expected.seed), "bytes of {expected:?} changed");
    }
}

fn pick<K: Copy, V>(map: &BTreeMap<K, V>, pick: usize) -> Option<K> {
    (!map.is_empty()).then(|| *map.keys().nth(pick % map.len()).expect("in range"))
}

fn run(page_shift: u32, ops: Vec<Op>) {
    let memory = TestMemory::new(2 << 20);
    let heap = Heap::create(memory.region(), page_shift, Platform::SYMMETRIC).expect("fits");
    let mut p = Participant::new(&heap, 1);
    let owners: Vec<Owner> =
        (0..3).map(|i| Participant::new(&heap, 100 + i).owner()).chain([Owner::POOL]).collect();
    let mut live: BTreeMap<AllocId, Expected> = BTreeMap::new();
    let mut freed: Vec<AllocId> = Vec::new();
    let mut seed = 1u64;
    let mut cache = p.cache();
    // The other process: its own heap view, a cache, and what it owns.
    let other_view = memory.open();
    let mut other_pid = 1000;
    let mut other: Cache = Participant::new(&other_view, other_pid).cache();
    let mut others: BTreeMap<AllocId, Allocation> = BTreeMap::new();
    for op in ops {
        seed += 1;
        match op {
            Op::Alloc { size, alloc_type } => {
                let owner = owners[seed as usize % owners.len()];
                let options = AllocOptions { alloc_type, owner: Some(owner), ..AllocOptions::default() };
                match p.alloc(size, options) {
                    Ok(allocation) => {
                        assert_eq!((allocation.size, allocation.alloc_type), (size, alloc_type));
                        fill(&heap, &allocation, seed);
                        assert!(live.insert(allocation.id(), Expected { allocation, seed }).is_none());
                    }
                    Err(Error::OutOfMemory { .. }) => {}
                    Err(other) => panic!("alloc({size}) failed with {other:?}"),
                }
            }
            Op::Free { pick: index } => {
                if let Some(id) = pick(&live, index) {
                    let _ = p.free(id).expect("live allocation frees");
                    live.remove(&id);
                    freed.push(id);
                }
            }
            Op::Realloc { pick: index, size } => {
                if let Some(id) = pick(&live, index) {
                    let old = live[&id];
                    match p.realloc(id, size) {
                        Ok(moved) => {
                            assert_eq!(moved.size, size);
                            let kept = prefix(&moved, old.allocation.size.min(size));
                            assert!(holds(&heap, &kept, old.seed), "realloc lost bytes");
                            live.remove(&id);
                            if moved.id() != id {
                                freed.push(id);
                            }
                            fill(&heap, &moved, seed);
                            live.insert(moved.id(), Expected { allocation: moved, seed });
                        }
                        Err(Error::OutOfMemory { .. }) => {
                            assert_eq!(p.lookup(id).expect("original intact"), old.allocation);
                        }
                        Err(other) => panic!("realloc failed with {other:?}"),
                    }
                }
            }
            Op::Lookup { pick: index } => {
                if let Some(id) = pick(&live, index) {
                    assert_eq!(p.lookup(id).expect("live"), live[&id].allocation);
                }
            }
            Op::FreeStale { pick: index } => {
                if !freed.is_empty() {
                    let id = freed[index % freed.len()];
                    assert_eq!(p.free(id), Err(Error::NotAllocated { id: id.to_u128() }));
                    assert_eq!(p.lookup(id), Err(Error::NotAllocated { id: id.to_u128() }));
                }
            }
            Op::Iterate => {
                let listed: BTreeMap<AllocId, Allocation> =
                    p.live().into_iter().map(|a| (a.id(), a)).collect();
                let mut expected: BTreeMap<AllocId, Allocation> =
                    live.iter().map(|(id, e)| (*id, e.allocation)).collect();
                expected.extend(others.iter().map(|(id, a)| (*id, *a)));
                assert_eq!(listed, expected);
            }
            Op::AllocOther { size } => match other_view.alloc_with(&mut other, size, AllocOptions::default())
            {
                Ok(allocation) => {
                    assert!(others.insert(allocation.id(), allocation).is_none());
                }
                Err(Error::OutOfMemory { .. }) => {}
                Err(error) => panic!("the other process's alloc({size}) failed with {error:?}"),
            },
            Op::KillOther => {
                // It dies with whatever its cache holds (runs others took from it aside);
                // reclaim must give back all of it.
                let held = other_view.still_cached(&other) as u64;
                let reclaimed = p.reclaim(&[other_pid]).expect("reclaimable");
                assert_eq!(reclaimed.allocations, others.len() as u64);
                assert_eq!(reclaimed.cached_blocks, held);
                for id in others.keys() {
                    assert_eq!(p.lookup(*id), Err(Error::NotAllocated { id: id.to_u128() }));
                    freed.push(*id);
                }
                others.clear();
                other_pid += 1;
                other = Participant::new(&other_view, other_pid).cache();
            }
            Op::AllocCached { size } => match heap.alloc_with(&mut cache, size, AllocOptions::default()) {
                Ok(allocation) => {
                    assert_eq!(allocation.size, size);
                    fill(&heap, &allocation, seed);
                    assert!(live.insert(allocation.id(), Expected { allocation, seed }).is_none());
                }
                Err(Error::OutOfMemory { .. }) => {}
                Err(other) => panic!("alloc_with({size}) failed with {other:?}"),
            },
            Op::FreeCached { pick: index } => {
                if let Some(id) = pick(&live, index) {
                    let _ = heap.free_with(&mut cache, id).expect("live allocation frees");
                    live.remove(&id);
                    freed.push(id);
                }
            }
            Op::Flush => {
                let _ = heap.flush(&mut cache).expect("same heap");
                assert_eq!(cache.held(), 0);
            }
        }
        verify(&mut p, &live, &others);
        let still = heap.still_cached(&cache) + other_view.still_cached(&other);
        assert_eq!(p.stats().expect("stats").cached_blocks, still as u64);
    }
    for id in live.keys().chain(others.keys()) {
        let _ = p.free(*id).expect("live");
    }
    live.clear();
    others.clear();
    let _ = heap.flush(&mut cache).expect("same heap");
    let _ = other_view.flush(&mut other).expect("same heap");
    verify(&mut p, &live, &others);
    let stats = p.stats().expect("stats");
    assert_eq!(stats.live_allocations, 0);
    let most = heap.geometry().data_bytes() * 9 / 10;
    let big = p.alloc(most, AllocOptions::default()).expect("an empty heap serves most of its data area");
    let _ = p.free(big.id()).expect("live");
    p.check().expect("consistent");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_operation_sequences_match_the_model(ops in prop::collection::vec(op(), 1..120)) {
        run(12, ops);
    }

    #[test]
    fn random_operation_sequences_match_the_model_with_tiny_pages(ops in prop::collection::vec(op(), 1..120)) {
        run(6, ops);
    }
}
