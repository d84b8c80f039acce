//! One connection to a node: requests multiplexed by transaction number.
//!
//! A request writes its frame itself, under the socket's lock (assembled in a buffer kept with
//! the socket), and registers its `trans`; a reader task routes each reply to the request that
//! owns its `trans`. A request's replies gather in one vector it takes whole, ending with the
//! first reply without MORE. Dropping a request before its final reply forgets its `trans`.
//!
//! A request sent with a timeout carries a deadline on the client's coarse clock
//! ([`crate::clock`]); the sweeper ends it with [`ClientError::Timeout`] when the deadline
//! passes, and forgets it.
//!
//! Failure detection (Elliptics' stall count) counts the requests that timed out in a row on
//! a connection ([`Conn::note_timeout`]); the client pings a stalled connection and
//! [`Conn::kill`]s it when the ping fails too. A killed or closed connection ends every
//! waiting request with a connection error and fires its `closed` signal, which is how the
//! client learns to drop the node's routes; a killed one also discards what it had not sent.
//!
//! Messages the server pushes (UPDATE_IDS) are handed to the connection's [`OnPush`] by the
//! reader itself, in stream order with the replies: a reply that follows a push on the wire
//! reaches its request after the push took effect, and [`Conn::pushes`] counts them, so a
//! handshake can tell whether a push came while it waited (see `Client::handshake_routes`).
//!
//! A connection runs both ways, as in Elliptics: a node that another node joined routes to it
//! over the joining connection, so requests (ROUTE_LIST, forwarded data requests) can arrive
//! on a connection we opened. With a [`Serve`] (a node sets one) the reader hands each to it
//! with a [`Peer`] to answer on; without, they are dropped.

use crate::clock::{Clock, NEVER};
use crate::error::{ClientError, Result};
use apsis_proto::{
    check_frame, cmd, make_read_room, pending_frame_len, Frame, Header, HEADER_SIZE,
};
use bytes::BytesMut;
use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{Poll, Waker};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// Largest reply payload accepted (a bigger one closes the connection, failing every request
/// on it): the largest READ answer a node gives (4 GiB of data, `apsis_storage`'s
/// `READ_SIZE_MAX`; larger objects are read in ranges) and its io_attr, with room to spare. At
/// 1 GiB, a whole-object read of a 2 GiB object dropped the connection.
pub const MAX_REPLY_BYTES: u64 = (4 << 30) + (1 << 20);

/// What a connection's reader, its requests and the sweeper share.
type Pending = Arc<Shared>;

/// Called by a connection's reader with each message the server pushes (UPDATE_IDS), before
/// the reader goes on to the next frame. It runs on the reader: it must not block.
pub type OnPush = Box<dyn Fn(&Frame) + Send + Sync>;

/// What a connection's reader does with each request the other side sends on it (any
/// non-reply frame but UPDATE_IDS).
#[derive(Clone)]
pub struct Serve {
    /// Called with the request, the [`Peer`] to answer on, and what [`Serve::admit`] granted
    /// for it (to hold until it is handled). It runs on the reader: it must not block (a node
    /// spawns a task per request).
    pub handler: std::sync::Arc<dyn Fn(Frame, Peer, Option<Admitted>) + Send + Sync>,
    /// The largest request payload taken (a node's `max_frame_bytes`); a larger one closes
    /// the connection before it is read.
    pub max_request_bytes: u64,
    /// Asked, with the frame's whole length, when the header of a request larger than a
    /// connection's usual buffer arrives; the connection is not read until it grants (a
    /// node's `frame_memory`).
    pub admit: Option<Admit>,
}

/// What [`Serve::admit`] grants: held until the request has been handled.
pub type Admitted = Box<dyn Send>;

/// See [`Serve::admit`].
pub type Admit = std::sync::Arc<
    dyn Fn(usize) -> std::pin::Pin<Box<dyn Future<Output = Admitted> + Send>> + Send + Sync,
>;

/// The largest payload of a message the server sends unasked that is not a request served
/// ([`Serve`]): an UPDATE_IDS describes one backend, at most 65 536 ids of 64 bytes.
pub const MAX_PUSH_BYTES: u64 = 16 << 20;

