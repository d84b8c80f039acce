//! `dnet_time`, `dnet_io_attr`, `dnet_addr`, `dnet_file_info` and the lookup reply.

use crate::wire::{array_at, le_u32, le_u64, Put, Reader};
use crate::{ProtoError, ID_SIZE};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

/// `dnet_time`: seconds and nanoseconds. (−1, −1) means "empty".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time {
    pub sec: u64,
    pub nsec: u64,
}

impl Time {
    pub const SIZE: usize = 16;
    pub const EMPTY: Time = Time {
        sec: u64::MAX,
        nsec: u64::MAX,
    };
    pub fn decode(r: &mut Reader<'_>) -> Result<Time, ProtoError> {
        Ok(Time {
            sec: r.u64()?,
            nsec: r.u64()?,
        })
    }
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.put_u64(self.sec);
        out.put_u64(self.nsec);
    }
    pub fn now() -> Time {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Time {
            sec: d.as_secs(),
            nsec: d.subsec_nanos() as u64,
        }
    }
}

/// `dnet_io_attr` (208 bytes).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct IoAttr {
    /// READ reply: sha512 of the data (ioflag CHECKSUM); CAS: the expected checksum; RANGE: end.
    pub parent: [u8; ID_SIZE],
    /// The key.
    pub id: [u8; ID_SIZE],
    /// WRITE+CACHE: TTL seconds; RANGE: first index.
    pub start: u64,
    /// PREPARE: reserve; COMMIT: final size; PLAIN_WRITE/CAS: offset+size; RANGE: limit.
    pub num: u64,
    pub timestamp: Time,
    pub user_flags: u64,
    /// READ reply: object size. Ignore it in requests.
    pub total_size: u64,
    pub record_flags: u64,
    pub reserved2: u32,
    /// ioflags, see [`crate::ioflags`].
    pub flags: u32,
    pub offset: u64,
    pub size: u64,
}

impl Default for IoAttr {
    fn default() -> Self {
        IoAttr {
            parent: [0; ID_SIZE],
            id: [0; ID_SIZE],
            start: 0,
            num: 0,
            timestamp: Time::default(),
            user_flags: 0,
            total_size: 0,
            record_flags: 0,
            reserved2: 0,
            flags: 0,
            offset: 0,
            size: 0,
        }
    }
}

impl std::fmt::Debug for IoAttr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "io_attr{{id={} flags={:#x} offset={} size={} num={} ts={}.{} uf={:#x} total={} rf={:#x}}}",
            crate::hex_prefix(&self.id),
            self.flags,
            self.offset,
            self.size,
            self.num,
            self.timestamp.sec,
            self.timestamp.nsec,
            self.user_flags,
            self.total_size,
            self.record_flags
        )
    }
}

impl IoAttr {
    pub const SIZE: usize = 208;

    /// Checked once for its 208 bytes, then read at the offsets [`IoAttr::encode`] writes.
    pub fn decode(r: &mut Reader<'_>) -> Result<IoAttr, ProtoError> {
        let a: &[u8; IoAttr::SIZE] = r.fixed()?;
        Ok(IoAttr {
            parent: array_at(a, 0),
            id: array_at(a, ID_SIZE),
            start: le_u64(a, 128),
            num: le_u64(a, 136),
            timestamp: Time {
                sec: le_u64(a, 144),
                nsec: le_u64(a, 152),
            },
            user_flags: le_u64(a, 160),
            total_size: le_u64(a, 168),
            record_flags: le_u64(a, 176),
            reserved2: le_u32(a, 184),
            flags: le_u32(a, 188),
            offset: le_u64(a, 192),
            size: le_u64(a, 200),
        })
    }

