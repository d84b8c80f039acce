//! The Apsis storage node: an Elliptics 3.0-compatible server over the blob engine.
//!
//! A node listens on TCP, serves one or more backends (each a blob engine in one group with
//! its ring ids), and answers the Elliptics commands: the handshake and route list, LOOKUP,
//! READ, WRITE (every ioflag of the data semantics), DEL, BULK_READ, READ_RANGE, DEL_RANGE,
//! ITERATOR (network and server-send), SEND, STATUS, BACKEND_CONTROL, BACKEND_STATUS and
//! MONITOR_STAT. It also serves monitoring over HTTP (the
//! Elliptics JSON categories and Prometheus metrics).
//!
//! Nodes form a cluster through their remotes ([`cluster`]): each keeps the route table of
//! every group, forwards what it does not own, and drops peers that fail. A backend with
//! `cache_size` has a [`cache`] for the CACHE / CACHE_ONLY ioflags (write-back, TTL).
//!
//! # Layout
//! - [`config`]: [`NodeConfig`] from Apsis TOML or the Elliptics `dnet_ioserv` JSON.
//! - [`backends`]: backend slots, engines, ring ids (`ids` files), the local route table.
//! - [`cache`]: the per-backend cache (LRU shards, write-back, TTL), coherent with the engine.
//! - [`cluster`]: peers (an embedded `apsis-client`), the cluster route table, forwarding.
//! - `server` ([`Node`]): listeners, accept loop, graceful shutdown.
//! - [`fdlimit`]: the open-file limit raised at start, and the connections that fit under it.
//! - `conn`: one connection: frame checking, quick commands answered inline by the reader, a
//!   task per longer request, the batching writer.
//! - [`frames`]: the node-wide memory budget for large incoming frames, and the limit on a
//!   frame that stalls half-received.
//! - `reply`: Elliptics' reply rules (MORE, NEED_ACK, final ack), replies held for a
//!   `sync = 0` group commit, and the connection's writer; `batch`: replies written in one
//!   go when a worker thread runs out of tasks ([`install_reply_batching`] hooks a runtime).
//! - `cmd`: dispatch (one `match` on the command) and one module per command family:
//!   `cmd::io` (LOOKUP, READ, WRITE, DEL, BULK_READ), `cmd::range` (READ_RANGE, DEL_RANGE),
//!   `cmd::iterator`, `cmd::send` (SEND, and the server-send iterator's copies), `cmd::system`
//!   (REVERSE_LOOKUP, JOIN, ROUTE_LIST, AUTH, STATUS), `cmd::backend` (BACKEND_CONTROL,
//!   BACKEND_STATUS), `cmd::monitor` (MONITOR_STAT).
//! - [`recovery`]: merge and dc, in the background and as jobs (`apsis recovery`), with the
//!   DIGEST / LIST / SYNC / JOB commands in `cmd::recovery`.
//! - [`monitor`]: the statistics JSON, Prometheus text and health verdicts, and the HTTP
//!   monitor server.
//! - `locks`: per-key serialisation; `stats`: counters.

pub mod backends;
mod batch;
pub use batch::install as install_reply_batching;
pub mod cache;
pub mod cluster;
mod cmd;
pub mod config;
mod conn;
pub mod fdlimit;
pub mod frames;
mod locks;
pub mod monitor;
pub mod recovery;
mod reply;
mod server;
mod stats;

pub use config::{BackendConfig, LogSink, NodeConfig};
pub use server::{LogLevelSetter, Node};

use apsis_proto::Addr;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32};
use std::sync::Arc;
use tokio::sync::watch;

/// Everything a request handler needs, shared by every connection.
pub struct Ctx {
    pub cfg: NodeConfig,
    pub backends: backends::Backends,
    /// Advertised addresses (REVERSE_LOOKUP, ROUTE_LIST, lookup replies).
    pub addrs: Vec<Addr>,
    /// STATUS RO: writes and deletes get −EROFS.
    pub read_only: AtomicBool,
    pub stats: stats::Stats,
    /// Connections accepted at most: `max_connections`, or fewer when the open-file limit
    /// leaves less room (see [`fdlimit`]); set once the backends are open.
    pub conn_limit: std::sync::atomic::AtomicUsize,
    /// The budget for large frames being received (see [`frames`]).
    pub frame_memory: frames::FrameMemory,
    pub locks: locks::KeyLocks,
    pub iterators: cmd::iterator::Registry,
    /// Connections that completed a handshake, for UPDATE_IDS pushes.
    pub peers: Mutex<HashMap<u64, reply::Tx>>,
    /// Nodes that joined us, by the connection they joined on (ROUTE_LIST lists them, except
    /// to themselves); an entry leaves with its connection.
    pub joined: Mutex<HashMap<u64, Vec<Addr>>>,
    /// Peers, the cluster route table, forwarding.
    pub cluster: cluster::Cluster,
    /// Recovery's counters, pacing and job lock.
    pub recovery: recovery::Recovery,
    /// Current log level as Elliptics numbers it (0 debug .. 4 error).
    pub log_level: AtomicU32,
    pub log_setter: Option<LogLevelSetter>,
    shutdown: watch::Sender<bool>,
    /// Each connection's own stop signal (see [`conn::ConnStops`]).
    pub(crate) conn_stops: conn::ConnStops,
    pub started: std::time::Instant,
}

impl Ctx {
    pub fn shutdown_rx(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }
    /// Whether the node was asked to stop.
    pub fn is_stopping(&self) -> bool {
        *self.shutdown.borrow()
    }
    /// Asks the node to stop (STATUS EXIT, SIGTERM).
    pub fn request_shutdown(&self) {
        let _ = self.shutdown.send(true);
        self.conn_stops.stop_all();
    }
    pub fn first_addr(&self) -> Addr {
        self.addrs[0]
    }
}

/// Elliptics log level number for a level name.
pub fn log_level_number(name: &str) -> u32 {
    match name.to_ascii_lowercase().as_str() {
        "trace" | "debug" => 0,
        "notice" => 1,
        "info" => 2,
        "warn" | "warning" => 3,
        "error" => 4,
        _ => 2,
    }
}

/// The `tracing` level name for an Elliptics log level number.
pub fn log_level_name(n: u32) -> &'static str {
    match n {
        0 => "debug",
        1 | 2 => "info",
        3 => "warn",
        _ => "error",
    }
}

/// Type alias for the shared context.
pub type SharedCtx = Arc<Ctx>;
