//! One client or peer connection: a reader that checks and splits frames and answers quick
//! commands itself, a task per longer request, and a writer that batches replies.
//!
//! A frame larger than `max_frame_bytes` (or a REVERSE_LOOKUP from an incompatible version, or
//! a bad JOIN) closes this connection only. Requests in flight per connection are bounded by
//! `max_inflight_per_connection`; when the bound is hit the reader stops reading (back-pressure)
//! rather than queueing without limit. A large frame waits, unread, for room in the node's
//! [`crate::frames`] budget, and one that stops arriving half-way closes its connection.
//!
//! A connection stops when the node does through a [`StopSignal`] of its own ([`ConnStops`]).

use crate::cmd::Origin;
use crate::reply::{ConnWriter, Msg, Sink};
use crate::Ctx;
use apsis_proto::{check_frame, cmd, make_read_room, pending_frame_len, Header, HEADER_SIZE};
use bytes::{Buf, BytesMut};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// What the reader does after an inline command.
pub enum Inline {
    Continue,
    Close,
}

pub async fn serve(ctx: Arc<Ctx>, sock: TcpStream, peer: SocketAddr, conn_id: u64) {
    let _ = sock.set_nodelay(true);
    // A client that vanishes without closing is dropped within the keepalive's limit,
    // instead of holding its connection (and a `max_connections` place) for ever.
    if let Some(k) = ctx.cfg.keepalive {
        if let Err(e) = k.apply(&sock) {
            tracing::debug!(%peer, error = %e, "keepalive not set");
        }
    }
    if let Err(e) = apsis_client::tos::set(&sock, ctx.cfg.client_net_prio) {
        tracing::debug!(%peer, error = %e, "type of service not set");
    }
    let local = sock.local_addr().ok();
    let (mut rd, wr) = sock.into_split();
    let cw = Arc::new(ConnWriter::new(wr, ctx.clone()));
    let (tx, rx) = mpsc::channel::<Msg>(1024);
    let writer = tokio::spawn(write_loop(cw.clone(), rx));
    // Quick requests are answered inline by this task: no task spawn and no hand-off to the
    // writer, the way a single-threaded server answers. A mutation on a `sync = 0` backend is
    // inline too; its reply is held for the group commit and sent after it, not waited for
    // here (see `reply`).
    let inflight = Arc::new(Semaphore::new(ctx.cfg.max_inflight_per_connection.max(1)));
    // The connection's own stop signal, polled with every read.
    let mut stop = ctx.conn_stops.signal(conn_id);
    let mut buf = BytesMut::with_capacity(apsis_proto::READ_BUF);
    let max = ctx.cfg.max_frame_bytes;
    // The budget held for the large frame arriving at the head of `buf` (see `frames`).
    let mut admitted: Option<OwnedSemaphorePermit> = None;
    // Closes the connection when a frame begun stops arriving: armed while `buf` holds part
    // of a frame (never polled otherwise), and armed afresh each time FRAME_PROGRESS more
    // bytes have come (`progress`), so a sender trickling a byte now and then is closed too.
    let mut stall = std::pin::pin!(tokio::time::sleep_until(tokio::time::Instant::now()));
    let mut armed = false;
    let mut progress = 0usize;
    'conn: loop {
        loop {
            match check_frame(&buf, max) {
                Ok(Some(n)) => {
                    // Held until the frame has been handled (inline below, or by its task).
                    let held = admitted.take();
                    ctx.stats.add_bytes_in(n as u64);
                    let hdr = match Header::decode(&buf[..n]) {
                        Ok(h) => h,
                        Err(_) => break 'conn,
                    };
                    if hdr.is_reply() {
                        // Replies come back on the connections this node opened (its
                        // cluster client), never on accepted ones: drop.
                        buf.advance(n);
                        continue;
                    }
                    // Inline commands read their payload where it lies in `buf` (advanced
                    // past the frame once they are done); a request given a task of its own
                    // takes the frame out of `buf`.
                    let payload = &buf[HEADER_SIZE..n];
                    match hdr.cmd {
                        cmd::REVERSE_LOOKUP | cmd::JOIN | cmd::UPDATE_IDS => {
                            let r =
                                crate::cmd::system::inline(&ctx, hdr, payload, &tx, conn_id, local)
                                    .await;
                            buf.advance(n);
                            match r {
                                Inline::Continue => {
                                    // A peer that joined is a node: its connection's packets
                                    // take the nodes' type of service from now on.
                                    if hdr.cmd == cmd::JOIN
                                        && ctx.joined.lock().contains_key(&conn_id)
                                    {
                                        let tos = ctx.cfg.server_net_prio;
                                        if let Err(e) = apsis_client::tos::set(rd.as_ref(), tos) {
                                            tracing::debug!(%peer, error = %e, "type of service not set");
                                        }
                                    }
                                    continue;
                                }
                                Inline::Close => break 'conn,
                            }
                        }
                        _ => {}
                    }
                    if inline_ok(hdr.cmd) {
                        let sink = Sink::Direct(std::borrow::Cow::Borrowed(&cw));
                        crate::cmd::dispatch(&ctx, hdr, payload, sink, Origin::Accepted(conn_id))
                            .await;
                        buf.advance(n);
                        continue;
                    }
                    let payload = buf.split_to(n).freeze().slice(HEADER_SIZE..);
                    let permit = match inflight.clone().acquire_owned().await {
                        Ok(p) => p,
                        Err(_) => break 'conn,
                    };
                    let ctx2 = ctx.clone();
                    let tx2 = tx.clone();
                    tokio::spawn(async move {
                        crate::cmd::dispatch(
                            &ctx2,
                            hdr,
                            payload,
                            Sink::Chan(tx2),
                            Origin::Accepted(conn_id),
                        )
                        .await;
                        drop((permit, held));
                    });
                }
                Ok(None) => {
                    if let Some(total) = pending_frame_len(&buf) {
                        if admitted.is_none() {
                            if let Some(units) = ctx.frame_memory.cost(total) {
                                admitted = match ctx.frame_memory.try_admit(units) {
                                    Some(p) => Some(p),
                                    None => {
                                        // Replies already made go out first; then this
                                        // connection is not read until there is room.
                                        if !cw.flush().await {
                                            break 'conn;
                                        }
                                        tokio::select! {
                                            biased;
                                            _ = &mut stop => break 'conn,
                                            p = ctx.frame_memory.admit(units) => Some(p),
                                        }
                                    }
                                };
                                // The wait was the node's: the sender's time starts now.
                                armed = false;
                            }
                        }
                        buf.reserve(total.saturating_sub(buf.len()));
                    }
                    break;
                }
                Err(e) => {
                    ctx.stats.frames_rejected.fetch_add(1, Relaxed);
                    tracing::warn!(%peer, error = %e, "closing connection: bad frame");
                    break 'conn;
                }
            }
        }
        // Written with other connections' replies when this worker thread runs out of tasks
        // (see `batch`); on a thread without the park hook, by this reader when it is the
        // batch's flusher.
        if let Some(queue) = crate::batch::defer(&cw) {
            tokio::task::yield_now().await;
            crate::batch::flush(&queue);
        }
        if buf.is_empty() {
            armed = false;
        } else if !armed {
            if let Some(t) = ctx.cfg.frame_timeout {
                stall.as_mut().reset(tokio::time::Instant::now() + t);
                (armed, progress) = (true, 0);
            }
        }
        let buffered = buf.len();
        // Room is made at every poll: a request answered inline has dropped its frame by
        // then, and the buffer goes back to its start (see `make_read_room`).
        let read = std::future::poll_fn(|cx| {
            make_read_room(&mut buf);
            std::pin::pin!(rd.read_buf(&mut buf)).poll(cx)
        });
        // In order (shutdown first), not in the random order that costs a random number per
        // read.
        tokio::select! {
            biased;
            _ = &mut stop => break 'conn,
            r = read => match r {
                Ok(0) | Err(_) => break 'conn,
                Ok(n) => {
                    progress += n;
                    if progress >= FRAME_PROGRESS {
                        armed = false;
                    }
                }
            },
            _ = &mut stall, if armed => {
                ctx.frame_memory.stalled.fetch_add(1, Relaxed);
                tracing::warn!(%peer, buffered, "closing connection: a frame stopped arriving");
                break 'conn;
            }
        }
    }
    drop(admitted);
    drop(stop);
    ctx.peers.lock().remove(&conn_id);
    ctx.joined.lock().remove(&conn_id);
    // Replies waiting for a group commit go out before the socket closes.
    cw.drain_deferred().await;
    drop(tx);
    // Let the requests in flight finish and their replies drain before closing.
    let _ = inflight
        .acquire_many(ctx.cfg.max_inflight_per_connection.max(1) as u32)
        .await;
    let _ = writer.await;
    ctx.stats.connections_open.fetch_sub(1, Relaxed);
    tracing::debug!(%peer, "connection closed");
}

