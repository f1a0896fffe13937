//! A region whose host backs memory as pages are first claimed (a pool file that may run out of
//! space): what the heap writes lies in what was backed, and pages that cannot be backed never
//! hide the free pages that are.

mod common;

use std::sync::Mutex;

use alloc_core::layout::DEFAULT_PAGE_SHIFT;
use alloc_core::{AllocOptions, Backing, Error, Heap, Platform};
use common::{Participant, TestMemory};

const MIB: u64 = 1 << 20;

/// A host that backs data only below `data_limit` and records every range it backed.
struct Host {
    data_limit: u64,
    backed: Mutex<Vec<(u64, u64)>>,
}

impl Host {
    fn back(context: usize, offset: u64, len: u64) -> bool {
        // SAFETY: `context` is the address of the `Host` the test keeps alive with the heap.
        let host = unsafe { &*(context as *const Host) };
        if offset + len > host.data_limit {
            return false;
        }
        host.backed.lock().expect("not poisoned").push((offset, offset + len));
        true
    }

    /// Whether byte `offset` was backed (by the test's own setup or the heap's calls).
    fn covers(&self, offset: u64) -> bool {
        let page = offset / 4096 * 4096;
        self.backed
            .lock()
            .expect("not poisoned")
            .iter()
            .any(|&(start, end)| start / 4096 * 4096 <= page && page < end)
    }
}

/// Review of issue 8 (seen failing before the fix: class-list words were written where no
/// backing had put memory; and once a chunk could not be backed, a search that had started at
/// its hint gave up, ignoring a free run below). Every word the heap writes outside the header
/// and tables lies in a host page it asked to back first, and the pages that could be backed
/// stay usable after a chunk could not be.
#[test]
fn every_write_lands_in_backed_memory_and_a_failed_backing_hides_no_free_run() {
    let memory = TestMemory::new(64 * MIB as usize);
    let geo = alloc_core::layout::Geometry::compute(64 * MIB, DEFAULT_PAGE_SHIFT).expect("fits");
    // Data backed for 12 MiB (three chunks); the host backs the header and tables itself.
    let tables = geo.bitmap_word as u64 * 8;
    let host = Host { data_limit: geo.page_offset(3 << 10), backed: Mutex::new(vec![(0, tables)]) };
    let platform = Platform {
        heavy_fence: None,
        backing: Some(Backing { context: &host as *const Host as usize, back: Host::back }),
    };
    let heap = Heap::create(memory.region(), DEFAULT_PAGE_SHIFT, platform).expect("created");
    let mut p = Participant::new(&heap, 1);
    let options = AllocOptions::default();
    let mut runs = Vec::new();
    while let Ok(run) = p.alloc(MIB, options) {
        runs.push(run.id());
    }
    assert_eq!(runs.len(), 12, "every backed page is used, no other");
    // Free two runs in the middle: a run and blocks of every class fit there, though the
    // search starts past them and the chunk above cannot be backed.
    let _ = p.free(runs.remove(4)).expect("live");
    let _ = p.free(runs.remove(4)).expect("live");
    runs.push(p.alloc(MIB, options).expect("the hole below is found").id());
    let mut small = 0;
    for shift in 4..=11 {
        while p.alloc(1 << shift, options).is_ok() {
            small += 1;
        }
    }
    assert!(small > (MIB / 2048) as usize, "{small} blocks in the second hole");
    assert!(matches!(p.alloc(MIB, options), Err(Error::OutOfMemory { .. })));
    p.check().expect("consistent");

    let unbacked: Vec<u64> = (tables / 8..geo.page_offset(0) / 8)
        .filter(|&word| memory.word(word as usize) != 0 && !host.covers(word * 8))
        .collect();
    assert!(
        unbacked.is_empty(),
        "{} metadata words written without backing, first at byte {:#x}",
        unbacked.len(),
        unbacked[0] * 8
    );
}
