//! Sending replies on a connection, following Elliptics' reply rules.
//!
//! A data reply copies the request header, sets REPLY and the size, clears NEED_ACK, and sets
//! MORE when the request still wants an ack or more items follow. A handler that answers with
//! exactly one reply (READ, WRITE, LOOKUP, ROUTE_LIST) first calls [`Out::no_ack`]. The final
//! ack is the request header with size 0, the status, REPLY set and NEED_ACK and MORE cleared;
//! it goes out if NEED_ACK is still set, and always on error.
//!
//! A mutation answered inline on a `sync = 0` backend is acknowledged only once it is durable,
//! without holding up the reader: its replies are held ([`Out::hold_until`]) and handed to the
//! backend's syncer ([`Deferred`]). After each group commit one task sends every reply it
//! covers (the error instead when the sync failed), writing to each socket without waiting;
//! a socket that cannot take them at once gets a task of its own.

use crate::backends::Syncer;
use apsis_proto::{cflags, Header, HEADER_SIZE};
use std::sync::Arc;
use std::time::Instant;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

/// Encoded frames waiting for the connection's writer task.
pub type Tx = mpsc::Sender<Msg>;

/// One frame for the writer task: encoded whole, or a head (the header and what precedes the
/// data) and data shared from where it already is (a base's memory map), so a large reply is
/// queued without a copy.
pub enum Msg {
    Frame(Vec<u8>),
    Shared(Vec<u8>, bytes::Bytes),
}

/// Replies smaller than this are gathered in the connection's pending buffer; larger ones
/// are written straight from their parts (no copy into one buffer).
const GATHER_MAX: usize = 64 << 10;
/// The pending buffer is written out once it holds this much.
const PENDING_FLUSH: usize = 256 << 10;

/// A connection's socket writer, shared by the reader (requests answered inline, gathered in
/// `pending` and written with other connections' by `batch`) and the writer task (requests
/// answered from their own tasks).
///
/// Bytes go to the socket only from whoever holds the [`Gate`], and the holder writes
/// everything pending first, so frames never interleave and leave in the order they were
/// gathered. The socket half is written through `&self` (`try_write` and `writable`): the gate
/// is all the exclusion there is, one locked instruction to enter and one to leave (a
/// `tokio::sync::Mutex` took four).
pub struct ConnWriter {
    pending: parking_lot::Mutex<Vec<u8>>,
    gate: Gate,
    wr: OwnedWriteHalf,
    ctx: Arc<crate::Ctx>,
    /// The runtime, for flushes started off it (held replies settled by a syncer thread).
    rt: tokio::runtime::Handle,
    /// Held replies not yet settled, and a wake-up for [`ConnWriter::drain_deferred`].
    deferred: std::sync::atomic::AtomicUsize,
    settled: tokio::sync::Notify,
}

/// The right to write to a connection's socket: a flag, and a wake-up for those waiting.
struct Gate {
    state: std::sync::atomic::AtomicU8,
    released: tokio::sync::Notify,
}

/// [`Gate`] states.
const FREE: u8 = 0;
const HELD: u8 = 1;
/// Held, and someone may be waiting: the holder wakes the waiters when it leaves.
const WANTED: u8 = 2;

impl Gate {
    fn new() -> Gate {
        Gate {
            state: std::sync::atomic::AtomicU8::new(FREE),
            released: tokio::sync::Notify::new(),
        }
    }

    fn try_enter(&self) -> Option<Entered<'_>> {
        use std::sync::atomic::Ordering::{Acquire, Relaxed};
        self.state
            .compare_exchange(FREE, HELD, Acquire, Relaxed)
            .ok()
            .map(|_| Entered(self))
    }

    async fn enter(&self) -> Entered<'_> {
        use std::sync::atomic::Ordering::{Acquire, Relaxed};
        if let Some(e) = self.try_enter() {
            return e;
        }
        loop {
            // Registered before the state says someone waits, so the holder's wake-up,
            // which follows its leaving, cannot be missed.
            let released = self.released.notified();
            let mut released = std::pin::pin!(released);
            released.as_mut().enable();
            // Held: mark it wanted and wait. Free: enter, as wanted too, since others may
            // still wait and leaving must wake them.
            let s = self.state.load(Relaxed);
            if self
                .state
                .compare_exchange(s, WANTED, Acquire, Relaxed)
                .is_ok()
            {
                if s == FREE {
                    return Entered(self);
                }
                released.await;
            }
        }
    }

    fn leave(&self) {
        use std::sync::atomic::Ordering::Release;
        if self.state.swap(FREE, Release) == WANTED {
            self.released.notify_waiters();
        }
    }
}

