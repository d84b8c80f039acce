//! Admin commands: stat, routes, status, backend.

use crate::ClientOpts;
use apsis_proto::{BackendStatus, MonitorStatRequest, NodeStatus};
use clap::{Args, Subcommand};
use serde_json::json;
use std::net::SocketAddr;

#[derive(Args)]
pub struct StatArgs {
    /// Categories bitmask (0xf7 = all; 0x2 io, 0x4 commands, 0x10 backend, 0x20 stats, 0x40 procfs).
    #[arg(long, default_value = "0xf7")]
    categories: String,
    #[command(flatten)]
    c: ClientOpts,
}

#[derive(Args)]
pub struct RoutesArgs {
    #[command(flatten)]
    c: ClientOpts,
}

#[derive(Args)]
pub struct StatusArgs {
    /// Make the node read-only (writes and deletes get EROFS).
    #[arg(long, conflicts_with = "rw")]
    ro: bool,
    /// Make the node writable again.
    #[arg(long)]
    rw: bool,
    /// Set the log level: debug, notice, info, warning, error.
    #[arg(long)]
    log_level: Option<String>,
    #[command(flatten)]
    c: ClientOpts,
}

#[derive(Args)]
pub struct BackendArgs {
    #[command(subcommand)]
    action: BackendAction,
    #[command(flatten)]
    c: ClientOpts,
}

#[derive(Subcommand)]
enum BackendAction {
    /// Status of every backend of the node(s).
    Status,
    Enable(BackendId),
    Disable(BackendId),
    /// Start a defrag (compaction) pass.
    Defrag(BackendId),
    /// Stop a running defrag pass (the base it is rewriting stays as it was).
    StopDefrag(BackendId),
    ReadOnly(BackendId),
    Writable(BackendId),
    /// Make every command the backend serves wait first (Elliptics' backend delay: latency
    /// and timeout testing, e.g. `scripts/bench-cluster.sh`); 0 turns it off.
    Delay(BackendDelay),
}

#[derive(Args)]
struct BackendDelay {
    /// Backend id.
    id: u32,
    /// Milliseconds each command waits.
    ms: u32,
}

#[derive(Args)]
struct BackendId {
    /// Backend id.
    id: u32,
}

fn parse_mask(s: &str) -> anyhow::Result<u64> {
    let t = s.trim();
    Ok(match t.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16)?,
        None => t.parse()?,
    })
}

pub async fn stat(a: StatArgs) -> anyhow::Result<()> {
    let s = a.c.session().await?;
    let cats = parse_mask(&a.categories)?;
    for addr in a.c.remote_addrs()? {
        let v = s.monitor_stat(addr, cats).await?;
        if a.c.json {
            println!("{v}");
            continue;
        }
        println!("node {addr}");
        if let Some(b) = v.get("backends").and_then(|b| b.as_object()) {
            for (id, b) in b {
                let st = &b["status"];
                let sum = &b["backend"]["summary_stats"];
                println!(
                    "  backend {id}: {} group {} records {} removed {} live {} B dead {} B{}",
                    st["string_state"].as_str().unwrap_or("?"),
                    b["backend"]["config"]["group"],
                    sum["records_total"],
                    sum["records_removed"],
                    sum["live_bytes"],
                    sum["dead_bytes"],
                    if st["read_only"].as_bool() == Some(true) {
                        " read-only"
                    } else {
                        ""
                    }
                );
            }
        }
        if let Some(c) = v.get("commands").and_then(|c| c.as_object()) {
            for (name, c) in c {
                let o = &c["disk"]["outside"];
                println!(
                    "  {name:<16} ok {:<10} failed {}",
                    o["successes"], o["failures"]
                );
            }
        }
        if cats & MonitorStatRequest::IO != 0 {
            let io = &v["io"];
            println!(
                "  connections open {} of {}; large frames {} of {} B held, {} waits, {} stalled",
                io["connections"]["open"],
                io["connections"]["limit"],
                io["frame_memory"]["used"],
                io["frame_memory"]["limit"],
                io["frame_memory"]["waits"],
                io["frames_stalled"]
            );
        }
    }
    Ok(())
}

