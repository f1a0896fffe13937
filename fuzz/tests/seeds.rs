//! Every fuzz target over its committed seeds (`fuzz/seeds/<target>/`) and over a few thousand
//! deterministic pseudo-random inputs, on stable, as part of `scripts/test`.

use std::path::Path;

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds").join(target);
    let mut files: Vec<_> =
        std::fs::read_dir(&dir).expect("seed directory").map(|e| e.expect("entry").path()).collect();
    files.sort();
    let inputs: Vec<Vec<u8>> = files.iter().map(|path| std::fs::read(path).expect("seed")).collect();
    assert!(!inputs.is_empty(), "no seeds for {target}");
    inputs
}

fn pseudo_random(count: usize, max_len: usize, seed: u64) -> impl Iterator<Item = Vec<u8>> {
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..count).map(move |_| {
        let len = (next() as usize) % max_len;
        (0..len).map(|_| next() as u8).collect()
    })
}

/// Each seed with single bytes flipped, so that checksums and bounds are exercised too.
fn mutations(inputs: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for input in inputs {
        for position in 0..input.len() {
            let mut mutated = input.clone();
            mutated[position] ^= 0x5A;
            out.push(mutated);
        }
    }
    out
}

#[test]
fn descriptor_target_survives_its_seeds_and_noise() {
    let inputs = seeds("descriptor");
    for input in inputs.iter().chain(&mutations(&inputs)) {
        shmpool_fuzz::descriptor(input);
    }
    for input in pseudo_random(5000, 160, 1) {
        shmpool_fuzz::descriptor(&input);
    }
}

#[test]
fn corrupted_region_target_survives_its_seeds_and_noise() {
    for input in seeds("corrupted_region") {
        shmpool_fuzz::corrupted_region(&input);
    }
    let count = if cfg!(debug_assertions) { 200 } else { 2000 };
    for input in pseudo_random(count, 300, 2) {
        shmpool_fuzz::corrupted_region(&input);
    }
}

#[test]
fn operations_target_survives_its_seeds_and_noise() {
    for input in seeds("operations") {
        shmpool_fuzz::operations(&input);
    }
    let count = if cfg!(debug_assertions) { 100 } else { 1000 };
    for input in pseudo_random(count, 400, 3) {
        shmpool_fuzz::operations(&input);
    }
}
