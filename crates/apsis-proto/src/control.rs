//! System payloads: node description (REVERSE_LOOKUP, JOIN, UPDATE_IDS), route list, AUTH,
//! STATUS, MONITOR_STAT, BACKEND_CONTROL / BACKEND_STATUS.

use crate::io::{Addr, Time};
use crate::wire::{Put, Reader};
use crate::{ProtoError, ID_SIZE};

/// Most addresses accepted in one address container.
pub const ADDRS_MAX: usize = 4096;
/// Most backends accepted in one node description.
pub const BACKENDS_MAX: usize = 4096;
/// Most ring ids accepted for one backend.
pub const IDS_PER_BACKEND_MAX: usize = 65536;

fn bounded(
    what: &'static str,
    n: i64,
    max: usize,
    each: usize,
    r: &Reader<'_>,
) -> Result<usize, ProtoError> {
    if n < 0 || n as u64 > max as u64 {
        return Err(ProtoError::Invalid(format!(
            "{what}: count {n} (at most {max})"
        )));
    }
    let n = n as usize;
    if n.saturating_mul(each) > r.remaining() {
        return Err(ProtoError::Short {
            what,
            need: r.position() + n * each,
            have: r.position() + r.remaining(),
        });
    }
    Ok(n)
}

/// `dnet_backend_ids` and its ring ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendIds {
    pub backend_id: i32,
    pub group: u32,
    /// 1 = DISABLE (UPDATE_IDS).
    pub flags: u32,
    pub ids: Vec<[u8; ID_SIZE]>,
}

impl BackendIds {
    pub const FLAG_DISABLE: u32 = 1;
}

/// The addresses of one node and its enabled backends: the REVERSE_LOOKUP reply and the JOIN
/// request. UPDATE_IDS carries only the backend part ([`decode_backends`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub addrs: Vec<Addr>,
    pub backends: Vec<BackendIds>,
}

/// Decodes an address container: node_addr_num, addr_num, then addr_num addresses.
pub fn decode_addrs(r: &mut Reader<'_>) -> Result<(i32, Vec<Addr>), ProtoError> {
    let node_addr_num = r.i32()?;
    let addr_num = r.i32()?;
    let n = bounded(
        "address container",
        addr_num as i64,
        ADDRS_MAX,
        Addr::SIZE,
        r,
    )?;
    let mut addrs = Vec::with_capacity(n);
    for _ in 0..n {
        addrs.push(Addr::decode(r)?);
    }
    Ok((node_addr_num, addrs))
}

/// Decodes an id container: backends_count, then each `dnet_backend_ids` with its ids.
pub fn decode_backends(r: &mut Reader<'_>) -> Result<Vec<BackendIds>, ProtoError> {
    let count = r.i32()?;
    let n = bounded("id container", count as i64, BACKENDS_MAX, 16, r)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let backend_id = r.i32()?;
        let group = r.u32()?;
        let flags = r.u32()?;
        let ids_count = r.u32()?;
        let k = bounded(
            "backend ids",
            ids_count as i64,
            IDS_PER_BACKEND_MAX,
            ID_SIZE,
            r,
        )?;
        let mut ids = Vec::with_capacity(k);
        for _ in 0..k {
            ids.push(r.array()?);
        }
        out.push(BackendIds {
            backend_id,
            group,
            flags,
            ids,
        });
    }
    Ok(out)
}

pub fn encode_backends(backends: &[BackendIds], out: &mut Vec<u8>) {
    out.put_i32(backends.len() as i32);
    for b in backends {
        out.put_i32(b.backend_id);
        out.put_u32(b.group);
        out.put_u32(b.flags);
        out.put_u32(b.ids.len() as u32);
        for id in &b.ids {
            out.put(id);
        }
    }
}

impl NodeInfo {
    /// Decodes and checks that the containers add up exactly, as the Elliptics client does.
    pub fn decode(payload: &[u8]) -> Result<NodeInfo, ProtoError> {
        let mut r = Reader::new(payload, "node info");
        let (node_addr_num, addrs) = decode_addrs(&mut r)?;
        if node_addr_num as usize != addrs.len() {
            return Err(ProtoError::Invalid(format!(
                "node info: node_addr_num {node_addr_num} != addr_num {}",
                addrs.len()
            )));
        }
        let backends = decode_backends(&mut r)?;
        r.finish()?;
        Ok(NodeInfo { addrs, backends })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.put_i32(self.addrs.len() as i32);
        out.put_i32(self.addrs.len() as i32);
        for a in &self.addrs {
            a.encode_into(&mut out);
        }
        encode_backends(&self.backends, &mut out);
        out
    }
}

