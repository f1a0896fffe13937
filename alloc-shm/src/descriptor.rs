//! Descriptors: the bytes that name a pool, or one allocation in a pool, to another process.
//!
//! Little-endian, versioned, at most [`MAX_LEN`] bytes, ending in a CRC-32 of everything before
//! it, so truncated, random or tampered bytes are refused:
//!
//! | bytes | field |
//! |-------|-------|
//! | 0–3   | magic `SHMD` |
//! | 4     | version (2: 128-bit allocation ids) |
//! | 5     | kind: 1 pool, 2 allocation |
//! | 6     | where: 0 pool name in `/dev/shm`, 1 full path of the pool file, 2 not recorded (find by nonce), 3 a memfd (only in processes that have it) |
//! | 7     | length `L` of the location |
//! | 8–15  | the pool's nonce (tells it from a later pool of the same name) |
//! | 16–23 | the pool's file size |
//! | allocation only: 24–39 id (slot, then generation), 40–47 offset, 48–55 size, 56 type |
//! | then  | `L` bytes of location, then 4 bytes CRC-32 |
//!
//! A name or path too long to fit is left out (where = 2); attaching then looks for the nonce
//! among the pools in `/dev/shm`.

use std::path::{Path, PathBuf};

use alloc_core::AllocId;

use crate::error::{PoolError, Result};
use crate::name;

/// Longest descriptor.
pub const MAX_LEN: usize = 128;
const MAGIC: &[u8; 4] = b"SHMD";
const VERSION: u8 = 2;
const KIND_POOL: u8 = 1;
const KIND_ALLOC: u8 = 2;
const POOL_FIXED: usize = 24;
const ALLOC_FIXED: usize = 57;
const CRC_LEN: usize = 4;

/// Where a descriptor says its pool lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// `name` in `/dev/shm`.
    Named(String),
    /// The pool file's full path (a pool created in another directory).
    Path(PathBuf),
    /// Not recorded: find the pool by its nonce among `/dev/shm`'s pools.
    ByNonce,
    /// A memfd pool: found by its nonce among the pools this process has (received as a file
    /// descriptor, or inherited across `fork`).
    Memfd,
}

/// What a pool descriptor holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolDescriptor {
    /// Where the pool lives.
    pub location: Location,
    /// The pool's nonce.
    pub nonce: u64,
    /// The pool's file size.
    pub bytes: u64,
}

/// What an allocation descriptor holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocDescriptor {
    /// The allocation's pool.
    pub pool: PoolDescriptor,
    /// The allocation's id.
    pub id: AllocId,
    /// Byte offset of the allocation in the pool.
    pub offset: u64,
    /// Its size.
    pub size: u64,
    /// Its type.
    pub alloc_type: u8,
}

fn location_bytes(location: &Location) -> (u8, &[u8]) {
    match location {
        Location::Named(name) => (0, name.as_bytes()),
        Location::Path(path) => (1, path.as_os_str().as_encoded_bytes()),
        Location::ByNonce => (2, &[]),
        Location::Memfd => (3, &[]),
    }
}

/// The location to record for a pool file, leaving it out when it would not fit in `room`.
pub(crate) fn location_for(path: &Path, pool_name: &str, room: usize) -> Result<Location> {
    let default_dir = Path::new(name::DEFAULT_DIR);
    let named = path.parent() == Some(default_dir);
    let location =
        if named { Location::Named(pool_name.to_owned()) } else { Location::Path(path.to_owned()) };
    if location_bytes(&location).1.len() <= room {
        Ok(location)
    } else if named {
        Ok(Location::ByNonce)
    } else {
        Err(PoolError::InvalidArgument("the pool's path is too long for a 128-byte descriptor"))
    }
}

/// Room for the location in a pool / allocation descriptor.
pub(crate) const POOL_ROOM: usize = MAX_LEN - POOL_FIXED - CRC_LEN;
/// See [`POOL_ROOM`].
pub(crate) const ALLOC_ROOM: usize = MAX_LEN - ALLOC_FIXED - CRC_LEN;

