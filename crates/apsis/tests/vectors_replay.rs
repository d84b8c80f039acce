//! Elliptics compatibility, proven on captured traffic.
//!
//! The golden vectors (`crates/apsis-proto/tests/vectors/NN-*.txt`) are real Elliptics 3.0.0.1
//! clients talking to a real `dnet_ioserv` (one node, backend 1 in group 1, as `apsis server`
//! runs by default). Two directions are checked here:
//!
//! * **Server**: every client→server message of a vector is sent, byte for byte and in order
//!   (per connection), to a fresh `apsis server` process, and each of its replies is compared with
//!   the captured reply at the same position: header (cmd, status, trans, flags, id, group,
//!   reserved, trace_id, backend_id) and the payload decoded structurally with `apsis-proto`.
//!   Not compared, because they legitimately differ between two servers: node addresses (ours
//!   must be our own), ring ids (mapped instead: a captured id must come back as the id our
//!   handshake announced), the blob file path (only whether there is one), the record offset in
//!   the blob file, `flen`, a backend's `last_start`, and the monitor JSON contents. Data, sizes,
//!   total_size, record and user flags, checksums, io flags, timestamps (every one here was
//!   supplied by the client) and statuses must match. After the last message each connection
//!   gets a ROUTE_LIST sentinel, so a reply Apsis sends that the capture does not have is caught.
//!   Where Apsis differs on purpose (a settable log level, MONITOR_STAT always answered, the
//!   size in a cached object's LOOKUP, a single node where the capture had two, the garbage
//!   3.0 left in READ_RANGE replies), the test lists the exact difference with its reason, so
//!   anything else fails.
//! * **Client**: `apsis_client` runs the vector's operations against a fake server that answers
//!   with the captured replies; its requests must be byte-identical to the captured ones except
//!   trans, io_attr timestamps and (noted) backend_id, and it must understand the answers.

use apsis_proto::wire::Reader;
use apsis_proto::*;
use sha2::{Digest, Sha512};
use std::collections::HashMap;
use std::fmt::Debug;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

mod common;

// The vectors: the one parser the codec tests use.
#[path = "../../apsis-proto/tests/common/vector_file.rs"]
mod vector_file;
use vector_file::Vector;

fn vectors() -> &'static [Vector] {
    static V: OnceLock<Vec<Vector>> = OnceLock::new();
    V.get_or_init(|| {
        vector_file::load_all(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../apsis-proto/tests/vectors"),
        )
    })
}

fn vector(prefix: &str) -> &'static Vector {
    vector_file::find(vectors(), prefix)
}

fn sha512(b: &[u8]) -> [u8; 64] {
    Sha512::digest(b).into()
}

// ------------------------------------------------------------------------------------------
// A real `apsis server`
// ------------------------------------------------------------------------------------------

struct Server {
    // Dropped first: the process is killed before its directory is removed.
    _srv: common::Server,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Server {
    /// `apsis server --listen 127.0.0.1:0 --data DIR`: backend 1 in group 1, as captured.
    fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let srv = common::Server::start(dir.path(), &[]);
        Server {
            addr: srv.addr,
            _srv: srv,
            _dir: dir,
        }
    }

    /// `apsis server -c FILE` with this TOML; `{DIR}` is replaced by the temp directory.
    fn with_toml(toml: &str) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("apsis.toml");
        std::fs::write(&p, toml.replace("{DIR}", &dir.path().display().to_string())).unwrap();
        let args = vec!["server".into(), "-c".into(), p.display().to_string()];
        let srv = common::Server::spawn(dir.path(), args);
        Server {
            addr: srv.addr,
            _srv: srv,
            _dir: dir,
        }
    }
}

/// How long to wait for any one reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads one frame; `Ok(None)` on a clean close before a new frame.
fn read_frame(s: &mut TcpStream) -> Result<Option<Frame>, String> {
    let mut buf = vec![0u8; HEADER_SIZE];
    let mut got = 0;
    while got < HEADER_SIZE {
        match s.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err("closed inside a header".into()),
            Ok(n) => got += n,
            Err(e) => return Err(format!("no reply: {e}")),
        }
    }
    let size = u64::from_le_bytes(buf[112..120].try_into().unwrap()) as usize;
    buf.resize(HEADER_SIZE + size, 0);
    s.read_exact(&mut buf[HEADER_SIZE..])
        .map_err(|e| format!("short payload: {e}"))?;
    Frame::decode(&buf).map(Some).map_err(|e| e.to_string())
}

// ------------------------------------------------------------------------------------------
// Replaying a vector against the server and comparing the replies
// ------------------------------------------------------------------------------------------

/// One difference between the captured reply and ours.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Diff {
    msg: usize,
    field: String,
    captured: String,
    ours: String,
}

impl std::fmt::Display for Diff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "msg {}: {}: captured {} vs ours {}",
            self.msg, self.field, self.captured, self.ours
        )
    }
}

/// Debug formatting of flags and bytes for diffs.
struct Hx(u64);
impl Debug for Hx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}
struct B<'a>(&'a [u8]);
impl Debug for B<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.len() == ID_SIZE && self.0.iter().any(|b| !b.is_ascii_graphic()) {
            write!(f, "{}", hex(self.0))
        } else {
            write!(f, "b\"{}\"", self.0.escape_ascii())
        }
    }
}

struct Sock {
    s: TcpStream,
    /// Frames read while looking for another transaction's reply.
    pending: Vec<Frame>,
    closed: bool,
}

/// Connection number of the seeding connection.
const SEED_CONN: usize = 1000;

struct Replay {
    v: &'static Vector,
    srv: Server,
    conns: HashMap<usize, Sock>,
    diffs: Vec<Diff>,
    /// Captured ring id -> ours, learnt from the handshakes.
    ring: HashMap<[u8; 64], [u8; 64]>,
    /// Only these capture connections are replayed (multi-node vectors).
    only_conns: Option<Vec<usize>>,
}

impl Replay {
    fn new(prefix: &str, srv: Server) -> Replay {
        Replay {
            v: vector(prefix),
            srv,
            conns: HashMap::new(),
            diffs: Vec::new(),
            ring: HashMap::new(),
            only_conns: None,
        }
    }

