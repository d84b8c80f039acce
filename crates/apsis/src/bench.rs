//! `apsis bench`: a load generator for an Apsis node, or a Redis server with the same load.
//!
//! Each connection is its own TCP connection (for Apsis, its own client); each keeps
//! `inflight` requests outstanding (Apsis: concurrent requests multiplexed on the connection;
//! Redis: pipelined batches). Keys are drawn uniformly from `bench-0 .. bench-{keys-1}`; an
//! operation is a write with probability `write_ratio`, else a read. Reads need the keys to
//! exist, so they are written first (untimed) unless `--no-prefill`.
//!
//! Besides throughput and latency, a run reports the CPU time it cost per operation (user and
//! system, from `/proc`): the load tool's own, and with `--server-pid` the server's. On a
//! machine where the tool and the server share the cores, throughput is the cores divided by
//! that total, so the split shows which side a difference comes from.
//!
//! The tool keeps its own cost per request small, for both targets alike: each worker counts
//! into its own [`Tally`] (summed at the end) and formats keys into a buffer it keeps.

use crate::ClientOpts;
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
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
    #[command(flatten)]
    c: ClientOpts,
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

struct Shared {
    stop: AtomicBool,
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

pub async fn run(a: BenchArgs) -> anyhow::Result<()> {
    let value: Arc<Vec<u8>> = Arc::new(
        (0..parse_size(&a.value_size)?)
            .map(|i| (i * 31 + 7) as u8)
            .collect(),
    );
    let keys = a.keys.max(1);
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
    // Connections first (not timed).
    let mut sessions = Vec::new();
    let mut redis_conns = Vec::new();
    for _ in 0..a.connections.max(1) {
        if redis {
            let s = TcpStream::connect(&a.redis)
                .await
                .map_err(|e| anyhow::anyhow!("redis {}: {e}", a.redis))?;
            s.set_nodelay(true)?;
            redis_conns.push(BufReader::with_capacity(256 << 10, s));
        } else {
            sessions.push(a.c.session().await?);
        }
    }
    if a.write_ratio < 1.0 && !a.no_prefill {
        let t = Instant::now();
        prefill(&sessions, &mut redis_conns, keys, &value).await?;
        eprintln!(
            "prefilled {keys} keys in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
    });
    let mut tasks = Vec::new();
    let started = Instant::now();
    let cpu_before = (
        CpuTime::of(None),
        a.server_pid.and_then(|p| CpuTime::of(Some(p))),
    );
    if redis {
        for (i, conn) in redis_conns.into_iter().enumerate() {
            let (sh, v) = (shared.clone(), value.clone());
            let (inflight, ratio) = (a.inflight.max(1), a.write_ratio);
            tasks.push(tokio::spawn(async move {
                redis_worker(conn, i as u64, sh, v, keys, inflight, ratio).await
            }));
        }
    } else {
        for (i, s) in sessions.into_iter().enumerate() {
            for j in 0..a.inflight.max(1) {
                let (sh, v, s) = (shared.clone(), value.clone(), s.clone());
                let ratio = a.write_ratio;
                let seed = (i * 1000 + j) as u64;
                tasks.push(tokio::spawn(async move {
                    apsis_worker(s, seed, sh, v, keys, ratio).await
                }));
            }
        }
    }
    tokio::time::sleep(Duration::from_secs_f64(a.duration)).await;
    shared.stop.store(true, Relaxed);
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
    let errors = all.errors;
    let mb = all.bytes as f64 / (1 << 20) as f64 / secs;
    let r = json!({
        "target": a.target, "connections": a.connections, "inflight": a.inflight,
        "value_size": value.len(), "write_ratio": a.write_ratio, "keys": keys,
        "seconds": secs, "ops": ops, "errors": errors, "ops_per_sec": ops as f64 / secs, "mib_per_sec": mb,
        "latency_us": {"p50": hist.value_at_quantile(0.5), "p90": hist.value_at_quantile(0.9),
                       "p99": hist.value_at_quantile(0.99), "p999": hist.value_at_quantile(0.999), "max": hist.max()},
        "cpu_us_per_op": {"tool": tool_cpu.map(CpuTime::json), "server": server_cpu.map(CpuTime::json)},
    });
    if a.c.json {
        println!("{r}");
    } else {
        println!(
            "{} {} conns x {} inflight, {} B values, {:.0}% writes: {:.0} ops/s, {:.1} MiB/s, {} errors; latency us p50 {} p90 {} p99 {} p999 {} max {}",
            a.target,
            a.connections,
            a.inflight,
            value.len(),
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
            println!("  cpu us/op: {}; total {total:.2}", parts.join(", "));
        }
    }
    if errors > 0 && ops == 0 {
        anyhow::bail!("every request failed");
    }
    Ok(())
}

/// A process's CPU time (seconds, or microseconds per operation after [`CpuTime::since`]).
#[derive(Clone, Copy)]
struct CpuTime {
    user: f64,
    sys: f64,
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
        })
    }

    /// Microseconds per operation spent since `before`.
    fn since(self, before: CpuTime, ops: u64) -> CpuTime {
        let per = 1e6 / ops.max(1) as f64;
        CpuTime {
            user: (self.user - before.user) * per,
            sys: (self.sys - before.sys) * per,
        }
    }

    fn json(self) -> serde_json::Value {
        json!({"user": self.user, "sys": self.sys})
    }
}