/// What a frame being received must bring within each `frame_timeout` (or be whole): 64 KiB,
/// about 1 KiB/s at the default 60 s, as web servers ask a request body for a minimum rate.
const FRAME_PROGRESS: usize = 64 << 10;

/// Whether a command is answered inline by the reader: quick commands that never wait for
/// a defrag, a long stream or another node (a `sync = 0` fsync is waited for elsewhere).
fn inline_ok(c: i32) -> bool {
    matches!(
        c,
        cmd::READ
            | cmd::LOOKUP
            | cmd::WRITE
            | cmd::DEL
            | cmd::ROUTE_LIST
            | cmd::BACKEND_STATUS
            | cmd::AUTH
    )
}

async fn write_loop(cw: Arc<ConnWriter>, mut rx: mpsc::Receiver<Msg>) {
    let mut batch: Vec<u8> = Vec::with_capacity(64 << 10);
    while let Some(first) = rx.recv().await {
        let mut pending = vec![first];
        while let Ok(m) = rx.try_recv() {
            pending.push(m);
            if pending.len() >= 256 {
                break;
            }
        }
        for m in pending {
            let (head, data): (&[u8], &[u8]) = match &m {
                Msg::Frame(f) => (f, &[]),
                Msg::Shared(h, d) => (h, d),
            };
            if head.len() + data.len() >= 32 << 10 {
                // Large: what is batched first, then this frame from its own parts.
                if !batch.is_empty() {
                    if !cw.write_parts(&[&batch]).await {
                        return;
                    }
                    batch.clear();
                }
                if !cw.write_parts(&[head, data]).await {
                    return;
                }
            } else {
                batch.extend_from_slice(head);
                batch.extend_from_slice(data);
            }
        }
        if !batch.is_empty() {
            if !cw.write_parts(&[&batch]).await {
                return;
            }
            batch.clear();
            if batch.capacity() > 1 << 20 {
                batch = Vec::with_capacity(64 << 10);
            }
        }
    }
    cw.shutdown().await;
}

