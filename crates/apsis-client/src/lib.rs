//! Async client for Apsis (and Elliptics 3.0) nodes, with the Elliptics session model.
//!
//! A [`Client`] (Elliptics' "node") connects to its remotes with the REVERSE_LOOKUP handshake,
//! learns every node's backends and ring ids, and keeps a route table per group. It keeps the
//! table current: UPDATE_IDS pushes apply at once, in order with the replies on their
//! connection (a refresh's older answer never undoes one); every `check_timeout` it
//! re-handshakes the nodes it knows, follows their ROUTE_LISTs to new ones and reconnects to
//! lost ones (a node that comes back rejoins by itself); a node whose connection closes, or
//! that stalls (`stall_count` timeouts in a row, then a failed ping), leaves the table, so its
//! ranges pass to its ring neighbours. A storage node embeds a `Client` as its view of the
//! cluster (with `join` set, it also sends JOIN to the nodes it connects to). A [`Session`]
//! carries the request settings (groups, cflags, ioflags, namespace, user_flags, timestamp,
//! timeout, checker) and offers one function per operation. Requests to one node are
//! multiplexed on one connection by transaction number; objects larger than the session's
//! chunk size are written with PREPARE / PLAIN_WRITE / COMMIT and read in ranges.
//!
//! # Layout
//! - [`error`]: [`ClientError`] with its errno.
//! - [`conn`]: one connection: writer queue, reply routing by `trans`, timeouts.
//! - [`clock`]: the coarse clock request deadlines count on, and its sweeper.
//! - [`keepalive`]: TCP keepalive on every connection, so a vanished peer is noticed.
//! - [`tos`]: the IP type of service of a connection's packets.
//! - [`routes`]: the per-group route table and owner lookup (from `apsis-ring`).
//! - [`session`]: [`Session`] and the operations; [`Checker`]; result types.

pub mod clock;
pub mod conn;
pub mod error;
pub mod keepalive;
pub mod routes;
pub mod session;
pub mod tos;

/// A connected loopback socket (and its listener, kept open), for tests of socket options.
#[cfg(test)]
pub(crate) async fn loopback_socket() -> (tokio::net::TcpListener, tokio::net::TcpStream) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let c = tokio::net::TcpStream::connect(l.local_addr().unwrap())
        .await
        .unwrap();
    (l, c)
}

pub use error::{ClientError, Result};
pub use keepalive::Keepalive;
pub use session::{
    Checker, GroupResult, IterItem, IterOptions, JobStream, RangeOptions, RangeReply, ReadResult,
    Session, WriteResult,
};

use apsis_proto::{cflags, cmd, Addr, Header, NodeInfo, RouteList, VERSION};
use clock::Clock;
use conn::Conn;
use parking_lot::{Mutex, RwLock};
use routes::RouteTable;
use rustc_hash::FxHashMap;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// What a node tells the node at an address it connects to (JOIN): its current addresses and
/// backends; `None` to connect without joining (a node that joined us routes to us over its
/// own connection already, and Elliptics refuses a second one with −EEXIST).
pub type JoinInfo = Arc<dyn Fn(SocketAddr) -> Option<NodeInfo> + Send + Sync>;