async fn prefill(
    sessions: &[apsis_client::Session],
    redis: &mut [BufReader<TcpStream>],
    keys: u64,
    value: &[u8],
) -> anyhow::Result<()> {
    if let Some(conn) = redis.first_mut() {
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
                read_reply(conn, &mut line, &mut bulk).await?;
            }
            k += n;
        }
        return Ok(());
    }
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

async fn apsis_worker(
    s: apsis_client::Session,
    seed: u64,
    sh: Arc<Shared>,
    v: Arc<Vec<u8>>,
    keys: u64,
    ratio: f64,
) -> Tally {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut t = Tally::new();
    let mut key = String::new();
    while !sh.stop.load(Relaxed) {
        key_name(&mut key, rng.u64(..keys));
        let start = Instant::now();
        let r = if rng.f64() < ratio {
            s.write(key.as_bytes(), &v).await.map(|_| v.len())
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

/// Reads one RESP reply into `line` and `bulk` (the caller's, kept between replies); returns
/// the payload size of a bulk string. Errors and nil are errors.
async fn read_reply(
    conn: &mut BufReader<TcpStream>,
    line: &mut String,
    bulk: &mut Vec<u8>,
) -> anyhow::Result<usize> {
    line.clear();
    conn.read_line(line).await?;
    match line.as_bytes().first() {
        Some(b'+') | Some(b':') => Ok(0),
        Some(b'$') => {
            let n: i64 = line[1..].trim().parse()?;
            if n < 0 {
                anyhow::bail!("nil");
            }
            bulk.resize(n as usize + 2, 0);
            conn.read_exact(bulk).await?;
            Ok(n as usize)
        }
        Some(b'-') => anyhow::bail!("redis: {}", line.trim()),
        _ => anyhow::bail!("redis: unexpected reply {line:?}"),
    }
}

async fn redis_worker(
    mut conn: BufReader<TcpStream>,
    seed: u64,
    sh: Arc<Shared>,
    v: Arc<Vec<u8>>,
    keys: u64,
    inflight: usize,
    ratio: f64,
) -> Tally {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut t = Tally::new();
    let (mut buf, mut key, mut line, mut bulk) =
        (Vec::new(), String::new(), String::new(), Vec::new());
    while !sh.stop.load(Relaxed) {
        buf.clear();
        for _ in 0..inflight {
            key_name(&mut key, rng.u64(..keys));
            if rng.f64() < ratio {
                resp_set(&mut buf, &key, &v);
            } else {
                resp_get(&mut buf, &key);
            }
        }
        let start = Instant::now();
        if conn.get_mut().write_all(&buf).await.is_err() {
            t.errors += inflight as u64;
            break;
        }
        for _ in 0..inflight {
            match read_reply(&mut conn, &mut line, &mut bulk).await {
                Ok(n) => {
                    t.ops += 1;
                    t.bytes += if n == 0 { v.len() } else { n } as u64;
                }
                Err(_) => t.errors += 1,
            }
            let _ = t.hist.record(start.elapsed().as_micros().max(1) as u64);
        }
    }
    t
}