/// The ROUTE_LIST reply: the addresses of every node the server knows, `node_addr_num` each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteList {
    pub node_addr_num: i32,
    pub addrs: Vec<Addr>,
}

impl RouteList {
    pub fn decode(payload: &[u8]) -> Result<RouteList, ProtoError> {
        let mut r = Reader::new(payload, "route list");
        let (node_addr_num, addrs) = decode_addrs(&mut r)?;
        r.finish()?;
        if node_addr_num <= 0 || addrs.len() % node_addr_num as usize != 0 {
            return Err(ProtoError::Invalid(format!(
                "route list: {} addresses, {node_addr_num} per node",
                addrs.len()
            )));
        }
        Ok(RouteList {
            node_addr_num,
            addrs,
        })
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.put_i32(self.node_addr_num);
        out.put_i32(self.addrs.len() as i32);
        for a in &self.addrs {
            a.encode_into(&mut out);
        }
        out
    }
}

/// The AUTH payload (64 bytes): a cookie of at most 31 characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Auth {
    pub cookie: Vec<u8>,
    pub flags: u64,
}

impl Auth {
    pub const SIZE: usize = 64;
    pub fn decode(payload: &[u8]) -> Result<Auth, ProtoError> {
        if payload.len() != Self::SIZE {
            return Err(ProtoError::Size {
                what: "auth",
                want: Self::SIZE,
                got: payload.len(),
            });
        }
        let mut r = Reader::new(payload, "auth");
        let raw: [u8; 32] = r.array()?;
        let n = raw.iter().position(|&b| b == 0).unwrap_or(31).min(31);
        Ok(Auth {
            cookie: raw[..n].to_vec(),
            flags: r.u64()?,
        })
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::SIZE);
        let n = self.cookie.len().min(31);
        out.put(&self.cookie[..n]);
        out.zeros(32 - n);
        out.put_u64(self.flags);
        out.zeros(24);
        out
    }
}

/// `dnet_node_status` (12 bytes): STATUS request and reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    /// New node flags, −1 = keep.
    pub nflags: i32,
    /// −1 = keep; bit 0 EXIT, bit 1 RO.
    pub status_flags: i32,
    /// `u32::MAX` = keep.
    pub log_level: u32,
}

impl NodeStatus {
    pub const SIZE: usize = 12;
    pub const EXIT: i32 = 1;
    pub const RO: i32 = 2;
    pub fn decode(payload: &[u8]) -> Result<NodeStatus, ProtoError> {
        let mut r = Reader::new(payload, "node status");
        let s = NodeStatus {
            nflags: r.i32()?,
            status_flags: r.i32()?,
            log_level: r.u32()?,
        };
        r.finish()?;
        Ok(s)
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::SIZE);
        out.put_i32(self.nflags);
        out.put_i32(self.status_flags);
        out.put_u32(self.log_level);
        out
    }
}

/// The MONITOR_STAT request (exactly 44 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MonitorStatRequest {
    pub categories: u64,
}

impl MonitorStatRequest {
    pub const SIZE: usize = 44;
    pub const CACHE: u64 = 0x1;
    pub const IO: u64 = 0x2;
    pub const COMMANDS: u64 = 0x4;
    pub const BACKEND: u64 = 0x10;
    pub const STATS: u64 = 0x20;
    pub const PROCFS: u64 = 0x40;
    pub const TOP: u64 = 0x80;
    pub const ALL: u64 = 0xf7;
    pub fn decode(payload: &[u8]) -> Result<MonitorStatRequest, ProtoError> {
        if payload.len() != Self::SIZE {
            return Err(ProtoError::Size {
                what: "monitor stat request",
                want: Self::SIZE,
                got: payload.len(),
            });
        }
        let mut r = Reader::new(payload, "monitor stat request");
        Ok(MonitorStatRequest {
            categories: r.u64()?,
        })
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::SIZE);
        out.put_u64(self.categories);
        out.zeros(Self::SIZE - 8);
        out
    }
}

/// BACKEND_CONTROL commands.
pub mod backend_command {
    pub const ENABLE: u32 = 0;
    pub const DISABLE: u32 = 1;
    pub const START_DEFRAG: u32 = 2;
    pub const SET_IDS: u32 = 3;
    pub const READ_ONLY: u32 = 4;
    pub const WRITEABLE: u32 = 5;
    pub const CTL: u32 = 6;
    pub const STOP_DEFRAG: u32 = 7;
}

