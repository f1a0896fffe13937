//! Model test: random sequences of alloc / free / realloc / lookup / iterate against a plain
//! map of what should be live. After every step: `check()` holds, live allocations lie inside
//! the data area and never overlap, every allocation still holds the bytes written into it, and
//! the heap's figures agree with the model. At the end, freeing everything empties the heap and
//! one allocation of most of the data area succeeds.

mod common;

use std::collections::BTreeMap;

use alloc_core::{AllocId, AllocOptions, Allocation, Error, Heap, Owner};
use common::{fill, holds, TestMemory};
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
    ReleaseEmptySpans,
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
        1 => Just(Op::ReleaseEmptySpans),
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

fn verify(heap: &Heap<'_>, live: &BTreeMap<AllocId, Expected>) {
    let stats = heap.check().expect("check() after every step");
    assert_eq!(stats.live_allocations, live.len() as u64);
    assert_eq!(stats.live_bytes, live.values().map(|e| e.allocation.size).sum::<u64>());
    let geo = heap.geometry();
    let mut spans: Vec<(u64, u64)> = live
        .values()
        .map(|e| (e.allocation.offset, e.allocation.offset + e.allocation.size.max(1)))
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
    let heap = Heap::create(memory.region(), page_shift).expect("fits");
    let mut live: BTreeMap<AllocId, Expected> = BTreeMap::new();
    let mut freed: Vec<AllocId> = Vec::new();
    let mut seed = 1u64;
    let mut cache = heap.new_cache(Owner(99));
    for op in ops {
        seed += 1;
        match op {
            Op::Alloc { size, alloc_type } => {
                let options =
                    AllocOptions { alloc_type, owner: Owner(seed as u32), ..AllocOptions::default() };
                match heap.alloc(size, options) {
                    Ok(allocation) => {
                        assert_eq!((allocation.size, allocation.alloc_type), (size, alloc_type));
                        fill(&heap, &allocation, seed);
                        assert!(live.insert(allocation.id, Expected { allocation, seed }).is_none());
                    }
                    Err(Error::OutOfMemory { .. }) => {}
                    Err(other) => panic!("alloc({size}) failed with {other:?}"),
                }
            }
            Op::Free { pick: index } => {
                if let Some(id) = pick(&live, index) {
                    let _ = heap.free(id).expect("live allocation frees");
                    live.remove(&id);
                    freed.push(id);
                }
            }
            Op::Realloc { pick: index, size } => {
                if let Some(id) = pick(&live, index) {
                    let old = live[&id];
                    match heap.realloc(id, size) {
                        Ok(moved) => {
                            assert_eq!(moved.size, size);
                            let kept = Allocation { size: old.allocation.size.min(size), ..moved };
                            assert!(holds(&heap, &kept, old.seed), "realloc lost bytes");
                            live.remove(&id);
                            if moved.id != id {
                                freed.push(id);
                            }
                            fill(&heap, &moved, seed);
                            live.insert(moved.id, Expected { allocation: moved, seed });
                        }
                        Err(Error::OutOfMemory { .. }) => {
                            assert_eq!(heap.lookup(id).expect("original intact"), old.allocation);
                        }
                        Err(other) => panic!("realloc failed with {other:?}"),
                    }
                }
            }
            Op::Lookup { pick: index } => {
                if let Some(id) = pick(&live, index) {
                    assert_eq!(heap.lookup(id).expect("live"), live[&id].allocation);
                }
            }
            Op::FreeStale { pick: index } => {
                if !freed.is_empty() {
                    let id = freed[index % freed.len()];
                    assert_eq!(heap.free(id), Err(Error::NotAllocated { id: id.0 }));
                    assert_eq!(heap.lookup(id), Err(Error::NotAllocated { id: id.0 }));
                }
            }
            Op::Iterate => {
                let listed: BTreeMap<AllocId, Allocation> = heap.iter().map(|a| (a.id, a)).collect();
                let expected: BTreeMap<AllocId, Allocation> =
                    live.iter().map(|(id, e)| (*id, e.allocation)).collect();
                assert_eq!(listed, expected);
            }
            Op::ReleaseEmptySpans => {
                heap.release_empty_spans().expect("consistent");
            }
            Op::AllocCached { size } => match heap.alloc_with(&mut cache, size, AllocOptions::default()) {
                Ok(allocation) => {
                    assert_eq!(allocation.size, size);
                    fill(&heap, &allocation, seed);
                    assert!(live.insert(allocation.id, Expected { allocation, seed }).is_none());
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
        verify(&heap, &live);
        assert_eq!(heap.stats().expect("stats").cached_blocks, cache.held() as u64);
    }
    for id in live.keys() {
        let _ = heap.free(*id).expect("live");
    }
    live.clear();
    let _ = heap.flush(&mut cache).expect("same heap");
    verify(&heap, &live);
    let stats = heap.stats().expect("stats");
    assert_eq!(stats.live_allocations, 0);
    let most = heap.geometry().data_bytes() * 9 / 10;
    let big = heap.alloc(most, AllocOptions::default()).expect("an empty heap serves most of its data area");
    let _ = heap.free(big.id).expect("live");
    heap.check().expect("consistent");
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