/// The gate, held; leaves it when dropped.
struct Entered<'a>(&'a Gate);

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        self.0.leave();
    }
}

/// The gate of a connection's writer, held by a task of its own.
struct EnteredOwned(Arc<ConnWriter>);

impl Drop for EnteredOwned {
    fn drop(&mut self) {
        self.0.gate.leave();
    }
}

/// A request's replies held until its mutation is durable. Dropped unanswered (the syncer is
/// gone), it answers −EIO.
pub struct Deferred {
    cw: Arc<ConnWriter>,
    replies: Vec<u8>,
    req: Header,
    started: Instant,
    size: u64,
    answered: bool,
    /// The request's key lock, released with the reply.
    _key_lock: Option<crate::locks::OwnedKeyGuard>,
}

impl Deferred {
    /// The runtime of the request's connection.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.cw.rt
    }

    /// Adds the replies (or the error) to the connection's pending buffer.
    fn settle(&mut self, r: Result<(), i32>) {
        {
            let mut p = self.cw.pending.lock();
            match r {
                Ok(()) => p.extend_from_slice(&self.replies),
                Err(status) => self.req.reply(status, 0, false).encode_into(&mut p),
            }
        }
        self.answered = true;
        self.cw.ctx.stats.record(
            self.req.cmd,
            r.is_ok(),
            self.started.elapsed().as_micros() as u64,
            self.size,
        );
    }
}

impl Drop for Deferred {
    fn drop(&mut self) {
        if !self.answered {
            self.settle(Err(-apsis_proto::errno::EIO));
            self.cw.flush_nowait();
        }
        if self
            .cw
            .deferred
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel)
            == 1
        {
            self.cw.settled.notify_waiters();
        }
    }
}

/// Answers the held replies one sync covered (a task the syncer starts after each sync):
/// each goes into its connection's pending buffer, then each connection is written once.
pub fn send_settled(mut replies: Vec<Deferred>, r: Result<(), i32>) {
    for d in &mut replies {
        d.settle(r);
    }
    let mut flushed: Vec<*const ConnWriter> = Vec::with_capacity(replies.len());
    for d in &replies {
        let p = Arc::as_ptr(&d.cw);
        if !flushed.contains(&p) {
            flushed.push(p);
            d.cw.flush_nowait();
        }
    }
}

impl ConnWriter {
    /// Must be called on the runtime.
    pub fn new(wr: OwnedWriteHalf, ctx: Arc<crate::Ctx>) -> ConnWriter {
        ConnWriter {
            pending: parking_lot::Mutex::new(Vec::with_capacity(64 << 10)),
            gate: Gate::new(),
            wr,
            ctx,
            rt: tokio::runtime::Handle::current(),
            deferred: std::sync::atomic::AtomicUsize::new(0),
            settled: tokio::sync::Notify::new(),
        }
    }

    /// Holds a request's replies until `syncer` has made its mutation durable.
    fn defer(
        self: &Arc<Self>,
        syncer: &Syncer,
        replies: Vec<u8>,
        req: Header,
        started: Instant,
        size: u64,
        key_lock: Option<crate::locks::OwnedKeyGuard>,
    ) {
        self.deferred
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        syncer.defer(Deferred {
            cw: self.clone(),
            replies,
            req,
            started,
            size,
            answered: false,
            _key_lock: key_lock,
        });
    }

    /// Waits until every held reply of this connection is settled (connection closing).
    pub async fn drain_deferred(&self) {
        loop {
            let n = self.settled.notified();
            if self.deferred.load(std::sync::atomic::Ordering::Acquire) == 0 {
                return;
            }
            n.await;
        }
    }

    /// Writes what is pending without waiting, from any thread: as much as the socket takes
    /// now; the rest (or everything, when another write is under way) is written by a task.
    pub fn flush_nowait(self: &Arc<Self>) {
        // The written buffer comes back in `spare` and goes back as the pending one.
        let mut spare = Vec::new();
        self.flush_nowait_trading(&mut spare);
        if spare.capacity() > 0 {
            self.give_back(spare);
        }
    }

