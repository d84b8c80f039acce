//! Sending replies on a connection, following Elliptics' reply rules.
//!
//! A data reply copies the request header, sets REPLY and the size, clears NEED_ACK, and sets
//! MORE when the request still wants an ack or more items follow. A handler that answers with
//! exactly one reply (READ, WRITE, LOOKUP, ROUTE_LIST) first calls [`Out::no_ack`]. The final
//! ack is the request header with size 0, the status, REPLY set and NEED_ACK and MORE cleared;
//! it goes out if NEED_ACK is still set, and always on error.

use apsis_proto::{cflags, Header, HEADER_SIZE};
use tokio::sync::mpsc;

/// Encoded frames waiting for the connection's writer.
pub type Tx = mpsc::Sender<Vec<u8>>;

/// The reply side of one request.
pub struct Out {
    pub tx: Tx,
    pub req: Header,
    need_ack: bool,
}

impl Out {
    pub fn new(tx: Tx, req: Header) -> Out {
        Out {
            tx,
            need_ack: req.flags & cflags::NEED_ACK != 0,
            req,
        }
    }

    /// This request is answered by one reply and no ack.
    pub fn no_ack(&mut self) {
        self.need_ack = false;
    }

    /// Encodes a header and payload parts into one buffer and queues it.
    pub async fn send(&self, mut h: Header, parts: &[&[u8]]) -> bool {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        h.size = len as u64;
        let mut buf = Vec::with_capacity(HEADER_SIZE + len);
        h.encode_into(&mut buf);
        for p in parts {
            buf.extend_from_slice(p);
        }
        self.tx.send(buf).await.is_ok()
    }

    /// A data reply; `items_follow` when more data replies come after it.
    pub async fn data(&self, parts: &[&[u8]], items_follow: bool) -> bool {
        let h = self.req.reply(0, 0, self.need_ack || items_follow);
        self.send(h, parts).await
    }

    /// A data reply under another header (BULK_READ answers each key as a READ reply).
    pub async fn data_as(&self, mut h: Header, status: i32, parts: &[&[u8]], more: bool) -> bool {
        h = h.reply(status, 0, more);
        self.send(h, parts).await
    }

    /// The final ack with `status`, sent when wanted (always for an error).
    pub async fn finish(&self, status: i32) {
        if status != 0 || self.need_ack {
            let h = self.req.reply(status, 0, false);
            self.send(h, &[]).await;
        }
    }
}
