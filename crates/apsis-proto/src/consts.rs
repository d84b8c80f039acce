//! Command numbers, flags and statuses, with the values Elliptics 3.0 puts on the wire.

/// Command numbers (`dnet_cmd.cmd`).
pub mod cmd {
    pub const LOOKUP: i32 = 1;
    pub const REVERSE_LOOKUP: i32 = 2;
    pub const JOIN: i32 = 3;
    pub const WRITE: i32 = 4;
    pub const READ: i32 = 5;
    pub const LIST: i32 = 6;
    pub const ROUTE_LIST: i32 = 8;
    pub const STAT: i32 = 9;
    pub const NOTIFY: i32 = 10;
    pub const DEL: i32 = 11;
    pub const STAT_COUNT: i32 = 12;
    pub const STATUS: i32 = 13;
    pub const READ_RANGE: i32 = 14;
    pub const DEL_RANGE: i32 = 15;
    pub const AUTH: i32 = 16;
    pub const BULK_READ: i32 = 17;
    pub const DEFRAG: i32 = 18;
    pub const ITERATOR: i32 = 19;
    pub const MONITOR_STAT: i32 = 23;
    pub const UPDATE_IDS: i32 = 24;
    pub const BACKEND_CONTROL: i32 = 25;
    pub const BACKEND_STATUS: i32 = 26;
    pub const SEND: i32 = 27;
    /// One past the last command number (a statistics slot in Elliptics).
    pub const UNKNOWN: i32 = 28;

    /// The Elliptics name of a command number, for logs and statistics.
    pub fn name(cmd: i32) -> &'static str {
        match cmd {
            LOOKUP => "LOOKUP",
            REVERSE_LOOKUP => "REVERSE_LOOKUP",
            JOIN => "JOIN",
            WRITE => "WRITE",
            READ => "READ",
            LIST => "LIST",
            ROUTE_LIST => "ROUTE_LIST",
            STAT => "STAT",
            NOTIFY => "NOTIFY",
            DEL => "DEL",
            STAT_COUNT => "STAT_COUNT",
            STATUS => "STATUS",
            READ_RANGE => "READ_RANGE",
            DEL_RANGE => "DEL_RANGE",
            AUTH => "AUTH",
            BULK_READ => "BULK_READ",
            DEFRAG => "DEFRAG",
            ITERATOR => "ITERATOR",
            MONITOR_STAT => "MONITOR_STAT",
            UPDATE_IDS => "UPDATE_IDS",
            BACKEND_CONTROL => "BACKEND_CONTROL",
            BACKEND_STATUS => "BACKEND_STATUS",
            SEND => "SEND",
            _ => "UNKNOWN",
        }
    }
}

/// Command flags (`dnet_cmd.flags`); bits 32..63 are per command.
pub mod cflags {
    /// Want a final status ack.
    pub const NEED_ACK: u64 = 0x1;
    /// More replies follow (replies only).
    pub const MORE: u64 = 0x2;
    /// Client-internal in Elliptics; never sent.
    pub const DESTROY: u64 = 0x4;
    /// Process on this node; do not forward.
    pub const DIRECT: u64 = 0x8;
    /// No per-key serialisation.
    pub const NOLOCK: u64 = 0x10;
    /// LOOKUP: fill in and verify the checksum.
    pub const CHECKSUM: u64 = 0x20;
    /// LOOKUP: skip the cache.
    pub const NOCACHE: u64 = 0x40;
    /// The server uses `backend_id` as given.
    pub const DIRECT_BACKEND: u64 = 0x80;
    /// Log this request at any level.
    pub const TRACE_BIT: u64 = 0x100;
    /// This message is a reply.
    pub const REPLY: u64 = 0x200;
    /// NOTIFY: drop the subscription; BULK_READ: check only.
    pub const DROP_NOTIFICATION: u64 = 1 << 32;
    /// READ_RANGE: sort keys.
    pub const ATTR_SORT: u64 = 1 << 35;
}