/// The other end of a connection, to answer the requests it sends us ([`Serve`]).
#[derive(Clone)]
pub struct Peer(Arc<Conn>);

impl Peer {
    pub(crate) fn of(c: Arc<Conn>) -> Peer {
        Peer(c)
    }

    /// The address we connected to.
    pub fn addr(&self) -> SocketAddr {
        self.0.addr
    }

    /// Writes frames already encoded (headers included), whole, between this connection's
    /// requests; `false` when the connection failed.
    pub async fn send_encoded(&self, parts: &[&[u8]]) -> bool {
        self.0.write_encoded(parts).await
    }

    /// Gives the connection up (see [`Conn::kill`]): after a write cut short, say.
    pub fn kill(&self) {
        self.0.kill();
    }
}

struct Shared {
    waiting: Mutex<Waiting>,
    /// Cleared when the connection ends or is killed; read by every request, so it sits
    /// beside the map every request locks, not in an allocation of its own.
    alive: AtomicBool,
    /// UPDATE_IDS pushes received, counted by the reader before it hands each to its
    /// [`OnPush`].
    pushes: AtomicU64,
}

/// Requests waiting for replies, by `trans`.

#[derive(Default)]
struct Waiting {
    /// Fx hashing: the keys are our own counter, not input an attacker picks, and SipHash
    /// showed in profiles at one lookup per reply.
    map: FxHashMap<u64, ReplyTx>,
    /// No deadline in `map` is earlier (some may be later: requests answered since do not
    /// raise it). The sweeper looks at the requests only once this tick has come.
    earliest: u64,
}

/// One request's replies: the reader pushes frames, the request takes them. A plain
/// mutex-guarded vector with one waker; lighter than a channel per request (no block
/// allocation), which matters at one request per few microseconds. A request that wants all
/// its replies takes the vector whole, so the frames are never moved one by one.
#[derive(Default)]
struct ReplyQueue {
    frames: Vec<Frame>,
    /// The reader dropped its end: no more frames will come.
    closed: bool,
    /// The sweeper closed it: the deadline passed before the final reply.
    timed_out: bool,
    waker: Option<Waker>,
}

/// The reader's end of a request's replies; dropping it (the final reply, the connection
/// ending, the deadline passing) closes the queue and wakes the request.
struct ReplyTx {
    q: Arc<Mutex<ReplyQueue>>,
    /// The tick of the client's clock by which the final reply must arrive.
    deadline: u64,
}