    /// [`ConnWriter::flush_nowait`] trading `spare` (empty) for the pending buffer: for
    /// `batch`, which writes many connections in a row with one spare buffer, so the written
    /// buffer moves on to the next connection instead of going back under this one's lock.
    pub fn flush_nowait_trading(self: &Arc<Self>, spare: &mut Vec<u8>) {
        let Some(entered) = self.enter_nowait() else {
            return;
        };
        {
            let mut p = self.pending.lock();
            if p.is_empty() {
                return;
            }
            std::mem::swap(&mut *p, spare);
        }
        match self.write_nowait(entered, std::mem::take(spare)) {
            Some(mut buf) if buf.capacity() <= 1 << 20 => {
                buf.clear();
                *spare = buf;
            }
            _ => *spare = Vec::with_capacity(64 << 10),
        }
    }

    /// The gate, if it is free now; otherwise a task flushes once it is.
    fn enter_nowait(self: &Arc<Self>) -> Option<Entered<'_>> {
        let entered = self.gate.try_enter();
        if entered.is_none() {
            let me = self.clone();
            self.rt.spawn(async move {
                me.flush().await;
            });
        }
        entered
    }

    /// Writes `buf` as far as the socket takes it now; the rest is written by a task that
    /// takes over the gate. The buffer back when it was all written.
    fn write_nowait(self: &Arc<Self>, entered: Entered<'_>, mut buf: Vec<u8>) -> Option<Vec<u8>> {
        let mut off = 0;
        while off < buf.len() {
            match self.wr.try_write(&buf[off..]) {
                Ok(n) => off += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                // The socket failed: the reader sees it too and closes the connection.
                Err(_) => return None,
            }
        }
        self.count(off);
        if off == buf.len() {
            drop(entered);
            return Some(buf);
        }
        // The rest of a frame must be the next bytes on the socket: the task holds the gate
        // until it is written.
        std::mem::forget(entered);
        let held = EnteredOwned(self.clone());
        self.rt.spawn(async move {
            let rest = buf.split_off(off);
            if held.0.write_all(&rest).await.is_ok() {
                held.0.count(rest.len());
                let me = held.0.clone();
                drop(held);
                // What was gathered while the task wrote.
                me.flush().await;
            }
        });
        None
    }

    /// Writes all of `buf`, waiting for room; the caller holds the gate.
    async fn write_all(&self, buf: &[u8]) -> std::io::Result<()> {
        let mut off = 0;
        while off < buf.len() {
            match self.wr.try_write(&buf[off..]) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => off += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.wr.writable().await?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Returns a written buffer for the next batch (no allocation per flush) unless replies
    /// were gathered meanwhile into a new one, or it grew past a large reply.
    fn give_back(&self, mut buf: Vec<u8>) {
        buf.clear();
        if buf.capacity() <= 1 << 20 {
            let mut p = self.pending.lock();
            if p.capacity() == 0 {
                *p = buf;
            }
        }
    }

    fn count(&self, n: usize) {
        self.ctx.stats.add_bytes_out(n as u64);
    }

    /// Adds a frame (`h` with its size set) to the pending buffer; returns whether the
    /// buffer should be written out now.
    fn gather(&self, h: &Header, parts: &[&[u8]]) -> bool {
        let mut p = self.pending.lock();
        h.encode_into(&mut p);
        for part in parts {
            p.extend_from_slice(part);
        }
        p.len() >= PENDING_FLUSH
    }

    /// Writes what is pending (the caller holds the gate); false when the socket failed.
    async fn write_pending(&self) -> bool {
        let buf = {
            let mut p = self.pending.lock();
            if p.is_empty() {
                return true;
            }
            std::mem::take(&mut *p)
        };
        self.count(buf.len());
        let ok = self.write_all(&buf).await.is_ok();
        self.give_back(buf);
        ok
    }

    /// Writes what is pending; false when the socket failed.
    pub async fn flush(&self) -> bool {
        let _entered = self.gate.enter().await;
        self.write_pending().await
    }

    /// Writes whole buffers (the writer task's batches, large replies), after what is
    /// pending.
    pub async fn write_parts(&self, parts: &[&[u8]]) -> bool {
        let _entered = self.gate.enter().await;
        if !self.write_pending().await {
            return false;
        }
        for p in parts {
            if self.write_all(p).await.is_err() {
                return false;
            }
            self.count(p.len());
        }
        true
    }

    /// Writes what is pending and ends the connection's sending side.
    pub async fn shutdown(&self) {
        let _entered = self.gate.enter().await;
        let _ = self.write_pending().await;
        let _ = rustix::net::shutdown(self.wr.as_ref(), rustix::net::Shutdown::Write);
    }
}

/// Queues `m` for the connection's writer task, waiting for room; `false` once it is gone.
async fn queue(tx: &Tx, m: Msg) -> bool {
    match tx.try_send(m) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(m)) => Box::pin(tx.send(m)).await.is_ok(),
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

/// Where a request's replies go.
pub enum Sink<'a> {
    /// Through the writer task (requests running in their own task).
    Chan(Tx),
    /// Straight into the connection's writer (requests answered inline by the reader, which
    /// lends its writer: no reference counted per request; owned once relayed to a task).
    Direct(std::borrow::Cow<'a, Arc<ConnWriter>>),
}

impl From<Tx> for Sink<'_> {
    fn from(tx: Tx) -> Self {
        Sink::Chan(tx)
    }
}