pub async fn routes(a: RoutesArgs) -> anyhow::Result<()> {
    let s = a.c.session().await?;
    let entries = s.client().routes().entries();
    if a.c.json {
        let v: Vec<_> = entries
            .iter()
            .map(|(g, id, r)| json!({"group": g, "id": apsis_proto::hex(id), "address": r.addr.to_string(), "backend": r.backend_id}))
            .collect();
        println!("{}", serde_json::Value::Array(v));
    } else {
        println!("{:<6} {:<18} {:<22} backend", "group", "ring id", "address");
        for (g, id, r) in entries {
            println!(
                "{g:<6} {:<18} {:<22} {}",
                apsis_proto::hex_prefix(&id),
                r.addr,
                r.backend_id
            );
        }
    }
    Ok(())
}

fn print_status(addr: SocketAddr, b: &BackendStatus, as_json: bool) {
    let state = match b.state {
        1 => "enabled",
        0 => "disabled",
        2 => "activating",
        3 => "deactivating",
        _ => "uninitialised",
    };
    if as_json {
        println!(
            "{}",
            json!({"node": addr.to_string(), "backend": b.backend_id, "state": state, "read_only": b.read_only,
                   "defrag": b.defrag_state, "delay_ms": b.delay_ms, "last_start_err": b.last_start_err})
        );
    } else {
        println!(
            "{addr} backend {}: {state}{}{}{}{}",
            b.backend_id,
            if b.read_only { ", read-only" } else { "" },
            if b.delay_ms != 0 {
                format!(", delay {} ms", b.delay_ms)
            } else {
                String::new()
            },
            if b.defrag_state != 0 {
                ", defrag running"
            } else {
                ""
            },
            if b.last_start_err != 0 {
                format!(", last start error {}", b.last_start_err)
            } else {
                String::new()
            }
        );
    }
}

pub async fn backend(a: BackendArgs) -> anyhow::Result<()> {
    let s = a.c.session().await?;
    for addr in a.c.remote_addrs()? {
        let (name, id) = match &a.action {
            BackendAction::Status => {
                for b in s.backend_status(addr).await? {
                    print_status(addr, &b, a.c.json);
                }
                continue;
            }
            BackendAction::Delay(d) => {
                let st = s.backend_delay(addr, d.id, d.ms).await?;
                print_status(addr, &st, a.c.json);
                continue;
            }
            BackendAction::Enable(b) => ("enable", b.id),
            BackendAction::Disable(b) => ("disable", b.id),
            BackendAction::Defrag(b) => ("defrag", b.id),
            BackendAction::StopDefrag(b) => ("stop-defrag", b.id),
            BackendAction::ReadOnly(b) => ("read-only", b.id),
            BackendAction::Writable(b) => ("writable", b.id),
        };
        let cmd = apsis_client::Session::backend_command(name).expect("known command");
        let st = s.backend_control(addr, id, cmd, vec![]).await?;
        print_status(addr, &st, a.c.json);
    }
    Ok(())
}

pub async fn status(a: StatusArgs) -> anyhow::Result<()> {
    let s = a.c.session().await?;
    let level = match a.log_level.as_deref() {
        None => u32::MAX,
        Some(l) => match l {
            "debug" => 0,
            "notice" => 1,
            "info" => 2,
            "warning" | "warn" => 3,
            "error" => 4,
            other => anyhow::bail!("log level {other:?}: debug, notice, info, warning or error"),
        },
    };
    let set = NodeStatus {
        nflags: -1,
        status_flags: if a.ro {
            NodeStatus::RO
        } else if a.rw {
            0
        } else {
            -1
        },
        log_level: level,
    };
    for addr in a.c.remote_addrs()? {
        let st = s.node_status(addr, set).await?;
        if a.c.json {
            println!(
                "{}",
                json!({"node": addr.to_string(), "flags": st.nflags, "read_only": st.status_flags & NodeStatus::RO != 0, "log_level": st.log_level})
            );
        } else {
            println!(
                "{addr}: {} log level {} flags {:#x}",
                if st.status_flags & NodeStatus::RO != 0 {
                    "read-only"
                } else {
                    "writable"
                },
                st.log_level,
                st.nflags
            );
        }
    }
    Ok(())
}
