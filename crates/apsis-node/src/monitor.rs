//! Monitoring: the Elliptics statistics JSON (categories commands, io, backends, procfs,
//! stats), Prometheus metrics, and the HTTP server on the monitor port.
//!
//! HTTP: `GET /` or `GET /?categories=N` (the JSON), `GET /metrics` (Prometheus text format),
//! `GET /health/live` and `GET /health/ready[?writable]` (see [`health`]). Requests are read
//! with a bounded buffer (8 KiB of headers) and a timeout; anything else is a 404 or 405.

use crate::Ctx;
use apsis_proto::{backend_state, cmd, MonitorStatRequest};
use apsis_storage::Backend;
use serde_json::{json, Map, Value};
use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn now_json() -> Value {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    json!({"tv_sec": d.as_secs(), "tv_usec": d.subsec_micros()})
}

fn state_name(s: i32) -> &'static str {
    match s {
        backend_state::ENABLED => "enabled",
        backend_state::DISABLED => "disabled",
        backend_state::ACTIVATING => "activating",
        backend_state::DEACTIVATING => "deactivating",
        _ => "uninitialised",
    }
}

/// The statistics JSON for `categories` (see [`MonitorStatRequest`] bits).
pub fn json(ctx: &Ctx, categories: u64) -> Value {
    let mut top = Map::new();
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    top.insert("timestamp".into(), now_json());
    top.insert(
        "string_timestamp".into(),
        Value::String(format!("{}.{:06}", d.as_secs(), d.subsec_micros())),
    );
    top.insert("monitor_status".into(), Value::String("enabled".into()));
    top.insert(
        "version".into(),
        Value::String(env!("CARGO_PKG_VERSION").into()),
    );
    if categories & MonitorStatRequest::COMMANDS != 0 {
        let mut cmds = Map::new();
        for (i, c) in ctx.stats.commands() {
            let (ok, fail) = (c.successes, c.failures);
            if ok == 0 && fail == 0 {
                continue;
            }
            cmds.insert(
                cmd::name(i as i32).into(),
                json!({
                    "disk": {"outside": {"successes": ok, "failures": fail, "size": c.bytes, "time": c.time_us}},
                    "total": {"storage": {"successes": ok, "failures": fail}},
                }),
            );
        }
        top.insert("commands".into(), Value::Object(cmds));
    }
    if categories & MonitorStatRequest::IO != 0 {
        top.insert(
            "io".into(),
            json!({
                "connections": {"open": ctx.stats.connections_open.load(Relaxed), "total": ctx.stats.connections_total.load(Relaxed), "limit": ctx.conn_limit.load(Relaxed)},
                "frames_rejected": ctx.stats.frames_rejected.load(Relaxed),
                "frames_stalled": ctx.frame_memory.stalled.load(Relaxed),
                "frame_memory": {"used": ctx.frame_memory.in_use(), "limit": ctx.frame_memory.limit(), "waits": ctx.frame_memory.waits.load(Relaxed)},
                "bytes_in": ctx.stats.bytes_in(),
                "bytes_out": ctx.stats.bytes_out(),
                "iterators": ctx.iterators.list().len(),
                "forwarded": ctx.stats.forwarded.load(Relaxed),
                "replies_swept": crate::batch::swept(),
                "peers": ctx.cluster.client.nodes().iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            }),
        );
    }
    if categories & MonitorStatRequest::BACKEND != 0 {
        let mut bs = Map::new();
        for slot in ctx.backends.slots() {
            let st = slot.status();
            let mut b = json!({
                "backend_id": slot.cfg.id,
                "status": {
                    "state": st.state,
                    "string_state": state_name(st.state),
                    "read_only": st.read_only,
                    "defrag_state": st.defrag_state,
                    "delay": st.delay_ms,
                    "last_start": {"tv_sec": st.last_start.sec, "tv_usec": st.last_start.nsec / 1000},
                    "last_start_err": st.last_start_err,
                },
                "backend": {
                    "config": {
                        "group": slot.cfg.group,
                        "data": slot.cfg.data_prefix.display().to_string(),
                        "dir": slot.cfg.dir.display().to_string(),
                        "sync": slot.cfg.sync,
                        "blob_size": slot.cfg.blob_size,
                        "records_in_blob": slot.cfg.records_in_blob,
                        "blob_size_limit": slot.cfg.size_limit_bytes,
                        "defrag_percentage": slot.cfg.defrag_percentage,
                    },
                },
            });
            if let Some(engine) = slot.engine() {
                let s = engine.stats();
                let mut bases = Map::new();
                for base in &s.bases {
                    bases.insert(
                        format!("data-0.{}", base.number),
                        json!({"base_size": base.size_bytes, "records_total": base.live_records + base.removed_records,
                               "records_removed": base.removed_records, "live_bytes": base.live_bytes,
                               "dead_bytes": base.dead_bytes, "open": base.open}),
                    );
                }
                let total: u64 = s.bases.iter().map(|b| b.size_bytes).sum();
                b["backend"]["base_stats"] = Value::Object(bases);
                b["backend"]["summary_stats"] = json!({
                    "base_size": total,
                    "records_total": s.records + s.removed_records,
                    "records_removed": s.removed_records,
                    "records_uncommitted": s.uncommitted_records,
                    "live_bytes": s.live_bytes,
                    "dead_bytes": s.dead_bytes,
                    "want_defrag": (s.dead_bytes * 100 > (s.live_bytes + s.dead_bytes) * slot.cfg.defrag_percentage as u64) as u32,
                });
                b["backend"]["global_stats"] = json!({
                    "memory_index_bytes": s.index_memory_bytes,
                    "fsyncs": s.fsyncs,
                    "bases_reused": s.bases_reused,
                    "defrag_completed": s.defrag_completed,
                    "poisoned": s.poisoned,
                });
                if let Some(free) = crate::backends::free_bytes(&slot.cfg.dir) {
                    b["backend"]["vfs"] = json!({"bavail_bytes": free, "timestamp": now_json()});
                }
                if let Some(c) = slot.cache() {
                    b["cache"] = c.json();
                }
            }
            bs.insert(slot.cfg.id.to_string(), b);
        }
        top.insert("backends".into(), Value::Object(bs));
    }
    if categories & MonitorStatRequest::PROCFS != 0 {
        top.insert("procfs".into(), procfs());
    }
    if categories & MonitorStatRequest::STATS != 0 {
        top.insert("recovery".into(), ctx.recovery.json());
        top.insert(
            "stats".into(),
            json!({"uptime_secs": ctx.started.elapsed().as_secs(), "read_only": ctx.read_only.load(Relaxed)}),
        );
    }
    Value::Object(top)
}

