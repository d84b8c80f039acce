//! Connection and node commands: REVERSE_LOOKUP (handshake), JOIN, UPDATE_IDS, ROUTE_LIST,
//! AUTH, STATUS.

use super::HResult;
use crate::conn::Inline;
use crate::reply::{Out, Tx};
use crate::Ctx;
use apsis_proto::{
    cflags, cmd, errno, Addr, Auth, Header, NodeInfo, NodeStatus, RouteList, VERSION,
};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// This node's description: its addresses and enabled backends with their ring ids.
pub fn node_info(ctx: &Ctx) -> NodeInfo {
    NodeInfo {
        addrs: ctx.addrs.clone(),
        backends: ctx.backends.backend_ids(),
    }
}

/// Answers a handshake (REVERSE_LOOKUP) with this node's description; `false` when the
/// requester's version is not 3.0 (no reply: the connection must close) or the reply could
/// not be sent.
pub async fn reverse_lookup(ctx: &Ctx, out: &Out<'_>) -> bool {
    let v = out.req.version();
    if !Header::version_compatible(v) {
        tracing::warn!(version = ?v, "VERSION MISMATCH: closing connection");
        return false;
    }
    let mut h = Header::new(cmd::REVERSE_LOOKUP, cflags::NOLOCK | cflags::REPLY);
    h.set_version(VERSION);
    h.group = ctx.backends.get(0).map(|s| s.cfg.group).unwrap_or(0);
    // Under the request's own trans, as Elliptics answers (clients send 0; a peer refreshing
    // over a joined connection may not).
    h.trans = out.req.trans;
    let p = node_info(ctx).encode();
    out.send(h, &[&p]).await
}

/// Commands handled on the reader itself, because they decide whether the connection lives.
pub async fn inline(
    ctx: &Arc<Ctx>,
    hdr: Header,
    payload: &[u8],
    tx: &Tx,
    conn_id: u64,
    local: Option<SocketAddr>,
) -> Inline {
    match hdr.cmd {
        cmd::REVERSE_LOOKUP => {
            if !reverse_lookup(ctx, &Out::new(tx.clone(), hdr)).await {
                return Inline::Close;
            }
            ctx.peers.lock().insert(conn_id, tx.clone());
            Inline::Continue
        }
        cmd::JOIN => match NodeInfo::decode(payload) {
            Ok(info) if info.addrs.len() == ctx.addrs.len() => {
                let arrived = local
                    .map(|l| ctx.addrs.iter().any(|a| a.0.port() == l.port()))
                    .unwrap_or(true);
                if !arrived {
                    tracing::warn!("JOIN on an address that is not ours: closing");
                    return Inline::Close;
                }
                ctx.joined.lock().insert(conn_id, info.addrs.clone());
                ctx.peers.lock().insert(conn_id, tx.clone());
                tracing::info!(peer = ?info.addrs, backends = info.backends.len(), "node joined");
                // Route to it: connect back and learn its backends.
                if let Some(a) = info.addrs.first().map(|a| a.0) {
                    let client = ctx.cluster.client.clone();
                    tokio::spawn(async move {
                        if let Err(e) = client.add_known(a).await {
                            tracing::warn!(addr = %a, error = %e, "joined node unreachable");
                        }
                    });
                }
                Inline::Continue
            }
            _ => {
                tracing::warn!("bad JOIN: closing connection");
                Inline::Close
            }
        },
        // A node that joined us also pushes its changes here, but it pushes them on our own
        // connection to it as well (Elliptics pushes to every connection it sent its ids
        // on, Apsis to every one that did a handshake): that one is applied, in order with
        // its handshakes, and this copy is left, as two paths could reorder two pushes.
        _ => Inline::Continue,
    }
}

/// ROUTE_LIST: this node, the nodes that joined it and every peer it is connected to, each
/// with as many addresses as this node has; not the requester itself, as Elliptics (a node
/// that joined on this connection, or the peer we opened it to).
pub async fn route_list(ctx: &Arc<Ctx>, out: &mut Out<'_>, from: super::Origin) -> HResult {
    out.no_ack();
    let per = ctx.addrs.len();
    let mut nodes: Vec<Vec<Addr>> = vec![ctx.addrs.clone()];
    // The requester: a node that joined on this connection, or the peer we opened it to.
    let mut requester = match from {
        super::Origin::Opened(a) => Some(Addr(a)),
        super::Origin::Accepted(_) => None,
    };
    for (cid, j) in ctx.joined.lock().iter() {
        if matches!(from, super::Origin::Accepted(c) if c == *cid) {
            requester = j.first().copied();
        } else {
            nodes.push(j.clone());
        }
    }
    for (key, a) in ctx.cluster.client.node_addrs() {
        if matches!(from, super::Origin::Opened(p) if p == key) {
            // The peer as it describes itself, which the address we dialled may not be.
            requester = a.first().copied();
            continue;
        }
        nodes.push(a);
    }
    let mut addrs = Vec::with_capacity(nodes.len() * per);
    let mut seen: Vec<Addr> = Vec::new();
    for mut n in nodes {
        if n.is_empty() || seen.contains(&n[0]) || requester == Some(n[0]) {
            continue;
        }
        seen.push(n[0]);
        let first = n[0];
        n.resize(per, first);
        addrs.extend_from_slice(&n);
    }
    let p = RouteList {
        node_addr_num: ctx.addrs.len() as i32,
        addrs,
    }
    .encode();
    // Built from scratch in Elliptics: NOLOCK|REPLY whatever the request's flags (0x19 gets
    // 0x210, not 0x218) [seen 01, 14].
    let mut h = out.req.reply(0, 0, false);
    h.flags = cflags::NOLOCK | cflags::REPLY;
    out.send(h, &[&p]).await;
    Ok(())
}

