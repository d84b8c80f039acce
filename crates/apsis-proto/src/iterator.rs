//! ITERATOR request and response, the BULK_READ request and the SEND (server_send) request.

use crate::io::{IoAttr, Time};
use crate::wire::{Put, Reader};
use crate::{ProtoError, ID_SIZE};

/// Most key ranges accepted in one iterator request.
pub const RANGES_MAX: usize = 65536;
/// Most groups accepted in one iterator request.
pub const GROUPS_MAX: usize = 4096;
/// Most keys accepted in one BULK_READ request.
pub const BULK_KEYS_MAX: usize = 1 << 20;
/// Most keys accepted in one SEND request.
pub const SEND_KEYS_MAX: usize = 1 << 20;

/// Iterator actions.
pub mod action {
    pub const START: u32 = 1;
    pub const PAUSE: u32 = 2;
    pub const CONTINUE: u32 = 3;
    pub const CANCEL: u32 = 4;
}

/// Iterator types.
pub mod itype {
    pub const DISK: u32 = 1;
    pub const NETWORK: u32 = 2;
    pub const SERVER_SEND: u32 = 3;
}

/// Iterator flags.
pub mod iflags {
    pub const DATA: u64 = 1;
    pub const KEY_RANGE: u64 = 2;
    pub const TS_RANGE: u64 = 4;
    pub const NO_META: u64 = 8;
    pub const MOVE: u64 = 0x10;
    pub const OVERWRITE: u64 = 0x20;
    pub const ALL: u64 = 0x3f;
}

/// An inclusive key range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRange {
    pub begin: [u8; ID_SIZE],
    pub end: [u8; ID_SIZE],
}

/// `dnet_iterator_request` (104 bytes) with its ranges and groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IteratorRequest {
    pub id: u64,
    pub action: u32,
    pub time_begin: Time,
    pub time_end: Time,
    pub itype: u32,
    pub flags: u64,
    pub timeout_secs: u32,
    pub ranges: Vec<IdRange>,
    pub groups: Vec<u32>,
}

impl IteratorRequest {
    pub const SIZE: usize = 104;
    pub fn decode(payload: &[u8]) -> Result<IteratorRequest, ProtoError> {
        let mut r = Reader::new(payload, "iterator request");
        let id = r.u64()?;
        let action = r.u32()?;
        let range_num = r.u64()?;
        let time_begin = Time::decode(&mut r)?;
        let time_end = Time::decode(&mut r)?;
        let itype = r.u32()?;
        let flags = r.u64()?;
        let group_num = r.u32()?;
        let timeout_secs = r.u32()?;
        r.skip(32)?;
        if range_num > RANGES_MAX as u64 || group_num as usize > GROUPS_MAX {
            return Err(ProtoError::Invalid(format!(
                "iterator: {range_num} ranges, {group_num} groups"
            )));
        }
        let want = range_num as usize * 2 * ID_SIZE + group_num as usize * 4;
        if r.remaining() != want {
            return Err(ProtoError::Size {
                what: "iterator ranges and groups",
                want,
                got: r.remaining(),
            });
        }
        let mut ranges = Vec::with_capacity(range_num as usize);
        for _ in 0..range_num {
            ranges.push(IdRange {
                begin: r.array()?,
                end: r.array()?,
            });
        }
        let mut groups = Vec::with_capacity(group_num as usize);
        for _ in 0..group_num {
            groups.push(r.u32()?);
        }
        Ok(IteratorRequest {
            id,
            action,
            time_begin,
            time_end,
            itype,
            flags,
            timeout_secs,
            ranges,
            groups,
        })
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.put_u64(self.id);
        out.put_u32(self.action);
        out.put_u64(self.ranges.len() as u64);
        self.time_begin.encode_into(&mut out);
        self.time_end.encode_into(&mut out);
        out.put_u32(self.itype);
        out.put_u64(self.flags);
        out.put_u32(self.groups.len() as u32);
        out.put_u32(self.timeout_secs);
        out.zeros(32);
        for rg in &self.ranges {
            out.put(&rg.begin);
            out.put(&rg.end);
        }
        for g in &self.groups {
            out.put_u32(*g);
        }
        out
    }
}

/// `dnet_iterator_response` (140 bytes), followed by the data when DATA was asked for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct IteratorResponse {
    pub id: u64,
    pub key: [u8; ID_SIZE],
    /// 0, or 1 for a keep-alive (key zero).
    pub status: i32,
    pub timestamp: Time,
    pub user_flags: u64,
    pub size: u64,
    pub iterated_keys: u64,
    pub total_keys: u64,
    pub record_flags: u64,
}

impl std::fmt::Debug for IteratorResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "iter_resp{{key={} status={} size={} {}/{} rf={:#x}}}",
            crate::hex_prefix(&self.key),
            self.status,
            self.size,
            self.iterated_keys,
            self.total_keys,
            self.record_flags
        )
    }
}

