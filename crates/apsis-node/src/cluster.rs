//! The node's view of the cluster: peers, the route table of every group, and forwarding.
//!
//! A node embeds an [`apsis_client::Client`] with `join` set. At start it connects to its
//! remotes (handshake, JOIN, AUTH, ROUTE_LIST and the nodes listed), and a node that JOINs us
//! is connected back, without JOIN. Requests a peer sends on a connection we opened (an
//! Elliptics node routes to a node that joined it that way) are served too
//! (`conn::peer_requests`). From then on the client keeps the table current exactly as it does
//! for applications: UPDATE_IDS pushes, a refresh every `check_timeout` that also reconnects to
//! lost nodes (a restarted node rejoins by itself), and failure detection (a closed
//! connection, or `stall_count` timeouts in a row and a failed ping) that drops a node so its
//! ranges pass to its ring neighbours. The node's own backends are in the same table under
//! its first address.
//!
//! Forwarding: a data request (LOOKUP, READ, WRITE, DEL) for an id another node owns in the
//! request's group is sent on to that node with DIRECT set (so it is never forwarded twice)
//! and the owner's replies are relayed under the request's `trans`. A request with DIRECT or
//! DIRECT_BACKEND is always served here.
//!
//! Ring changes: a READ or LOOKUP that misses (−ENOENT) on the owner is retried on the
//! previous owner — the owner in the table without this backend — so keys stay readable
//! after a node or backend joins, until recovery has moved them.

use crate::reply::Out;
use crate::Ctx;
use apsis_client::{Client, ClientOptions, JoinInfo};
use apsis_proto::{cflags, cmd, errno, Addr, Header};
use apsis_ring::Route;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Peers and routes.
pub struct Cluster {
    pub client: Client,
    /// Our advertised addresses; the first keys our own routes.
    me: Vec<SocketAddr>,
    /// How long a forwarded request may take (`wait_timeout`).
    pub wait_timeout: Duration,
    /// Set when the first round of connections to the remotes has ended (every remote
    /// answered or gave up). Before that the table may lack whole nodes, and a data request
    /// would be routed as if they did not exist, so data requests wait for it.
    joined: Arc<Joined>,
}

/// The end of the first round of connections to the remotes (see [`Cluster::wait_joined`]).
struct Joined {
    /// The watch's value, readable by every data request without the watch's lock.
    flag: std::sync::atomic::AtomicBool,
    tx: tokio::sync::watch::Sender<bool>,
}

impl Joined {
    fn mark(&self) {
        self.flag.store(true, std::sync::atomic::Ordering::Release);
        self.tx.send_replace(true);
    }
}

impl Cluster {
    /// The cluster layer of a node advertising `addrs`; `ctx` gives the JOIN information.
    pub fn new(cfg: &crate::NodeConfig, addrs: &[Addr], ctx: Weak<Ctx>) -> Cluster {
        let me: Vec<SocketAddr> = addrs.iter().map(|a| a.0).collect();
        let ctx_for_peers = ctx.clone();
        // A node that joined us is connected back without JOIN: it routes to us over the
        // connection it joined on, and an Elliptics node resets a second one (−EEXIST).
        let join: JoinInfo = Arc::new(move |to: SocketAddr| {
            let c = ctx.upgrade()?;
            let joined_us = (c.joined.lock().values()).any(|a| a.iter().any(|a| a.0 == to));
            (!joined_us).then(|| crate::cmd::system::node_info(&c))
        });
        let wait = Duration::from_secs(cfg.wait_timeout_secs.max(1));
        let opts = ClientOptions {
            connect_timeout: wait,
            discover: true,
            check_timeout: Duration::from_secs(cfg.check_timeout_secs),
            stall_count: cfg.stall_count.max(1),
            local: me.clone(),
            join: Some(join),
            auth_cookie: cfg.auth_cookie.clone(),
            keepalive: cfg.keepalive,
            // Every connection this node opens is to another node.
            tos: cfg.server_net_prio,
            serve: Some(crate::conn::peer_requests(
                ctx_for_peers,
                cfg.max_inflight_per_connection,
                cfg.max_frame_bytes,
            )),
        };
        Cluster {
            client: Client::new(opts),
            me,
            wait_timeout: wait,
            joined: Arc::new(Joined {
                flag: false.into(),
                tx: tokio::sync::watch::Sender::new(false),
            }),
        }
    }

    pub fn is_local(&self, a: SocketAddr) -> bool {
        self.me.contains(&a)
    }

    /// The address our own backends are routed under.
    pub fn me(&self) -> SocketAddr {
        self.me[0]
    }

    /// Puts our own enabled backends into the table (at start and after every change).
    pub fn set_local_routes(&self, ctx: &Ctx) {
        self.client
            .set_local_routes(self.me(), &ctx.backends.backend_ids());
    }