/// Client-wide settings.
#[derive(Clone)]
pub struct ClientOptions {
    /// Connect and handshake timeout; also the ping timeout of a stalled connection.
    pub connect_timeout: Duration,
    /// Follow ROUTE_LIST to nodes the remotes know about.
    pub discover: bool,
    /// How often the route table is refreshed and lost nodes are retried (Elliptics
    /// `check_timeout`); zero turns the refresh off.
    pub check_timeout: Duration,
    /// Timeouts in a row after which a node is pinged, and dropped if the ping fails too.
    pub stall_count: u32,
    /// This process's own addresses (a node's): never connected to.
    pub local: Vec<SocketAddr>,
    /// Set by a node: sent as JOIN after each handshake, so peers route to it.
    pub join: Option<JoinInfo>,
    /// With `join`: the cookie sent as AUTH after JOIN (Elliptics' `auth_cookie`, at most 31
    /// bytes used); a node that answers −EPERM is not connected to.
    pub auth_cookie: String,
    /// TCP keepalive on every connection ([`Keepalive::ELLIPTICS`] by default): an idle
    /// connection to a node that vanished ends, and the node leaves the route table, within
    /// [`Keepalive::limit`]. `None` leaves the system's setting (off).
    pub keepalive: Option<Keepalive>,
    /// Set by a node: answers the requests peers send on the connections it opened (see
    /// [`conn::Serve`]); without it they are dropped.
    pub serve: Option<conn::Serve>,
    /// The IP type of service of every connection's packets ([`tos`]; a node's
    /// `server_net_prio`); 0 leaves the system's.
    pub tos: u32,
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("connect_timeout", &self.connect_timeout)
            .field("discover", &self.discover)
            .field("check_timeout", &self.check_timeout)
            .field("stall_count", &self.stall_count)
            .field("local", &self.local)
            .field("join", &self.join.is_some())
            .field("auth_cookie", &!self.auth_cookie.is_empty())
            .field("keepalive", &self.keepalive)
            .field("serve", &self.serve.is_some())
            .field("tos", &self.tos)
            .finish()
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(5),
            discover: true,
            check_timeout: Duration::from_secs(60),
            stall_count: 3,
            local: Vec::new(),
            join: None,
            auth_cookie: String::new(),
            keepalive: Some(Keepalive::ELLIPTICS),
            serve: None,
            tos: 0,
        }
    }
}

/// Connections to the nodes and the route table built from their handshakes.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    opts: ClientOptions,
    /// Looked up on every request: Fx hashing (the addresses come from our own route table).
    conns: Mutex<FxHashMap<SocketAddr, Arc<Conn>>>,
    routes: RwLock<RouteTable>,
    /// Every node address learned (remotes, route lists, joins): the refresh retries these.
    known: Mutex<BTreeSet<SocketAddr>>,
    /// Each connected node's advertised addresses (a node lists them in its ROUTE_LIST).
    infos: Mutex<HashMap<SocketAddr, Vec<Addr>>>,
    /// One lock per node being connected to, so concurrent requests do not connect twice
    /// and a slow node does not hold up the others.
    connecting: Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<()>>>>,
    /// Request deadlines.
    clock: Arc<Clock>,
}

impl Client {
    /// A client that knows no node yet; [`Client::add_remotes`] adds them. Starts the
    /// periodic refresh and the request-deadline sweeper ([`clock`]), tokio tasks that stop
    /// when the last `Client` clone (and connection) is dropped: call it inside a runtime.
    pub fn new(opts: ClientOptions) -> Client {
        let c = Client {
            inner: Arc::new(Inner {
                opts,
                conns: Mutex::new(FxHashMap::default()),
                routes: RwLock::new(RouteTable::default()),
                known: Mutex::new(BTreeSet::new()),
                infos: Mutex::new(HashMap::new()),
                connecting: Mutex::new(HashMap::new()),
                clock: Clock::start(),
            }),
        };
        let period = c.inner.opts.check_timeout;
        if !period.is_zero() {
            let weak = Arc::downgrade(&c.inner);
            tokio::spawn(refresh_loop(weak, period));
        }
        c
    }

    /// Connects to `remotes` (at least one must answer) and learns the routes.
    pub async fn connect(remotes: &[SocketAddr], opts: ClientOptions) -> Result<Client> {
        let c = Client::new(opts);
        c.add_remotes(remotes).await?;
        Ok(c)
    }

