//! Starting and stopping a node: bind, open backends, accept, shut down gracefully.

use crate::{backends::Backends, monitor, Ctx, NodeConfig};
use apsis_proto::Addr;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Changes the process's log filter at run time (STATUS with a log level); returns false if the
/// level is not valid.
pub type LogLevelSetter = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// A running node.
pub struct Node {
    pub ctx: Arc<Ctx>,
    /// The addresses actually bound (ports resolved when 0 was asked for).
    pub listen: Vec<SocketAddr>,
    /// The HTTP monitor's address, when enabled.
    pub monitor: Option<SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The HTTP monitor's task: stopped last, so health probes see the drain.
    monitor_task: Option<tokio::task::JoinHandle<()>>,
}

impl Node {
    /// Binds the listeners, opens the enabled backends and starts serving.
    pub async fn start(
        mut cfg: NodeConfig,
        log_setter: Option<LogLevelSetter>,
    ) -> std::io::Result<Node> {
        cfg.validate()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.0))?;
        for k in &cfg.ignored_keys {
            tracing::warn!(key = %k, "config key not used by Apsis");
        }
        let fds = crate::fdlimit::raise();
        if fds.soft != fds.before {
            tracing::info!(from = fds.before, to = fds.soft, "open-file limit raised");
        }
        // Several advertised addresses may share one listening socket (Elliptics binds the
        // port once whatever the hosts): bind each distinct address once.
        let mut listeners: Vec<(SocketAddr, TcpListener)> = Vec::new();
        let mut bound = Vec::new();
        for a in &cfg.listen {
            if let Some((_, l)) = listeners.iter().find(|(want, _)| want == a) {
                bound.push(l.local_addr()?);
                continue;
            }
            let l = TcpListener::bind(a)
                .await
                .map_err(|e| std::io::Error::new(e.kind(), format!("bind {a}: {e}")))?;
            bound.push(l.local_addr()?);
            listeners.push((*a, l));
        }
        // An advertised port of 0 (or an unspecified host) takes what was bound.
        let advertise: Vec<SocketAddr> = cfg
            .advertise
            .iter()
            .zip(&bound)
            .map(|(adv, b)| {
                let mut a = *adv;
                if a.port() == 0 {
                    a.set_port(b.port());
                }
                if a.ip().is_unspecified() {
                    a.set_ip(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
                }
                a
            })
            .collect();
        cfg.advertise = advertise.clone();
        let (shutdown, _) = watch::channel(false);
        let addrs: Vec<Addr> = advertise.iter().map(|a| Addr(*a)).collect();
        let ctx = Arc::new_cyclic(|weak| Ctx {
            backends: Backends::new(&cfg.backends),
            cluster: crate::cluster::Cluster::new(&cfg, &addrs, weak.clone()),
            recovery: crate::recovery::Recovery::new(cfg.recovery.clone()),
            addrs,
            read_only: AtomicBool::new(false),
            stats: Default::default(),
            conn_limit: cfg.max_connections.into(),
            frame_memory: crate::frames::FrameMemory::new(cfg.frame_memory),
            locks: Default::default(),
            iterators: Default::default(),
            peers: Mutex::new(HashMap::new()),
            joined: Mutex::new(HashMap::new()),
            log_level: AtomicU32::new(crate::log_level_number(&cfg.log_level)),
            log_setter,
            shutdown,
            conn_stops: Default::default(),
            started: std::time::Instant::now(),
            cfg,
        });
        // Open backends in parallel, off the async workers.
        let mut opens = Vec::new();
        for slot in ctx.backends.slots() {
            if slot.cfg.enable {
                let c = ctx.clone();
                let id = slot.cfg.id;
                opens.push(tokio::task::spawn_blocking(move || c.backends.enable(id)));
            }
        }
        for o in opens {
            let _ = o.await;
        }
        // What the backends hold is known now: the connections that fit beside it.
        if let Some(in_use) = crate::fdlimit::open_now() {
            let want = ctx.cfg.max_connections;
            let limit = crate::fdlimit::connection_limit(want, fds.soft, in_use);
            if limit < want {
                tracing::warn!(
                    max_connections = want,
                    accepted = limit,
                    open_files_limit = fds.soft,
                    hard_limit = fds.hard,
                    files_open = in_use,
                    "max_connections lowered to what the open-file limit leaves room for; \
                     raise the hard limit (ulimit -Hn, LimitNOFILE=) to accept more"
                );
            }
            ctx.conn_limit.store(limit, Relaxed);
        }
        ctx.cluster.set_local_routes(&ctx);
        ctx.cluster.join_remotes(&ctx.cfg.remotes);
        crate::recovery::start(&ctx);
        let mut tasks = vec![
            tokio::spawn(cache_flusher(ctx.clone())),
            // Writes replies a busy worker thread would keep queued (see `batch`).
            tokio::spawn(crate::batch::sweeper()),
        ];
        let conn_ids = Arc::new(AtomicU64::new(1));
        for (_, l) in listeners {
            tasks.push(tokio::spawn(accept_loop(ctx.clone(), l, conn_ids.clone())));
        }
        let (mut monitor_addr, mut monitor_task) = (None, None);
        if ctx.cfg.monitor_port != 0 {
            let host = bound[0].ip();
            let a = SocketAddr::new(host, ctx.cfg.monitor_port);
            let l = TcpListener::bind(a)
                .await
                .map_err(|e| std::io::Error::new(e.kind(), format!("bind monitor {a}: {e}")))?;
            monitor_addr = Some(l.local_addr()?);
            monitor_task = Some(tokio::spawn(monitor::serve_http(ctx.clone(), l)));
        }
        tracing::info!(listen = ?bound, advertise = ?advertise, backends = ctx.backends.slots().len(), "node started");
        Ok(Node {
            ctx,
            listen: bound,
            monitor: monitor_addr,
            tasks,
            monitor_task,
        })
    }

    /// Waits until shutdown is requested (STATUS EXIT or [`Ctx::request_shutdown`]).
    pub async fn wait(&self) {
        let mut rx = self.ctx.shutdown_rx();
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                break;
            }
        }
    }

    /// Stops accepting, lets connections finish what they have, then syncs and closes every
    /// backend, so what the sync setting promised is on disk. The monitor answers until the
    /// end: meanwhile `/health/ready` says the node is stopping.
    pub async fn shutdown(self) {
        self.ctx.request_shutdown();
        for t in &self.tasks {
            t.abort();
        }
        // Connections notice the shutdown and drain; give them a bounded time.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.ctx.stats.connections_open.load(Relaxed) > 0
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let ctx = self.ctx.clone();
        let _ = tokio::task::spawn_blocking(move || {
            ctx.backends.sync_all();
            ctx.backends.close_all();
        })
        .await;
        if let Some(t) = &self.monitor_task {
            t.abort();
        }
        tracing::info!("node stopped");
    }
}

async fn accept_loop(ctx: Arc<Ctx>, l: TcpListener, ids: Arc<AtomicU64>) {
    let mut shutdown = ctx.shutdown_rx();
    loop {
        tokio::select! {
            r = l.accept() => match r {
                Ok((sock, peer)) => {
                    let limit = ctx.conn_limit.load(Relaxed);
                    if ctx.stats.connections_open.load(Relaxed) as usize >= limit {
                        tracing::warn!(%peer, limit, "connection refused: too many connections");
                        drop(sock);
                        continue;
                    }
                    ctx.stats.connections_open.fetch_add(1, Relaxed);
                    ctx.stats.connections_total.fetch_add(1, Relaxed);
                    let id = ids.fetch_add(1, Relaxed);
                    tokio::spawn(crate::conn::serve(ctx.clone(), sock, peer, id));
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
}

/// Once a second: every backend cache writes back what has been dirty for its
/// `cache_sync_timeout` and retires expired entries (off the async workers).
async fn cache_flusher(ctx: Arc<Ctx>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for slot in ctx.backends.slots() {
            if let Some(c) = slot.cache() {
                let _ = tokio::task::spawn_blocking(move || c.flush(false)).await;
            }
        }
    }
}