    /// Connects to the configured remotes (`host:port[:family]`) in the background; the
    /// refresh keeps retrying those that do not answer. Until this first round ends, data
    /// requests wait ([`Cluster::wait_joined`]).
    pub fn join_remotes(&self, remotes: &[String]) {
        let addrs: Vec<SocketAddr> = remotes.iter().filter_map(|r| parse_remote(r)).collect();
        if addrs.is_empty() {
            self.joined.mark();
            return;
        }
        let (client, joined) = (self.client.clone(), self.joined.clone());
        tokio::spawn(async move {
            if let Err(e) = client.add_remotes(&addrs).await {
                tracing::warn!(error = %e, "no remote answered yet; the refresh keeps trying");
            }
            joined.mark();
        });
    }

    /// Whether the first round of connections to the remotes has ended (data requests no
    /// longer wait, see [`Cluster::wait_joined`]).
    pub fn is_joined(&self) -> bool {
        self.joined.flag.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Waits (at most `wait_timeout`) until the first round of connections to the remotes
    /// has ended. A node that serves a READ before it knows its peers would answer ENOENT
    /// for keys a peer still holds (it cannot know the previous owner), and would take
    /// WRITEs for ids another node owns.
    pub async fn wait_joined(&self) {
        if self.is_joined() {
            return;
        }
        // Boxed: rare, and a request's future would otherwise carry this one's state.
        let mut rx = self.joined.tx.subscribe();
        let _ = Box::pin(tokio::time::timeout(self.wait_timeout, rx.wait_for(|&j| j))).await;
    }

    /// The backend that owns a data request's id in its group, here or on another node (which
    /// the request is forwarded to). `None` for the other commands, for DIRECT and
    /// DIRECT_BACKEND requests (always served here) and for groups no node serves.
    pub fn owner(&self, hdr: &Header) -> Option<Route> {
        if !matches!(hdr.cmd, cmd::LOOKUP | cmd::READ | cmd::WRITE | cmd::DEL)
            || hdr.flags & (cflags::DIRECT | cflags::DIRECT_BACKEND) != 0
        {
            return None;
        }
        self.client.with_routes(|t| t.owner(hdr.group, &hdr.id))
    }

    /// For a READ or LOOKUP that missed on local backend `backend_id`: the backend that owned
    /// the id before this one joined the ring, if there is one.
    pub fn previous_owner(&self, hdr: &Header, backend_id: i32) -> Option<Route> {
        if !matches!(hdr.cmd, cmd::LOOKUP | cmd::READ)
            || hdr.flags & (cflags::DIRECT | cflags::DIRECT_BACKEND) != 0
        {
            return None;
        }
        let me = Route {
            addr: self.me(),
            backend_id,
        };
        self.client
            .with_routes(|t| t.previous_owner(hdr.group, &hdr.id, me))
    }
}

/// "host:port" or Elliptics' "host:port:family".
pub fn parse_remote(s: &str) -> Option<SocketAddr> {
    let hp = match s.rsplit_once(':') {
        Some((hp, fam)) if hp.contains(':') && fam.parse::<u8>().is_ok() => hp,
        _ => s,
    };
    match hp.to_socket_addrs().map(|mut i| i.next()) {
        Ok(Some(a)) => Some(a),
        _ => {
            tracing::warn!(remote = s, "remote address not understood; ignored");
            None
        }
    }
}

/// Sends `hdr` + `payload` to `addr` with DIRECT set and relays every reply under the
/// request's own `trans`. Returns the status to finish with when nothing was relayed (the
/// peer failed or timed out); `Ok` when the peer's replies, final ack included, went out.
pub async fn relay(
    ctx: &Ctx,
    addr: SocketAddr,
    hdr: Header,
    payload: &[u8],
    out: &Out<'_>,
) -> Result<(), i32> {
    let mut h = hdr;
    h.flags |= cflags::DIRECT;
    let frames = ctx
        .cluster
        .client
        .request(addr, &h, payload, ctx.cluster.wait_timeout)
        .await
        .map_err(|e| {
            tracing::debug!(%addr, error = %e, "forward failed");
            e.errno()
        })?;
    ctx.stats
        .forwarded
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if frames.is_empty() {
        return Err(-errno::EPROTO);
    }
    for f in frames {
        let mut rh = f.header;
        rh.trans = hdr.trans;
        if hdr.flags & cflags::DIRECT == 0 {
            rh.flags &= !cflags::DIRECT;
        }
        out.send(rh, &[&f.payload]).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_remote;

    #[test]
    fn remotes_with_and_without_family() {
        assert_eq!(
            parse_remote("127.0.0.1:1025:2"),
            Some("127.0.0.1:1025".parse().unwrap())
        );
        assert_eq!(
            parse_remote("127.0.0.1:1026"),
            Some("127.0.0.1:1026".parse().unwrap())
        );
        assert_eq!(parse_remote("nonsense"), None);
    }
}