/// Replies held for a sync, and its syncer ([`Out::hold_until`]).
type Held = Option<(Arc<Syncer>, Vec<u8>)>;

/// The reply side of one request.
pub struct Out<'a> {
    pub tx: Sink<'a>,
    pub req: Header,
    /// The local backend serving this request, resolved once by dispatch (as Elliptics picks
    /// it from `cmd.id` and `cmd.group`, or `backend_id` with DIRECT_BACKEND).
    /// Borrowed from the node's table for the request (owned once relayed to a task).
    pub slot: Option<std::borrow::Cow<'a, Arc<crate::backends::Slot>>>,
    need_ack: bool,
    /// Replies held until a sync answers ([`Out::hold_until`]).
    held: parking_lot::Mutex<Held>,
    /// Whether `held` was ever set: read (a plain load) before taking its lock, which costs
    /// two locked instructions, so the replies that are not held never take it.
    holding: std::sync::atomic::AtomicBool,
    /// The request's key lock, when a mutation keeps it until its reply goes out (for a held
    /// reply: until the mutation is durable, so nobody reads it before).
    pub key_lock: Option<crate::locks::OwnedKeyGuard>,
}

impl<'a> Out<'a> {
    pub fn new(tx: impl Into<Sink<'a>>, req: Header) -> Self {
        Out {
            tx: tx.into(),
            slot: None,
            need_ack: req.flags & cflags::NEED_ACK != 0,
            req,
            held: parking_lot::Mutex::new(None),
            holding: std::sync::atomic::AtomicBool::new(false),
            key_lock: None,
        }
    }

