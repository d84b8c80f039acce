//! Apsis storage engines.
//!
//! This crate stores records keyed by 64-byte ids with the data semantics Elliptics clients
//! expect (see `docs/format.md` and `../shared/design/elliptics-reference.md`): whole and
//! partial writes, APPEND, in-place overwrite, PREPARE / PLAIN_WRITE / COMMIT, compare-and-swap
//! on checksum or timestamp, ranged reads with the E2BIG and clipping rules, timestamped
//! tombstones, checksums verified on read, iteration, defrag and crash recovery.
//!
//! It is synchronous and does no networking; the node (`apsis-node`) runs it on its own
//! threads. It is not a cache (see the node's cache) and not a replication layer.
//!
//! # Layout
//! - [`types`]: keys, timestamps, record flags, request and answer types.
//! - [`error`]: [`StorageError`], each variant carrying its wire errno.
//! - [`backend`]: the [`Backend`] trait and the shared data rules ([`WriteOp`], [`read_range`],
//!   [`check_cas`]).
//! - [`device`]: the [`Device`]/[`Dir`] I/O traits; [`FileDir`] (real) and [`SimDir`]
//!   (crash, torn write, bit flip and full-disk injection).
//! - [`memory`]: [`MemoryBackend`], the in-RAM engine.
//! - [`blob`]: [`BlobBackend`], the eblob-style append-only engine (the default).
//! - [`conformance`]: the suite every backend must pass.
//!
//! # Limits
//! Objects up to 1 TiB; a single read answer up to 4 GiB (read larger objects in ranges);
//! bases up to 256 TiB each and 32767 bases per backend.

pub mod backend;
pub mod blob;
pub mod conformance;
pub mod device;
pub mod error;
pub mod memory;
pub mod types;

pub use backend::{check_cas, data_checksum, read_range, Backend, WriteOp, OBJECT_SIZE_MAX};
pub use blob::{
    base_name, push_base_name, BlobBackend, BlobConfig, RecoveryReport, ZERO_AHEAD_DEFAULT,
};
pub use device::{Device, Dir, FileDir, SimDir};
pub use error::{Result, StorageError};
pub use memory::MemoryBackend;
pub use types::*;
