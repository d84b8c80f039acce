//! The 120-byte `dnet_cmd` header and frame checking.
//!
//! Decoding is check-then-parse: [`check_frame`] looks at a buffer and says whether a whole
//! frame is there (and refuses a declared size over the limit before any payload is buffered);
//! only then does the caller split off `HEADER_SIZE + size` bytes and parse them.

use crate::consts::{cflags, VERSION};
use crate::wire::{array_at, le_u32, le_u64, Reader};
use crate::ProtoError;
use bytes::Bytes;

/// Size of `dnet_cmd` on the wire.
pub const HEADER_SIZE: usize = 120;
/// Size of an id.
pub const ID_SIZE: usize = 64;

/// `dnet_cmd`: the header in front of every message.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Key id (the version in REVERSE_LOOKUP).
    pub id: [u8; ID_SIZE],
    pub group: u32,
    /// Not interpreted; echoed in replies.
    pub reserved: u64,
    /// 0 or −errno (replies).
    pub status: i32,
    pub cmd: i32,
    pub backend_id: i32,
    pub trace_id: u64,
    /// cflags, see [`crate::cflags`].
    pub flags: u64,
    pub trans: u64,
    /// Payload length.
    pub size: u64,
}

impl Default for Header {
    fn default() -> Self {
        Header {
            id: [0; ID_SIZE],
            group: 0,
            reserved: 0,
            status: 0,
            cmd: 0,
            backend_id: 0,
            trace_id: 0,
            flags: 0,
            trans: 0,
            size: 0,
        }
    }
}

impl std::fmt::Debug for Header {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}({}) status={} flags={:#x} trans={} size={} backend={} group={} id={}",
            crate::cmd::name(self.cmd),
            self.cmd,
            self.status,
            self.flags,
            self.trans,
            self.size,
            self.backend_id,
            self.group,
            crate::hex_prefix(&self.id)
        )
    }
}

impl Header {
    pub fn new(cmd: i32, flags: u64) -> Header {
        Header {
            cmd,
            flags,
            ..Header::default()
        }
    }

