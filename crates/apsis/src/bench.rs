//! `apsis bench`: a load generator for an Apsis node, or a Redis server with the same load.
//!
//! Each connection is its own TCP connection; each keeps `inflight` requests outstanding.
//! Keys are drawn uniformly from `bench-0 .. bench-{keys-1}`; an operation is a write with
//! probability `write_ratio`, else a read. Reads need the keys to exist, so they are written
//! first (untimed) unless `--no-prefill`.
//!
//! Two ways to drive an Apsis node (`--client`):
//! - `session` (default): each connection is its own [`apsis_client::Session`]'s client, the
//!   library users call: routing, requests multiplexed on the connection by transaction,
//!   a reader task per connection, timeouts, fallback and read repair. Works with a cluster.
//! - `plain`: a protocol loop like the one driving Redis ([`wire_worker`]): each connection
//!   writes its requests' frames (a READ or WRITE as the session builds it: the key's SHA-512
//!   id, its backend from the route table, NEED_ACK, an io_attr) on its own socket and reads
//!   the replies back until each request's final one. One node only. It measures the server
//!   with as little of the load tool's own work as the RESP loop leaves for Redis, which
//!   matters where the two share the machine's cores. So each key's id and backend are made
//!   once, before the run (up to [`TARGETS_MAX`] keys), as an application that keeps its
//!   keys' ids does (the session's `*_id` calls). The RESP loop has nothing of the kind to
//!   make: Redis hashes a key in the server, where its cost is counted. `--client session`
//!   hashes every key per request.
//!
//! Redis is driven by a RESP loop, the same [`wire_worker`] as the plain loop: pipelined
//! batches of `inflight` SET or GET commands. Both loops write a batch from one task and read
//! its replies in another, as the client library does.
//!
//! Besides throughput and latency, a run reports the CPU time it cost per operation (user and
//! system, from `/proc`): the load tool's own, and with `--server-pid` the server's. On a
//! machine where the tool and the server share the cores, throughput is the cores divided by
//! that total, less what stayed idle, so the split shows which side a difference comes from.
//! Then the host's idle share over the run and its steal (`/proc/stat`: the share of the CPUs
//! the hypervisor gave other guests; a run with much of it measured the host's neighbours as
//! much as the servers), and how often each side's threads went to sleep per operation
//! (voluntary context switches): each sleep costs the other side a wake-up and may leave a
//! CPU idle, so two loops of equal CPU per operation can still differ in throughput.
//!
//! The tool keeps its own cost per request small, for both targets alike: each connection
//! counts into its own [`Tally`] (summed at the end) and formats keys into a buffer it keeps.

use crate::ClientOpts;
use apsis_proto::{cmd, Header, IoAttr, HEADER_SIZE};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Args)]
pub struct BenchArgs {
    /// What to load: apsis or redis.
    #[arg(long, default_value = "apsis")]
    target: String,
    /// Redis address (with --target redis).
    #[arg(long, default_value = "127.0.0.1:6379")]
    redis: String,
    /// TCP connections.
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 1)]
    inflight: usize,
    /// Value size (K/M suffixes).
    #[arg(long, default_value = "1K")]
    value_size: String,
    /// Fraction of operations that are writes (0 = only reads, 1 = only writes).
    #[arg(long, default_value_t = 0.0)]
    write_ratio: f64,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 10000)]
    keys: u64,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Do not write the keys before a run with reads.
    #[arg(long)]
    no_prefill: bool,
    /// Also report this (local) server process's CPU time per operation.
    #[arg(long)]
    server_pid: Option<u32>,
    /// How to drive an Apsis node: `session` (the client library) or `plain` (a protocol
    /// loop per connection, as for Redis; one node only).
    #[arg(long, value_enum, default_value = "session")]
    client: ClientKind,
    #[command(flatten)]
    c: ClientOpts,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ClientKind {
    Session,
    Plain,
}

fn parse_size(s: &str) -> anyhow::Result<usize> {
    let t = s.trim();
    let (n, m) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    Ok(n.parse::<usize>()? * m)
}