fn procfs() -> Value {
    let mut v = Map::new();
    if let Ok(s) = std::fs::read_to_string("/proc/loadavg") {
        let la: Vec<f64> = s
            .split_whitespace()
            .take(3)
            .filter_map(|x| x.parse().ok())
            .collect();
        v.insert("vm".into(), json!({"la": la}));
    }
    if let Ok(s) = std::fs::read_to_string("/proc/self/status") {
        let mut m = Map::new();
        for line in s.lines() {
            if let Some((k, val)) = line.split_once(':') {
                if matches!(k, "VmRSS" | "VmSize" | "Threads") {
                    let n: u64 = val
                        .split_whitespace()
                        .next()
                        .and_then(|x| x.parse().ok())
                        .unwrap_or(0);
                    m.insert(k.to_string(), Value::from(n));
                }
            }
        }
        v.insert("stat".into(), Value::Object(m));
    }
    if let Ok(s) = std::fs::read_to_string("/proc/self/io") {
        let mut m = Map::new();
        for line in s.lines() {
            if let Some((k, val)) = line.split_once(':') {
                m.insert(
                    k.to_string(),
                    Value::from(val.trim().parse::<u64>().unwrap_or(0)),
                );
            }
        }
        v.insert("io".into(), Value::Object(m));
    }
    Value::Object(v)
}