impl IteratorResponse {
    pub const SIZE: usize = 140;
    pub fn decode(r: &mut Reader<'_>) -> Result<IteratorResponse, ProtoError> {
        let v = IteratorResponse {
            id: r.u64()?,
            key: r.array()?,
            status: r.i32()?,
            timestamp: Time::decode(r)?,
            user_flags: r.u64()?,
            size: r.u64()?,
            iterated_keys: r.u64()?,
            total_keys: r.u64()?,
            record_flags: r.u64()?,
        };
        r.skip(8)?;
        Ok(v)
    }
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.put_u64(self.id);
        out.put(&self.key);
        out.put_i32(self.status);
        self.timestamp.encode_into(out);
        out.put_u64(self.user_flags);
        out.put_u64(self.size);
        out.put_u64(self.iterated_keys);
        out.put_u64(self.total_keys);
        out.put_u64(self.record_flags);
        out.zeros(8);
    }
}

/// BULK_READ: a header io_attr (size = 208·n) then n per-key io_attrs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BulkRead {
    pub keys: Vec<IoAttr>,
}

impl BulkRead {
    pub fn decode(payload: &[u8]) -> Result<BulkRead, ProtoError> {
        if payload.len() < IoAttr::SIZE || payload.len() % IoAttr::SIZE != 0 {
            return Err(ProtoError::Invalid(format!(
                "bulk read: {} bytes is not a whole number of io_attrs",
                payload.len()
            )));
        }
        let n = payload.len() / IoAttr::SIZE - 1;
        if n > BULK_KEYS_MAX {
            return Err(ProtoError::Invalid(format!(
                "bulk read: {n} keys (at most {BULK_KEYS_MAX})"
            )));
        }
        let mut r = Reader::new(payload, "bulk read");
        let _head = IoAttr::decode(&mut r)?;
        let mut keys = Vec::with_capacity(n);
        for _ in 0..n {
            keys.push(IoAttr::decode(&mut r)?);
        }
        Ok(BulkRead { keys })
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity((self.keys.len() + 1) * IoAttr::SIZE);
        let head = IoAttr {
            size: (self.keys.len() * IoAttr::SIZE) as u64,
            ..IoAttr::default()
        };
        head.encode_into(&mut out);
        for k in &self.keys {
            k.encode_into(&mut out);
        }
        out
    }
}

/// SEND (server_send): the 96-byte `dnet_server_send_request` (id_num i32, group_num i32,
/// timeout i32, a reserved i32, iflags u64, 72 reserved bytes), then id_num ids and
/// group_num target groups. The size must match exactly; no keys or no groups is invalid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSend {
    pub ids: Vec<[u8; ID_SIZE]>,
    pub groups: Vec<u32>,
    /// Seconds each copy may take.
    pub timeout_secs: u32,
    /// [`iflags::MOVE`] (remove the local copy once every target has it) and
    /// [`iflags::OVERWRITE`] (replace newer copies there too).
    pub flags: u64,
}

impl ServerSend {
    pub const HEAD_SIZE: usize = 96;
    pub fn decode(payload: &[u8]) -> Result<ServerSend, ProtoError> {
        let mut r = Reader::new(payload, "server send request");
        let id_num = r.i32()?;
        let group_num = r.i32()?;
        let timeout_secs = r.u32()?;
        r.skip(4)?;
        let flags = r.u64()?;
        r.skip(72)?;
        if id_num <= 0
            || group_num <= 0
            || id_num as usize > SEND_KEYS_MAX
            || group_num as usize > GROUPS_MAX
        {
            return Err(ProtoError::Invalid(format!(
                "server send: {id_num} keys, {group_num} groups"
            )));
        }
        let want = id_num as usize * ID_SIZE + group_num as usize * 4;
        if r.remaining() != want {
            return Err(ProtoError::Size {
                what: "server send ids and groups",
                want,
                got: r.remaining(),
            });
        }
        let mut ids = Vec::with_capacity(id_num as usize);
        for _ in 0..id_num {
            ids.push(r.array()?);
        }
        let mut groups = Vec::with_capacity(group_num as usize);
        for _ in 0..group_num {
            groups.push(r.u32()?);
        }
        Ok(ServerSend {
            ids,
            groups,
            timeout_secs,
            flags,
        })
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(Self::HEAD_SIZE + self.ids.len() * ID_SIZE + self.groups.len() * 4);
        out.put_u32(self.ids.len() as u32);
        out.put_u32(self.groups.len() as u32);
        out.put_u32(self.timeout_secs);
        out.put_u32(0);
        out.put_u64(self.flags);
        out.zeros(72);
        for id in &self.ids {
            out.put(id);
        }
        for g in &self.groups {
            out.put_u32(*g);
        }
        out
    }
}