/// io flags (`dnet_io_attr.flags`).
pub mod ioflags {
    /// Internal.
    pub const SKIP_SENDING: u32 = 0x1;
    pub const APPEND: u32 = 0x2;
    pub const PREPARE: u32 = 0x10;
    pub const COMMIT: u32 = 0x20;
    /// Internal.
    pub const REMOVED: u32 = 0x40;
    /// Ignored in 3.0.
    pub const OVERWRITE: u32 = 0x80;
    pub const NOCSUM: u32 = 0x100;
    /// Writes: fill inside a prepared reservation.
    pub const PLAIN_WRITE: u32 = 0x200;
    /// Ranges: count only (the same bit as PLAIN_WRITE).
    pub const NODATA: u32 = 0x200;
    pub const CACHE: u32 = 0x400;
    pub const CACHE_ONLY: u32 = 0x800;
    pub const CACHE_REMOVE_FROM_DISK: u32 = 0x1000;
    pub const COMPARE_AND_SWAP: u32 = 0x2000;
    /// READ: return sha512 of the data in `parent`.
    pub const CHECKSUM: u32 = 0x4000;
    /// WRITE: reply with an empty ack instead of file info (the same bit as CHECKSUM).
    pub const WRITE_NO_FILE_INFO: u32 = 0x4000;
    pub const CAS_TIMESTAMP: u32 = 0x8000;
    /// Client-side only.
    pub const MIX_STATES: u32 = 0x10000;
    /// Internal.
    pub const NOCACHE: u32 = 0x1000_0000;
}

/// A node's config flags (`options.flags`; STATUS replies carry them as `nflags`).
pub mod node_flags {
    /// The node joins the network and appears in route lists (`options.join`).
    pub const JOIN_NETWORK: u64 = 1 << 0;
    /// Do not ask remote nodes for their route tables.
    pub const NO_ROUTE_LIST: u64 = 1 << 1;
    /// Clients: order the groups of a read by their weights.
    pub const MIX_STATES: u64 = 1 << 2;
    /// Data commands run as if every io_attr had NOCSUM: no checksum verified on reads, none
    /// written with writes.
    pub const NO_CSUM: u64 = 1 << 3;
    /// Clients: read the groups in a random order.
    pub const RANDOMIZE_STATES: u64 = 1 << 5;
    pub const KEEPS_IDS_IN_CLUSTER: u64 = 1 << 6;
}

/// eblob record flags as reported on the wire.
pub mod record_flags {
    pub const REMOVE: u64 = 0x1;
    pub const NOCSUM: u64 = 0x2;
    pub const APPEND: u64 = 0x10;
    pub const EXTHDR: u64 = 0x40;
    pub const UNCOMMITTED: u64 = 0x80;
    pub const CHUNKED_CSUM: u64 = 0x100;
}

/// Linux errno values; statuses on the wire are their negatives.
pub mod errno {
    pub const EPERM: i32 = 1;
    pub const ENOENT: i32 = 2;
    pub const EIO: i32 = 5;
    pub const ENXIO: i32 = 6;
    pub const E2BIG: i32 = 7;
    pub const ENOEXEC: i32 = 8;
    pub const EAGAIN: i32 = 11;
    pub const ENOMEM: i32 = 12;
    pub const EBUSY: i32 = 16;
    pub const EEXIST: i32 = 17;
    pub const EINVAL: i32 = 22;
    pub const ENOSPC: i32 = 28;
    pub const EROFS: i32 = 30;
    pub const ERANGE: i32 = 34;
    pub const EPROTO: i32 = 71;
    pub const EBADFD: i32 = 77;
    pub const EILSEQ: i32 = 84;
    pub const ENOTSUP: i32 = 95;
    pub const ECONNRESET: i32 = 104;
    pub const ETIMEDOUT: i32 = 110;
    pub const EALREADY: i32 = 114;
    pub const EINPROGRESS: i32 = 115;

    /// The symbolic name of a (positive or negative) errno, for messages.
    pub fn name(e: i32) -> &'static str {
        // checked: a hostile status of i32::MIN must not overflow the negation.
        match e.checked_abs().unwrap_or(i32::MAX) {
            0 => "OK",
            EPERM => "EPERM",
            ENOENT => "ENOENT",
            EIO => "EIO",
            ENXIO => "ENXIO",
            E2BIG => "E2BIG",
            ENOEXEC => "ENOEXEC",
            EAGAIN => "EAGAIN",
            ENOMEM => "ENOMEM",
            EBUSY => "EBUSY",
            EEXIST => "EEXIST",
            EINVAL => "EINVAL",
            ENOSPC => "ENOSPC",
            EROFS => "EROFS",
            ERANGE => "ERANGE",
            EPROTO => "EPROTO",
            EBADFD => "EBADFD",
            EILSEQ => "EILSEQ",
            ENOTSUP => "ENOTSUP",
            ECONNRESET => "ECONNRESET",
            ETIMEDOUT => "ETIMEDOUT",
            EALREADY => "EALREADY",
            EINPROGRESS => "EINPROGRESS",
            _ => "errno",
        }
    }
}

/// The protocol version this crate speaks: Elliptics 3.0.0.1.
pub const VERSION: [i32; 4] = [3, 0, 0, 1];