    /// Parses an io_attr at the start of a payload and returns it with the bytes after it.
    pub fn split(payload: &[u8]) -> Result<(IoAttr, &[u8]), ProtoError> {
        let mut r = Reader::new(payload, "dnet_io_attr");
        let io = IoAttr::decode(&mut r)?;
        Ok((io, r.rest()))
    }

    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.encode());
    }

    /// The 208 bytes, laid out at fixed offsets (as [`crate::Header::encode`]: every READ and
    /// WRITE request and reply carries one).
    pub fn encode(&self) -> [u8; IoAttr::SIZE] {
        let mut a = [0u8; IoAttr::SIZE];
        a[..64].copy_from_slice(&self.parent);
        a[64..128].copy_from_slice(&self.id);
        for (at, v) in [
            (128, self.start),
            (136, self.num),
            (144, self.timestamp.sec),
            (152, self.timestamp.nsec),
            (160, self.user_flags),
            (168, self.total_size),
            (176, self.record_flags),
        ] {
            a[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        a[184..188].copy_from_slice(&self.reserved2.to_le_bytes());
        a[188..192].copy_from_slice(&self.flags.to_le_bytes());
        a[192..200].copy_from_slice(&self.offset.to_le_bytes());
        a[200..208].copy_from_slice(&self.size.to_le_bytes());
        a
    }
}

/// `dnet_addr` (32 bytes): a raw sockaddr (port and address in network order), its length
/// and family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Addr(pub SocketAddr);

impl Addr {
    pub const SIZE: usize = 32;
    const AF_INET: u16 = 2;
    const AF_INET6: u16 = 10;

    pub fn decode(r: &mut Reader<'_>) -> Result<Addr, ProtoError> {
        let raw: [u8; 28] = r.array()?;
        let addr_len = r.u16()?;
        let family = r.u16()?;
        let port = u16::from_be_bytes([raw[2], raw[3]]);
        match (family, addr_len) {
            (Self::AF_INET, 16) => {
                let ip = Ipv4Addr::new(raw[4], raw[5], raw[6], raw[7]);
                Ok(Addr(SocketAddr::new(IpAddr::V4(ip), port)))
            }
            (Self::AF_INET6, 28) => {
                let mut o = [0u8; 16];
                o.copy_from_slice(&raw[8..24]);
                // sin6_flowinfo is network order, sin6_scope_id host order (as encode_into writes
                // them): both are part of the address's identity (the first addr_len bytes).
                let flowinfo = u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]);
                let scope_id = u32::from_le_bytes([raw[24], raw[25], raw[26], raw[27]]);
                Ok(Addr(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(o),
                    port,
                    flowinfo,
                    scope_id,
                ))))
            }
            _ => Err(ProtoError::Invalid(format!(
                "dnet_addr: family {family} with length {addr_len}"
            ))),
        }
    }

    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let mut raw = [0u8; 28];
        let (len, family) = match self.0 {
            SocketAddr::V4(a) => {
                raw[0..2].copy_from_slice(&Self::AF_INET.to_le_bytes());
                raw[2..4].copy_from_slice(&a.port().to_be_bytes());
                raw[4..8].copy_from_slice(&a.ip().octets());
                (16u16, Self::AF_INET)
            }
            SocketAddr::V6(a) => {
                raw[0..2].copy_from_slice(&Self::AF_INET6.to_le_bytes());
                raw[2..4].copy_from_slice(&a.port().to_be_bytes());
                raw[4..8].copy_from_slice(&a.flowinfo().to_be_bytes());
                raw[8..24].copy_from_slice(&a.ip().octets());
                raw[24..28].copy_from_slice(&a.scope_id().to_le_bytes());
                (28u16, Self::AF_INET6)
            }
        };
        out.put(&raw);
        out.put_u16(len);
        out.put_u16(family);
    }

    /// Elliptics' text form, `host:port:family`.
    pub fn to_dnet_string(&self) -> String {
        match self.0 {
            SocketAddr::V4(a) => format!("{}:{}:2", a.ip(), a.port()),
            SocketAddr::V6(a) => format!("{}:{}:10", a.ip(), a.port()),
        }
    }

    /// Parses `host:port[:family][-addrgroup]` (Elliptics) or a plain `host:port`.
    pub fn parse_dnet(s: &str) -> Result<(SocketAddr, u32), ProtoError> {
        let bad = || ProtoError::Invalid(format!("address {s:?}: want host:port[:family]"));
        let (main, group) = match s.rsplit_once('-') {
            Some((m, g)) if !g.is_empty() && g.bytes().all(|b| b.is_ascii_digit()) => {
                (m, g.parse().map_err(|_| bad())?)
            }
            _ => (s, 0),
        };
        if let Ok(a) = main.parse::<SocketAddr>() {
            return Ok((a, group));
        }
        let parts: Vec<&str> = main.rsplitn(3, ':').collect();
        let (host, port, family) = match parts.as_slice() {
            [fam, port, host] => (*host, *port, fam.parse::<u16>().map_err(|_| bad())?),
            [port, host] => (*host, *port, 2),
            _ => return Err(bad()),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = port.parse().map_err(|_| bad())?;
        if family != 2 && family != 10 {
            return Err(ProtoError::Invalid(format!(
                "address {s:?}: family {family} (2 is IPv4, 10 is IPv6)"
            )));
        }
        let ip: IpAddr = match host.parse() {
            Ok(ip) => ip,
            Err(_) => {
                use std::net::ToSocketAddrs;
                let unresolved = |why: String| {
                    ProtoError::Invalid(format!("address {s:?}: host {host:?} {why}"))
                };
                (host, port)
                    .to_socket_addrs()
                    .map_err(|e| unresolved(format!("not resolved: {e}")))?
                    .find(|a| (family == 10) == a.is_ipv6())
                    .ok_or_else(|| {
                        unresolved(format!(
                            "has no {} address",
                            if family == 10 { "IPv6" } else { "IPv4" }
                        ))
                    })?
                    .ip()
            }
        };
        Ok((SocketAddr::new(ip, port), group))
    }
}

