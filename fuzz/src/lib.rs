//! The bodies of the fuzz targets, shared by the libFuzzer entry points (`fuzz_targets/`) and
//! the stable seed tests (`tests/seeds.rs`). Each panics only on a real bug: a decoding that
//! does not round-trip, an operation that panics or breaks an invariant.

use std::collections::BTreeMap;

use alloc_core::layout::GRANULE;
use alloc_core::{AllocId, AllocOptions, Error, Heap, Owner, Region};
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

/// Zeroed, 8-byte aligned memory for a region.
struct Memory(Vec<u64>);

impl Memory {
    fn new(bytes: usize) -> Memory {
        Memory(vec![0; bytes / 8])
    }

    fn region(&mut self) -> Region<'_> {
        let len = self.0.len() * 8;
        // SAFETY: the vector outlives the region (it borrows `self` mutably) and is only used
        // through it.
        unsafe { Region::from_raw(self.0.as_mut_ptr().cast(), len) }.expect("vectors of u64 are aligned")
    }
}

const REGION_BYTES: usize = 256 << 10;

/// Opening a region whose header and metadata hold bytes of the input: every call returns (an
/// error or a value), none panics or touches memory outside the region.
pub fn corrupted_region(data: &[u8]) {
    let mut memory = Memory::new(REGION_BYTES);
    let (ids, metadata_end) = {
        let heap = Heap::create_default(memory.region()).expect("fits");
        let ids: Vec<AllocId> = [0u64, 64, 100, 2048, 5000, 20_000]
            .iter()
            .filter_map(|&size| heap.alloc(size, AllocOptions::default()).ok().map(|a| a.id))
            .collect();
        (ids, heap.geometry().data_offset as usize + 4096)
    };
    // The input is (position, byte) pairs over the header, metadata and first span's in-band
    // arrays.
    let bytes: &mut [u8] = bytemuck_bytes(&mut memory.0);
    for pair in data.chunks_exact(3) {
        let position = u16::from_le_bytes([pair[0], pair[1]]) as usize % metadata_end;
        bytes[position] = pair[2];
    }
    let Ok(heap) = Heap::open(memory.region()) else { return };
    for &id in &ids {
        let _ = heap.lookup(id);
    }
    let _ = heap.iter().take(1000).count();
    let _ = heap.stats();
    let _ = heap.check();
    let mut cache = heap.new_cache(Owner(1));
    for size in [16, 64, 512, 3000, 70_000] {
        if let Ok(a) = heap.alloc(size, AllocOptions::default()) {
            let _ = heap.free(a.id);
        }
        if let Ok(a) = heap.alloc_with(&mut cache, size, AllocOptions::default()) {
            let _ = heap.free_with(&mut cache, a.id);
        }
    }
    let _ = heap.flush(&mut cache);
    for &id in &ids {
        let _ = heap.realloc(id, 300);
        let _ = heap.free(id);
    }
    let _ = heap.reclaim_dead(|_| true, |_, _, _| {});
    let _ = heap.release_empty_spans();
}

fn bytemuck_bytes(words: &mut [u64]) -> &mut [u8] {
    let len = words.len() * 8;
    // SAFETY: u8 has no alignment or validity requirements; the slice covers exactly the words.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast(), len) }
}

/// One step of [`operations`].
#[derive(Arbitrary, Debug)]
enum Op {
    Alloc { size: u16, large: bool, alloc_type: u8 },
    Free { pick: u8 },
    Realloc { pick: u8, size: u16 },
    Lookup { pick: u8 },
    AllocCached { size: u16 },
    FreeCached { pick: u8 },
    Flush,
    ReleaseEmptySpans,
    Iterate,
}

/// Random operation sequences against a map of what should be live, `check()` after each.
pub fn operations(data: &[u8]) {
    let mut input = Unstructured::new(data);
    let mut memory = Memory::new(REGION_BYTES);
    let heap = Heap::create_default(memory.region()).expect("fits");
    let mut cache = heap.new_cache(Owner(7));
    let mut live: BTreeMap<AllocId, u64> = BTreeMap::new();
    let pick = |live: &BTreeMap<AllocId, u64>, index: u8| {
        (!live.is_empty()).then(|| *live.keys().nth(index as usize % live.len()).expect("in range"))
    };
    for _ in 0..64 {
        let Ok(op) = Op::arbitrary(&mut input) else { break };
        match op {
            Op::Alloc { size, large, alloc_type } => {
                let size = if large { size as u64 * 4 } else { size as u64 % 2100 };
                let options = AllocOptions { alloc_type, ..AllocOptions::default() };
                match heap.alloc(size, options) {
                    Ok(a) => {
                        assert_eq!(a.offset % GRANULE, 0);
                        assert!(live.insert(a.id, size).is_none(), "an id was handed out twice");
                    }
                    Err(Error::OutOfMemory { .. } | Error::TooLarge { .. }) => {}
                    Err(other) => panic!("alloc({size}): {other}"),
                }
            }
            Op::AllocCached { size } => {
                match heap.alloc_with(&mut cache, size as u64 % 2100, AllocOptions::default()) {
                    Ok(a) => assert!(live.insert(a.id, a.size).is_none(), "an id was handed out twice"),
                    Err(Error::OutOfMemory { .. }) => {}
                    Err(other) => panic!("alloc_with: {other}"),
                }
            }
            Op::Free { pick: index } | Op::FreeCached { pick: index } => {
                if let Some(id) = pick(&live, index) {
                    let result = match op {
                        Op::Free { .. } => heap.free(id),
                        _ => heap.free_with(&mut cache, id),
                    };
                    let _ = result.expect("a live allocation frees");
                    live.remove(&id);
                    assert!(heap.free(id).is_err(), "a double free is refused");
                }
            }
            Op::Realloc { pick: index, size } => {
                if let Some(id) = pick(&live, index) {
                    match heap.realloc(id, size as u64) {
                        Ok(moved) => {
                            live.remove(&id);
                            live.insert(moved.id, size as u64);
                        }
                        Err(Error::OutOfMemory { .. } | Error::TooLarge { .. }) => {
                            assert!(heap.contains(id), "failed realloc kept the original")
                        }
                        Err(other) => panic!("realloc: {other}"),
                    }
                }
            }
            Op::Lookup { pick: index } => {
                if let Some(id) = pick(&live, index) {
                    assert_eq!(heap.lookup(id).expect("live").size, live[&id]);
                }
            }
            Op::Flush => {
                let _ = heap.flush(&mut cache).expect("same heap");
            }
            Op::ReleaseEmptySpans => {
                heap.release_empty_spans().expect("consistent");
            }
            Op::Iterate => assert_eq!(heap.iter().count(), live.len()),
        }
        let stats = heap.check().expect("check() after every operation");
        assert_eq!(stats.live_allocations, live.len() as u64);
    }
}