    /// The same reply side, owning the writer it borrowed (for a task of its own).
    pub fn into_static(self) -> Out<'static> {
        Out {
            tx: match self.tx {
                Sink::Chan(tx) => Sink::Chan(tx),
                Sink::Direct(w) => Sink::Direct(std::borrow::Cow::Owned(w.into_owned())),
            },
            req: self.req,
            slot: self.slot.map(|s| std::borrow::Cow::Owned(s.into_owned())),
            need_ack: self.need_ack,
            held: self.held,
            holding: self.holding,
            key_lock: self.key_lock,
        }
    }

    /// Whether the request is answered inline by the connection's reader.
    pub fn is_inline(&self) -> bool {
        matches!(self.tx, Sink::Direct(_))
    }

    /// From now on the replies are held until `syncer` has made everything written so far
    /// durable; [`Out::release`] hands them over.
    pub fn hold_until(&self, syncer: Arc<Syncer>) {
        *self.held.lock() = Some((syncer, Vec::new()));
        self.holding
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The held replies' lock, unless nothing was ever held.
    fn held(&self) -> Option<parking_lot::MutexGuard<'_, Held>> {
        // Relaxed: `holding` is only ever set by the request's own task.
        self.holding
            .load(std::sync::atomic::Ordering::Relaxed)
            .then(|| self.held.lock())
    }

    /// Whether replies are being held now.
    fn is_held(&self) -> bool {
        self.held().is_some_and(|h| h.is_some())
    }

    /// Hands held replies to the syncer; false when nothing was held (the replies went out
    /// already).
    pub fn release(&mut self, started: Instant, size: u64) -> bool {
        let Some((syncer, replies)) = self.held().and_then(|mut h| h.take()) else {
            return false;
        };
        if let Sink::Direct(w) = &self.tx {
            let key_lock = self.key_lock.take();
            w.defer(&syncer, replies, self.req, started, size, key_lock);
        }
        true
    }

    /// This request is answered by one reply and no ack.
    pub fn no_ack(&mut self) {
        self.need_ack = false;
    }

    /// Encodes a header and payload parts into one buffer and queues it.
    ///
    /// The common cases — a small reply gathered into the connection's pending buffer, held
    /// for a sync, or handed to the writer task while its queue has room — do not wait; the
    /// waits are boxed, so a request's future (built and moved once per request) does not
    /// carry the state of writes it rarely makes.
    pub async fn send(&self, mut h: Header, parts: &[&[u8]]) -> bool {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        h.size = len as u64;
        if let Some(mut g) = self.held() {
            if let Some((_, held)) = g.as_mut() {
                h.encode_into(held);
                for p in parts {
                    held.extend_from_slice(p);
                }
                return true;
            }
        }
        match &self.tx {
            Sink::Chan(tx) => {
                let mut buf = Vec::with_capacity(HEADER_SIZE + len);
                h.encode_into(&mut buf);
                for p in parts {
                    buf.extend_from_slice(p);
                }
                queue(tx, Msg::Frame(buf)).await
            }
            Sink::Direct(w) if len < GATHER_MAX => {
                !w.gather(&h, parts) || Box::pin(w.flush()).await
            }
            Sink::Direct(w) => {
                let mut head = Vec::with_capacity(HEADER_SIZE);
                h.encode_into(&mut head);
                let mut all: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
                all.push(&head);
                all.extend_from_slice(parts);
                Box::pin(w.write_parts(&all)).await
            }
        }
    }

    /// A data reply (the only one: no items follow) added to an inline request's connection
    /// buffer at once, where the caller has its parts only for a moment (a read's bytes in
    /// the engine's map). `Some(full)`, full when the buffer should be written out now
    /// ([`Out::flush`]); `None` when this reply cannot be gathered (held, answered from a
    /// task, or large): send it with [`Out::data`].
    pub fn gather_data(&self, parts: &[&[u8]]) -> Option<bool> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        match &self.tx {
            Sink::Direct(w) if len < GATHER_MAX && !self.is_held() => {
                let mut h = self.req.reply(0, 0, self.need_ack);
                h.size = len as u64;
                Some(w.gather(&h, parts))
            }
            _ => None,
        }
    }

    /// A data reply; `items_follow` when more data replies come after it.
    pub async fn data(&self, parts: &[&[u8]], items_follow: bool) -> bool {
        let h = self.req.reply(0, 0, self.need_ack || items_follow);
        self.send(h, parts).await
    }

    /// [`Out::data_as`] with the data owned: a large reply queued for the writer task keeps
    /// it where it is (shared) instead of copying it into the queue.
    pub async fn data_as_shared(
        &self,
        mut h: Header,
        status: i32,
        head: &[u8],
        data: bytes::Bytes,
        more: bool,
    ) -> bool {
        match &self.tx {
            Sink::Chan(tx) if data.len() >= GATHER_MAX && !self.is_held() => {
                h = h.reply(status, 0, more);
                h.size = (head.len() + data.len()) as u64;
                let mut buf = Vec::with_capacity(HEADER_SIZE + head.len());
                h.encode_into(&mut buf);
                buf.extend_from_slice(head);
                queue(tx, Msg::Shared(buf, data)).await
            }
            _ => self.data_as(h, status, &[head, &data], more).await,
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};

    /// One holder at a time however tasks contend, every waiter gets in, and the gate is
    /// free at the end.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_gate_lets_one_in_at_a_time_and_nobody_waits_for_ever() {
        let gate = Arc::new(Gate::new());
        let inside = Arc::new(AtomicBool::new(false));
        let entries = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..16)
            .map(|t| {
                let (gate, inside, entries) = (gate.clone(), inside.clone(), entries.clone());
                tokio::spawn(async move {
                    for i in 0..500u32 {
                        let e = if (t + i) % 3 == 0 {
                            match gate.try_enter() {
                                Some(e) => e,
                                None => continue,
                            }
                        } else {
                            gate.enter().await
                        };
                        assert!(!inside.swap(true, SeqCst), "two holders at once");
                        if i % 7 == 0 {
                            tokio::task::yield_now().await;
                        }
                        inside.store(false, SeqCst);
                        entries.fetch_add(1, SeqCst);
                        drop(e);
                    }
                })
            })
            .collect();
        let all = async {
            for t in tasks {
                t.await.unwrap();
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(20), all)
            .await
            .expect("a waiter was never let in");
        assert!(entries.load(SeqCst) > 16 * 500 / 2);
        assert_eq!(gate.state.load(SeqCst), FREE);
    }
}