pub async fn auth(ctx: &Arc<Ctx>, _out: &mut Out<'_>, payload: &[u8]) -> HResult {
    let a = Auth::decode(payload).map_err(|_| -errno::EINVAL)?;
    let want = ctx.cfg.auth_cookie.as_bytes();
    if a.cookie.as_slice() != &want[..want.len().min(31)] {
        return Err(-errno::EPERM);
    }
    Ok(())
}

pub async fn status(ctx: &Arc<Ctx>, out: &mut Out<'_>, payload: &[u8]) -> HResult {
    let s = NodeStatus::decode(payload).map_err(|_| -errno::EINVAL)?;
    if s.status_flags != -1 {
        ctx.read_only
            .store(s.status_flags & NodeStatus::RO != 0, Relaxed);
        if s.status_flags & NodeStatus::EXIT != 0 {
            tracing::warn!("STATUS EXIT: shutting down");
            ctx.request_shutdown();
        }
    }
    if s.log_level != u32::MAX {
        if s.log_level > 4 {
            return Err(-errno::EINVAL);
        }
        let name = crate::log_level_name(s.log_level);
        let ok = ctx.log_setter.as_ref().map(|f| f(name)).unwrap_or(true);
        if !ok {
            return Err(-errno::EINVAL);
        }
        ctx.log_level.store(s.log_level, Relaxed);
        tracing::info!(level = name, "log level changed");
    }
    let cur = NodeStatus {
        nflags: ctx.cfg.flags as i32 | if ctx.cfg.join { 1 } else { 0 },
        status_flags: if ctx.read_only.load(Relaxed) {
            NodeStatus::RO
        } else {
            0
        },
        log_level: ctx.log_level.load(Relaxed),
    };
    out.data(&[&cur.encode()], false).await;
    Ok(())
}

/// Pushes UPDATE_IDS for one backend to every connection that did a handshake with us, and
/// to the nodes we joined that route to us over our own connection.
pub async fn push_update_ids(ctx: &Ctx, backend: apsis_proto::BackendIds) {
    ctx.cluster.set_local_routes(ctx);
    let mut p = Vec::new();
    apsis_proto::encode_backends(&[backend], &mut p);
    let mut h = Header::new(cmd::UPDATE_IDS, cflags::DIRECT | cflags::NOLOCK);
    h.size = p.len() as u64;
    let mut buf = Vec::new();
    h.encode_into(&mut buf);
    buf.extend_from_slice(&p);
    let peers: Vec<Tx> = ctx.peers.lock().values().cloned().collect();
    for tx in peers {
        // A peer whose reply queue is full still gets the push, from a task of its own, so
        // one slow connection neither loses it (its table would stay stale until its next
        // refresh) nor holds up the others or the command's reply.
        let m = crate::reply::Msg::Frame(buf.clone());
        if let Err(tokio::sync::mpsc::error::TrySendError::Full(b)) = tx.try_send(m) {
            tokio::spawn(async move {
                let _ = tx.send(b).await;
            });
        }
    }
    // Nodes we joined that did not join us back (Elliptics nodes: they route to us over the
    // connection we opened) learn of the change only on that connection. In order, one push
    // after the other; a peer that does not take it within `wait_timeout` loses that
    // connection, and the refresh reconnects with a fresh handshake.
    let joined: Vec<std::net::SocketAddr> = (ctx.joined.lock().values())
        .filter_map(|a| a.first().map(|a| a.0))
        .collect();
    for peer in ctx.cluster.client.peers() {
        let a = peer.addr();
        if joined.contains(&a) || ctx.cluster.is_local(a) {
            continue;
        }
        let parts: [&[u8]; 1] = [&buf];
        let sent = tokio::time::timeout(ctx.cluster.wait_timeout, peer.send_encoded(&parts));
        if !matches!(sent.await, Ok(true)) {
            tracing::warn!(peer = %a, "UPDATE_IDS not delivered: connection given up");
            peer.kill();
        }
    }
}