/// `dnet_file_info` (112 bytes, with 4 bytes of padding after the checksum).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct FileInfo {
    /// Length of the path that follows, including its NUL.
    pub flen: i32,
    pub checksum: [u8; ID_SIZE],
    pub record_flags: u64,
    pub size: u64,
    pub offset: u64,
    pub mtime: Time,
}

impl std::fmt::Debug for FileInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "file_info{{flen={} rf={:#x} size={} offset={} mtime={}.{}}}",
            self.flen, self.record_flags, self.size, self.offset, self.mtime.sec, self.mtime.nsec
        )
    }
}

impl FileInfo {
    pub const SIZE: usize = 112;
    pub fn decode(r: &mut Reader<'_>) -> Result<FileInfo, ProtoError> {
        let flen = r.i32()?;
        let checksum = r.array()?;
        r.skip(4)?;
        Ok(FileInfo {
            flen,
            checksum,
            record_flags: r.u64()?,
            size: r.u64()?,
            offset: r.u64()?,
            mtime: Time::decode(r)?,
        })
    }
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.put_i32(self.flen);
        out.put(&self.checksum);
        out.zeros(4);
        out.put_u64(self.record_flags);
        out.put_u64(self.size);
        out.put_u64(self.offset);
        self.mtime.encode_into(out);
    }
}

/// The reply to LOOKUP and WRITE: the node's address, the file info, and the path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LookupReply {
    pub addr: Addr,
    pub info: FileInfo,
    /// The blob file path, without its NUL (empty for a cache-served reply).
    pub path: Vec<u8>,
}

impl LookupReply {
    /// Longest path accepted from the wire.
    pub const PATH_MAX: usize = 4096;

    pub fn decode(payload: &[u8]) -> Result<LookupReply, ProtoError> {
        let mut r = Reader::new(payload, "lookup reply");
        let addr = Addr::decode(&mut r)?;
        let info = FileInfo::decode(&mut r)?;
        let rest = r.rest();
        let path = match rest.iter().position(|&b| b == 0) {
            Some(n) => &rest[..n],
            None => rest,
        };
        // Checked without its NUL, so that whatever decodes also re-encodes and decodes again.
        if path.len() > Self::PATH_MAX {
            return Err(ProtoError::Invalid(format!(
                "lookup path of {} bytes",
                path.len()
            )));
        }
        Ok(LookupReply {
            addr,
            info,
            path: path.to_vec(),
        })
    }

    /// Encodes with the path NUL-terminated and `flen` set to its length including the NUL
    /// (0 and a single NUL for an empty path, as Elliptics' cache replies do).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Addr::SIZE + FileInfo::SIZE + self.path.len() + 1);
        self.addr.encode_into(&mut out);
        let mut info = self.info;
        info.flen = if self.path.is_empty() {
            0
        } else {
            self.path.len() as i32 + 1
        };
        info.encode_into(&mut out);
        out.put(&self.path);
        out.put_u8(0);
        out
    }
}