/// Prometheus text exposition of the node's counters.
pub fn prometheus(ctx: &Ctx) -> String {
    let mut s = String::new();
    s.push_str("# HELP apsis_commands_total Commands handled, by command and result.\n# TYPE apsis_commands_total counter\n");
    let totals: Vec<_> = ctx.stats.commands().collect();
    for &(i, c) in &totals {
        let (ok, fail) = (c.successes, c.failures);
        if ok + fail == 0 {
            continue;
        }
        let name = cmd::name(i as i32);
        let _ = writeln!(
            s,
            "apsis_commands_total{{cmd=\"{name}\",result=\"ok\"}} {ok}"
        );
        let _ = writeln!(
            s,
            "apsis_commands_total{{cmd=\"{name}\",result=\"error\"}} {fail}"
        );
    }
    s.push_str("# HELP apsis_command_seconds_total Time spent in commands.\n# TYPE apsis_command_seconds_total counter\n");
    for &(i, c) in &totals {
        let t = c.time_us;
        if c.successes + c.failures == 0 {
            continue;
        }
        let _ = writeln!(
            s,
            "apsis_command_seconds_total{{cmd=\"{}\"}} {}",
            cmd::name(i as i32),
            t as f64 / 1e6
        );
    }
    let _ = writeln!(
        s,
        "# TYPE apsis_connections_open gauge\napsis_connections_open {}",
        ctx.stats.connections_open.load(Relaxed)
    );
    let _ = writeln!(
        s,
        "# TYPE apsis_connections_total counter\napsis_connections_total {}",
        ctx.stats.connections_total.load(Relaxed)
    );
    let _ = writeln!(
        s,
        "# TYPE apsis_connections_limit gauge\napsis_connections_limit {}",
        ctx.conn_limit.load(Relaxed)
    );
    let _ = writeln!(
        s,
        "# TYPE apsis_frames_rejected_total counter\napsis_frames_rejected_total {}",
        ctx.stats.frames_rejected.load(Relaxed)
    );
    let m = &ctx.frame_memory;
    let _ = writeln!(
        s,
        "# TYPE apsis_frames_stalled_total counter\napsis_frames_stalled_total {}\n\
         # TYPE apsis_frame_memory_bytes gauge\napsis_frame_memory_bytes {}\n\
         # TYPE apsis_frame_memory_limit_bytes gauge\napsis_frame_memory_limit_bytes {}\n\
         # TYPE apsis_frame_memory_waits_total counter\napsis_frame_memory_waits_total {}",
        m.stalled.load(Relaxed),
        m.in_use(),
        m.limit(),
        m.waits.load(Relaxed)
    );
    let _ = writeln!(
        s,
        "# TYPE apsis_replies_swept_total counter\napsis_replies_swept_total {}",
        crate::batch::swept()
    );
    let _ = writeln!(
        s,
        "# TYPE apsis_forwarded_total counter\napsis_forwarded_total {}\n# TYPE apsis_peers gauge\napsis_peers {}",
        ctx.stats.forwarded.load(Relaxed),
        ctx.cluster.client.nodes().len()
    );
    {
        let c = &ctx.recovery.counters;
        for (name, v) in [
            ("rounds", &c.rounds),
            ("jobs", &c.jobs),
            ("buckets_compared", &c.buckets_compared),
            ("buckets_differing", &c.buckets_differing),
            ("keys_compared", &c.keys_compared),
            ("copied_keys", &c.copied_keys),
            ("copied_bytes", &c.copied_bytes),
            ("handed_off", &c.handed_off),
            ("prepared_dropped", &c.prepared_dropped),
            ("repaired", &c.repaired),
            ("errors", &c.errors),
        ] {
            let _ = writeln!(
                s,
                "# TYPE apsis_recovery_{name}_total counter\napsis_recovery_{name}_total {}",
                v.load(Relaxed)
            );
        }
        let _ = writeln!(
            s,
            "# TYPE apsis_recovery_running gauge\napsis_recovery_running {}",
            ctx.recovery.running() as u8
        );
    }
    let _ = writeln!(s, "# TYPE apsis_network_bytes_total counter\napsis_network_bytes_total{{dir=\"in\"}} {}\napsis_network_bytes_total{{dir=\"out\"}} {}", ctx.stats.bytes_in(), ctx.stats.bytes_out());
    s.push_str("# TYPE apsis_backend_state gauge\n# TYPE apsis_backend_records gauge\n# TYPE apsis_backend_removed_records gauge\n# TYPE apsis_backend_bytes gauge\n# TYPE apsis_backend_index_memory_bytes gauge\n# TYPE apsis_backend_fsyncs_total counter\n# TYPE apsis_backend_bases_reused_total counter\n");
    for slot in ctx.backends.slots() {
        let l = format!("backend=\"{}\",group=\"{}\"", slot.cfg.id, slot.cfg.group);
        let st = slot.status();
        let _ = writeln!(s, "apsis_backend_state{{{l}}} {}", st.state);
        let _ = writeln!(s, "apsis_backend_read_only{{{l}}} {}", st.read_only as u8);
        if let Some(e) = slot.engine() {
            let b = e.stats();
            let _ = writeln!(s, "apsis_backend_records{{{l}}} {}", b.records);
            let _ = writeln!(
                s,
                "apsis_backend_removed_records{{{l}}} {}",
                b.removed_records
            );
            let _ = writeln!(
                s,
                "apsis_backend_bytes{{{l},kind=\"live\"}} {}",
                b.live_bytes
            );
            let _ = writeln!(
                s,
                "apsis_backend_bytes{{{l},kind=\"dead\"}} {}",
                b.dead_bytes
            );
            let _ = writeln!(
                s,
                "apsis_backend_index_memory_bytes{{{l}}} {}",
                b.index_memory_bytes
            );
            let _ = writeln!(s, "apsis_backend_fsyncs_total{{{l}}} {}", b.fsyncs);
            let _ = writeln!(
                s,
                "apsis_backend_bases_reused_total{{{l}}} {}",
                b.bases_reused
            );
            let _ = writeln!(
                s,
                "apsis_backend_poisoned{{{l}}} {}",
                b.poisoned.is_some() as u8
            );
        }
        if let Some(c) = slot.cache() {
            let v = c.json();
            for k in [
                "hits",
                "misses",
                "evictions",
                "expired",
                "written_back",
                "writeback_errors",
            ] {
                let _ = writeln!(s, "apsis_cache_{k}_total{{{l}}} {}", v[k]);
            }
            for k in ["size_bytes", "entries", "dirty"] {
                let _ = writeln!(s, "apsis_cache_{k}{{{l}}} {}", v[k]);
            }
        }
    }
    let _ = writeln!(
        s,
        "# TYPE apsis_uptime_seconds gauge\napsis_uptime_seconds {}",
        ctx.started.elapsed().as_secs()
    );
    // What `/health/ready` answers, for alerts: ready, and ready to take writes.
    let h = health(ctx, false);
    let _ = writeln!(
        s,
        "# TYPE apsis_ready gauge\napsis_ready {}\n# TYPE apsis_writable gauge\napsis_writable {}",
        h.ready as u8,
        (h.ready && h.writable) as u8
    );
    s
}

