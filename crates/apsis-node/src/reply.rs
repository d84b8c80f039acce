//! Sending replies on a connection, following Elliptics' reply rules.
//!
//! A data reply copies the request header, sets REPLY and the size, clears NEED_ACK, and sets
//! MORE when the request still wants an ack or more items follow. A handler that answers with
//! exactly one reply (READ, WRITE, LOOKUP, ROUTE_LIST) first calls [`Out::no_ack`]. The final
//! ack is the request header with size 0, the status, REPLY set and NEED_ACK and MORE cleared;
//! it goes out if NEED_ACK is still set, and always on error.

use apsis_proto::{cflags, Header, HEADER_SIZE};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

/// Encoded frames waiting for the connection's writer task.
pub type Tx = mpsc::Sender<Vec<u8>>;

/// Replies smaller than this are gathered in the connection's pending buffer; larger ones
/// are written straight from their parts (no copy into one buffer).
const GATHER_MAX: usize = 64 << 10;
/// The pending buffer is written out once it holds this much.
const PENDING_FLUSH: usize = 256 << 10;

/// A connection's socket writer, shared by the reader (requests answered inline, gathered in
/// `pending` and written once per batch of frames read) and the writer task (requests answered
/// from their own tasks).
pub struct ConnWriter {
    pending: parking_lot::Mutex<Vec<u8>>,
    wr: tokio::sync::Mutex<OwnedWriteHalf>,
    ctx: Arc<crate::Ctx>,
}

impl ConnWriter {
    pub fn new(wr: OwnedWriteHalf, ctx: Arc<crate::Ctx>) -> ConnWriter {
        ConnWriter {
            pending: parking_lot::Mutex::new(Vec::with_capacity(64 << 10)),
            wr: tokio::sync::Mutex::new(wr),
            ctx,
        }
    }

    fn count(&self, n: usize) {
        self.ctx
            .stats
            .bytes_out
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Writes what is pending; false when the socket failed.
    pub async fn flush(&self) -> bool {
        let buf = {
            let mut p = self.pending.lock();
            if p.is_empty() {
                return true;
            }
            std::mem::replace(&mut *p, Vec::with_capacity(64 << 10))
        };
        self.count(buf.len());
        self.wr.lock().await.write_all(&buf).await.is_ok()
    }

    /// Writes whole buffers (the writer task's batches, large replies).
    pub async fn write_parts(&self, parts: &[&[u8]]) -> bool {
        if !self.flush().await {
            return false;
        }
        let mut w = self.wr.lock().await;
        for p in parts {
            if w.write_all(p).await.is_err() {
                return false;
            }
            self.count(p.len());
        }
        true
    }

    pub async fn shutdown(&self) {
        let _ = self.flush().await;
        let _ = self.wr.lock().await.shutdown().await;
    }
}

/// Where a request's replies go.
#[derive(Clone)]
pub enum Sink {
    /// Through the writer task (requests running in their own task).
    Chan(Tx),
    /// Straight into the connection's writer (requests answered inline by the reader).
    Direct(Arc<ConnWriter>),
}

impl From<Tx> for Sink {
    fn from(tx: Tx) -> Sink {
        Sink::Chan(tx)
    }
}

/// The reply side of one request.
pub struct Out {
    pub tx: Sink,
    pub req: Header,
    /// The local backend serving this request, resolved once by dispatch (as Elliptics picks
    /// it from `cmd.id` and `cmd.group`, or `backend_id` with DIRECT_BACKEND).
    pub slot: Option<Arc<crate::backends::Slot>>,
    need_ack: bool,
}

impl Out {
    pub fn new(tx: impl Into<Sink>, req: Header) -> Out {
        Out {
            tx: tx.into(),
            slot: None,
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
        match &self.tx {
            Sink::Chan(tx) => {
                let mut buf = Vec::with_capacity(HEADER_SIZE + len);
                h.encode_into(&mut buf);
                for p in parts {
                    buf.extend_from_slice(p);
                }
                tx.send(buf).await.is_ok()
            }
            Sink::Direct(w) if len < GATHER_MAX => {
                let full = {
                    let mut p = w.pending.lock();
                    h.encode_into(&mut p);
                    for part in parts {
                        p.extend_from_slice(part);
                    }
                    p.len() >= PENDING_FLUSH
                };
                !full || w.flush().await
            }
            Sink::Direct(w) => {
                let mut head = Vec::with_capacity(HEADER_SIZE);
                h.encode_into(&mut head);
                let mut all: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
                all.push(&head);
                all.extend_from_slice(parts);
                w.write_parts(&all).await
            }
        }
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

    /// Writes out replies gathered for the connection (a request answered outside the
    /// reader's batch must not leave them waiting for the next read).
    pub async fn flush(&self) {
        if let Sink::Direct(w) = &self.tx {
            w.flush().await;
        }
    }

    /// The final ack with `status`, sent when wanted (always for an error).
    pub async fn finish(&self, status: i32) {
        if status != 0 || self.need_ack {
            let h = self.req.reply(status, 0, false);
            self.send(h, &[]).await;
        }
    }
}
