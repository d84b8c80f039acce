//! Route pushes (UPDATE_IDS) against the order of the wire, with a scripted node on loopback
//! that sends exactly the frames a real node sends, in the orders a real node can produce
//! them: a backend enabled or disabled between a handshake's answer and the next reply.
//!
//! Each case runs many times on a multi-thread runtime, where the client's tasks interleave
//! differently every time; the client must come out right in every run.

use apsis_client::{Client, ClientOptions};
use apsis_proto::{
    cflags, check_frame, cmd, encode_backends, Addr, BackendIds, Frame, Header, NodeInfo, VERSION,
};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const RUNS: usize = 100;
const POINT: [u8; 64] = [0x40; 64];

/// Backend 1 of group 1, enabled or (as pushed on disable) disabled.
fn backend(enabled: bool) -> BackendIds {
    BackendIds {
        backend_id: 1,
        group: if enabled { 1 } else { 0 },
        flags: if enabled { 0 } else { BackendIds::FLAG_DISABLE },
        ids: if enabled { vec![POINT] } else { Vec::new() },
    }
}

/// The handshake's answer: the node's address and its enabled backends.
fn handshake_reply(me: SocketAddr, enabled: bool) -> Vec<u8> {
    let mut h = Header::new(cmd::REVERSE_LOOKUP, cflags::NOLOCK | cflags::REPLY);
    h.set_version(VERSION);
    let info = NodeInfo {
        addrs: vec![Addr(me)],
        backends: if enabled {
            vec![backend(true)]
        } else {
            Vec::new()
        },
    };
    Frame::new(h, info.encode()).encode()
}

/// What a node sends every handshaken connection when a backend changes.
fn push(enabled: bool) -> Vec<u8> {
    let mut p = Vec::new();
    encode_backends(&[backend(enabled)], &mut p);
    Frame::new(
        Header::new(cmd::UPDATE_IDS, cflags::DIRECT | cflags::NOLOCK),
        p,
    )
    .encode()
}

async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Frame> {
    loop {
        if let Ok(Some(n)) = check_frame(buf, 1 << 20) {
            let f = Frame::decode(&buf[..n]).ok();
            buf.drain(..n);
            return f;
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A node whose backend is enabled at first; `script` answers each request after the first
/// handshake: given the request, how many handshakes came before it and the node's address,
/// the bytes to send.
async fn node(
    script: impl Fn(&Frame, usize, SocketAddr) -> Vec<u8> + Send + 'static,
) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let me = l.local_addr().unwrap();
    tokio::spawn(async move {
        let Ok((mut s, _)) = l.accept().await else {
            return;
        };
        let mut buf = Vec::new();
        let mut handshakes = 0;
        while let Some(req) = read_request(&mut s, &mut buf).await {
            let out = if req.header.cmd == cmd::REVERSE_LOOKUP && handshakes == 0 {
                handshake_reply(me, true)
            } else {
                script(&req, handshakes, me)
            };
            if req.header.cmd == cmd::REVERSE_LOOKUP {
                handshakes += 1;
            }
            if s.write_all(&out).await.is_err() {
                return;
            }
        }
    });
    me
}

async fn client(addr: SocketAddr) -> Client {
    let opts = ClientOptions {
        discover: false,
        check_timeout: Duration::ZERO,
        ..ClientOptions::default()
    };
    let c = Client::connect(&[addr], opts).await.unwrap();
    assert!(routed(&c), "the first handshake routes group 1");
    c
}

fn routed(c: &Client) -> bool {
    c.with_routes(|t| t.owner(1, &POINT).is_some())
}

/// A backend is disabled and the node pushes it just before it answers a request on the same
/// connection: when the request returns, its route is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_takes_effect_before_the_reply_that_follows_it() {
    for run in 0..RUNS {
        let addr = node(move |req, _, _| {
            let mut out = push(false);
            out.extend(Frame::new(req.header.reply(0, 0, false), Vec::new()).encode());
            out
        })
        .await;
        let c = client(addr).await;
        let h = Header::new(cmd::STATUS, cflags::NEED_ACK | cflags::DIRECT);
        c.request(addr, &h, &[], Duration::from_secs(5))
            .await
            .unwrap();
        assert!(
            !routed(&c),
            "run {run}: the route outlived its disabling push"
        );
    }
}

/// A refresh's handshake is answered from before a backend was enabled, and the push of the
/// enabling follows the answer: the stale answer must not undo the push.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_answer_older_than_a_push_does_not_undo_it() {
    for run in 0..RUNS {
        let addr = node(move |_, handshakes, me| {
            if handshakes == 1 {
                // The refresh's handshake: the node had the backend disabled when it
                // answered, then enabled it and pushed that.
                let mut out = handshake_reply(me, false);
                out.extend(push(true));
                out
            } else {
                // A repeated handshake sees the backend enabled.
                handshake_reply(me, true)
            }
        })
        .await;
        let c = client(addr).await;
        c.refresh().await;
        // The push may still be on its way to the client when the refresh returns (it
        // follows the answer on the wire); once there, it must stay in effect.
        let deadline = Instant::now() + Duration::from_secs(2);
        while !routed(&c) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(
            routed(&c),
            "run {run}: a stale handshake answer undid the push: {:?}",
            c.with_routes(|t| t.entries())
        );
    }
}