/// Whether the node serves data requests, for orchestrators, load balancers and rolling
/// restarts (`GET /health/ready`; restart the next node once this one is ready). Elliptics has
/// only its statistics, from which each operator had to work this out.
///
/// Ready means: the node is not stopping; the first round of joining its remotes has ended
/// (until then data requests wait); at least one backend is enabled; and no enabled backend
/// is poisoned (a failed fsync or a disk error fenced it, and it refuses writes until it is
/// disabled and enabled again, or the node restarts). With `writable`, the node must also take writes: not read-only (STATUS RO) and
/// an enabled backend neither read-only nor poisoned.
pub fn health(ctx: &Ctx, writable: bool) -> Health {
    let mut reasons: Vec<String> = Vec::new();
    if ctx.is_stopping() {
        reasons.push("the node is stopping".into());
    }
    if !ctx.cluster.is_joined() {
        reasons.push("the node is still joining its remotes".into());
    }
    let (mut enabled, mut takes_writes) = (0, 0);
    let mut backends = Map::new();
    for slot in ctx.backends.slots() {
        let st = slot.status();
        let engine = slot.engine();
        let poisoned = engine.as_ref().and_then(|e| e.poisoned());
        if st.state == backend_state::ENABLED && engine.is_some() {
            enabled += 1;
            match &poisoned {
                Some(why) => reasons.push(format!(
                    "backend {} (group {}) is poisoned: {why}",
                    slot.cfg.id, slot.cfg.group
                )),
                None if !st.read_only => takes_writes += 1,
                None => {}
            }
        }
        backends.insert(
            slot.cfg.id.to_string(),
            json!({"group": slot.cfg.group, "state": state_name(st.state),
                   "read_only": st.read_only, "poisoned": poisoned}),
        );
    }
    if enabled == 0 {
        reasons.push("no backend is enabled".into());
    }
    let node_ro = ctx.read_only.load(Relaxed);
    let writes = !node_ro && takes_writes > 0;
    if writable && !writes {
        reasons.push(if node_ro {
            "the node is read-only (STATUS RO)".into()
        } else {
            "no enabled backend takes writes".into()
        });
    }
    let ready = reasons.is_empty();
    let body =
        json!({"ready": ready, "writable": writes, "reasons": reasons, "backends": backends});
    Health {
        ready,
        writable: writes,
        body,
    }
}