fn encode(kind: u8, pool: &PoolDescriptor, alloc: Option<(&AllocId, u64, u64, u8)>) -> Vec<u8> {
    let (where_, location) = location_bytes(&pool.location);
    let mut bytes = Vec::with_capacity(MAX_LEN);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&[VERSION, kind, where_, location.len() as u8]);
    bytes.extend_from_slice(&pool.nonce.to_le_bytes());
    bytes.extend_from_slice(&pool.bytes.to_le_bytes());
    if let Some((id, offset, size, alloc_type)) = alloc {
        bytes.extend_from_slice(&id.to_u128().to_le_bytes()); // 16 bytes: slot (low half), generation
        bytes.extend_from_slice(&offset.to_le_bytes());
        bytes.extend_from_slice(&size.to_le_bytes());
        bytes.push(alloc_type);
    }
    bytes.extend_from_slice(location);
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    debug_assert!(bytes.len() <= MAX_LEN);
    bytes
}

impl PoolDescriptor {
    /// The descriptor's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(KIND_POOL, self, None)
    }

    /// Decodes a pool descriptor.
    pub fn from_bytes(bytes: &[u8]) -> Result<PoolDescriptor> {
        let (kind, pool, _) = decode(bytes)?;
        if kind != KIND_POOL {
            return Err(PoolError::InvalidDescriptor("an allocation descriptor, not a pool descriptor"));
        }
        Ok(pool)
    }
}

impl AllocDescriptor {
    /// The descriptor's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(KIND_ALLOC, &self.pool, Some((&self.id, self.offset, self.size, self.alloc_type)))
    }

    /// Decodes an allocation descriptor.
    pub fn from_bytes(bytes: &[u8]) -> Result<AllocDescriptor> {
        match decode(bytes)? {
            (KIND_ALLOC, pool, Some((id, offset, size, alloc_type))) => {
                Ok(AllocDescriptor { pool, id, offset, size, alloc_type })
            }
            _ => Err(PoolError::InvalidDescriptor("a pool descriptor, not an allocation descriptor")),
        }
    }
}

type AllocFields = (AllocId, u64, u64, u8);

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