    /// Parses the first 120 bytes of `buf`: their length checked once, then read at the
    /// offsets [`Header::encode`] writes.
    pub fn decode(buf: &[u8]) -> Result<Header, ProtoError> {
        let a: &[u8; HEADER_SIZE] = Reader::new(buf, "dnet_cmd").fixed()?;
        Ok(Header {
            id: array_at(a, 0),
            group: le_u32(a, 64),
            reserved: le_u64(a, 68),
            status: le_u32(a, 76) as i32,
            cmd: le_u32(a, 80) as i32,
            backend_id: le_u32(a, 84) as i32,
            trace_id: le_u64(a, 88),
            flags: le_u64(a, 96),
            trans: le_u64(a, 104),
            size: le_u64(a, 112),
        })
    }

    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.encode());
    }

    /// The 120 bytes, laid out at fixed offsets (one copy into a buffer, where a push per
    /// field checked the buffer's capacity ten times; every request and reply has one).
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut a = [0u8; HEADER_SIZE];
        a[..64].copy_from_slice(&self.id);
        a[64..68].copy_from_slice(&self.group.to_le_bytes());
        a[68..76].copy_from_slice(&self.reserved.to_le_bytes());
        a[76..80].copy_from_slice(&self.status.to_le_bytes());
        a[80..84].copy_from_slice(&self.cmd.to_le_bytes());
        a[84..88].copy_from_slice(&self.backend_id.to_le_bytes());
        a[88..96].copy_from_slice(&self.trace_id.to_le_bytes());
        a[96..104].copy_from_slice(&self.flags.to_le_bytes());
        a[104..112].copy_from_slice(&self.trans.to_le_bytes());
        a[112..120].copy_from_slice(&self.size.to_le_bytes());
        a
    }

    pub fn is_reply(&self) -> bool {
        self.flags & cflags::REPLY != 0
    }
    pub fn has_more(&self) -> bool {
        self.flags & cflags::MORE != 0
    }

    /// A reply header as Elliptics builds it: the request's header with REPLY set, NEED_ACK
    /// cleared, the given status and size, MORE when `more`.
    pub fn reply(&self, status: i32, size: u64, more: bool) -> Header {
        let mut h = *self;
        h.flags &= !(cflags::NEED_ACK | cflags::MORE);
        h.flags |= cflags::REPLY;
        if more {
            h.flags |= cflags::MORE;
        }
        h.status = status;
        h.size = size;
        h
    }

    /// The version an REVERSE_LOOKUP header carries in its id.
    pub fn version(&self) -> [i32; 4] {
        let mut v = [0i32; 4];
        for (i, x) in v.iter_mut().enumerate() {
            *x = i32::from_le_bytes(self.id[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
        }
        v
    }

    /// Puts a version into the id (REVERSE_LOOKUP).
    pub fn set_version(&mut self, v: [i32; 4]) {
        self.id = [0; ID_SIZE];
        for (i, x) in v.iter().enumerate() {
            self.id[i * 4..i * 4 + 4].copy_from_slice(&x.to_le_bytes());
        }
    }

    /// Whether a peer's version can talk to us: equal major and minor, as Elliptics requires.
    pub fn version_compatible(v: [i32; 4]) -> bool {
        v[0] == VERSION[0] && v[1] == VERSION[1]
    }
}

/// Checks whether `buf` starts with a whole frame.
///
/// Returns `Ok(None)` when more bytes are needed, `Ok(Some(len))` with the frame's total length
/// when it is complete, and an error when the declared payload is larger than `max_payload` —
/// the caller must then close the connection without buffering the payload.
pub fn check_frame(buf: &[u8], max_payload: u64) -> Result<Option<usize>, ProtoError> {
    if buf.len() < HEADER_SIZE {
        return Ok(None);
    }
    let size = u64::from_le_bytes(buf[112..120].try_into().expect("8 bytes"));
    if size > max_payload {
        return Err(ProtoError::TooLarge {
            size,
            max: max_payload,
        });
    }
    // In u64: with a huge limit, `HEADER_SIZE + size` must neither overflow nor wrap.
    let total = HEADER_SIZE as u64 + size.min(u64::MAX - HEADER_SIZE as u64);
    if (buf.len() as u64) < total {
        return Ok(None);
    }
    Ok(Some(total as usize))
}

/// The total length of the frame whose header starts `buf`, once the header is there: what a
/// reader should have room for. Call it after [`check_frame`] said `Ok(None)` (which has
/// already bounded the declared size).
pub fn pending_frame_len(buf: &[u8]) -> Option<usize> {
    let size = u64::from_le_bytes(buf.get(112..120)?.try_into().ok()?);
    (HEADER_SIZE as u64).checked_add(size)?.try_into().ok()
}

/// A connection's read buffer, as first allocated.
pub const READ_BUF: usize = 64 << 10;
/// Spare room a connection's read buffer keeps for the next read.
pub const READ_ROOM: usize = 16 << 10;
/// The largest read buffer kept once the frame it grew for is gone (see [`make_read_room`]).
const KEEP_MAX: usize = 4 * READ_BUF;
/// How far a read buffer moves before it tries to go back to its start.
const REWIND_AFTER: usize = 8 << 10;

/// Makes room in a connection's read buffer before a read. Frames are split off the buffer
/// as views of it ([`Frame::from_bytes`]), so the buffer only moves forward; once no frame
/// points into it any more, this moves what is left unread (usually nothing) back to the start
/// of the allocation, without allocating. The next read then lands in memory that is still in
/// the CPU's caches instead of walking through the whole allocation: with 50 connections of
/// 64 KiB each, that walk kept every buffer, and all else a request touches, out of cache.
/// When the buffer is still shared and less than [`READ_ROOM`] is spare, it grows. The
/// return is tried once the buffer has moved 8 KiB into a [`READ_BUF`]
/// allocation (a few small frames), not at every read. An allocation that grew past
/// 4 × [`READ_BUF`] for a large frame is given up for a new [`READ_BUF`] one once that frame
/// is done with (unless another large frame is arriving in it).
pub fn make_read_room(buf: &mut bytes::BytesMut) {
    let spare = buf.capacity() - buf.len();
    // One byte more than is spare: reclaimed only by moving back to the start, and only when
    // nothing else holds the allocation and the unread bytes are fewer than those consumed.
    let rewound = spare < READ_BUF - REWIND_AFTER && buf.try_reclaim(spare + 1);
    if buf.capacity() > KEEP_MAX
        && buf.len() <= READ_BUF / 2
        && pending_frame_len(buf).is_none_or(|total| total <= READ_BUF / 2)
    {
        // The allocation grew for a large frame that is gone: a connection that sent or
        // received one large frame must not keep its size for as long as it lives. The
        // unread bytes move to a buffer of the usual size.
        let mut fresh = bytes::BytesMut::with_capacity(READ_BUF);
        fresh.extend_from_slice(buf);
        *buf = fresh;
        return;
    }
    if !rewound && spare < READ_ROOM {
        buf.reserve(4 * READ_ROOM);
    }
}

/// A whole message: header and payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub header: Header,
    /// A view of the bytes received ([`Frame::from_bytes`]): a reply's data is handed to the
    /// caller without being copied out of the connection's read buffer.
    pub payload: Bytes,
}

impl Frame {
    /// Builds a frame, setting `header.size` from the payload.
    pub fn new(mut header: Header, payload: impl Into<Bytes>) -> Frame {
        let payload = payload.into();
        header.size = payload.len() as u64;
        Frame { header, payload }
    }

    /// Parses a frame that [`check_frame`] reported whole (the payload is copied; see
    /// [`Frame::from_bytes`] to keep it where it is).
    pub fn decode(buf: &[u8]) -> Result<Frame, ProtoError> {
        let header = Self::whole(buf)?;
        Ok(Frame {
            header,
            payload: Bytes::copy_from_slice(&buf[HEADER_SIZE..]),
        })
    }

    /// [`Frame::decode`] without copying: the payload is a slice of `buf`.
    pub fn from_bytes(buf: Bytes) -> Result<Frame, ProtoError> {
        let header = Self::whole(&buf)?;
        Ok(Frame {
            header,
            payload: buf.slice(HEADER_SIZE..),
        })
    }

    /// The header of a buffer holding exactly one frame.
    fn whole(buf: &[u8]) -> Result<Header, ProtoError> {
        let header = Header::decode(buf)?;
        let total = (HEADER_SIZE as u64).saturating_add(header.size);
        if buf.len() as u64 != total {
            return Err(ProtoError::Short {
                what: "frame",
                need: total.min(usize::MAX as u64) as usize,
                have: buf.len(),
            });
        }
        Ok(header)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_SIZE + self.payload.len());
        let mut h = self.header;
        h.size = self.payload.len() as u64;
        h.encode_into(&mut out);
        out.extend_from_slice(&self.payload);
        out
    }
}