    fn sock(&mut self, conn: usize) -> &mut Sock {
        let addr = self.srv.addr;
        self.conns.entry(conn).or_insert_with(|| {
            let s = TcpStream::connect(addr).expect("connect to apsis");
            s.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
            s.set_nodelay(true).unwrap();
            Sock {
                s,
                pending: Vec::new(),
                closed: false,
            }
        })
    }

    fn send(&mut self, conn: usize, bytes: &[u8]) {
        self.sock(conn).s.write_all(bytes).expect("send");
    }

    /// The next frame on `conn` that `want` accepts (others are kept for later).
    fn recv(&mut self, conn: usize, want: impl Fn(&Header) -> bool) -> Result<Frame, String> {
        let s = self.sock(conn);
        if let Some(i) = s.pending.iter().position(|f| want(&f.header)) {
            return Ok(s.pending.remove(i));
        }
        loop {
            match read_frame(&mut s.s)? {
                None => {
                    s.closed = true;
                    return Err("connection closed".into());
                }
                Some(f) if want(&f.header) => return Ok(f),
                Some(f) => s.pending.push(f),
            }
        }
    }

    /// Sends a request and collects its replies up to the first without MORE.
    fn transact(&mut self, conn: usize, bytes: &[u8]) -> Vec<Frame> {
        let trans = Header::decode(bytes).unwrap().trans;
        self.send(conn, bytes);
        let mut out = Vec::new();
        loop {
            let f = self
                .recv(conn, |h| h.is_reply() && h.trans == trans)
                .unwrap_or_else(|e| panic!("{}: trans {trans}: {e}", self.v.name));
            let last = !f.header.has_more();
            out.push(f);
            if last {
                return out;
            }
        }
    }

    /// Writes these requests (whole frames) on a connection of their own; each must succeed.
    fn seed(&mut self, reqs: &[Vec<u8>]) {
        for r in reqs {
            let frames = self.transact(SEED_CONN, r);
            let last = frames.last().unwrap();
            assert_eq!(last.header.status, 0, "{}: seeding failed", self.v.name);
        }
        self.conns.remove(&SEED_CONN);
    }

    /// Replays messages `range` of the vector: requests are sent, captured replies compared
    /// with ours. Skipped: other connections than `only_conns`, replies sent *by* the peer
    /// node (14), and requests our server would have sent itself (14: n2's ROUTE_LIST refresh).
    fn play(&mut self, range: impl IntoIterator<Item = usize>) {
        for n in range {
            let m = &self.v.msgs[n];
            if let Some(only) = &self.only_conns {
                if !only.contains(&m.conn) {
                    continue;
                }
            }
            let h = m.frame.header;
            if m.to_server() {
                if h.is_reply() {
                    continue;
                }
                self.send(m.conn, &m.bytes);
            } else {
                if !h.is_reply() && h.cmd != cmd::UPDATE_IDS {
                    continue;
                }
                self.expect(n, m.conn, &m.frame);
            }
        }
    }

    fn play_all(&mut self) {
        self.play(0..self.v.msgs.len());
    }

    /// Reads our reply matching captured `exp` (same trans, or the same pushed command) and
    /// compares the two.
    fn expect(&mut self, n: usize, conn: usize, exp: &Frame) {
        let eh = exp.header;
        let r = if eh.is_reply() {
            self.recv(conn, |h| h.is_reply() && h.trans == eh.trans)
        } else {
            self.recv(conn, |h| !h.is_reply() && h.cmd == eh.cmd)
        };
        match r {
            Ok(ours) => self.compare(n, exp, &ours),
            Err(e) => self.d(n, "reply", "present", e),
        }
    }

    /// Records a difference when the two formatted values differ.
    fn d(&mut self, n: usize, field: &str, captured: impl Debug, ours: impl Debug) {
        let (c, o) = (format!("{captured:?}"), format!("{ours:?}"));
        if c != o {
            self.diffs.push(Diff {
                msg: n,
                field: field.to_string(),
                captured: c,
                ours: o,
            });
        }
    }

    fn compare(&mut self, n: usize, exp: &Frame, ours: &Frame) {
        let (e, o) = (exp.header, ours.header);
        self.d(n, "cmd", e.cmd, o.cmd);
        self.d(n, "status", e.status, o.status);
        self.d(n, "trans", e.trans, o.trans);
        self.d(n, "flags", Hx(e.flags), Hx(o.flags));
        self.d(n, "backend_id", e.backend_id, o.backend_id);
        self.d(n, "group", e.group, o.group);
        self.d(n, "id", B(&e.id), B(&o.id));
        self.d(n, "reserved", Hx(e.reserved), Hx(o.reserved));
        self.d(n, "trace_id", Hx(e.trace_id), Hx(o.trace_id));
        let (ep, op) = (&exp.payload[..], &ours.payload[..]);
        if ep.is_empty() || op.is_empty() {
            self.d(n, "payload.len", ep.len(), op.len());
            return;
        }
        let r = match (e.cmd, e.is_reply()) {
            (cmd::REVERSE_LOOKUP, true) | (cmd::JOIN, false) => self.node_info(n, ep, op),
            (cmd::ROUTE_LIST, true) => self.route_list(n, ep, op),
            (cmd::UPDATE_IDS, false) => self.update_ids(n, ep, op),
            (cmd::WRITE | cmd::LOOKUP, true) => self.lookup_reply(n, ep, op),
            (cmd::READ, true) => self.read_reply(n, ep, op),
            (cmd::ITERATOR | cmd::SEND, true) => self.iter_reply(n, ep, op),
            (cmd::STATUS, true) => {
                let (c, m) = (NodeStatus::decode(ep), NodeStatus::decode(op));
                c.and_then(|c| m.map(|m| (c, m))).map(|(c, m)| {
                    self.d(n, "nflags", c.nflags, m.nflags);
                    self.d(n, "status_flags", c.status_flags, m.status_flags);
                    self.d(n, "log_level", c.log_level, m.log_level);
                })
            }
            (cmd::MONITOR_STAT, true) => {
                // Contents differ between servers; ours must be a zlib stream of JSON.
                let json = monitor_json(op);
                if let Err(e) = json {
                    self.d(n, "monitor reply", "zlib JSON", e);
                }
                Ok(())
            }
            (cmd::BACKEND_STATUS | cmd::BACKEND_CONTROL, true) => self.backend_list(n, ep, op),
            _ => {
                self.d(n, "payload", B(ep), B(op));
                Ok(())
            }
        };
        if let Err(err) = r {
            self.d(n, "payload decode", "ok", err.to_string());
        }
    }

