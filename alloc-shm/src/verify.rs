//! Content patterns for demos, tests and benchmarks: the bytes of an allocation derived from
//! its id, so that any process can check an allocation it received without being told what
//! was written.

use alloc_core::{AllocId, Allocation};

use crate::error::Result;
use crate::pool::Pool;

/// The byte at `at` of the pattern of allocation `id`.
pub fn pattern_byte(id: AllocId, at: u64) -> u8 {
    let seed = id.slot() ^ id.generation().rotate_left(29);
    (seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(at.wrapping_mul(0x2545_F491)) >> 56) as u8
}

/// Writes `allocation`'s pattern into it.
pub fn fill(pool: &Pool, allocation: &Allocation) -> Result<()> {
    let contents: Vec<u8> = (0..allocation.size).map(|at| pattern_byte(allocation.id(), at)).collect();
    pool.write(allocation.id(), 0, &contents)
}

/// Whether `allocation` holds its pattern.
pub fn holds(pool: &Pool, allocation: &Allocation) -> Result<bool> {
    let mut contents = vec![0u8; allocation.size as usize];
    pool.read(allocation.id(), 0, &mut contents)?;
    Ok(contents.iter().enumerate().all(|(at, &byte)| byte == pattern_byte(allocation.id(), at as u64)))
}
