//! Test pools: unique names with the `test-` prefix (files `/dev/shm/shmpool-test-*`, which
//! `scripts/test` sweeps at start), destroyed by a guard even when the test fails.
#![allow(dead_code)]

use std::ops::Deref;
use std::sync::atomic::{AtomicU32, Ordering};

use alloc_shm::Pool;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name no other test (or test process) uses.
pub fn unique_name(label: &str) -> String {
    format!("test-{label}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// A pool destroyed when dropped.
pub struct TestPool {
    pool: Pool,
}

impl TestPool {
    pub fn new(label: &str, size: u64) -> TestPool {
        TestPool { pool: Pool::create(&unique_name(label), size).expect("create test pool") }
    }

    pub fn with_options(label: &str, size: u64, options: &alloc_shm::PoolOptions) -> TestPool {
        TestPool { pool: Pool::create_with(&unique_name(label), size, options).expect("create test pool") }
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}

impl Deref for TestPool {
    type Target = Pool;
    fn deref(&self) -> &Pool {
        &self.pool
    }
}

impl Drop for TestPool {
    fn drop(&mut self) {
        let _ = self.pool.destroy();
        assert!(!self.pool.path().exists(), "test pool file left behind");
    }
}

/// Whether `pages` huge pages of 2 MiB are free and not reserved, as the kernel counts them;
/// if not, says that the test is skipped and why.
pub fn huge_pages_free(pages: u64) -> bool {
    let read = |file: &str| {
        std::fs::read_to_string(format!("/sys/kernel/mm/hugepages/hugepages-2048kB/{file}"))
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let free = read("free_hugepages").saturating_sub(read("resv_hugepages"));
    if free < pages {
        eprintln!(
            "SKIPPED: {free} free huge pages, {pages} needed (as root: sysctl vm.nr_hugepages=32; \
             scripts/test does that where it may)"
        );
    }
    free >= pages
}

/// The page size (KiB) the kernel uses for this process's mapping whose line names `file`.
pub fn kernel_page_kib(file: &str) -> Option<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let at = smaps.find(file)?;
    let line = smaps[at..].lines().find(|line| line.starts_with("KernelPageSize:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Waits for a child's `@@ ready` line on its piped stderr, reading one byte at a time so that
/// nothing past the line is taken from the pipe.
pub fn wait_ready(child: &mut std::process::Child) {
    use std::io::Read;
    let stderr = child.stderr.as_mut().expect("stderr piped");
    let mut line = String::new();
    let mut byte = [0u8; 1];
    while !line.ends_with('\n') {
        assert_eq!(stderr.read(&mut byte).expect("child stderr"), 1, "child died before ready: {line}");
        line.push(byte[0] as char);
    }
    assert_eq!(line.trim(), "@@ ready");
}