/// A node's health ([`health`]).
pub struct Health {
    pub ready: bool,
    /// The node takes writes (whether or not they were asked about).
    pub writable: bool,
    /// What `/health/ready` answers: the two verdicts, the reasons against readiness and each
    /// backend's state.
    pub body: Value,
}

/// Serves the HTTP monitor until the listener task is aborted.
pub async fn serve_http(ctx: Arc<Ctx>, l: TcpListener) {
    loop {
        let Ok((mut sock, _)) = l.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let mut n = 0;
            let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                loop {
                    let k = sock.read(&mut buf[n..]).await?;
                    if k == 0 {
                        break;
                    }
                    n += k;
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") || n == buf.len() {
                        break;
                    }
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
            if !matches!(read, Ok(Ok(()))) {
                return;
            }
            let req = String::from_utf8_lossy(&buf[..n]);
            let line = req.lines().next().unwrap_or("");
            let mut parts = line.split_whitespace();
            let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            let (status, ctype, body) = if method != "GET" {
                (
                    "405 Method Not Allowed",
                    "text/plain",
                    "GET only\n".to_string(),
                )
            } else if path == "/health/live" {
                ("200 OK", "text/plain", "ok\n".to_string())
            } else if path == "/health/ready" {
                let writable = query
                    .split('&')
                    .any(|kv| kv == "writable" || kv == "writable=1" || kv == "writable=true");
                let c = ctx.clone();
                match tokio::task::spawn_blocking(move || health(&c, writable)).await {
                    Ok(h) if h.ready => ("200 OK", "application/json", h.body.to_string()),
                    Ok(h) => (
                        "503 Service Unavailable",
                        "application/json",
                        h.body.to_string(),
                    ),
                    Err(_) => (
                        "500 Internal Server Error",
                        "text/plain",
                        "health check failed\n".to_string(),
                    ),
                }
            } else if path == "/metrics" {
                ("200 OK", "text/plain; version=0.0.4", prometheus(&ctx))
            } else if path == "/" || path == "/all" {
                let cats = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("categories="))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(MonitorStatRequest::ALL);
                let c = ctx.clone();
                let v = tokio::task::spawn_blocking(move || json(&c, cats))
                    .await
                    .unwrap_or(Value::Null);
                ("200 OK", "application/json", v.to_string())
            } else {
                (
                    "404 Not Found",
                    "text/plain",
                    "try /, /metrics, /health/live or /health/ready\n".to_string(),
                )
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(body.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}