    fn is_ours(&self, a: &Addr) -> String {
        if a.0 == self.srv.addr {
            "<server>".into()
        } else {
            a.0.to_string()
        }
    }

    fn node_info(&mut self, n: usize, ep: &[u8], op: &[u8]) -> Result<(), ProtoError> {
        let (c, o) = (NodeInfo::decode(ep)?, NodeInfo::decode(op)?);
        self.d(n, "addrs.len", c.addrs.len(), o.addrs.len());
        if let Some(a) = o.addrs.first() {
            let a = self.is_ours(a);
            self.d(n, "addrs[0]", "<server>", a);
        }
        self.d(n, "backends.len", c.backends.len(), o.backends.len());
        for (i, (cb, ob)) in c.backends.iter().zip(&o.backends).enumerate() {
            self.d(
                n,
                &format!("backends[{i}].backend_id"),
                cb.backend_id,
                ob.backend_id,
            );
            self.d(n, &format!("backends[{i}].group"), cb.group, ob.group);
            self.d(n, &format!("backends[{i}].flags"), cb.flags, ob.flags);
            self.d(
                n,
                &format!("backends[{i}].ids.len"),
                cb.ids.len(),
                ob.ids.len(),
            );
            for (ci, oi) in cb.ids.iter().zip(&ob.ids) {
                self.ring.insert(*ci, *oi);
            }
        }
        Ok(())
    }

    fn route_list(&mut self, n: usize, ep: &[u8], op: &[u8]) -> Result<(), ProtoError> {
        let (c, o) = (RouteList::decode(ep)?, RouteList::decode(op)?);
        self.d(n, "node_addr_num", c.node_addr_num, o.node_addr_num);
        self.d(n, "addrs.len", c.addrs.len(), o.addrs.len());
        if let Some(a) = o.addrs.first() {
            let a = self.is_ours(a);
            self.d(n, "addrs[0]", "<server>", a);
        }
        Ok(())
    }

    fn update_ids(&mut self, n: usize, ep: &[u8], op: &[u8]) -> Result<(), ProtoError> {
        let c = decode_backends(&mut Reader::new(ep, "captured update ids"))?;
        let o = decode_backends(&mut Reader::new(op, "our update ids"))?;
        self.d(n, "backends.len", c.len(), o.len());
        for (i, (cb, ob)) in c.iter().zip(&o).enumerate() {
            self.d(
                n,
                &format!("backends[{i}].backend_id"),
                cb.backend_id,
                ob.backend_id,
            );
            self.d(n, &format!("backends[{i}].group"), cb.group, ob.group);
            self.d(n, &format!("backends[{i}].flags"), cb.flags, ob.flags);
            self.d(
                n,
                &format!("backends[{i}].ids.len"),
                cb.ids.len(),
                ob.ids.len(),
            );
            // The ids must be the ones our handshake announced, where the capture's were.
            let mapped: Vec<String> = cb
                .ids
                .iter()
                .map(|id| self.ring.get(id).map(|x| hex(x)).unwrap_or("?".into()))
                .collect();
            let ours: Vec<String> = ob.ids.iter().map(|x| hex(x)).collect();
            self.d(n, &format!("backends[{i}].ids"), mapped, ours);
        }
        Ok(())
    }

    fn lookup_reply(&mut self, n: usize, ep: &[u8], op: &[u8]) -> Result<(), ProtoError> {
        let (c, o) = (LookupReply::decode(ep)?, LookupReply::decode(op)?);
        let a = self.is_ours(&o.addr);
        self.d(n, "addr", "<server>", a);
        let (ci, oi) = (c.info, o.info);
        self.d(n, "checksum", B(&ci.checksum), B(&oi.checksum));
        self.d(n, "record_flags", Hx(ci.record_flags), Hx(oi.record_flags));
        self.d(n, "size", ci.size, oi.size);
        self.d(n, "mtime", ci.mtime, oi.mtime);
        // Path, offset in the blob file and flen are the server's own; only whether there is a
        // path (a disk reply) or not (a cache reply) is compared.
        self.d(n, "path.is_empty", c.path.is_empty(), o.path.is_empty());
        Ok(())
    }

    fn io_attr(&mut self, n: usize, c: &IoAttr, o: &IoAttr) {
        self.d(n, "io.parent", B(&c.parent), B(&o.parent));
        self.d(n, "io.id", B(&c.id), B(&o.id));
        self.d(n, "io.start", c.start, o.start);
        self.d(n, "io.num", c.num, o.num);
        self.d(n, "io.timestamp", c.timestamp, o.timestamp);
        self.d(n, "io.user_flags", Hx(c.user_flags), Hx(o.user_flags));
        self.d(n, "io.total_size", c.total_size, o.total_size);
        self.d(n, "io.record_flags", Hx(c.record_flags), Hx(o.record_flags));
        self.d(n, "io.reserved2", c.reserved2, o.reserved2);
        self.d(n, "io.flags", Hx(c.flags as u64), Hx(o.flags as u64));
        self.d(n, "io.offset", c.offset, o.offset);
        self.d(n, "io.size", c.size, o.size);
    }

    fn read_reply(&mut self, n: usize, ep: &[u8], op: &[u8]) -> Result<(), ProtoError> {
        let ((c, cd), (o, od)) = (IoAttr::split(ep)?, IoAttr::split(op)?);
        self.io_attr(n, &c, &o);
        self.d(n, "data", B(cd), B(od));
        Ok(())
    }

