//! Apsis' recovery commands — new command numbers (Elliptics 3.0 has none of these, so no
//! existing layout changes): range digests, version lists, a backend sync, and the recovery
//! job the `apsis recovery` command starts.
//!
//! Recovery compares two backends over a set of id ranges without moving keys first: each side
//! summarises its records per *bucket* (the top `bits` bits of the id) as a count and a
//! wrapping sum of per-record hashes of (id, timestamp, size, removed). Equal summaries mean
//! the bucket is in sync; only differing buckets are listed record by record.
//!
//! Every count and length is checked against the remaining bytes and a fixed bound before use.

use crate::header::ID_SIZE;
use crate::io::Time;
use crate::iterator::IdRange;
use crate::wire::{Put, Reader};
use crate::ProtoError;

/// Command numbers (after Elliptics' own, which end below 32).
pub mod cmd {
    /// Per-bucket digests of a backend's records in some id ranges.
    pub const DIGEST: i32 = 100;
    /// Every record version (no data) of a backend in some id ranges; MORE frames.
    pub const LIST: i32 = 101;
    /// Makes everything a backend acknowledged durable (fsync) before answering.
    pub const SYNC: i32 = 102;
    /// Runs a recovery job on the node (one backend or all) and streams its progress.
    pub const JOB: i32 = 103;
}

/// Most id ranges one request may carry.
pub const MAX_RANGES: usize = 4096;
/// Finest bucket: the top 24 bits of the id.
pub const MAX_BITS: u32 = 24;
/// Most version entries in one LIST reply frame.
pub const LIST_BATCH: usize = 4096;

/// One record's version as recovery orders them: newest timestamp, then larger size; at a
/// full tie a tombstone wins, so a delete is never undone by a copy it cannot tell apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Version {
    pub ts: Time,
    pub size: u64,
    pub removed: bool,
}

impl Version {
    fn order(&self) -> (u64, u64, u64, bool) {
        (self.ts.sec, self.ts.nsec, self.size, self.removed)
    }
    pub fn newer_than(&self, o: &Version) -> bool {
        self.order() > o.order()
    }
    /// A tombstone with timestamp zero is recovery's mark for "handed off": the key is absent.
    pub fn is_handed_off(&self) -> bool {
        self.removed && self.ts.sec == 0 && self.ts.nsec == 0
    }
}

fn mix(mut z: u64) -> u64 {
    // splitmix64's finaliser: every input bit reaches every output bit.
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A record's contribution to its bucket's digest.
pub fn entry_hash(id: &[u8; ID_SIZE], v: &Version) -> u64 {
    let w = |i: usize| u64::from_le_bytes(id[i..i + 8].try_into().expect("8 bytes"));
    let mut h = mix(w(0));
    h = mix(h ^ w(8));
    h = mix(h ^ v.ts.sec);
    h = mix(h ^ v.ts.nsec ^ ((v.removed as u64) << 63));
    mix(h ^ v.size)
}

/// The bucket of `id` at `bits` (0 ..= [`MAX_BITS`]): its top `bits` bits.
pub fn bucket(id: &[u8; ID_SIZE], bits: u32) -> u32 {
    if bits == 0 {
        return 0;
    }
    u32::from_be_bytes(id[..4].try_into().expect("4 bytes")) >> (32 - bits)
}

/// The inclusive id range of bucket `b` at `bits`.
pub fn bucket_range(b: u32, bits: u32) -> IdRange {
    let mut begin = [0u8; ID_SIZE];
    let mut end = [0xffu8; ID_SIZE];
    if bits > 0 {
        let lo = b << (32 - bits);
        let hi = lo | (u32::MAX >> bits);
        begin[..4].copy_from_slice(&lo.to_be_bytes());
        end[..4].copy_from_slice(&hi.to_be_bytes());
    }
    IdRange { begin, end }
}

/// One bucket's summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Digest {
    pub bucket: u32,
    pub count: u64,
    /// Wrapping sum of [`entry_hash`] over the bucket's records.
    pub hash: u64,
}

impl Digest {
    pub const SIZE: usize = 24;
    pub fn add(&mut self, id: &[u8; ID_SIZE], v: &Version) {
        self.count += 1;
        self.hash = self.hash.wrapping_add(entry_hash(id, v));
    }
}

/// DIGEST and LIST requests: which ranges, records stamped at or after `since`, and for DIGEST
/// the bucket size.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeRequest {
    pub bits: u32,
    pub since: Time,
    pub ranges: Vec<IdRange>,
}

