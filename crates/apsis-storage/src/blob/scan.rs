//! Sequential reading of a base file, record by record. One scanner serves recovery at start,
//! index building, iteration and defrag.
//!
//! A position that does not hold a valid header is skipped by searching forward (8-byte
//! steps) for the next valid one, so one damaged header loses one record, not the rest of the
//! base. A record whose extent passes the end of the scanned region ends the scan: it is the
//! torn tail.
//!
//! A well-formed header with another base's tag ends the scan too: it is a record of the
//! file's previous life (a reused file, `Inner::recycle`), and the current life's records
//! all come before the first of those (`foreign_at`).
//!
//! A scanner over a mapped base reads records straight from the map (no copy); one over a
//! device reads it in windows with `pread`.

use super::format::*;
use crate::device::Device;
use std::io;

/// Window read at once.
const WINDOW: u64 = 1 << 20;

pub struct Scanner<'a> {
    dev: &'a dyn Device,
    /// The base's mapping, when it covers `[start, end)`.
    map: Option<&'a [u8]>,
    pos: u64,
    end: u64,
    win: Vec<u8>,
    win_start: u64,
    /// Bytes passed over because they held no valid header.
    pub skipped_bytes: u64,
    /// End of the last valid record (where a torn tail starts).
    pub valid_end: u64,
    /// The tag of the base's records ([`BaseHeader::tag`]).
    tag: u32,
    /// Where a record of the file's previous life was met (the scan ended there).
    pub foreign_at: Option<u64>,
}

impl<'a> Scanner<'a> {
    /// Scans `[start, end)` of `dev`, a base whose records carry `tag`.
    pub fn new(dev: &'a dyn Device, tag: u32, start: u64, end: u64) -> Scanner<'a> {
        Scanner {
            tag,
            foreign_at: None,
            dev,
            map: None,
            pos: start,
            end,
            win: Vec::new(),
            win_start: start,
            skipped_bytes: 0,
            valid_end: start,
        }
    }

    /// Scans `[start, end)` of `dev` through `map`, its mapping, which must hold `end` bytes
    /// that are all on the device (the scanner falls back to reading where it does not).
    pub fn mapped(
        dev: &'a dyn Device,
        map: &'a [u8],
        tag: u32,
        start: u64,
        end: u64,
    ) -> Scanner<'a> {
        Scanner {
            map: Some(map),
            ..Scanner::new(dev, tag, start, end)
        }
    }

    /// Bytes `[off, off + len)`: from the map, or from the window when they are in it.
    pub fn bytes(&mut self, off: u64, len: u64) -> io::Result<&[u8]> {
        let mapped = self
            .map
            .and_then(|m| m.get(usize::try_from(off).ok()?..usize::try_from(off + len).ok()?));
        if let Some(b) = mapped {
            return Ok(b);
        }
        let in_window =
            off >= self.win_start && off + len <= self.win_start + self.win.len() as u64;
        if !in_window {
            let want = len.max(WINDOW).min(self.end.saturating_sub(off)).max(len);
            self.win.resize(want as usize, 0);
            self.dev.read_at(&mut self.win, off)?;
            self.win_start = off;
        }
        let s = (off - self.win_start) as usize;
        Ok(&self.win[s..s + len as usize])
    }

    /// The next valid record: `(offset, header)`, or `None` at the end.
    pub fn next_record(&mut self) -> io::Result<Option<(u64, RecordHeader)>> {
        let mut resyncing_from = None;
        while self.pos + RECORD_HEADER_SIZE <= self.end {
            let pos = self.pos;
            let hdr = RecordHeader::decode(self.bytes(pos, RECORD_HEADER_SIZE)?);
            match hdr {
                Some(h) if h.tag != self.tag => {
                    self.foreign_at = Some(pos);
                    break;
                }
                Some(h) if pos + h.disk_size() <= self.end => {
                    if let Some(from) = resyncing_from {
                        self.skipped_bytes += pos - from;
                    }
                    self.pos = pos + h.disk_size();
                    self.valid_end = self.pos;
                    return Ok(Some((pos, h)));
                }
                Some(_) => break, // extends past the end: a torn tail
                None => {
                    resyncing_from.get_or_insert(pos);
                    self.pos += RECORD_ALIGN;
                }
            }
        }
        Ok(None)
    }

    /// Reads a record's checksum area and committed data and checks them.
    pub fn verify(&mut self, off: u64, h: &RecordHeader) -> io::Result<Result<(), String>> {
        if !h.verifies() || h.data_size == 0 {
            return Ok(Ok(()));
        }
        let csums = self
            .bytes(off + RECORD_HEADER_SIZE, h.chunk_count() * 4)?
            .to_vec();
        let data = self.bytes(off + h.data_start(), h.data_size)?;
        Ok(verify_chunks(h, &csums, 0, data))
    }
}