    fn iter_reply(&mut self, n: usize, ep: &[u8], op: &[u8]) -> Result<(), ProtoError> {
        let (mut cr, mut or) = (Reader::new(ep, "captured"), Reader::new(op, "ours"));
        let (c, o) = (
            IteratorResponse::decode(&mut cr)?,
            IteratorResponse::decode(&mut or)?,
        );
        self.d(n, "iter.id", c.id, o.id);
        self.d(n, "iter.key", B(&c.key), B(&o.key));
        self.d(n, "iter.status", c.status, o.status);
        self.d(n, "iter.timestamp", c.timestamp, o.timestamp);
        self.d(n, "iter.user_flags", Hx(c.user_flags), Hx(o.user_flags));
        self.d(n, "iter.size", c.size, o.size);
        self.d(n, "iter.iterated_keys", c.iterated_keys, o.iterated_keys);
        self.d(n, "iter.total_keys", c.total_keys, o.total_keys);
        self.d(
            n,
            "iter.record_flags",
            Hx(c.record_flags),
            Hx(o.record_flags),
        );
        self.d(n, "data", B(cr.rest()), B(or.rest()));
        Ok(())
    }

    fn backend_list(&mut self, n: usize, ep: &[u8], op: &[u8]) -> Result<(), ProtoError> {
        self.d(n, "payload.len (slots)", ep.len(), op.len());
        let (c, o) = (
            BackendStatusList::decode(ep)?,
            BackendStatusList::decode(op)?,
        );
        self.d(n, "backends.len", c.backends.len(), o.backends.len());
        for (i, (cb, ob)) in c.backends.iter().zip(&o.backends).enumerate() {
            let f = |s: &str| format!("backends[{i}].{s}");
            self.d(n, &f("backend_id"), cb.backend_id, ob.backend_id);
            self.d(n, &f("state"), cb.state, ob.state);
            self.d(n, &f("defrag_state"), cb.defrag_state, ob.defrag_state);
            self.d(
                n,
                &f("last_start_err"),
                cb.last_start_err,
                ob.last_start_err,
            );
            self.d(n, &f("read_only"), cb.read_only, ob.read_only);
            self.d(n, &f("delay"), cb.delay_ms, ob.delay_ms);
            // last_start is the server's own start time: only that it is set.
            self.d(n, &f("last_start set"), true, ob.last_start.sec > 0);
        }
        Ok(())
    }

    /// A ROUTE_LIST sentinel on every open connection: nothing may arrive before its reply
    /// (a reply the capture does not have), and nothing may be left unmatched.
    fn finish(&mut self) {
        let mut conns: Vec<usize> = self.conns.keys().copied().collect();
        conns.sort();
        for c in conns {
            let s = self.conns.get_mut(&c).unwrap();
            let mut extra: Vec<Frame> = std::mem::take(&mut s.pending);
            if !s.closed {
                let mut h = Header::new(cmd::ROUTE_LIST, cflags::DIRECT | cflags::NOLOCK);
                h.trans = 0xdead_0000 + c as u64;
                s.s.write_all(&h.encode()).unwrap();
                loop {
                    match read_frame(&mut s.s) {
                        Ok(Some(f)) if f.header.trans == h.trans => break,
                        Ok(Some(f)) => extra.push(f),
                        other => panic!("{} conn {c}: sentinel: {other:?}", self.v.name),
                    }
                }
            }
            for f in extra {
                self.diffs.push(Diff {
                    msg: usize::MAX,
                    field: format!("conn {c}: extra frame"),
                    captured: "none".into(),
                    ours: format!("{:?}", f.header),
                });
            }
        }
    }

    /// Ends the replay: the differences found must be exactly `allowed`
    /// (msg, field, captured, ours), each one a documented Apsis behaviour.
    fn check(mut self, allowed: &[(usize, &str, &str, &str)]) {
        self.finish();
        let want: Vec<Diff> = allowed
            .iter()
            .map(|(m, f, c, o)| Diff {
                msg: *m,
                field: f.to_string(),
                captured: c.to_string(),
                ours: o.to_string(),
            })
            .collect();
        if self.diffs != want {
            let got: Vec<String> = self.diffs.iter().map(|d| d.to_string()).collect();
            let want: Vec<String> = want.iter().map(|d| d.to_string()).collect();
            panic!(
                "{}: differences from the capture\n  found:\n    {}\n  allowed:\n    {}",
                self.v.name,
                got.join("\n    "),
                want.join("\n    ")
            );
        }
    }
}

fn monitor_json(p: &[u8]) -> Result<serde_json::Value, String> {
    if !p.starts_with(&[0x78, 0x9c]) {
        return Err(format!("not a zlib stream: {:02x?}", &p[..p.len().min(2)]));
    }
    let mut s = String::new();
    flate2::read::ZlibDecoder::new(p)
        .read_to_string(&mut s)
        .map_err(|e| e.to_string())?;
    let v: serde_json::Value = serde_json::from_str(&s).map_err(|e| e.to_string())?;
    if !v.is_object() {
        return Err(format!("not a JSON object: {s}"));
    }
    Ok(v)
}

/// The captured bytes of message `n` of vector `prefix`.
fn captured(prefix: &str, n: usize) -> Vec<u8> {
    vector(prefix).msgs[n].bytes.clone()
}

/// A WRITE frame (group 1, backend 1) recreating an object exactly: id, data, timestamp and
/// user flags.
fn seed_write(id: [u8; 64], data: &[u8], timestamp: Time, user_flags: u64, trans: u64) -> Vec<u8> {
    let mut h = Header::new(cmd::WRITE, cflags::NEED_ACK);
    h.id = id;
    h.group = 1;
    h.backend_id = 1;
    h.trans = trans;
    let io = IoAttr {
        id,
        timestamp,
        user_flags,
        size: data.len() as u64,
        ..IoAttr::default()
    };
    let mut payload = Vec::new();
    io.encode_into(&mut payload);
    payload.extend_from_slice(data);
    Frame::new(h, payload).encode()
}

/// WRITEs recreating b1, b2, b3 as vector 11 found them (its backend was wiped and written
/// outside the capture): key, data, timestamp and user flags from its iterator replies. 10b,
/// 11, 21, 24 and 26 ran against this state.
fn b123() -> Vec<Vec<u8>> {
    let v = vector("11");
    (5..=7)
        .map(|n| {
            let p = &v.msgs[n].frame.payload;
            let mut r = Reader::new(p, "iterator response");
            let it = IteratorResponse::decode(&mut r).unwrap();
            seed_write(
                it.key,
                r.rest(),
                it.timestamp,
                it.user_flags,
                900 + n as u64,
            )
        })
        .collect()
}