impl RangeRequest {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.ranges.len() * 2 * ID_SIZE);
        out.put_u32(self.bits);
        out.put_u32(self.ranges.len() as u32);
        self.since.encode_into(&mut out);
        for r in &self.ranges {
            out.put(&r.begin);
            out.put(&r.end);
        }
        out
    }

    pub fn decode(buf: &[u8]) -> Result<RangeRequest, ProtoError> {
        let mut r = Reader::new(buf, "recovery range request");
        let bits = r.u32()?;
        let n = r.u32()? as usize;
        let since = Time::decode(&mut r)?;
        if bits > MAX_BITS {
            return Err(ProtoError::Invalid(format!(
                "bucket bits {bits} above {MAX_BITS}"
            )));
        }
        if n > MAX_RANGES || r.remaining() != n * 2 * ID_SIZE {
            return Err(ProtoError::Invalid(format!(
                "{n} ranges in {} bytes (at most {MAX_RANGES})",
                r.remaining()
            )));
        }
        let mut ranges = Vec::with_capacity(n);
        for _ in 0..n {
            let begin = r.array()?;
            let end = r.array()?;
            ranges.push(IdRange { begin, end });
        }
        r.finish()?;
        Ok(RangeRequest {
            bits,
            since,
            ranges,
        })
    }

    /// Whether the request covers `id`.
    pub fn contains(&self, id: &[u8; ID_SIZE]) -> bool {
        self.ranges.iter().any(|r| r.begin <= *id && *id <= r.end)
    }
}

pub fn encode_digests(d: &[Digest]) -> Vec<u8> {
    let mut out = Vec::with_capacity(d.len() * Digest::SIZE);
    for x in d {
        out.put_u32(x.bucket);
        out.put_u32(0);
        out.put_u64(x.count);
        out.put_u64(x.hash);
    }
    out
}

pub fn decode_digests(buf: &[u8]) -> Result<Vec<Digest>, ProtoError> {
    if buf.len() % Digest::SIZE != 0 {
        return Err(ProtoError::Invalid(format!(
            "digest reply of {} bytes is not a multiple of {}",
            buf.len(),
            Digest::SIZE
        )));
    }
    let mut r = Reader::new(buf, "digest reply");
    let mut out = Vec::with_capacity(buf.len() / Digest::SIZE);
    while r.remaining() > 0 {
        let bucket = r.u32()?;
        r.skip(4)?;
        out.push(Digest {
            bucket,
            count: r.u64()?,
            hash: r.u64()?,
        });
    }
    Ok(out)
}

/// One LIST entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub id: [u8; ID_SIZE],
    pub version: Version,
}

impl Entry {
    pub const SIZE: usize = ID_SIZE + Time::SIZE + 16;
}

pub fn encode_entries(e: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(e.len() * Entry::SIZE);
    for x in e {
        out.put(&x.id);
        x.version.ts.encode_into(&mut out);
        out.put_u64(x.version.size);
        out.put_u64(x.version.removed as u64);
    }
    out
}

pub fn decode_entries(buf: &[u8]) -> Result<Vec<Entry>, ProtoError> {
    if buf.len() % Entry::SIZE != 0 || buf.len() / Entry::SIZE > LIST_BATCH {
        return Err(ProtoError::Invalid(format!(
            "list reply of {} bytes is not a whole number of at most {LIST_BATCH} entries",
            buf.len()
        )));
    }
    let mut r = Reader::new(buf, "list reply");
    let mut out = Vec::with_capacity(buf.len() / Entry::SIZE);
    while r.remaining() > 0 {
        let id = r.array()?;
        let ts = Time::decode(&mut r)?;
        let size = r.u64()?;
        let removed = r.u64()? != 0;
        out.push(Entry {
            id,
            version: Version { ts, size, removed },
        });
    }
    Ok(out)
}

/// Which recovery a job runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobKind {
    /// Inside a group: hand keys a backend no longer owns to their owner.
    Merge,
    /// Across groups: bring every group to the newest copy of every key.
    Dc,
}

/// Job flags.
pub mod job_flags {
    /// Compare and report; change nothing.
    pub const DRY_RUN: u32 = 1;
    /// Continue from where the last on-demand job of this kind stopped.
    pub const RESUME: u32 = 2;
    /// dc: also read and verify every local record's data, repairing corrupt ones.
    pub const VERIFY: u32 = 4;
}

/// JOB request: the kind, flags and `since`; the header's `backend_id` names one backend or
/// is −1 for all of the node's backends. Replies: MORE frames whose payload is one JSON
/// progress object each, then the final ack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobRequest {
    pub kind: JobKind,
    pub flags: u32,
    pub since: Time,
}