    /// Connects to `remotes` and the nodes their route lists name; they are remembered and
    /// retried by the refresh when unreachable. Fails only if none answered.
    pub async fn add_remotes(&self, remotes: &[SocketAddr]) -> Result<()> {
        let mut last_err = None;
        let mut ok = 0;
        for a in remotes {
            if self.is_local(*a) {
                continue;
            }
            self.inner.known.lock().insert(*a);
            match self.add_node(*a, true).await {
                Ok(()) => ok += 1,
                Err(e) => {
                    tracing::warn!(addr = %a, error = %e, "remote unreachable");
                    last_err = Some(e);
                }
            }
        }
        if ok == 0 {
            if let Some(e) = last_err {
                return Err(e);
            }
        }
        Ok(())
    }

    fn is_local(&self, a: SocketAddr) -> bool {
        self.inner.opts.local.contains(&a)
    }

    /// The handshake on `conn`: REVERSE_LOOKUP, answered with the node's addresses and
    /// backends.
    async fn handshake(&self, conn: &Conn) -> Result<NodeInfo> {
        let timeout = self.inner.opts.connect_timeout;
        let _one = conn.handshake_lock.lock().await;
        let mut h = Header::new(cmd::REVERSE_LOOKUP, cflags::DIRECT | cflags::NOLOCK);
        h.set_version(VERSION);
        h.trans = 0;
        let rx = conn.send(&h, &[], Some(timeout)).await?;
        let frames = rx.all(conn).await?;
        let f = frames
            .last()
            .ok_or_else(|| ClientError::Protocol("empty handshake".into()))?;
        if f.header.status != 0 {
            return Err(ClientError::Status {
                status: f.header.status,
            });
        }
        if !Header::version_compatible(f.header.version()) {
            return Err(ClientError::Protocol(format!(
                "server version {:?}",
                f.header.version()
            )));
        }
        let info =
            NodeInfo::decode(&f.payload).map_err(|e| ClientError::Protocol(e.to_string()))?;
        if info
            .addrs
            .iter()
            .any(|a| a.0.ip().is_unspecified() && a.0.port() == 0)
        {
            return Err(ClientError::Protocol(
                "all-zero address in handshake".into(),
            ));
        }
        conn.note_reply();
        Ok(info)
    }

    /// Connects to one node: REVERSE_LOOKUP, JOIN when this client is a node, then (with
    /// `discover`) ROUTE_LIST and the nodes it lists.
    async fn add_node(&self, addr: SocketAddr, discover: bool) -> Result<()> {
        if self.is_local(addr) {
            return Ok(());
        }
        {
            let lock = self
                .inner
                .connecting
                .lock()
                .entry(addr)
                .or_default()
                .clone();
            let _one = lock.lock().await;
            let live = self
                .inner
                .conns
                .lock()
                .get(&addr)
                .is_some_and(|c| c.is_alive());
            if !live {
                self.open(addr).await?;
            }
        }
        if discover && self.inner.opts.discover {
            self.discover(addr).await?;
        }
        Ok(())
    }