/// Replays the whole vector on a fresh default server, after `seed`.
fn replay(prefix: &str, seed: &[Vec<u8>], allowed: &[(usize, &str, &str, &str)]) {
    let mut r = Replay::new(prefix, Server::start());
    r.seed(seed);
    r.play_all();
    r.check(allowed);
}

// ---- one test per vector ------------------------------------------------------------------

#[test]
fn replay_01_connect_handshake() {
    replay("01", &[], &[]);
}

#[test]
fn replay_01b_cpp_ioclient_namespace() {
    replay("01b", &[], &[]);
}

#[test]
fn replay_02_write() {
    replay("02", &[], &[]);
}

#[test]
fn replay_03_read() {
    replay("03", &[captured("02", 4)], &[]);
}

#[test]
fn replay_04_lookup() {
    replay("04", &[captured("02", 4)], &[]);
}

#[test]
fn replay_05_remove_then_read() {
    replay("05", &[captured("02", 4)], &[]);
}

/// An APPEND that creates the key is a plain record (0x140); the second append is 0x150.
#[test]
fn replay_06_append() {
    replay("06", &[], &[]);
}

#[test]
fn replay_07_write_at_offset() {
    replay("07", &[], &[]);
}

/// Each PLAIN_WRITE reply carries that write's own timestamp, as Elliptics does.
#[test]
fn replay_08_prepare_plain_commit() {
    replay("08", &[], &[]);
}

#[test]
fn replay_09_cas() {
    replay("09", &[], &[]);
}

#[test]
fn replay_10_bulk_read() {
    replay("10", &[], &[]);
}

#[test]
fn replay_10b_bulk_read_one_missing() {
    replay("10b", &b123(), &[]);
}

#[test]
fn replay_11_iterator() {
    replay("11", &b123(), &[]);
}

#[test]
fn replay_12_monitor_stat() {
    replay("12", &[], &[]);
}

/// The capture's server had no monitor configured and answered `{"monitor_status":"disabled"}`;
/// Apsis always answers MONITOR_STAT with its statistics (the monitor port only controls the
/// HTTP listener, see apsis-node cmd/monitor.rs). Structure and flags are the same.
#[test]
fn replay_12b_monitor_stat_always_answered() {
    let v = vector("12b");
    let mut r = Replay::new("12b", Server::start());
    r.play(0..4);
    let frames = r.transact(0, &v.msgs[4].bytes);
    assert_eq!(frames.len(), 2, "stats reply + ack");
    r.compare(5, &v.msgs[5].frame, &frames[0]);
    r.compare(6, &v.msgs[6].frame, &frames[1]);
    let json = monitor_json(&frames[0].payload).unwrap();
    assert_ne!(json["monitor_status"], "disabled", "{json}");
    assert!(json.get("backends").is_some(), "asked for backend: {json}");
    r.check(&[]);
}

#[test]
fn replay_13_handshake_only() {
    replay("13", &[], &[]);
}

/// Node join: our server plays n2 (group 2, auth cookie 'elliptics-ref' as in the capture's
/// config) and n1's side is replayed: REVERSE_LOOKUP, JOIN (no reply), AUTH, ROUTE_LIST, and
/// n1's periodic ROUTE_LISTs. n2's own periodic ROUTE_LIST requests (msgs 7, 8, 15, 16, and n1's
/// replies to them) are replayed on the other side, by `replay_14_node_join_as_n1`.
#[test]
fn replay_14_node_join_as_n2() {
    let srv = Server::with_toml(
        r#"
        [node]
        addresses = ["127.0.0.1:0"]
        auth_cookie = "elliptics-ref"
        [[backend]]
        id = 1
        group = 2
        dir = "{DIR}/backend-1"
        "#,
    );
    let mut r = Replay::new("14", srv);
    r.only_conns = Some(vec![1]);
    r.play_all();
    // ROUTE_LIST from a joined node leaves the requester out, as Elliptics does: the capture
    // matches with no allowed difference. (Apsis also tries to connect back to the joiner,
    // whose captured address is not listening here; that only logs a warning.)
    r.check(&[]);
}

/// Node join, the other side: our server plays n1, whose remote is n2, and the test plays n2
/// from the capture on the connection our server opens. n1's handshake, JOIN, AUTH (the
/// capture's cookie) and ROUTE_LIST are compared with Elliptics n1's and answered with n2's captured replies; then n2's own
/// ROUTE_LIST refreshes (msgs 7, 8), which an Elliptics node sends to a node that joined it
/// over the joining connection, must be answered there as n1 answered them (9, 10).
#[test]
fn replay_14_node_join_as_n1() {
    let n2 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let srv = Server::with_toml(&format!(
        r#"
        [node]
        addresses = ["127.0.0.1:0"]
        remotes = ["{}"]
        auth_cookie = "elliptics-ref"
        check_timeout_secs = 3600
        [[backend]]
        id = 1
        group = 1
        dir = "{{DIR}}/backend-1"
        "#,
        n2.local_addr().unwrap()
    ));
    let (s, _) = n2.accept().unwrap();
    s.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    let mut r = Replay::new("14", srv);
    r.conns.insert(
        1,
        Sock {
            s,
            pending: Vec::new(),
            closed: false,
        },
    );
    let v = r.v;
    let request = |c| move |h: &Header| !h.is_reply() && h.cmd == c;
    let ours = r.recv(1, request(cmd::REVERSE_LOOKUP)).unwrap();
    r.compare(0, &v.msgs[0].frame, &ours);
    r.send(1, &v.msgs[1].bytes);
    let ours = r.recv(1, request(cmd::JOIN)).unwrap();
    r.compare(2, &v.msgs[2].frame, &ours);
    let answer = |r: &mut Replay, n: usize, ours: &Frame| {
        let mut reply = v.msgs[n].frame.clone();
        reply.header.trans = ours.header.trans;
        r.send(1, &reply.encode());
    };
    let ours = r.recv(1, request(cmd::AUTH)).unwrap();
    r.compare(3, &v.msgs[3].frame, &ours);
    answer(&mut r, 5, &ours);
    let ours = r.recv(1, request(cmd::ROUTE_LIST)).unwrap();
    r.compare(4, &v.msgs[4].frame, &ours);
    answer(&mut r, 6, &ours);
    // n2's refreshes, on the same connection.
    r.send(1, &v.msgs[7].bytes);
    r.send(1, &v.msgs[8].bytes);
    r.expect(9, 1, &v.msgs[9].frame);
    r.expect(10, 1, &v.msgs[10].frame);
    // Transaction numbers are each sender's own count (Elliptics' n1 had used 1 elsewhere).
    r.check(&[(3, "trans", "2", "1"), (4, "trans", "3", "2")]);
}