/// The BACKEND_CONTROL request: 72 bytes and `ids_count` ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendControl {
    pub backend_id: u32,
    pub command: u32,
    pub defrag_level: u32,
    pub delay_ms: u32,
    pub ids: Vec<[u8; ID_SIZE]>,
}

impl BackendControl {
    pub const SIZE: usize = 72;
    pub fn decode(payload: &[u8]) -> Result<BackendControl, ProtoError> {
        let mut r = Reader::new(payload, "backend control");
        let backend_id = r.u32()?;
        let command = r.u32()?;
        r.skip(52)?;
        let defrag_level = r.u32()?;
        let delay_ms = r.u32()?;
        let ids_count = r.u32()?;
        if r.remaining() != (ids_count as usize).saturating_mul(ID_SIZE) {
            return Err(ProtoError::Size {
                what: "backend control ids",
                want: (ids_count as usize).saturating_mul(ID_SIZE),
                got: r.remaining(),
            });
        }
        let n = bounded(
            "backend control ids",
            ids_count as i64,
            IDS_PER_BACKEND_MAX,
            ID_SIZE,
            &r,
        )?;
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            ids.push(r.array()?);
        }
        Ok(BackendControl {
            backend_id,
            command,
            defrag_level,
            delay_ms,
            ids,
        })
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::SIZE + self.ids.len() * ID_SIZE);
        out.put_u32(self.backend_id);
        out.put_u32(self.command);
        out.zeros(52);
        out.put_u32(self.defrag_level);
        out.put_u32(self.delay_ms);
        out.put_u32(self.ids.len() as u32);
        for id in &self.ids {
            out.put(id);
        }
        out
    }
}

/// Backend states in `dnet_backend_status.state`.
pub mod backend_state {
    pub const UNINITIALISED: i32 = -1;
    pub const DISABLED: i32 = 0;
    pub const ENABLED: i32 = 1;
    pub const ACTIVATING: i32 = 2;
    pub const DEACTIVATING: i32 = 3;
}

/// `dnet_backend_status` (96 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendStatus {
    pub backend_id: u32,
    pub state: i32,
    pub defrag_state: u32,
    pub last_start: Time,
    pub last_start_err: i32,
    pub read_only: bool,
    pub delay_ms: u32,
}

impl BackendStatus {
    pub const SIZE: usize = 96;
    pub fn decode(r: &mut Reader<'_>) -> Result<BackendStatus, ProtoError> {
        let backend_id = r.u32()?;
        let state = r.i32()?;
        let defrag_state = r.u32()?;
        let last_start = Time::decode(r)?;
        let last_start_err = r.i32()?;
        let read_only = r.u8()? != 0;
        r.skip(7)?;
        let delay_ms = r.u32()?;
        r.skip(52)?;
        Ok(BackendStatus {
            backend_id,
            state,
            defrag_state,
            last_start,
            last_start_err,
            read_only,
            delay_ms,
        })
    }
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.put_u32(self.backend_id);
        out.put_i32(self.state);
        out.put_u32(self.defrag_state);
        self.last_start.encode_into(out);
        out.put_i32(self.last_start_err);
        out.put_u8(self.read_only as u8);
        out.zeros(7);
        out.put_u32(self.delay_ms);
        out.zeros(52);
    }
}

/// A BACKEND_STATUS or BACKEND_CONTROL reply: a count and that many (or more, zeroed) slots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendStatusList {
    pub backends: Vec<BackendStatus>,
}

impl BackendStatusList {
    /// Decodes `count` statuses and ignores the zero slots after them.
    pub fn decode(payload: &[u8]) -> Result<BackendStatusList, ProtoError> {
        let mut r = Reader::new(payload, "backend status list");
        let count = r.u32()?;
        let n = bounded(
            "backend status list",
            count as i64,
            BACKENDS_MAX,
            BackendStatus::SIZE,
            &r,
        )?;
        let mut backends = Vec::with_capacity(n);
        for _ in 0..n {
            backends.push(BackendStatus::decode(&mut r)?);
        }
        Ok(BackendStatusList { backends })
    }
    /// Encodes the count, then `slots` slots (at least the count): Elliptics sends one slot
    /// per possible backend id, zeroed past the count.
    pub fn encode(&self, slots: usize) -> Vec<u8> {
        let slots = slots.max(self.backends.len());
        let mut out = Vec::with_capacity(4 + slots * BackendStatus::SIZE);
        out.put_u32(self.backends.len() as u32);
        for b in &self.backends {
            b.encode_into(&mut out);
        }
        out.zeros((slots - self.backends.len()) * BackendStatus::SIZE);
        out
    }
}
