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