/// A client connected to 2 nodes writing to groups 1 and 2: only its connection to n1
/// (group 1) is replayed; n1's ROUTE_LIST listed n2 as well.
#[test]
fn replay_14b_two_groups_n1_side() {
    let mut r = Replay::new("14b", Server::start());
    r.only_conns = Some(vec![0]);
    r.play_all();
    r.check(&[(3, "addrs.len", "2", "1")]);
}

#[test]
fn replay_15_backend_status() {
    replay("15", &[], &[]);
}

/// STATUS: the capture's node ran with `join: true, flags: 4` (nflags 5); `apsis server` runs
/// with neither. Elliptics 3.0 ignores a log level sent over the wire and keeps reporting 2;
/// Apsis applies it (a documented Apsis feature, apsis-node cmd/system.rs) and reports 3.
#[test]
fn replay_16_node_status() {
    replay(
        "16",
        &[],
        &[
            (5, "nflags", "5", "0"),
            (8, "nflags", "5", "0"),
            (8, "log_level", "2", "3"),
        ],
    );
}

#[test]
fn replay_17_backend_readonly() {
    replay("17", &[], &[]);
}

#[test]
fn replay_18_checksums_e2big() {
    replay("18", &[], &[]);
}

#[test]
fn replay_19_user_flags_timestamp() {
    replay("19", &[], &[]);
}

/// WRITEs recreating the 7 objects vector 20's READ_RANGE found (written by earlier captures
/// on that server): key, data, timestamp and user flags from its per-key READ replies.
fn range20_objects() -> Vec<Vec<u8>> {
    let v = vector("20");
    (5..=11)
        .map(|n| {
            let f = &v.msgs[n].frame;
            let (rio, data) = IoAttr::split(&f.payload).unwrap();
            seed_write(
                f.header.id,
                data,
                rio.timestamp,
                rio.user_flags,
                900 + n as u64,
            )
        })
        .collect()
}

/// READ_RANGE over the whole id space: every object as a READ reply in id order, then the
/// summary (the request's io_attr with num = 7), then the ack. The per-key replies differ
/// only where the 3.0 server sent garbage or its own bug: num, total_size, record_flags and
/// reserved2 are uninitialised stack bytes there (ours: 0, the object's size, its record
/// flags, 0), and
/// its offset counts the 48-byte ext header (ours: the offset read from, 0).
#[test]
fn replay_20_read_range() {
    let v = vector("20");
    let mut r = Replay::new("20", Server::start());
    r.seed(&range20_objects());
    r.play_all();
    let mut allowed: Vec<(usize, &str, String, String)> = Vec::new();
    for n in 5..=11 {
        let (c, _) = IoAttr::split(&v.msgs[n].frame.payload).unwrap();
        let size = c.size;
        allowed.push((n, "io.num", c.num.to_string(), "0".into()));
        allowed.push((
            n,
            "io.total_size",
            c.total_size.to_string(),
            size.to_string(),
        ));
        allowed.push((
            n,
            "io.record_flags",
            format!("{:?}", Hx(c.record_flags)),
            format!("{:?}", Hx(0x140)),
        ));
        allowed.push((n, "io.reserved2", c.reserved2.to_string(), "0".into()));
        allowed.push((n, "io.offset", "48".into(), "0".into()));
    }
    let allowed: Vec<(usize, &str, &str, &str)> = allowed
        .iter()
        .map(|(n, f, c, o)| (*n, *f, c.as_str(), o.as_str()))
        .collect();
    r.check(&allowed);
}

/// The client timed out after 1 s (ETIMEDOUT is client-side); the server's reply came after
/// the 2 s backend delay set by BACKEND_CONTROL CTL. Replayed in full: the late reply must match.
#[test]
fn replay_21_backend_delay() {
    let v = vector("21");
    let mut r = Replay::new("21", Server::start());
    r.seed(&b123());
    r.play(0..6);
    let t = Instant::now();
    r.play(6..8);
    let took = t.elapsed();
    r.play(8..v.msgs.len());
    r.check(&[]);
    assert!(
        took >= Duration::from_millis(1900),
        "READ with a 2000 ms backend delay answered after {took:?}"
    );
}

/// An incompatible version: the connection is closed and nothing is sent; 3.0.9.9 is accepted.
#[test]
fn replay_22_version_mismatch() {
    let v = vector("22");
    let mut r = Replay::new("22", Server::start());
    r.send(0, &v.msgs[0].bytes);
    match read_frame(&mut r.sock(0).s) {
        Ok(None) => r.sock(0).closed = true,
        other => panic!("version 2.26 must be closed without a reply: {other:?}"),
    }
    r.play(1..3);
    r.check(&[]);
}

/// AUTH: the capture's server had auth_cookie 'elliptics-ref' (Apsis' default is empty), so
/// this server is configured with it.
#[test]
fn replay_23_auth_cookie() {
    let srv = Server::with_toml(
        r#"
        [node]
        addresses = ["127.0.0.1:0"]
        auth_cookie = "elliptics-ref"
        [[backend]]
        id = 1
        group = 1
        dir = "{DIR}/backend-1"
        "#,
    );
    let mut r = Replay::new("23", srv);
    r.play_all();
    r.check(&[]);
}

#[test]
fn replay_24_raw_errors() {
    replay("24", &b123(), &[]);
}