/// The connections' stop signals, fired by [`Ctx::request_shutdown`]. A connection polls its
/// [`StopSignal`] with every read; after its first poll that is one load of a flag no one
/// writes until the node stops. (A wait on the shared shutdown watch took a lock every
/// connection shares at each poll: 2 % of a node's time under 1 KiB GETs.)
///
/// On cache lines of its own: the flag is read at every poll, and the counters around it in
/// [`Ctx`] are written at every request.
#[derive(Default)]
#[repr(align(128))]
pub struct ConnStops {
    stopping: AtomicBool,
    /// The waiting connections' wakers; `stopping` is set under this lock too.
    wakers: parking_lot::Mutex<HashMap<u64, Waker>>,
}

impl ConnStops {
    /// Connection `id`'s stop signal; ready once the node is stopping. It must be polled
    /// from the connection's own task (the waker it registers first is kept).
    pub fn signal(&self, id: u64) -> StopSignal<'_> {
        StopSignal {
            stops: self,
            id,
            registered: false,
        }
    }

    /// Fires every signal ([`Ctx::request_shutdown`]).
    pub(crate) fn stop_all(&self) {
        let wakers = {
            let mut w = self.wakers.lock();
            self.stopping.store(true, Release);
            std::mem::take(&mut *w)
        };
        wakers.into_values().for_each(Waker::wake);
    }
}