    async fn open(&self, addr: SocketAddr) -> Result<()> {
        // Route pushes (UPDATE_IDS) update the table from the connection's reader, in order
        // with the replies.
        let weak = Arc::downgrade(&self.inner);
        let on_push: conn::OnPush = Box::new(move |f| {
            let mut r = apsis_proto::wire::Reader::new(&f.payload, "update ids");
            if let (Ok(b), Some(inner)) = (apsis_proto::decode_backends(&mut r), weak.upgrade()) {
                inner.routes.write().update(addr, &b);
            }
        });
        let conn = Conn::connect(
            addr,
            self.inner.opts.connect_timeout,
            &self.inner.clock,
            self.inner.opts.keepalive,
            self.inner.opts.tos,
            on_push,
            self.inner.opts.serve.clone(),
        )
        .await?;
        let info = self.handshake_routes(addr, &conn).await?;
        if let Some(me) = self.inner.opts.join.as_ref().and_then(|join| join(addr)) {
            // JOIN has no reply, and takes no transaction: trans 0, as Elliptics sends it
            // (capture 14).
            let h = Header::new(cmd::JOIN, cflags::DIRECT | cflags::NOLOCK);
            let joined = match conn.send_unanswered(&h, &me.encode()).await {
                // Then AUTH with our cookie, as Elliptics' joining nodes do: a node whose
                // cookie differs answers −EPERM, and we (the sender: the acceptor never
                // requires it) give the connection up, so nodes of different clusters do not
                // join each other.
                Ok(()) => self.auth(&conn).await,
                Err(e) => Err(e),
            };
            if let Err(e) = joined {
                // The handshake routed to the node; without its connection it must not stay
                // routed.
                self.inner.routes.write().remove_node(addr);
                conn.kill();
                return Err(e);
            }
        }
        tracing::debug!(%addr, backends = info.backends.len(), "node connected");
        self.inner.known.lock().insert(addr);
        self.inner.conns.lock().insert(addr, conn.clone());
        // At the connection's end the node's ranges pass to its neighbours.
        if let Some(closed) = conn.closed.lock().take() {
            let weak = Arc::downgrade(&self.inner);
            let this = Arc::downgrade(&conn);
            tokio::spawn(async move {
                let _ = closed.await;
                if let Some(inner) = weak.upgrade() {
                    let current = inner.conns.lock().get(&addr).cloned();
                    let same = match (current, this.upgrade()) {
                        (Some(c), Some(t)) => Arc::ptr_eq(&c, &t),
                        (None, _) => true,
                        _ => false,
                    };
                    if same {
                        inner.routes.write().remove_node(addr);
                        tracing::info!(%addr, "node lost: its ranges pass to the ring neighbours");
                    }
                }
            });
        }
        Ok(())
    }

    /// AUTH with [`ClientOptions::auth_cookie`]; an error status is the error.
    async fn auth(&self, conn: &Conn) -> Result<()> {
        let mut h = Header::new(cmd::AUTH, cflags::NEED_ACK | cflags::DIRECT);
        h.trans = conn.next_trans();
        let a = apsis_proto::Auth {
            cookie: self.inner.opts.auth_cookie.as_bytes().to_vec(),
            flags: 0,
        };
        let rx = conn
            .send(&h, &a.encode(), Some(self.inner.opts.connect_timeout))
            .await?;
        let frames = rx.all(conn).await?;
        match frames.last().map_or(0, |f| f.header.status) {
            0 => Ok(()),
            status => {
                tracing::error!(addr = %conn.addr, status, "AUTH refused: the node's auth_cookie differs");
                Err(ClientError::Status { status })
            }
        }
    }

    /// ROUTE_LIST on `addr`, connecting to the nodes it names that are not known yet.
    async fn discover(&self, addr: SocketAddr) -> Result<()> {
        let timeout = self.inner.opts.connect_timeout;
        let Some(conn) = self.inner.conns.lock().get(&addr).cloned() else {
            return Ok(());
        };
        let our_idx = self
            .inner
            .infos
            .lock()
            .get(&addr)
            .and_then(|v| v.iter().position(|a| a.0 == addr))
            .unwrap_or(0);
        let mut h = Header::new(
            cmd::ROUTE_LIST,
            cflags::NEED_ACK | cflags::DIRECT | cflags::NOLOCK,
        );
        h.trans = conn.next_trans();
        let rx = conn.send(&h, &[], Some(timeout)).await?;
        let frames = rx.all(&conn).await?;
        let Some(f) = frames.iter().find(|f| !f.payload.is_empty()) else {
            return Ok(());
        };
        let rl = RouteList::decode(&f.payload).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let per = rl.node_addr_num.max(1) as usize;
        for node in rl.addrs.chunks(per) {
            let a = node.get(our_idx).unwrap_or(&node[0]).0;
            if self.is_local(a) || a.ip().is_unspecified() {
                continue;
            }
            let fresh = self.inner.known.lock().insert(a);
            let live = self
                .inner
                .conns
                .lock()
                .get(&a)
                .is_some_and(|c| c.is_alive());
            if fresh || !live {
                if let Err(e) = Box::pin(self.add_node(a, false)).await {
                    tracing::debug!(addr = %a, error = %e, "listed node unreachable");
                }
            }
        }
        Ok(())
    }