/// The route list of the node at `addr` has `n` addresses (its peers are connected).
fn wait_for_peers(addr: SocketAddr, n: usize) {
    let t = Instant::now();
    loop {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
        let mut h = Header::new(cmd::ROUTE_LIST, cflags::DIRECT | cflags::NOLOCK);
        h.trans = 1;
        s.write_all(&h.encode()).unwrap();
        let f = read_frame(&mut s).unwrap().unwrap();
        if RouteList::decode(&f.payload).unwrap().addrs.len() >= n {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "peers never connected"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SEND on a real pair of nodes, as captured: n2 serves group 2, n1 serves group 1 and has n2
/// as its remote. The client's connection to n1 is replayed in full (its ROUTE_LIST lists
/// both nodes, the key is written, SEND answers one iterator response and an ack); then the
/// key is read from n2 as the capture's client did, with the captured reply.
#[test]
fn replay_25_server_send() {
    let v = vector("25");
    let n2 = Server::with_toml(
        "[node]\naddresses = [\"127.0.0.1:0\"]\n[[backend]]\nid = 1\ngroup = 2\ndir = \"{DIR}/b1\"\n",
    );
    let n1 = Server::with_toml(&format!(
        "[node]\naddresses = [\"127.0.0.1:0\"]\nremotes = [\"{}\"]\n[[backend]]\nid = 1\ngroup = 1\ndir = \"{{DIR}}/b1\"\n",
        n2.addr
    ));
    wait_for_peers(n1.addr, 2);
    let mut r = Replay::new("25", n1);
    r.only_conns = Some(vec![0]);
    r.play_all();
    // The capture's verification read, on a connection to n2.
    let mut s = TcpStream::connect(n2.addr).unwrap();
    s.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    s.write_all(&v.msgs[13].bytes).unwrap();
    let got = read_frame(&mut s).unwrap().unwrap();
    r.compare(14, &v.msgs[14].frame, &got);
    r.check(&[]);
}

#[test]
fn replay_26_backend_disable_enable() {
    replay("26", &b123(), &[]);
}

/// Cache flags on a backend without a cache: CACHE / CACHE_ONLY are served from disk (as an
/// Elliptics server without a cache does). So where the capture's server answered from its
/// cache (record_flags 0, no path, LOOKUP size 0), Apsis answers as for a disk record. Data,
/// sizes, timestamps and statuses are the same.
#[test]
fn replay_27_cache_served_from_disk() {
    replay(
        "27",
        &[],
        &[
            (5, "record_flags", "0x0", "0x140"),
            (5, "path.is_empty", "true", "false"),
            (7, "io.record_flags", "0x0", "0x140"),
            (9, "record_flags", "0x0", "0x140"),
            (9, "size", "0", "8"),
            (9, "path.is_empty", "true", "false"),
            (11, "record_flags", "0x0", "0x140"),
            (11, "path.is_empty", "true", "false"),
        ],
    );
}

/// The same on a backend with a cache, as the capture's server had: the replies are the
/// capture's, except that a LOOKUP of a cached object reports its size (Elliptics 3.0
/// reports 0 there).
#[test]
fn replay_27_cache() {
    let srv = Server::with_toml(
        "[node]\naddresses = [\"127.0.0.1:0\"]\n[[backend]]\nid = 1\ngroup = 1\n\
         dir = \"{DIR}/b1\"\ncache_size = \"64M\"\n",
    );
    let mut r = Replay::new("27", srv);
    r.play_all();
    r.check(&[(9, "size", "0", "8")]);
}

// ------------------------------------------------------------------------------------------
// The client against the captured server replies
// ------------------------------------------------------------------------------------------

/// A fake server answering with the captured replies of one vector.
struct Fake {
    addr: SocketAddr,
    state: Arc<Mutex<FakeState>>,
}

#[derive(Default)]
struct FakeState {
    /// Index of the next captured message.
    next: usize,
    diffs: Vec<String>,
}

/// Header and io_attr bytes the client legitimately chooses: trans, backend_id (compared
/// apart), the io_attr timestamp of WRITE / READ / DEL, and the io_attr timestamp, user
/// flags, total size, record flags and reserved fields of READ_RANGE, and its header's
/// `reserved` (stack garbage from the 3.0 client).
fn masked(b: &[u8]) -> Vec<u8> {
    let mut b = b.to_vec();
    b[104..112].fill(0);
    b[84..88].fill(0);
    let c = i32::from_le_bytes(b[80..84].try_into().unwrap());
    if matches!(c, cmd::WRITE | cmd::READ | cmd::DEL) && b.len() >= HEADER_SIZE + IoAttr::SIZE {
        b[HEADER_SIZE + 144..HEADER_SIZE + 160].fill(0);
    }
    if c == cmd::READ_RANGE && b.len() >= HEADER_SIZE + IoAttr::SIZE {
        b[68..76].fill(0);
        b[HEADER_SIZE + 144..HEADER_SIZE + 188].fill(0);
    }
    b
}

impl Fake {
    async fn start(prefix: &str) -> Fake {
        let v = vector(prefix);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let state = Arc::new(Mutex::new(FakeState::default()));
        let st = state.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = l.accept().await {
                let st = st.clone();
                tokio::spawn(Fake::serve(v, sock, addr, st));
            }
        });
        Fake { addr, state }
    }

    async fn serve(
        v: &'static Vector,
        mut sock: tokio::net::TcpStream,
        me: SocketAddr,
        st: Arc<Mutex<FakeState>>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let mut buf = vec![0u8; HEADER_SIZE];
            if sock.read_exact(&mut buf).await.is_err() {
                return;
            }
            let size = u64::from_le_bytes(buf[112..120].try_into().unwrap()) as usize;
            buf.resize(HEADER_SIZE + size, 0);
            if sock.read_exact(&mut buf[HEADER_SIZE..]).await.is_err() {
                return;
            }
            let ours = Header::decode(&buf).unwrap();
            let mut replies = Vec::new();
            {
                let mut s = st.lock().unwrap();
                let Some(i) = (s.next..v.msgs.len()).find(|&i| v.msgs[i].to_server()) else {
                    s.diffs.push(format!("unexpected request {ours:?}"));
                    return;
                };
                let m = &v.msgs[i];
                let cap = m.frame.header;
                if masked(&m.bytes) != masked(&buf) {
                    s.diffs.push(format!(
                        "msg {}: request differs\n  captured {}\n  ours     {}",
                        m.n,
                        hex(&masked(&m.bytes)),
                        hex(&masked(&buf))
                    ));
                }
                if cap.backend_id != ours.backend_id {
                    s.diffs.push(format!(
                        "msg {}: backend_id captured {} vs ours {}",
                        m.n, cap.backend_id, ours.backend_id
                    ));
                }
                let mut j = i + 1;
                while j < v.msgs.len() && !v.msgs[j].to_server() {
                    let mut f = v.msgs[j].frame.clone();
                    if f.header.trans == cap.trans {
                        f.header.trans = ours.trans;
                    }
                    // The fake server stands where the captured one was.
                    match (f.header.cmd, f.header.is_reply()) {
                        (cmd::REVERSE_LOOKUP, true) => {
                            let mut ni = NodeInfo::decode(&f.payload).unwrap();
                            ni.addrs = vec![Addr(me)];
                            f.payload = ni.encode().into();
                        }
                        (cmd::ROUTE_LIST, true) => {
                            let mut rl = RouteList::decode(&f.payload).unwrap();
                            rl.addrs = vec![Addr(me)];
                            f.payload = rl.encode().into();
                        }
                        _ => {}
                    }
                    replies.push(f.encode());
                    j += 1;
                }
                s.next = j;
            }
            for r in replies {
                if sock.write_all(&r).await.is_err() {
                    return;
                }
            }
        }
    }

    async fn session(&self) -> apsis_client::Session {
        let c = apsis_client::Client::connect(&[self.addr], Default::default())
            .await
            .expect("client connects to the fake server");
        let mut s = c.session(vec![1]);
        s.timeout = Duration::from_secs(3);
        s
    }

    /// Every captured message was used and every request matched.
    fn check(&self, prefix: &str) {
        let s = self.state.lock().unwrap();
        assert!(s.diffs.is_empty(), "{prefix}:\n{}", s.diffs.join("\n"));
        assert_eq!(
            s.next,
            vector(prefix).msgs.len(),
            "{prefix}: the client stopped before the capture's end"
        );
    }
}