/// The load every worker runs, and its stop flag.
struct Load {
    stop: AtomicBool,
    /// The value written (and expected back).
    value: Vec<u8>,
    /// Keys are `bench-0 .. bench-{keys-1}`.
    keys: u64,
    /// Requests in flight per connection (the RESP and plain loops write them in one go).
    inflight: usize,
    write_ratio: f64,
}

/// What one worker did; summed when the run ends. Counted in the worker, not in counters every
/// worker shares: two atomic adds per request on one cache line, moved between the CPUs, were
/// load-tool cost in every figure.
struct Tally {
    hist: Histogram<u64>,
    ops: u64,
    bytes: u64,
    errors: u64,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            hist: Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
            ops: 0,
            bytes: 0,
            errors: 0,
        }
    }
}

/// Writes the name of key `n` into `key` (kept by the worker: no allocation per request).
fn key_name(key: &mut String, n: u64) {
    use std::fmt::Write;
    key.clear();
    let _ = write!(key, "bench-{n}");
}

/// Up to this many keys the plain loop makes each key's id and backend before the run (68
/// bytes a key); past it, per request.
const TARGETS_MAX: u64 = 1 << 20;

pub async fn run(a: BenchArgs) -> anyhow::Result<()> {
    let value: Vec<u8> = (0..parse_size(&a.value_size)?)
        .map(|i| (i * 31 + 7) as u8)
        .collect();
    let keys = a.keys.max(1);
    // A socket per connection: the default soft limit (1024) would cap `--connections`.
    apsis_node::fdlimit::raise();
    let redis = match a.target.as_str() {
        "apsis" => false,
        "redis" => true,
        t => anyhow::bail!("target {t:?}: apsis or redis"),
    };
    if let Some(p) = a.server_pid {
        anyhow::ensure!(
            CpuTime::of(Some(p)).is_some(),
            "--server-pid {p}: no such process here (/proc/{p}/stat)"
        );
    }
    let n = a.connections.max(1);
    let plain = match (redis, a.client) {
        (false, ClientKind::Plain) => Some(Arc::new(Plain::new(a.c.session().await?, keys)?)),
        _ => None,
    };
    // Connections first (not timed): a session each, or a socket each (RESP or plain).
    let mut sessions = Vec::new();
    let mut socks = Vec::new();
    for _ in 0..n {
        if redis {
            socks.push(
                connect(&a.redis)
                    .await
                    .map_err(|e| anyhow::anyhow!("redis {}: {e}", a.redis))?,
            );
        } else if let Some(p) = &plain {
            socks.push(
                connect(&p.addr.to_string())
                    .await
                    .map_err(|e| anyhow::anyhow!("{}: {e}", p.addr))?,
            );
        } else {
            sessions.push(a.c.session().await?);
        }
    }
    if a.write_ratio < 1.0 && !a.no_prefill {
        let t = Instant::now();
        match (&plain, socks.first_mut()) {
            (None, Some(conn)) => prefill_redis(conn, keys, &value).await?,
            // The plain loop's keys are written through its session, `n` requests at a time.
            (Some(p), _) => prefill(&vec![p.session.clone(); n], keys, &value).await?,
            (None, None) => prefill(&sessions, keys, &value).await?,
        }
        eprintln!(
            "prefilled {keys} keys in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    let load = Arc::new(Load {
        stop: AtomicBool::new(false),
        value,
        keys,
        inflight: a.inflight.max(1),
        write_ratio: a.write_ratio,
    });
    let mut tasks = Vec::new();
    let started = Instant::now();
    let cpu_before = (
        CpuTime::of(None),
        a.server_pid.and_then(|p| CpuTime::of(Some(p))),
    );
    let host_before = HostCpu::now();
    if redis || plain.is_some() {
        let wire = plain.map_or(Wire::Resp, Wire::Plain);
        for (i, conn) in socks.into_iter().enumerate() {
            let load = load.clone();
            tasks.push(tokio::spawn(wire_worker(
                conn,
                wire.clone(),
                i as u64,
                load,
            )));
        }
    } else {
        for (i, s) in sessions.into_iter().enumerate() {
            for j in 0..a.inflight.max(1) {
                let (load, s) = (load.clone(), s.clone());
                let seed = (i * 1000 + j) as u64;
                tasks.push(tokio::spawn(
                    async move { apsis_worker(s, seed, load).await },
                ));
            }
        }
    }
    tokio::time::sleep(Duration::from_secs_f64(a.duration)).await;
    load.stop.store(true, Relaxed);
    let mut all = Tally::new();
    for t in tasks {
        if let Ok(t) = t.await {
            all.hist.add(t.hist)?;
            all.ops += t.ops;
            all.bytes += t.bytes;
            all.errors += t.errors;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let (hist, ops) = (all.hist, all.ops);
    let per_op = |before: Option<CpuTime>, pid| Some(CpuTime::of(pid)?.since(before?, ops));
    let tool_cpu = per_op(cpu_before.0, None);
    let server_cpu = a.server_pid.and_then(|p| per_op(cpu_before.1, Some(p)));
    let host = host_before.and_then(|b| HostCpu::now()?.shares_since(b));
    let errors = all.errors;
    let mb = all.bytes as f64 / (1 << 20) as f64 / secs;
    let client = match (redis, a.client) {
        (true, _) => "resp",
        (false, ClientKind::Session) => "session",
        (false, ClientKind::Plain) => "plain",
    };
    let r = json!({
        "target": a.target, "client": client, "connections": a.connections, "inflight": a.inflight,
        "value_size": load.value.len(), "write_ratio": a.write_ratio, "keys": keys,
        "seconds": secs, "ops": ops, "errors": errors, "ops_per_sec": ops as f64 / secs, "mib_per_sec": mb,
        "latency_us": {"p50": hist.value_at_quantile(0.5), "p90": hist.value_at_quantile(0.9),
                       "p99": hist.value_at_quantile(0.99), "p999": hist.value_at_quantile(0.999), "max": hist.max()},
        "cpu_us_per_op": {"tool": tool_cpu.map(CpuTime::json), "server": server_cpu.map(CpuTime::json)},
        "host_steal": host.map(|h| h.steal), "host_idle": host.map(|h| h.idle),
    });
    if a.c.json {
        println!("{r}");
    } else {
        println!(
            "{}/{client} {} conns x {} inflight, {} B values, {:.0}% writes: {:.0} ops/s, {:.1} MiB/s, {} errors; latency us p50 {} p90 {} p99 {} p999 {} max {}",
            a.target,
            a.connections,
            a.inflight,
            load.value.len(),
            a.write_ratio * 100.0,
            ops as f64 / secs,
            mb,
            errors,
            hist.value_at_quantile(0.5),
            hist.value_at_quantile(0.9),
            hist.value_at_quantile(0.99),
            hist.value_at_quantile(0.999),
            hist.max()
        );
        let show = |name: &str, c: Option<CpuTime>| {
            c.map(|c| format!("{name} user {:.2} sys {:.2}", c.user, c.sys))
        };
        let parts: Vec<String> = [show("tool", tool_cpu), show("server", server_cpu)]
            .into_iter()
            .flatten()
            .collect();
        if !parts.is_empty() {
            let total: f64 = [tool_cpu, server_cpu]
                .iter()
                .flatten()
                .map(|c| c.user + c.sys)
                .sum();
            // The CPUs' idle share: where load and server share the cores, throughput is
            // those cores, less what stayed idle, over the total. And the hypervisor's share
            // during the run: a run with much of it measured a host busy with others, not the
            // servers.
            let host = host.map_or(String::new(), |h| {
                format!(
                    "; host idle {:.1}%; host steal {:.0}%",
                    h.idle * 100.0,
                    h.steal * 100.0
                )
            });
            let sleeps: Vec<String> = [("tool", tool_cpu), ("server", server_cpu)]
                .into_iter()
                .filter_map(|(name, c)| Some(format!("{name} {:.3}", c?.sleeps)))
                .collect();
            println!(
                "  cpu us/op: {}; total {total:.2}{host}; sleeps/op: {}",
                parts.join(", "),
                sleeps.join(", ")
            );
        }
    }
    if errors > 0 && ops == 0 {
        anyhow::bail!("every request failed");
    }
    Ok(())
}

/// The machine's CPU time in clock ticks from `/proc/stat`: all of it, the time no thread
/// ran (idle and I/O wait), and what the hypervisor gave other guests (steal).
#[derive(Clone, Copy)]
struct HostCpu {
    total: u64,
    idle: u64,
    steal: u64,
}

/// Shares of the CPUs' time over a run (0 to 1).
#[derive(Clone, Copy)]
struct HostShares {
    idle: f64,
    steal: f64,
}

impl HostCpu {
    fn now() -> Option<HostCpu> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        // user nice system idle iowait irq softirq steal (guest time is inside user).
        let v: Vec<u64> = (line.split_whitespace().skip(1).take(8))
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        (v.len() == 8).then(|| HostCpu {
            total: v.iter().sum(),
            idle: v[3] + v[4],
            steal: v[7],
        })
    }

    /// The shares of the CPUs' time idle and stolen since `before` (`None` when no time
    /// passed).
    fn shares_since(self, before: HostCpu) -> Option<HostShares> {
        let total = self.total.checked_sub(before.total).filter(|&t| t > 0)? as f64;
        Some(HostShares {
            idle: self.idle.saturating_sub(before.idle) as f64 / total,
            steal: self.steal.saturating_sub(before.steal) as f64 / total,
        })
    }
}

/// A process's CPU time (seconds, or microseconds per operation after [`CpuTime::since`]),
/// and how many times its threads went to sleep (voluntary context switches; per operation
/// after `since`). On a machine where load and server share the cores, a sleep costs the
/// waker a wake-up (on a VM often an interrupt to a halted CPU) and can leave a CPU idle.
#[derive(Clone, Copy)]
struct CpuTime {
    user: f64,
    sys: f64,
    sleeps: f64,
}

impl CpuTime {
    /// From `/proc/PID/stat` (`None`: this process); `None` where there is no such file.
    fn of(pid: Option<u32>) -> Option<CpuTime> {
        let path = pid.map_or("/proc/self/stat".into(), |p| format!("/proc/{p}/stat"));
        let stat = std::fs::read_to_string(path).ok()?;
        // After the command name (in parentheses, and it may hold spaces): state is field 3,
        // utime and stime fields 14 and 15, in clock ticks.
        let mut f = stat.get(stat.rfind(')')? + 2..)?.split(' ');
        let mut field = |n: usize| f.nth(n)?.parse::<f64>().ok();
        let (utime, stime) = (field(11)?, field(0)?);
        // SAFETY: sysconf only reads a configuration value.
        let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        (tick > 0.0).then(|| CpuTime {
            user: utime / tick,
            sys: stime / tick,
            sleeps: sleeps(pid).unwrap_or(0) as f64,
        })
    }

    /// Microseconds per operation spent since `before`, and sleeps per operation.
    fn since(self, before: CpuTime, ops: u64) -> CpuTime {
        let ops = ops.max(1) as f64;
        CpuTime {
            user: (self.user - before.user) * 1e6 / ops,
            sys: (self.sys - before.sys) * 1e6 / ops,
            // Threads that ended during the run take their count along.
            sleeps: (self.sleeps - before.sleeps).max(0.0) / ops,
        }
    }

    fn json(self) -> serde_json::Value {
        json!({"user": self.user, "sys": self.sys, "sleeps": self.sleeps})
    }
}

/// The voluntary context switches of a process's threads now alive (`None`: this process),
/// from `/proc/PID/task/*/status`.
fn sleeps(pid: Option<u32>) -> Option<u64> {
    let dir = pid.map_or("/proc/self/task".into(), |p| format!("/proc/{p}/task"));
    let mut n = 0;
    for t in std::fs::read_dir(dir).ok()?.flatten() {
        let Ok(status) = std::fs::read_to_string(t.path().join("status")) else {
            continue; // the thread ended meanwhile
        };
        n += (status.lines())
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    Some(n)
}

/// Opens one load connection (no Nagle: one small request at a time).
async fn connect(addr: &str) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// How much of a connection's replies its reader takes in per read.
const READ_BUF: usize = 256 << 10;

/// Writes every key once through `sessions`, each its share, concurrently.
async fn prefill(
    sessions: &[apsis_client::Session],
    keys: u64,
    value: &[u8],
) -> anyhow::Result<()> {
    let per = sessions.len() as u64;
    let mut tasks = Vec::new();
    for (w, s) in sessions.iter().enumerate() {
        let s = s.clone();
        let v = value.to_vec();
        tasks.push(tokio::spawn(async move {
            let (mut i, mut key) = (w as u64, String::new());
            while i < keys {
                key_name(&mut key, i);
                s.write(key.as_bytes(), &v).await?;
                i += per;
            }
            Ok::<_, apsis_client::ClientError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Writes every key once over one RESP connection, 64 SETs at a time.
async fn prefill_redis(conn: &mut TcpStream, keys: u64, value: &[u8]) -> anyhow::Result<()> {
    // Borrowed: every reply is read, so nothing is left in the buffer when it goes.
    let mut conn = BufReader::with_capacity(READ_BUF, conn);
    let (mut buf, mut key, mut line, mut bulk) =
        (Vec::new(), String::new(), String::new(), Vec::new());
    let mut k = 0;
    while k < keys {
        let n = (keys - k).min(64);
        buf.clear();
        for i in k..k + n {
            key_name(&mut key, i);
            resp_set(&mut buf, &key, value);
        }
        conn.get_mut().write_all(&buf).await?;
        for _ in 0..n {
            read_reply(&mut conn, &mut line, &mut bulk)
                .await?
                .map_err(anyhow::Error::msg)?;
        }
        k += n;
    }
    Ok(())
}

async fn apsis_worker(s: apsis_client::Session, seed: u64, load: Arc<Load>) -> Tally {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut t = Tally::new();
    let mut key = String::new();
    let (v, keys, ratio) = (&load.value, load.keys, load.write_ratio);
    while !load.stop.load(Relaxed) {
        key_name(&mut key, rng.u64(..keys));
        let start = Instant::now();
        let r = if rng.f64() < ratio {
            s.write(key.as_bytes(), v).await.map(|_| v.len())
        } else {
            s.read(key.as_bytes(), 0, 0).await.map(|r| r.data.len())
        };
        let _ = t.hist.record(start.elapsed().as_micros().max(1) as u64);
        match r {
            Ok(n) => {
                t.ops += 1;
                t.bytes += n as u64;
            }
            Err(_) => t.errors += 1,
        }
    }
    t
}

fn resp_set(buf: &mut Vec<u8>, key: &str, v: &[u8]) {
    use std::io::Write;
    let _ = write!(
        buf,
        "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n",
        key.len(),
        v.len()
    );
    buf.extend_from_slice(v);
    buf.extend_from_slice(b"\r\n");
}

fn resp_get(buf: &mut Vec<u8>, key: &str) {
    use std::io::Write;
    let _ = write!(buf, "*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len());
}

/// Reads one RESP reply into `line` and `bulk` (the caller's, kept between replies): the
/// payload size of a bulk string (0 for a status), or the error a failed request got (an
/// error reply, or nil). `Err`: the stream broke or is not RESP.
async fn read_reply<R: AsyncRead + Unpin>(
    conn: &mut BufReader<R>,
    line: &mut String,
    bulk: &mut Vec<u8>,
) -> anyhow::Result<Result<usize, String>> {
    line.clear();
    anyhow::ensure!(
        conn.read_line(line).await? > 0,
        "redis closed the connection"
    );
    match line.as_bytes().first() {
        Some(b'+') | Some(b':') => Ok(Ok(0)),
        Some(b'$') => {
            let n: i64 = line[1..].trim().parse()?;
            if n < 0 {
                return Ok(Err("nil".into()));
            }
            bulk.resize(n as usize + 2, 0);
            conn.read_exact(bulk).await?;
            Ok(Ok(n as usize))
        }
        Some(b'-') => Ok(Err(format!("redis: {}", line.trim()))),
        _ => anyhow::bail!("redis: unexpected reply {line:?}"),
    }
}

/// `--client plain`'s view of the node: a session for ids (and the prefill), the route table
/// its handshake brought (a copy: the loop follows no route changes, it drives one node), the
/// one address the routes of its group point at, and each key's id and backend (up to
/// [`TARGETS_MAX`] keys; `None` for a key the routes give no owner on `addr`).
struct Plain {
    session: apsis_client::Session,
    routes: apsis_client::routes::RouteTable,
    group: u32,
    addr: SocketAddr,
    targets: Option<Vec<Option<Target>>>,
}

/// Where a request for one key goes: its id, and the backend the routes give it.
#[derive(Clone, Copy)]
struct Target {
    id: [u8; 64],
    backend: i32,
}

/// Values from this size on are written from the load's own buffer, after their request's
/// header, instead of copied into the batch (a MiB copied per request was most of the tool's
/// own time in the 1 MiB rows).
const PLAIN_INLINE_MAX: usize = 64 << 10;

/// What one final reply of the plain loop settled.
enum Settled {
    /// A write, or a read that brought `bytes` of data.
    Done { write: bool, bytes: usize },
    /// The request failed (a negative status).
    Failed,
}

impl Plain {
    fn new(session: apsis_client::Session, keys: u64) -> anyhow::Result<Plain> {
        let &[group] = &session.groups[..] else {
            anyhow::bail!(
                "--client plain drives one group, {} given (use --client session)",
                session.groups.len()
            );
        };
        let routes = session.client().with_routes(Clone::clone);
        let addrs: std::collections::BTreeSet<SocketAddr> = routes
            .ranges(group)
            .into_iter()
            .map(|(_, r)| r.addr)
            .collect();
        let addr = match (addrs.len(), addrs.first()) {
            (1, Some(&a)) => a,
            (0, _) => anyhow::bail!("group {group}: no routes"),
            (k, _) => anyhow::bail!(
                "--client plain drives one node; group {group} is on {k} (use --client session)"
            ),
        };
        let mut p = Plain {
            session,
            routes,
            group,
            addr,
            targets: None,
        };
        if keys <= TARGETS_MAX {
            let mut key = String::new();
            let t = (0..keys).map(|i| {
                key_name(&mut key, i);
                p.resolve(&key)
            });
            p.targets = Some(t.collect());
        }
        Ok(p)
    }

    /// Where a request for `key` goes: its id (the session's: SHA-512 in its namespace) and
    /// its backend on `addr`.
    fn resolve(&self, key: &str) -> Option<Target> {
        let id = self.session.id(key.as_bytes());
        let r = self.routes.owner(self.group, &id)?;
        (r.addr == self.addr).then_some(Target {
            id,
            backend: r.backend_id,
        })
    }

    /// Where key `n`'s request goes: from the table, or resolved now (its name written into
    /// `scratch`).
    fn target(&self, n: u64, scratch: &mut String) -> anyhow::Result<Target> {
        let t = match &self.targets {
            Some(t) => t[n as usize],
            None => {
                key_name(scratch, n);
                self.resolve(scratch)
            }
        };
        t.ok_or_else(|| anyhow::anyhow!("no route to {} in group {}", self.addr, self.group))
    }

    /// Appends one request's frame to `buf`, as the session builds it: a WRITE of `data`, or
    /// a READ of the whole object; NEED_ACK, the key's id and its backend.
    ///
    /// A value of [`PLAIN_INLINE_MAX`] bytes or more is not copied: the caller writes it right
    /// after what `buf` holds now (`true`).
    fn request(&self, buf: &mut Vec<u8>, to: Target, data: Option<&[u8]>, trans: u64) -> bool {
        let id = to.id;
        // The session's own builders: the frames are the ones it would send.
        let (c, io) = match data {
            Some(d) => (cmd::WRITE, self.session.io(id, 0, 0, d.len() as u64)),
            None => (cmd::READ, self.session.read_io(id, 0, 0)),
        };
        let mut h = self.session.header(c, self.group, id, to.backend);
        h.trans = trans;
        h.size = (IoAttr::SIZE + data.map_or(0, <[u8]>::len)) as u64;
        buf.extend_from_slice(&h.encode());
        buf.extend_from_slice(&io.encode());
        let d = data.unwrap_or_default();
        if d.len() >= PLAIN_INLINE_MAX {
            return true;
        }
        buf.extend_from_slice(d);
        false
    }
}

/// Reads frames until the final reply of one of the `pending` requests (trans, is a write),
/// which it removes. A reply larger than `max` bytes, one to a request not asked, or a read's
/// data not of the size its io_attr gives is an error (the connection is then given up).
async fn plain_reply<R: AsyncRead + Unpin>(
    conn: &mut BufReader<R>,
    payload: &mut Vec<u8>,
    pending: &mut Vec<Sent>,
    max: u64,
) -> anyhow::Result<Settled> {
    let mut head = [0u8; HEADER_SIZE];
    let mut bytes = 0;
    loop {
        conn.read_exact(&mut head).await?;
        let h = Header::decode(&head)?;
        anyhow::ensure!(h.size <= max, "a reply of {} bytes (at most {max})", h.size);
        let size = h.size as usize;
        // Grown, never shrunk: zeroed once, not per reply.
        if payload.len() < size {
            payload.resize(size, 0);
        }
        let body = &mut payload[..size];
        conn.read_exact(body).await?;
        if h.cmd == cmd::READ && h.status == 0 && size >= IoAttr::SIZE {
            let (io, data) = IoAttr::split(body)?;
            anyhow::ensure!(
                io.size == data.len() as u64,
                "read reply: size {} with {} bytes",
                io.size,
                data.len()
            );
            bytes += data.len();
        }
        if h.has_more() {
            continue;
        }
        let i = pending
            .iter()
            .position(|p| p.0 == h.trans)
            .ok_or_else(|| anyhow::anyhow!("a reply to trans {}, not asked", h.trans))?;
        let (_, write) = pending.swap_remove(i);
        return Ok(if h.status < 0 {
            Settled::Failed
        } else {
            Settled::Done { write, bytes }
        });
    }
}

/// Writes `buf` with `v` inserted at each of the `splices` offsets.
async fn write_spliced<W: AsyncWrite + Unpin>(
    conn: &mut W,
    buf: &[u8],
    splices: &[usize],
    v: &[u8],
) -> std::io::Result<()> {
    let mut from = 0;
    for &at in splices {
        conn.write_all(&buf[from..at]).await?;
        conn.write_all(v).await?;
        from = at;
    }
    conn.write_all(&buf[from..]).await
}

/// How a connection of the RESP or the plain loop speaks: its requests, and how their
/// replies are read.
#[derive(Clone)]
enum Wire {
    Resp,
    Plain(Arc<Plain>),
}

/// A request written and not yet answered: its transaction (its place in the batch, for
/// RESP) and whether it is a write.
type Sent = (u64, bool);

impl Wire {
    /// Appends the request for key `n` to `buf`: a write of `data`, or a read. `true` when
    /// the value is to be written from the load's buffer after what `buf` holds now (the
    /// plain loop's large values, see [`Plain::request`]).
    fn request(
        &self,
        buf: &mut Vec<u8>,
        n: u64,
        key: &mut String,
        data: Option<&[u8]>,
        trans: u64,
    ) -> anyhow::Result<bool> {
        match self {
            Wire::Resp => {
                key_name(key, n);
                match data {
                    Some(v) => resp_set(buf, key, v),
                    None => resp_get(buf, key),
                }
                Ok(false)
            }
            Wire::Plain(p) => Ok(p.request(buf, p.target(n, key)?, data, trans)),
        }
    }

    /// Reads until the final reply of one of `pending`, which it removes. `Err`: the
    /// connection is to be given up.
    async fn reply<R: AsyncRead + Unpin>(
        &self,
        rd: &mut BufReader<R>,
        line: &mut String,
        payload: &mut Vec<u8>,
        pending: &mut Vec<Sent>,
        max: u64,
    ) -> anyhow::Result<Settled> {
        match self {
            Wire::Resp => {
                // Replies come in the order of the requests.
                let r = read_reply(rd, line, payload).await?;
                anyhow::ensure!(!pending.is_empty(), "a reply to no request");
                let (_, write) = pending.remove(0);
                Ok(match r {
                    Ok(bytes) => Settled::Done { write, bytes },
                    Err(_) => Settled::Failed,
                })
            }
            Wire::Plain(_) => plain_reply(rd, payload, pending, max).await,
        }
    }
}

/// One connection of the RESP or the plain loop: `inflight` requests written in one go, and
/// again once their replies are in. This task writes them; a reader task of its own reads
/// the replies back, as the client library has a request's task and a connection's reader.
/// With one task doing both, each of the tool's threads slept once per round of its
/// connections (0.04 sleeps per request under 50 connections), each sleep cost the server a
/// wake-up, and 5-7 % of two shared CPUs stayed idle; with two, 0.02 and 2-3 %
/// (`docs/benchmarks.md`, twenty-second session).
async fn wire_worker(conn: TcpStream, wire: Wire, seed: u64, load: Arc<Load>) -> Tally {
    let (rd, mut wr) = conn.into_split();
    let mut rd = BufReader::with_capacity(READ_BUF, rd);
    // A batch to read the replies of (with when it was written), and the emptied list back.
    let (to_read, mut batches) = tokio::sync::mpsc::channel::<(Vec<Sent>, Instant)>(1);
    let (read, mut done) = tokio::sync::mpsc::channel::<Vec<Sent>>(1);
    let value_len = load.value.len();
    // A reply carries the value and an io_attr, or a file info with the path: far less than
    // a MiB besides the value.
    let max = value_len as u64 + (1 << 20);
    let reader = tokio::spawn({
        let wire = wire.clone();
        async move {
            let mut t = Tally::new();
            let (mut line, mut payload) = (String::new(), Vec::new());
            while let Some((mut pending, start)) = batches.recv().await {
                while !pending.is_empty() {
                    match wire
                        .reply(&mut rd, &mut line, &mut payload, &mut pending, max)
                        .await
                    {
                        Ok(Settled::Done { write, bytes }) => {
                            t.ops += 1;
                            t.bytes += if write { value_len } else { bytes } as u64;
                        }
                        Ok(Settled::Failed) => t.errors += 1,
                        Err(_) => {
                            t.errors += pending.len() as u64;
                            return t;
                        }
                    }
                    let _ = t.hist.record(start.elapsed().as_micros().max(1) as u64);
                }
                if read.send(pending).await.is_err() {
                    break;
                }
            }
            t
        }
    });
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut errors = 0;
    let (mut buf, mut key, mut pending) = (Vec::new(), String::new(), Vec::new());
    // Where in `buf` a large value goes (written from `v`, not copied).
    let mut splices = Vec::new();
    let (v, keys, inflight, ratio) = (&load.value, load.keys, load.inflight, load.write_ratio);
    let mut trans = 0u64;
    while !load.stop.load(Relaxed) {
        buf.clear();
        splices.clear();
        for _ in 0..inflight {
            let write = rng.f64() < ratio;
            trans += 1;
            match wire.request(
                &mut buf,
                rng.u64(..keys),
                &mut key,
                write.then_some(&v[..]),
                trans,
            ) {
                Ok(large) => {
                    if large {
                        splices.push(buf.len());
                    }
                    pending.push((trans, write));
                }
                Err(_) => errors += 1,
            }
        }
        if pending.is_empty() {
            continue;
        }
        // The reader has the batch before its first reply can come.
        if to_read
            .send((std::mem::take(&mut pending), Instant::now()))
            .await
            .is_err()
        {
            break;
        }
        if write_spliced(&mut wr, &buf, &splices, v).await.is_err() {
            // The reader counts the batch's requests not answered when the socket fails it.
            break;
        }
        match done.recv().await {
            Some(emptied) => pending = emptied,
            None => break, // the reader gave the connection up
        }
    }
    drop(to_read);
    let mut t = reader.await.unwrap_or_else(|_| Tally::new());
    t.errors += errors;
    t
}
