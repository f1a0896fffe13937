//! Every fuzz target over its committed seeds (`fuzz/seeds/<target>/`) and over a few thousand
//! deterministic pseudo-random inputs, on stable, as part of `scripts/test`. An input that
//! panics is kept in `fuzz/artifacts/<target>/` (where `scripts/fuzz` looks for failures and
//! `cargo fuzz run <target> <file>` replays it) and fails the test; one that runs for longer than
//! [`HANG`] is kept there too and aborts the test process (a hang cannot be interrupted).

use std::hash::{DefaultHasher, Hash, Hasher};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long one input may run before it counts as a hang.
const HANG: Duration = Duration::from_secs(60);

/// Writes a failing input to `fuzz/artifacts/<target>/<kind>-stable-<hash>`; returns the path.
fn keep(target: &str, kind: &str, input: &[u8]) -> PathBuf {
    let mut hasher = DefaultHasher::new();
    input.hash(&mut hasher);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts").join(target);
    let path = dir.join(format!("{kind}-stable-{:016x}", hasher.finish()));
    let _ = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, input));
    path
}

/// The input being run and when it started (`None` between inputs).
type Running = Option<(Instant, Vec<u8>)>;

/// Runs `body` on every input, keeping the ones that panic or hang (see the module docs), and
/// returns where the failing ones were kept.
fn run(target: &'static str, inputs: impl IntoIterator<Item = Vec<u8>>, body: fn(&[u8])) -> Vec<PathBuf> {
    let current: Arc<Mutex<Running>> = Arc::new(Mutex::new(None));
    let watched = Arc::clone(&current);
    let watchdog = std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(200));
        let guard = watched.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match &*guard {
            Some((started, input)) if started.elapsed() > HANG => {
                let path = keep(target, "timeout", input);
                eprintln!("{target}: an input ran for more than {HANG:?}; kept in {}", path.display());
                std::process::abort();
            }
            Some(_) => {}
            None if Arc::strong_count(&watched) == 1 => return,
            None => {}
        }
    });
    let mut failures = Vec::new();
    for input in inputs {
        *current.lock().expect("watchdog never panics") = Some((Instant::now(), input.clone()));
        if catch_unwind(AssertUnwindSafe(|| body(&input))).is_err() {
            failures.push(keep(target, "crash", &input));
        }
        *current.lock().expect("watchdog never panics") = None;
    }
    drop(current);
    watchdog.join().expect("watchdog");
    failures
}

/// Fails the test if any input failed.
fn none_failed(target: &str, failures: &[PathBuf]) {
    assert!(failures.is_empty(), "{target}: {} failing inputs, kept in {failures:#?}", failures.len());
}

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
fn descriptor_seeds_are_of_the_current_format() {
    for input in seeds("descriptor").into_iter().filter(|input| !input.is_empty()) {
        let pool = alloc_shm::descriptor::PoolDescriptor::from_bytes(&input);
        let alloc = alloc_shm::descriptor::AllocDescriptor::from_bytes(&input);
        assert!(pool.is_ok() || alloc.is_ok(), "a descriptor seed no longer decodes: {pool:?} {alloc:?}");
    }
}

#[test]
fn descriptor_target_survives_its_seeds_and_noise() {
    let inputs = seeds("descriptor");
    let mutated = mutations(&inputs);
    let mut failures = run("descriptor", inputs.into_iter().chain(mutated), shmpool_fuzz::descriptor);
    failures.extend(run("descriptor", pseudo_random(5000, 160, 1), shmpool_fuzz::descriptor));
    none_failed("descriptor", &failures);
}

#[test]
fn corrupted_region_target_survives_its_seeds_and_noise() {
    let mut failures = run("corrupted_region", seeds("corrupted_region"), shmpool_fuzz::corrupted_region);
    let count = if cfg!(debug_assertions) { 200 } else { 2000 };
    failures.extend(run("corrupted_region", pseudo_random(count, 300, 2), shmpool_fuzz::corrupted_region));
    none_failed("corrupted_region", &failures);
}

#[test]
fn operations_target_survives_its_seeds_and_noise() {
    let mut failures = run("operations", seeds("operations"), shmpool_fuzz::operations);
    let count = if cfg!(debug_assertions) { 100 } else { 1000 };
    failures.extend(run("operations", pseudo_random(count, 400, 3), shmpool_fuzz::operations));
    none_failed("operations", &failures);
}