fn decode(bytes: &[u8]) -> Result<(u8, PoolDescriptor, Option<AllocFields>)> {
    let invalid = PoolError::InvalidDescriptor;
    if bytes.is_empty() {
        return Err(invalid("empty"));
    }
    if bytes.len() > MAX_LEN {
        return Err(invalid("longer than 128 bytes"));
    }
    if bytes.len() < POOL_FIXED + CRC_LEN || &bytes[..4] != MAGIC {
        return Err(invalid("not a shmpool descriptor"));
    }
    if bytes[4] != VERSION {
        return Err(invalid("made by another descriptor version"));
    }
    let (kind, where_, location_len) = (bytes[5], bytes[6], bytes[7] as usize);
    let fixed = match kind {
        KIND_POOL => POOL_FIXED,
        KIND_ALLOC => ALLOC_FIXED,
        _ => return Err(invalid("unknown descriptor kind")),
    };
    if bytes.len() != fixed + location_len + CRC_LEN {
        return Err(invalid("truncated or padded"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - CRC_LEN);
    if crc32fast::hash(body).to_le_bytes() != crc {
        return Err(invalid("checksum mismatch (tampered or corrupted)"));
    }
    let location_raw = &body[fixed..];
    let location = match where_ {
        0 => {
            let pool_name =
                std::str::from_utf8(location_raw).map_err(|_| invalid("pool name is not UTF-8"))?;
            name::validate(pool_name).map_err(|_| invalid("pool name breaks the naming rules"))?;
            Location::Named(pool_name.to_owned())
        }
        1 => {
            let path = std::str::from_utf8(location_raw).map_err(|_| invalid("pool path is not UTF-8"))?;
            let path = PathBuf::from(path);
            let file_name = path.file_name().and_then(|f| f.to_str()).unwrap_or("");
            if !path.is_absolute() || name::from_file_name(file_name).is_none() {
                return Err(invalid("pool path is not an absolute path to a pool file"));
            }
            Location::Path(path)
        }
        2 if location_len == 0 => Location::ByNonce,
        3 if location_len == 0 => Location::Memfd,
        _ => return Err(invalid("unknown location kind")),
    };
    let pool = PoolDescriptor { location, nonce: u64_at(body, 8), bytes: u64_at(body, 16) };
    let alloc = (kind == KIND_ALLOC).then(|| {
        let id = AllocId::new(u64_at(body, 24), u64_at(body, 32));
        (id, u64_at(body, 40), u64_at(body, 48), body[56])
    });
    Ok((kind, pool, alloc))
}

/// A descriptor as lowercase hex text (for command lines and environment variables).
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex text back to bytes, or `None` if it is not hex.
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// Writes `descriptor` to a byte stream (a pipe, a socket) as one length byte and its bytes.
pub fn write_frame(out: &mut impl std::io::Write, descriptor: &[u8]) -> std::io::Result<()> {
    debug_assert!(!descriptor.is_empty() && descriptor.len() <= MAX_LEN);
    out.write_all(&[descriptor.len() as u8])?;
    out.write_all(descriptor)
}

/// Ends a stream of frames.
pub fn write_end(out: &mut impl std::io::Write) -> std::io::Result<()> {
    out.write_all(&[0])?;
    out.flush()
}

/// Reads the next frame's descriptor; `None` at the end of the stream.
pub fn read_frame(input: &mut impl std::io::Read) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 1];
    input.read_exact(&mut len)?;
    if len[0] == 0 {
        return Ok(None);
    }
    let mut descriptor = vec![0u8; len[0] as usize];
    input.read_exact(&mut descriptor)?;
    Ok(Some(descriptor))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> AllocDescriptor {
        AllocDescriptor {
            pool: PoolDescriptor {
                location: Location::Named("data.pool-1".into()),
                nonce: 0xABCD,
                bytes: 1 << 30,
            },
            id: AllocId::new(0x1234_5678_9ABC, 0xDEF0_1234_5678),
            offset: 123_456,
            size: 64,
            alloc_type: 3,
        }
    }

    #[test]
    fn descriptors_round_trip_within_128_bytes() {
        let alloc = sample();
        let bytes = alloc.to_bytes();
        assert!(bytes.len() <= MAX_LEN);
        assert_eq!(AllocDescriptor::from_bytes(&bytes).expect("valid"), alloc);
        let pool =
            PoolDescriptor { location: Location::Path("/tmp/x/shmpool-p".into()), ..alloc.pool.clone() };
        assert_eq!(PoolDescriptor::from_bytes(&pool.to_bytes()).expect("valid"), pool);
        let by_nonce = PoolDescriptor { location: Location::ByNonce, ..alloc.pool };
        assert_eq!(PoolDescriptor::from_bytes(&by_nonce.to_bytes()).expect("valid"), by_nonce);
    }

    #[test]
    fn bad_bytes_are_refused_with_a_reason() {
        let good = sample().to_bytes();
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            good[..good.len() - 1].to_vec(),
            good[..10].to_vec(),
            [good.clone(), vec![0]].concat(),
            vec![0xFF; 200],
            {
                let mut v = good.clone();
                v[4] = 1; // another (the first) version
                v
            },
            {
                let mut v = good.clone();
                v[36] ^= 1; // tampered id (its generation)
                v
            },
        ];
        for bytes in cases {
            assert!(matches!(AllocDescriptor::from_bytes(&bytes), Err(PoolError::InvalidDescriptor(_))));
        }
        assert!(matches!(PoolDescriptor::from_bytes(&good), Err(PoolError::InvalidDescriptor(_))));
    }

    #[test]
    fn hex_round_trips_and_refuses_non_hex() {
        let bytes = sample().to_bytes();
        assert_eq!(from_hex(&to_hex(&bytes)), Some(bytes));
        for bad in ["a", "zz", "0g"] {
            assert_eq!(from_hex(bad), None);
        }
    }

    #[test]
    fn long_names_are_left_out_and_found_by_nonce() {
        let long = "n".repeat(150);
        let path = name::path_in(Path::new(name::DEFAULT_DIR), &long);
        assert_eq!(location_for(&path, &long, ALLOC_ROOM).expect("named"), Location::ByNonce);
        let short_path = name::path_in(Path::new(name::DEFAULT_DIR), "short");
        assert_eq!(
            location_for(&short_path, "short", ALLOC_ROOM).expect("named"),
            Location::Named("short".into())
        );
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..160)) {
            let _ = AllocDescriptor::from_bytes(&bytes);
            let _ = PoolDescriptor::from_bytes(&bytes);
        }

        #[test]
        fn every_single_byte_flip_is_caught(index in 0usize..80, bit in 0u8..8) {
            let mut bytes = sample().to_bytes();
            let index = index % bytes.len();
            bytes[index] ^= 1 << bit;
            prop_assert!(AllocDescriptor::from_bytes(&bytes).is_err());
        }
    }
}
