//! The Elliptics 3.0 wire protocol, byte for byte.
//!
//! Pure encoding and decoding: no I/O, no async runtime. Every structure has `decode` (from a
//! byte slice, bounds-checked, never panics; counts are bounded before anything is allocated)
//! and `encode`. Framing is check-then-parse: [`check_frame`] says whether a buffer holds a whole
//! frame and refuses an oversized one before its payload is read; [`Frame::decode`] then parses
//! it. See `docs/protocol.md` for what Apsis implements and its limits.
//!
//! # Layout
//! - [`consts`]: command numbers ([`cmd`]), cflags, ioflags, record flags, errno values, version.
//! - [`header`]: the 120-byte [`Header`] (`dnet_cmd`), [`Frame`], [`check_frame`].
//! - [`io`]: [`Time`], [`IoAttr`] (208 bytes), [`Addr`] (32), [`FileInfo`] (112), [`LookupReply`].
//! - [`control`]: [`NodeInfo`] (REVERSE_LOOKUP / JOIN), [`RouteList`], [`Auth`], [`NodeStatus`],
//!   [`MonitorStatRequest`], [`BackendControl`], [`BackendStatus`], [`BackendStatusList`].
//! - [`iterator`]: [`IteratorRequest`], [`IteratorResponse`], [`BulkRead`], [`ServerSend`].
//! - [`recovery`]: Apsis' recovery commands (new numbers): range digests, version lists, SYNC, JOB.
//! - [`wire`]: the little-endian [`wire::Reader`] and [`wire::Put`] every decoder uses.
//!
//! It is not a client or a server: `apsis-client` and `apsis-node` drive it.

pub mod consts;
pub mod control;
pub mod header;
pub mod io;
pub mod iterator;
pub mod recovery;
pub mod wire;

pub use consts::{cflags, cmd, errno, ioflags, node_flags, record_flags, VERSION};
pub use control::{
    backend_command, backend_state, decode_backends, encode_backends, Auth, BackendControl,
    BackendIds, BackendStatus, BackendStatusList, MonitorStatRequest, NodeInfo, NodeStatus,
    RouteList,
};
pub use header::{
    check_frame, make_read_room, pending_frame_len, Frame, Header, HEADER_SIZE, ID_SIZE, READ_BUF,
    READ_ROOM,
};
pub use io::{Addr, FileInfo, IoAttr, LookupReply, Time};
pub use iterator::{
    action, iflags, itype, BulkRead, IdRange, IteratorRequest, IteratorResponse, ServerSend,
};

/// Decoding failures. Any of them means the peer sent something this side will not act on;
/// a framing error ([`ProtoError::TooLarge`]) means the connection must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("{what}: need {need} bytes, have {have}")]
    Short {
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error("{what}: {extra} unexpected trailing bytes")]
    Trailing { what: &'static str, extra: usize },
    #[error("{what}: size {got}, expected {want}")]
    Size {
        what: &'static str,
        want: usize,
        got: usize,
    },
    #[error("frame payload of {size} bytes exceeds the limit of {max}")]
    TooLarge { size: u64, max: u64 },
    #[error("{0}")]
    Invalid(String),
}

impl ProtoError {
    /// The status a server answers a request with when its payload fails to decode.
    pub fn errno(&self) -> i32 {
        -errno::EINVAL
    }
}

/// The first 8 bytes of an id in hex, for logs.
pub fn hex_prefix(id: &[u8]) -> String {
    id.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Full hex of bytes.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// An id from up to 128 hex digits (in pairs), the bytes not given set to `pad`; `None` for
/// anything else.
pub fn id_from_hex(s: &str, pad: u8) -> Option<[u8; ID_SIZE]> {
    if s.len() > 2 * ID_SIZE || s.len() % 2 != 0 {
        return None;
    }
    let mut id = [pad; ID_SIZE];
    for (i, o) in id.iter_mut().take(s.len() / 2).enumerate() {
        let pair = s.get(2 * i..2 * i + 2)?;
        if !pair.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *o = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(id)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_from_hex() {
        let full = "ab".repeat(64);
        assert_eq!(super::id_from_hex(&full, 0), Some([0xab; 64]));
        let mut short = [0xff; 64];
        short[..2].copy_from_slice(&[0x01, 0xfe]);
        assert_eq!(super::id_from_hex("01FE", 0xff), Some(short));
        assert_eq!(super::id_from_hex("", 7), Some([7; 64]));
        for bad in ["0", "zz", "+1", &"00".repeat(65)] {
            assert_eq!(super::id_from_hex(bad, 0), None, "{bad:?}");
        }
        assert_eq!(super::hex(&super::id_from_hex(&full, 0).unwrap()), full);
    }
}