    /// One refresh round: re-handshake live nodes (routes), follow their route lists, and
    /// reconnect to known nodes that are down. Nodes are handled concurrently.
    pub async fn refresh(&self) {
        let known: Vec<SocketAddr> = self.inner.known.lock().iter().copied().collect();
        session::join_all(known.into_iter().map(|a| async move {
            let conn = self.inner.conns.lock().get(&a).cloned();
            match conn.filter(|c| c.is_alive()) {
                Some(c) => match self.handshake_routes(a, &c).await {
                    Ok(_) => {
                        if self.inner.opts.discover {
                            let _ = self.discover(a).await;
                        }
                    }
                    Err(e) => {
                        tracing::info!(addr = %a, error = %e, "refresh handshake failed: resetting");
                        self.reset(a, &c);
                    }
                },
                None => {
                    if let Err(e) = self.add_node(a, true).await {
                        tracing::debug!(addr = %a, error = %e, "node still unreachable");
                    } else {
                        tracing::info!(addr = %a, "node is back");
                    }
                }
            }
        }))
        .await;
    }

    /// Handshakes `conn` (node `addr`) and takes the node's backends (routes) and addresses
    /// from the answer.
    ///
    /// An answer describes the node as it was when it answered; an UPDATE_IDS push that came
    /// on the connection while the handshake waited may be newer (a backend enabled or
    /// disabled after the node answered, the push applied by the reader before this task ran
    /// on). Applying the answer then would undo the push until the next refresh, so the
    /// answer is applied only when no push came between the request and the table's update
    /// (the count is read under the table's lock, which a push takes too), and the handshake
    /// is repeated otherwise: pushes are rare, and the node pushes every change to its
    /// backends, so after a few tries the pushes alone are current.
    async fn handshake_routes(&self, addr: SocketAddr, conn: &Conn) -> Result<NodeInfo> {
        const TRIES: usize = 4;
        let mut n = 0;
        loop {
            n += 1;
            let before = conn.pushes();
            let info = self.handshake(conn).await?;
            let applied = {
                let mut routes = self.inner.routes.write();
                let quiet = conn.pushes() == before;
                if quiet {
                    routes.set_node(addr, &info.backends);
                }
                quiet
            };
            if applied || n == TRIES {
                self.inner.infos.lock().insert(addr, info.addrs.clone());
                return Ok(info);
            }
        }
    }

    /// Drops a failed connection and the node's routes.
    fn reset(&self, addr: SocketAddr, conn: &Arc<Conn>) {
        conn.kill();
        let mut conns = self.inner.conns.lock();
        if conns.get(&addr).is_some_and(|c| Arc::ptr_eq(c, conn)) {
            conns.remove(&addr);
            self.inner.routes.write().remove_node(addr);
        }
    }

    /// A request to `conn` timed out. After `stall_count` in a row the node is pinged (a
    /// handshake within the connect timeout) and reset if the ping fails.
    pub(crate) fn note_timeout(&self, conn: &Arc<Conn>) {
        let n = conn.note_timeout();
        if n != self.inner.opts.stall_count.max(1) {
            return;
        }
        let me = self.clone();
        let conn = conn.clone();
        tokio::spawn(async move {
            match me.handshake(&conn).await {
                Ok(_) => tracing::info!(addr = %conn.addr, "stalled node answered its ping"),
                Err(e) => {
                    tracing::warn!(addr = %conn.addr, error = %e, "stalled node failed its ping: resetting");
                    me.reset(conn.addr, &conn);
                }
            }
        });
    }