/// See [`ConnStops::signal`].
pub struct StopSignal<'a> {
    stops: &'a ConnStops,
    id: u64,
    registered: bool,
}

impl Future for StopSignal<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.stops.stopping.load(Acquire) {
            return Poll::Ready(());
        }
        if !self.registered {
            let mut w = self.stops.wakers.lock();
            // Checked again under the lock `stop_all` sets it under: no wake-up is missed.
            if self.stops.stopping.load(Acquire) {
                return Poll::Ready(());
            }
            w.insert(self.id, cx.waker().clone());
            drop(w);
            self.registered = true;
        }
        Poll::Pending
    }
}

impl Drop for StopSignal<'_> {
    fn drop(&mut self) {
        if self.registered {
            self.stops.wakers.lock().remove(&self.id);
        }
    }
}

/// Serves the requests a peer sends on a connection this node opened: Elliptics routes to a
/// node that joined it over the joining connection (a ROUTE_LIST every `check_timeout`, and
/// the data requests it forwards). Each is served as on an accepted connection, in a task of
/// its own, and its replies are written back on that connection (a JOIN there is ignored).
/// At most `max_inflight_per_connection` run at once, node-wide; a request beyond that is
/// answered −EBUSY. A large one waits for the node's frame budget before it is read.
pub(crate) fn peer_requests(
    ctx: std::sync::Weak<Ctx>,
    limit: usize,
    max_request_bytes: u64,
) -> apsis_client::conn::Serve {
    let running = Arc::new(Semaphore::new(limit.max(1)));
    // A large request takes its part of the node's frame budget before it is read, as on an
    // accepted connection (see `frames`).
    let budget = ctx.clone();
    let admit: apsis_client::conn::Admit = Arc::new(move |total: usize| {
        let ctx = budget.upgrade();
        Box::pin(async move {
            let granted: apsis_client::conn::Admitted = match ctx {
                Some(ctx) => Box::new(ctx.frame_memory.admit_frame(total).await),
                None => Box::new(()),
            };
            granted
        })
    });
    let handler = Arc::new(
        move |frame: apsis_proto::Frame,
              peer: apsis_client::conn::Peer,
              held: Option<apsis_client::conn::Admitted>| {
            let Some(ctx) = ctx.upgrade() else {
                return;
            };
            let hdr = frame.header;
            if hdr.cmd == cmd::JOIN {
                // A JOIN belongs on a connection the peer opened.
                tracing::debug!(peer = %peer.addr(), "JOIN ignored on an outgoing connection");
                return;
            }
            ctx.stats
                .add_bytes_in((HEADER_SIZE + frame.payload.len()) as u64);
            let permit = running.clone().try_acquire_owned().ok();
            let from = Origin::Opened(peer.addr());
            let kill = peer.clone();
            tokio::spawn(async move {
                let (tx, mut rx) = mpsc::channel::<Msg>(64);
                let serve = async move {
                    match permit {
                        // A handshake (a peer refreshing what it knows of us): answered as
                        // on an accepted connection; a wrong version ends the connection.
                        Some(_running) if hdr.cmd == cmd::REVERSE_LOOKUP => {
                            let out = crate::reply::Out::new(tx, hdr);
                            if !crate::cmd::system::reverse_lookup(&ctx, &out).await {
                                kill.kill();
                            }
                        }
                        Some(_running) => {
                            crate::cmd::dispatch(&ctx, hdr, frame.payload, Sink::Chan(tx), from)
                                .await
                        }
                        None => {
                            crate::reply::Out::new(tx, hdr)
                                .finish(-apsis_proto::errno::EBUSY)
                                .await
                        }
                    }
                };
                let write = async {
                    while let Some(m) = rx.recv().await {
                        let ok = match &m {
                            Msg::Frame(f) => peer.send_encoded(&[f]).await,
                            Msg::Shared(h, d) => peer.send_encoded(&[h, d]).await,
                        };
                        if !ok {
                            break;
                        }
                    }
                };
                tokio::join!(serve, write);
                drop(held);
            });
        },
    );
    apsis_client::conn::Serve {
        handler,
        max_request_bytes,
        admit: Some(admit),
    }
}