impl JobRequest {
    pub const SIZE: usize = 8 + Time::SIZE;

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::SIZE);
        out.put_u32(match self.kind {
            JobKind::Merge => 1,
            JobKind::Dc => 2,
        });
        out.put_u32(self.flags);
        self.since.encode_into(&mut out);
        out
    }

    pub fn decode(buf: &[u8]) -> Result<JobRequest, ProtoError> {
        let mut r = Reader::new(buf, "recovery job request");
        let kind = match r.u32()? {
            1 => JobKind::Merge,
            2 => JobKind::Dc,
            k => return Err(ProtoError::Invalid(format!("unknown recovery kind {k}"))),
        };
        let flags = r.u32()?;
        let since = Time::decode(&mut r)?;
        r.finish()?;
        Ok(JobRequest { kind, flags, since })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(sec: u64, size: u64, removed: bool) -> Version {
        Version {
            ts: Time { sec, nsec: 0 },
            size,
            removed,
        }
    }

    #[test]
    fn versions_order_by_time_then_size_and_deletes_win_ties() {
        assert!(v(2, 1, false).newer_than(&v(1, 100, false)));
        assert!(v(1, 2, false).newer_than(&v(1, 1, false)));
        assert!(v(1, 0, true).newer_than(&v(1, 0, false)));
        assert!(!v(1, 1, false).newer_than(&v(1, 1, false)));
        assert!(v(0, 0, true).is_handed_off());
        assert!(!v(0, 1, false).is_handed_off());
    }

    #[test]
    fn buckets_cover_their_ranges() {
        let mut id = [0u8; 64];
        id[0] = 0xab;
        id[1] = 0xcd;
        for bits in [0, 1, 4, 12, 24] {
            let b = bucket(&id, bits);
            let r = bucket_range(b, bits);
            assert!(r.begin <= id && id <= r.end, "bits {bits}");
        }
        assert_eq!(bucket(&id, 12), 0xabc);
        let r = bucket_range(0xabc, 12);
        assert_eq!(&r.begin[..3], &[0xab, 0xc0, 0]);
        assert_eq!(&r.end[..3], &[0xab, 0xcf, 0xff]);
        assert_eq!(bucket_range(0, 0).end, [0xff; 64]);
    }

    #[test]
    fn digests_are_order_independent_and_see_every_field() {
        let ids: Vec<[u8; 64]> = (0..50u8).map(|i| [i; 64]).collect();
        let mut a = Digest::default();
        let mut b = Digest::default();
        for id in &ids {
            a.add(id, &v(5, 10, false));
        }
        for id in ids.iter().rev() {
            b.add(id, &v(5, 10, false));
        }
        assert_eq!(a, b);
        for other in [v(6, 10, false), v(5, 11, false), v(5, 10, true)] {
            let mut c = Digest::default();
            for (i, id) in ids.iter().enumerate() {
                c.add(id, &if i == 7 { other } else { v(5, 10, false) });
            }
            assert_ne!(a.hash, c.hash, "{other:?}");
        }
    }

    #[test]
    fn codecs_round_trip_and_bound_counts() {
        let req = RangeRequest {
            bits: 12,
            since: Time { sec: 7, nsec: 8 },
            ranges: vec![IdRange {
                begin: [1; 64],
                end: [2; 64],
            }],
        };
        assert_eq!(RangeRequest::decode(&req.encode()).unwrap(), req);
        let mut bad = req.encode();
        bad[4] = 200; // claims 200 ranges
        assert!(RangeRequest::decode(&bad).is_err());
        let mut bad = req.encode();
        bad[0] = 99; // bits
        assert!(RangeRequest::decode(&bad).is_err());
        let d = vec![Digest {
            bucket: 3,
            count: 4,
            hash: 5,
        }];
        assert_eq!(decode_digests(&encode_digests(&d)).unwrap(), d);
        assert!(decode_digests(&[0; 23]).is_err());
        let e = vec![Entry {
            id: [9; 64],
            version: v(3, 4, true),
        }];
        assert_eq!(decode_entries(&encode_entries(&e)).unwrap(), e);
        assert!(decode_entries(&[0; Entry::SIZE + 1]).is_err());
        let j = JobRequest {
            kind: JobKind::Dc,
            flags: job_flags::DRY_RUN,
            since: Time { sec: 1, nsec: 2 },
        };
        assert_eq!(JobRequest::decode(&j.encode()).unwrap(), j);
        assert!(JobRequest::decode(&[9, 0, 0, 0]).is_err());
    }
}
