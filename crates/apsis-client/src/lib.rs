//! Async client for Apsis (and Elliptics 3.0) nodes, with the Elliptics session model.
//!
//! A [`Client`] (Elliptics' "node") connects to its remotes with the REVERSE_LOOKUP handshake,
//! learns every node's backends and ring ids, and keeps a route table per group. A [`Session`]
//! carries the request settings (groups, cflags, ioflags, namespace, user_flags, timestamp,
//! timeout, checker) and offers one function per operation. Requests to one node are
//! multiplexed on one connection by transaction number; objects larger than the session's
//! chunk size are written with PREPARE / PLAIN_WRITE / COMMIT and read in ranges.
//!
//! # Layout
//! - [`error`]: [`ClientError`] with its errno.
//! - [`conn`]: one connection: writer queue, reply routing by `trans`, timeouts.
//! - [`routes`]: the per-group route table and owner lookup.
//! - [`session`]: [`Session`] and the operations; [`Checker`]; result types.

pub mod conn;
pub mod error;
pub mod routes;
pub mod session;

pub use error::{ClientError, Result};
pub use session::{Checker, GroupResult, IterItem, IterOptions, ReadResult, Session, WriteResult};

use apsis_proto::{cflags, cmd, Header, NodeInfo, RouteList, VERSION};
use conn::Conn;
use parking_lot::{Mutex, RwLock};
use routes::RouteTable;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Client-wide settings.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Connect and handshake timeout.
    pub connect_timeout: Duration,
    /// Follow ROUTE_LIST to nodes the remotes know about.
    pub discover: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(5),
            discover: true,
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
    conns: Mutex<HashMap<SocketAddr, Arc<Conn>>>,
    routes: RwLock<RouteTable>,
}

impl Client {
    /// Connects to `remotes` (at least one must answer) and learns the routes.
    pub async fn connect(remotes: &[SocketAddr], opts: ClientOptions) -> Result<Client> {
        let c = Client {
            inner: Arc::new(Inner {
                opts,
                conns: Mutex::new(HashMap::new()),
                routes: RwLock::new(RouteTable::default()),
            }),
        };
        let mut last_err = None;
        let mut ok = 0;
        for a in remotes {
            match c.add_node(*a, true).await {
                Ok(()) => ok += 1,
                Err(e) => {
                    tracing::warn!(addr = %a, error = %e, "remote unreachable");
                    last_err = Some(e);
                }
            }
        }
        if ok == 0 {
            return Err(last_err.unwrap_or_else(|| ClientError::Invalid("no remotes".into())));
        }
        Ok(c)
    }

    /// Connects to one node: REVERSE_LOOKUP, then (for configured remotes) ROUTE_LIST and the
    /// nodes it lists.
    async fn add_node(&self, addr: SocketAddr, remote: bool) -> Result<()> {
        let timeout = self.inner.opts.connect_timeout;
        let conn = Conn::connect(addr, timeout).await?;
        let mut h = Header::new(cmd::REVERSE_LOOKUP, cflags::DIRECT | cflags::NOLOCK);
        h.set_version(VERSION);
        h.trans = 0;
        let rx = conn.send(h, &[]).await?;
        let frames = conn::collect(&conn, 0, rx, timeout).await?;
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
        self.inner.routes.write().set_node(addr, &info.backends);
        self.inner.conns.lock().insert(addr, conn.clone());
        // Route pushes (UPDATE_IDS) update the table.
        if let Some(mut pushed) = conn.pushed.lock().take() {
            let me = self.clone();
            tokio::spawn(async move {
                while let Some(f) = pushed.recv().await {
                    let mut r = apsis_proto::wire::Reader::new(&f.payload, "update ids");
                    if let Ok(b) = apsis_proto::decode_backends(&mut r) {
                        me.inner.routes.write().update(addr, &b);
                    }
                }
            });
        }
        if remote && self.inner.opts.discover {
            let mut h = Header::new(
                cmd::ROUTE_LIST,
                cflags::NEED_ACK | cflags::DIRECT | cflags::NOLOCK,
            );
            h.trans = conn::next_trans();
            let rx = conn.send(h, &[]).await?;
            let frames = conn::collect(&conn, h.trans, rx, timeout).await?;
            if let Some(f) = frames.iter().find(|f| !f.payload.is_empty()) {
                let rl = RouteList::decode(&f.payload)
                    .map_err(|e| ClientError::Protocol(e.to_string()))?;
                let idx = info.addrs.iter().position(|a| a.0 == addr).unwrap_or(0);
                let per = rl.node_addr_num.max(1) as usize;
                for node in rl.addrs.chunks(per) {
                    let a = node.get(idx).unwrap_or(&node[0]).0;
                    if !self.inner.conns.lock().contains_key(&a) {
                        if let Err(e) = Box::pin(self.add_node(a, false)).await {
                            tracing::warn!(addr = %a, error = %e, "listed node unreachable");
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The connection to `addr`, reconnecting if it dropped.
    pub async fn conn(&self, addr: SocketAddr) -> Result<Arc<Conn>> {
        if let Some(c) = self.inner.conns.lock().get(&addr) {
            if c.is_alive() {
                return Ok(c.clone());
            }
        }
        self.add_node(addr, false).await?;
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

    /// The addresses of every known node.
    pub fn nodes(&self) -> Vec<SocketAddr> {
        let mut v: Vec<SocketAddr> = self.inner.conns.lock().keys().copied().collect();
        v.sort();
        v
    }

    /// A session with default settings on `groups`.
    pub fn session(&self, groups: Vec<u32>) -> Session {
        Session::new(self.clone(), groups)
    }
}