fn errno_of<T: Debug>(r: apsis_client::Result<T>) -> i32 {
    r.expect_err("an error").errno()
}

#[tokio::test]
async fn client_01_connect() {
    let f = Fake::start("01").await;
    let s = f.session().await;
    assert_eq!(s.client().nodes(), vec![f.addr]);
    f.check("01");
}

#[tokio::test]
async fn client_02_write() {
    let f = Fake::start("02").await;
    let s = f.session().await;
    let w = s.write(b"k1", b"hello").await.unwrap();
    let lr = w.groups[0].result.clone().unwrap().expect("file info");
    assert_eq!((lr.info.size, lr.info.record_flags), (5, 0x140));
    assert_eq!(lr.path, b"/srv/elliptics/run/1node/n1/data/data-0.0");
    f.check("02");
}

#[tokio::test]
async fn client_03_read() {
    let f = Fake::start("03").await;
    let s = f.session().await;
    let r = s.read(b"k1", 0, 0).await.unwrap();
    assert_eq!(r.data, &b"hello"[..]);
    assert_eq!(
        (r.io.total_size, r.io.timestamp.sec, r.io.timestamp.nsec),
        (5, 1795334798, 910339000)
    );
    f.check("03");
}

#[tokio::test]
async fn client_04_lookup() {
    let f = Fake::start("04").await;
    let s = f.session().await;
    let (g, lr) = s.lookup(b"k1").await.unwrap();
    assert_eq!((g, lr.info.size, lr.info.offset), (1, 5, 144));
    f.check("04");
}

#[tokio::test]
async fn client_05_remove_then_read() {
    let f = Fake::start("05").await;
    let s = f.session().await;
    s.remove(b"k1").await.unwrap();
    assert_eq!(errno_of(s.read(b"k1", 0, 0).await), -errno::ENOENT);
    f.check("05");
}

#[tokio::test]
async fn client_09_cas() {
    let f = Fake::start("09").await;
    let s = f.session().await;
    s.write(b"k9", b"original").await.unwrap();
    let bad = s.write_cas(b"k9", b"replacement", [1; 64]).await;
    assert_eq!(errno_of(bad), -77, "EBADFD");
    let ok = s
        .write_cas(b"k9", b"replacement", sha512(b"original"))
        .await
        .unwrap();
    let lr = ok.groups[0].result.clone().unwrap().unwrap();
    assert_eq!(lr.info.size, 11);
    f.check("09");
}

/// READ_RANGE over the whole id space of a one-backend group: one request, the objects in
/// order, the summary's count.
#[tokio::test]
async fn client_20_read_range() {
    let f = Fake::start("20").await;
    let s = f.session().await;
    let r = s
        .read_range(1, [0; 64], [0xff; 64], Default::default())
        .await
        .unwrap();
    assert_eq!(r.count, 7);
    let data: Vec<&[u8]> = r.items.iter().map(|x| &x.data[..]).collect();
    assert_eq!(
        data,
        vec![
            &b"n"[..],
            b"one",
            b"m",
            b"cached",
            b"three",
            b"checksum me",
            b"two2"
        ]
    );
    assert_eq!(r.items[2].io.user_flags, 0x1122334455667788);
    f.check("20");
}

#[tokio::test]
async fn client_18_checksums_e2big() {
    let f = Fake::start("18").await;
    let mut s = f.session().await;
    s.write(b"ck", b"checksum me").await.unwrap();
    s.ioflags = ioflags::CHECKSUM;
    let r = s.read(b"ck", 0, 0).await.unwrap();
    assert_eq!(r.data, &b"checksum me"[..]);
    assert_eq!(r.io.parent, sha512(b"checksum me"));
    s.ioflags = 0;
    s.cflags = cflags::CHECKSUM;
    let (_, lr) = s.lookup(b"ck").await.unwrap();
    assert_eq!(lr.info.checksum, sha512(b"checksum me"));
    s.cflags = 0;
    assert_eq!(errno_of(s.read(b"ck", 100, 0).await), -7, "E2BIG");
    f.check("18");
}
