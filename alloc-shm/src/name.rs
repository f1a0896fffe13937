//! Pool names and where their files live.
//!
//! A name is 1–200 characters from `[A-Za-z0-9_.-]`, not starting with `.`: so it can never be
//! a path (`/`), a parent (`..`), hidden, or carry a NUL. The pool's file is
//! `<dir>/shmpool-<name>`, in `/dev/shm` unless the pool was created in another directory;
//! the prefix lets `shmpool ls` and `gc` find pools, and keeps pools apart from other files.

use std::path::{Path, PathBuf};

use crate::error::{PoolError, Result};

/// Longest pool name.
pub const MAX_NAME_LEN: usize = 200;
/// Prefix of every pool file.
pub const FILE_PREFIX: &str = "shmpool-";
/// Where pools live unless created elsewhere.
pub const DEFAULT_DIR: &str = "/dev/shm";

/// Checks a pool name against the rules above.
pub fn validate(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_NAME_LEN {
        Some("it is longer than 200 characters")
    } else if name.starts_with('.') {
        Some("it starts with '.'")
    } else if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-') {
        Some("only letters, digits, '_', '.' and '-' are allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(PoolError::InvalidName { name: name.to_owned(), reason }),
        None => Ok(()),
    }
}

/// The file of pool `name` in `dir`.
pub fn path_in(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{FILE_PREFIX}{name}"))
}

/// The pool name of a file name, if it is a pool file.
pub fn from_file_name(file_name: &str) -> Option<&str> {
    file_name.strip_prefix(FILE_PREFIX).filter(|name| validate(name).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rules() {
        for good in ["a", "pool_1", "my.pool-2", "A9", &"x".repeat(200)] {
            assert!(validate(good).is_ok(), "{good}");
        }
        for bad in ["", ".hidden", "..", "a/b", "../etc", "nul\0byte", "space here", "é", &"x".repeat(201)] {
            assert!(matches!(validate(bad), Err(PoolError::InvalidName { .. })), "{bad:?}");
        }
        assert_eq!(from_file_name("shmpool-abc"), Some("abc"));
        assert_eq!(from_file_name("other"), None);
    }
}