impl ReplyTx {
    /// Changes the queue, then wakes the request (outside the lock).
    fn update(&self, f: impl FnOnce(&mut ReplyQueue)) {
        let waker = {
            let mut q = self.q.lock();
            f(&mut q);
            q.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn push(&self, frame: Frame) {
        self.update(|q| q.frames.push(frame));
    }

    /// The final reply: queued and the queue closed with one wake-up.
    fn finish(self, frame: Frame) {
        self.update(|q| {
            q.frames.push(frame);
            q.closed = true;
        });
    }

    /// The deadline passed: closed as timed out.
    fn time_out(self) {
        self.update(|q| {
            q.timed_out = true;
            q.closed = true;
        });
    }
}

impl Drop for ReplyTx {
    fn drop(&mut self) {
        self.update(|q| q.closed = true);
    }
}

/// The request's end of its replies. Dropping it before the final reply (a cancelled request,
/// an abandoned stream) forgets the request, so later replies are discarded instead of
/// queued for nobody.
pub struct Replies {
    q: Arc<Mutex<ReplyQueue>>,
    /// Frames taken from the queue and not yet returned by [`Replies::recv`].
    taken: VecDeque<Frame>,
    pending: Pending,
    trans: u64,
}

/// How a request's queue ended, seen with its last frames.
#[derive(Clone, Copy, PartialEq)]
enum End {
    Open,
    Closed,
    TimedOut,
}

impl Replies {
    /// Waits until the queue has frames or is closed; takes the frames.
    async fn take(&mut self) -> (Vec<Frame>, End) {
        std::future::poll_fn(|cx| {
            let mut q = self.q.lock();
            if !q.frames.is_empty() || q.closed {
                let end = match (q.closed, q.timed_out) {
                    (false, _) => End::Open,
                    (true, false) => End::Closed,
                    (true, true) => End::TimedOut,
                };
                return Poll::Ready((std::mem::take(&mut q.frames), end));
            }
            if !q.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                q.waker = Some(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }

    /// The next reply frame; `None` once the connection ended (or every reply was taken).
    pub async fn recv(&mut self) -> Option<Frame> {
        if self.taken.is_empty() {
            let (frames, _) = self.take().await;
            self.taken = frames.into();
        }
        self.taken.pop_front()
    }

    /// Every reply up to the final one (without MORE). Fails with [`ClientError::Timeout`]
    /// when the request's deadline passed first, or a connection error when the connection
    /// ended first.
    pub async fn all(mut self, conn: &Conn) -> Result<Vec<Frame>> {
        let mut out: Vec<Frame> = self.taken.drain(..).collect();
        loop {
            if out.last().is_some_and(|f| !f.header.has_more()) {
                return Ok(out);
            }
            let (frames, end) = self.take().await;
            if out.is_empty() {
                out = frames;
            } else {
                out.extend(frames);
            }
            if end != End::Open && out.last().is_none_or(|f| f.header.has_more()) {
                return Err(match end {
                    End::TimedOut => ClientError::Timeout,
                    _ => conn.closed(),
                });
            }
        }
    }
}

impl Drop for Replies {
    fn drop(&mut self) {
        // Closed: the request is out of the map already (final reply, connection end, or
        // deadline).
        if !self.q.lock().closed {
            let gone = self.pending.waiting.lock().map.remove(&self.trans);
            drop(gone);
        }
    }
}

/// A live connection.
pub struct Conn {
    pub addr: SocketAddr,
    /// Requests are written by the task that makes them, under this lock: no hand-off to a
    /// writer task, so a request costs one wake-up (its reply) instead of two.
    wr: tokio::sync::Mutex<Writer>,
    pending: Pending,
    /// Fires (its sender dropped) when the connection ends, however it ends; taken once, by
    /// whoever drops the node's routes then.
    pub closed: Mutex<Option<oneshot::Receiver<()>>>,
    /// Requests that timed out in a row.
    stalls: AtomicU32,
    /// The last transaction number given out. Replies are matched per connection, so a
    /// counter per connection is enough; one per process was a cache line every request
    /// moved between CPUs.
    trans: AtomicU64,
    /// Handshakes (REVERSE_LOOKUP, answered with trans 0) one at a time.
    pub handshake_lock: tokio::sync::Mutex<()>,
    reader: tokio::task::AbortHandle,
    /// The socket itself (a duplicate descriptor), to set options on.
    ctl: std::net::TcpStream,
    /// Deadlines are ticks of this clock.
    clock: Arc<Clock>,
}

/// The socket's write half and the buffer a request's frame is assembled in (kept, so a
/// request allocates none).
struct Writer {
    half: tokio::net::tcp::OwnedWriteHalf,
    buf: Vec<u8>,
    /// Set while a frame is being written; still set when the next request comes, the
    /// writer was cancelled part way.
    torn: bool,
}

/// Marks the connection dead and fails every waiting request when the reader ends, however it
/// ends (EOF, error, or aborted by [`Conn::kill`]).
struct ReaderGuard {
    pending: Pending,
}

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        self.pending.alive.store(false, Relaxed);
        // Dropping the senders ends every waiting request with a connection error (outside
        // the lock: each drop wakes its request).
        let all = std::mem::take(&mut self.pending.waiting.lock().map);
        drop(all);
    }
}

impl Conn {
    /// Connects within `timeout`, with `keepalive` and the type of service `tos` on the
    /// socket; the requests' deadlines count on `clock`, whose sweeper watches the new
    /// connection.
    pub async fn connect(
        addr: SocketAddr,
        timeout: std::time::Duration,
        clock: &Arc<Clock>,
        keepalive: Option<crate::Keepalive>,
        tos: u32,
        on_push: OnPush,
        serve: Option<Serve>,
    ) -> Result<Arc<Conn>> {
        let err = |m: String| ClientError::Connection {
            addr: addr.to_string(),
            msg: m,
        };
        let sock = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Timeout)?
            .map_err(|e| err(e.to_string()))?;
        let _ = sock.set_nodelay(true);
        if let Some(k) = keepalive {
            k.apply(&sock).map_err(|e| err(format!("keepalive: {e}")))?;
        }
        crate::tos::set(&sock, tos).map_err(|e| err(format!("type of service: {e}")))?;
        // A second handle on the socket, for options after it is split (see `kill`).
        let ctl = sock
            .into_std()
            .and_then(|s| Ok((s.try_clone()?, s)))
            .and_then(|(ctl, s)| Ok((ctl, TcpStream::from_std(s)?)));
        let (ctl, sock) = ctl.map_err(|e| err(e.to_string()))?;
        // The reader's own handle, to close the socket when it stops on its own.
        let end = ctl.try_clone().map_err(|e| err(e.to_string()))?;
        let (mut rd, wr) = sock.into_split();
        let pending: Pending = Arc::new(Shared {
            waiting: Mutex::new(Waiting {
                map: FxHashMap::default(),
                earliest: NEVER,
            }),
            alive: AtomicBool::new(true),
            pushes: AtomicU64::new(0),
        });
        let (closed_tx, closed_rx) = oneshot::channel::<()>();
        // Reader: route replies by trans.
        let guard = ReaderGuard {
            pending: pending.clone(),
        };
        let p2 = pending.clone();
        // The reader answers requests through the connection it is part of, which exists
        // only once it is spawned: it gets its handle first.
        let (me_tx, me_rx) = oneshot::channel::<std::sync::Weak<Conn>>();
        let unasked_max =
            (serve.as_ref()).map_or(MAX_PUSH_BYTES, |s| s.max_request_bytes.max(MAX_PUSH_BYTES));
        let reader = tokio::spawn(async move {
            let _guard = guard;
            let me = me_rx.await.ok();
            let mut buf = BytesMut::with_capacity(apsis_proto::READ_BUF);
            // What `Serve::admit` granted for the request arriving at the head of `buf`.
            let mut admitted: Option<Admitted> = None;
            'outer: loop {
                loop {
                    match check_frame(&buf, MAX_REPLY_BYTES) {
                        Ok(Some(n)) => {
                            // The frame keeps its part of the read buffer: its payload
                            // reaches the request without a copy.
                            let Ok(frame) = Frame::from_bytes(buf.split_to(n).freeze()) else {
                                break 'outer;
                            };
                            let h = frame.header;
                            let held = admitted.take();
                            if !h.is_reply() {
                                if h.cmd == cmd::UPDATE_IDS {
                                    // Counted first: a handshake that reads the count
                                    // after this push took effect sees it changed.
                                    p2.pushes.fetch_add(1, SeqCst);
                                    on_push(&frame);
                                } else if let Some(serve) = &serve {
                                    if let Some(c) = me.as_ref().and_then(|w| w.upgrade()) {
                                        (serve.handler)(frame, Peer(c), held);
                                    }
                                }
                                continue;
                            }
                            if h.has_more() {
                                if let Some(s) = p2.waiting.lock().map.get(&h.trans) {
                                    s.push(frame);
                                }
                            } else {
                                // Out of the map first, then woken once (outside the lock).
                                let done = p2.waiting.lock().map.remove(&h.trans);
                                if let Some(s) = done {
                                    s.finish(frame);
                                }
                            }
                        }
                        Ok(None) => {
                            if let Some(total) = pending_frame_len(&buf) {
                                let request = total > apsis_proto::READ_BUF
                                    && Header::decode(&buf).is_ok_and(|h| !h.is_reply());
                                // Only replies may be as large as a READ's answer.
                                if request && total as u64 > unasked_max + HEADER_SIZE as u64 {
                                    break 'outer;
                                }
                                if let Some(admit) = serve.as_ref().and_then(|s| s.admit.as_ref()) {
                                    if request && admitted.is_none() {
                                        admitted = Some(admit(total).await);
                                    }
                                }
                                buf.reserve(total.saturating_sub(buf.len()));
                            }
                            break;
                        }
                        Err(_) => break 'outer,
                    }
                }
                // Room is made at every poll, not once before waiting: when the reply
                // arrives, the caller has usually dropped the previous one, and the buffer
                // can go back to its start (see `make_read_room`).
                let read = std::future::poll_fn(|cx| {
                    make_read_room(&mut buf);
                    std::pin::pin!(rd.read_buf(&mut buf)).poll(cx)
                });
                match read.await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            // Closed by the node, or a frame we cannot take: the socket closes both ways now,
            // not when the last handle on the connection goes (the node would otherwise
            // wait on a connection nobody reads).
            let _ = end.shutdown(std::net::Shutdown::Both);
            drop(closed_tx);
        });
        let conn = Arc::new(Conn {
            addr,
            wr: tokio::sync::Mutex::new(Writer {
                half: wr,
                buf: Vec::new(),
                torn: false,
            }),
            pending,
            closed: Mutex::new(Some(closed_rx)),
            stalls: AtomicU32::new(0),
            trans: AtomicU64::new(0),
            handshake_lock: tokio::sync::Mutex::new(()),
            reader: reader.abort_handle(),
            ctl,
            clock: clock.clone(),
        });
        let _ = me_tx.send(Arc::downgrade(&conn));
        clock.watch(&conn);
        Ok(conn)
    }

    /// A new transaction number for a request on this connection (the first is 1; 0 is the
    /// handshake's).
    pub fn next_trans(&self) -> u64 {
        self.trans.fetch_add(1, Relaxed) + 1
    }

    /// UPDATE_IDS pushes received so far, counted in stream order by the reader before each
    /// takes effect.
    pub fn pushes(&self) -> u64 {
        self.pending.pushes.load(SeqCst)
    }

    pub fn is_alive(&self) -> bool {
        self.pending.alive.load(Relaxed)
    }

    /// Counts a request that timed out; returns how many did in a row.
    pub fn note_timeout(&self) -> u32 {
        self.stalls.fetch_add(1, Relaxed) + 1
    }

    /// A reply arrived: the stall count starts over.
    pub fn note_reply(&self) {
        if self.stalls.load(Relaxed) != 0 {
            self.stalls.store(0, Relaxed);
        }
    }

    /// Gives up on the connection: waiting requests fail, the push channel closes, and what
    /// was written but not yet sent is discarded. A request given up on must not reach the
    /// node later: a WRITE stuck behind a network partition would otherwise be delivered when
    /// the partition heals, over whatever was written since. Closing with SO_LINGER 0 resets
    /// the connection instead of sending the queue.
    pub fn kill(&self) {
        self.pending.alive.store(false, Relaxed);
        let _ = socket2::SockRef::from(&self.ctl).set_linger(Some(std::time::Duration::ZERO));
        self.reader.abort();
    }

    /// Sends a request (as `h.trans`) and returns the queue its replies arrive on; with a
    /// `timeout`, the queue ends in a timeout when the final reply is not in by then.
    /// `trans` 0 (handshake) is keyed as 0.
    pub async fn send(
        &self,
        h: &Header,
        payload: &[u8],
        timeout: Option<std::time::Duration>,
    ) -> Result<Replies> {
        self.send_parts(h, h.trans, &[payload], timeout).await
    }

    /// [`Conn::send`] as `trans`, with the payload in parts (an io_attr and the data behind
    /// it), so the caller need not copy them together first. A frame under 64 KiB is
    /// assembled once and written with one system call; a larger one writes its parts as
    /// they are. The header is borrowed: a request's future holds it once, however many
    /// layers pass it down.
    pub fn send_parts<'a>(
        &'a self,
        h: &'a Header,
        trans: u64,
        parts: &'a [&'a [u8]],
        timeout: Option<std::time::Duration>,
    ) -> impl Future<Output = Result<Replies>> + Send + 'a {
        // Registered before the first await: the future holds the queue, not the setup's
        // arguments (it is moved as a whole into the request's future).
        let replies = self.register(trans, timeout);
        async move {
            let replies = replies?;
            if !self.write_frame(h, trans, parts).await? {
                // Dropping `replies` forgets the request.
                self.pending.alive.store(false, Relaxed);
                return Err(self.closed());
            }
            Ok(replies)
        }
    }

    /// Sends a request that gets no reply (JOIN), as `h.trans`: nothing is registered or
    /// waited for.
    pub async fn send_unanswered(&self, h: &Header, payload: &[u8]) -> Result<()> {
        if !self.is_alive() {
            return Err(self.closed());
        }
        if self.write_frame(h, h.trans, &[payload]).await? {
            Ok(())
        } else {
            self.pending.alive.store(false, Relaxed);
            Err(self.closed())
        }
    }

    /// Puts a request in the map of waiting ones, with its deadline.
    fn register(&self, trans: u64, timeout: Option<std::time::Duration>) -> Result<Replies> {
        if !self.is_alive() {
            return Err(self.closed());
        }
        let q = Arc::new(Mutex::new(ReplyQueue::default()));
        let deadline = timeout.map_or(NEVER, |t| self.clock.deadline(t));
        {
            let mut p = self.pending.waiting.lock();
            p.map.insert(
                trans,
                ReplyTx {
                    q: q.clone(),
                    deadline,
                },
            );
            p.earliest = p.earliest.min(deadline);
        }
        if deadline != NEVER {
            self.clock.note_waiting();
        }
        Ok(Replies {
            q,
            taken: VecDeque::new(),
            pending: self.pending.clone(),
            trans,
        })
    }

    /// Writes one frame under the writer's lock; `false` when the socket failed.
    async fn write_frame(&self, h: &Header, trans: u64, parts: &[&[u8]]) -> Result<bool> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let small = len < 64 << 10;
        let mut w = match self.wr.try_lock() {
            Ok(w) => w,
            // Boxed: the lock's future is 120 bytes, and contention is the rare case.
            Err(_) => Box::pin(self.wr.lock()).await,
        };
        let Writer { half, buf, torn } = &mut *w;
        if *torn {
            // A request was cancelled in the middle of its frame: the stream is unusable.
            drop(w);
            self.kill();
            return Err(self.closed());
        }
        buf.clear();
        {
            // In a block: a borrowed local would stay in the future's state across the
            // awaits below until the end of its scope.
            let mut h = *h;
            h.trans = trans;
            h.size = len as u64;
            h.encode_into(buf);
        }
        if small {
            for p in parts {
                buf.extend_from_slice(p);
            }
        }
        *torn = true;
        let mut ok = half.write_all(buf).await.is_ok();
        if !small {
            for p in parts {
                ok = ok && half.write_all(p).await.is_ok();
            }
        }
        *torn = false;
        if buf.capacity() > 256 << 10 {
            *buf = Vec::new();
        }
        Ok(ok)
    }

    /// Writes frames already encoded, whole, under the writer's lock (see
    /// [`Peer::send_encoded`]).
    async fn write_encoded(&self, parts: &[&[u8]]) -> bool {
        let mut w = self.wr.lock().await;
        let Writer { half, torn, .. } = &mut *w;
        if *torn {
            drop(w);
            self.kill();
            return false;
        }
        *torn = true;
        let mut ok = true;
        for p in parts {
            ok = ok && half.write_all(p).await.is_ok();
        }
        *torn = false;
        ok
    }

    /// The sweeper's tick `now`: ends the requests whose deadline has come. Returns whether
    /// requests with a deadline may still be waiting.
    pub(crate) fn expire(&self, now: u64) -> bool {
        let mut due = Vec::new();
        let waiting = {
            let mut p = self.pending.waiting.lock();
            if p.earliest <= now {
                let keys: Vec<u64> = (p.map.iter())
                    .filter(|(_, tx)| tx.deadline <= now)
                    .map(|(&k, _)| k)
                    .collect();
                due.extend(keys.iter().filter_map(|k| p.map.remove(k)));
                p.earliest = p.map.values().map(|tx| tx.deadline).min().unwrap_or(NEVER);
            }
            if p.map.is_empty() {
                p.earliest = NEVER;
            }
            p.earliest != NEVER
        };
        // Woken outside the lock.
        for tx in due {
            tx.time_out();
        }
        waiting
    }

    pub fn closed(&self) -> ClientError {
        ClientError::Connection {
            addr: self.addr.to_string(),
            msg: "connection closed".into(),
        }
    }
}