    /// Sends one request to `addr` as it is (only `trans` is assigned) and collects every
    /// reply frame up to the final one, whatever their status: what a node forwarding a
    /// request relays. Timeouts count towards the node's stall count.
    pub async fn request(
        &self,
        addr: SocketAddr,
        h: &Header,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Vec<apsis_proto::Frame>> {
        self.request_parts(addr, h, &[payload], timeout).await
    }

    /// [`Client::request`] with the payload in parts, sent without copying them together
    /// first (see [`Conn::send_parts`]).
    pub async fn request_parts(
        &self,
        addr: SocketAddr,
        h: &Header,
        parts: &[&[u8]],
        timeout: Duration,
    ) -> Result<Vec<apsis_proto::Frame>> {
        let conn = self.conn(addr).await?;
        let rx = conn
            .send_parts(h, conn.next_trans(), parts, Some(timeout))
            .await?;
        match rx.all(&conn).await {
            Ok(f) => {
                conn.note_reply();
                Ok(f)
            }
            Err(e) => {
                if matches!(e, ClientError::Timeout) {
                    self.note_timeout(&conn);
                }
                Err(e)
            }
        }
    }

    /// Adds a node another node told us about (JOIN): connects and learns its routes.
    pub async fn add_known(&self, addr: SocketAddr) -> Result<()> {
        if self.is_local(addr) {
            return Ok(());
        }
        self.inner.known.lock().insert(addr);
        self.add_node(addr, false).await
    }

    /// The live connections this client opened, to answer or push on (see [`conn::Peer`]).
    pub fn peers(&self) -> Vec<conn::Peer> {
        let conns = self.inner.conns.lock();
        conns
            .values()
            .filter(|c| c.is_alive())
            .map(|c| conn::Peer::of(c.clone()))
            .collect()
    }

    /// Replaces the routes of a local node (a storage node's own backends).
    pub fn set_local_routes(&self, addr: SocketAddr, backends: &[apsis_proto::BackendIds]) {
        self.inner.routes.write().set_node(addr, backends);
    }

    /// The connection to `addr`, reconnecting if it dropped.
    pub async fn conn(&self, addr: SocketAddr) -> Result<Arc<Conn>> {
        if let Some(c) = self.inner.conns.lock().get(&addr) {
            if c.is_alive() {
                return Ok(c.clone());
            }
        }
        // Boxed: connecting is rare, and its future is large; inline it would be part of
        // (and moved with) every request's future.
        Box::pin(self.add_node(addr, false)).await?;
        self.inner
            .conns
            .lock()
            .get(&addr)
            .cloned()
            .ok_or_else(|| ClientError::Connection {
                addr: addr.to_string(),
                msg: "not connected".into(),
            })
    }

    /// A snapshot of the route table.
    pub fn routes(&self) -> RouteTable {
        self.inner.routes.read().clone()
    }

    /// Reads the route table without copying it.
    pub fn with_routes<T>(&self, f: impl FnOnce(&RouteTable) -> T) -> T {
        f(&self.inner.routes.read())
    }

    /// The addresses of the nodes connected now.
    pub fn nodes(&self) -> Vec<SocketAddr> {
        let mut v: Vec<SocketAddr> = self
            .inner
            .conns
            .lock()
            .iter()
            .filter(|(_, c)| c.is_alive())
            .map(|(a, _)| *a)
            .collect();
        v.sort();
        v
    }

    /// The connected nodes with all their advertised addresses (for a node's ROUTE_LIST).
    pub fn node_addrs(&self) -> Vec<(SocketAddr, Vec<Addr>)> {
        let live = self.nodes();
        let infos = self.inner.infos.lock();
        live.into_iter()
            .map(|a| (a, infos.get(&a).cloned().unwrap_or_else(|| vec![Addr(a)])))
            .collect()
    }

    /// A session with default settings on `groups`.
    pub fn session(&self, groups: Vec<u32>) -> Session {
        Session::new(self.clone(), groups)
    }
}

async fn refresh_loop(weak: Weak<Inner>, period: Duration) {
    loop {
        tokio::time::sleep(period).await;
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let c = Client { inner };
        c.refresh().await;
    }
}
