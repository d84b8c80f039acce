//! `apsis recovery merge|dc`: runs a recovery job on one node (or backend) or on every node of
//! the cluster, with a progress bar per node. The work itself runs inside the nodes (the same
//! code as their background recovery); this command starts it and shows its progress.

use crate::ClientOpts;
use apsis_proto::recovery::{job_flags, JobKind, JobRequest};
use apsis_proto::Time;
use clap::{Args, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::Value;
use std::io::IsTerminal;
use std::net::SocketAddr;

#[derive(Args)]
pub struct RecoveryArgs {
    #[command(subcommand)]
    kind: Kind,
}

#[derive(Subcommand)]
enum Kind {
    /// Inside each group: hand keys a backend no longer owns to their owner.
    Merge(JobArgs),
    /// Across groups: bring every group to the newest copy of every key.
    Dc(JobArgs),
}

#[derive(Args)]
struct JobArgs {
    /// Only this node (host:port); by default every node in the route table.
    #[arg(long)]
    node: Option<String>,
    /// Only this backend of the node.
    #[arg(long, requires = "node")]
    backend: Option<u32>,
    /// Compare and report what would be copied; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Only records changed at or after TIME: Unix seconds, or an age such as 90s, 30m, 12h, 7d.
    #[arg(long)]
    since: Option<String>,
    /// Continue an interrupted job from where it stopped (with the same --since).
    #[arg(long)]
    resume: bool,
    /// dc: also read and verify every record, repairing corrupt copies from other groups.
    #[arg(long)]
    verify: bool,
    #[command(flatten)]
    c: ClientOpts,
}

/// Unix seconds, or an age ("90s", "30m", "12h", "7d") before now.
fn parse_since(s: &str) -> anyhow::Result<Time> {
    let t = s.trim();
    if let Ok(sec) = t.parse::<u64>() {
        return Ok(Time { sec, nsec: 0 });
    }
    let (num, unit) = t.split_at(t.len().saturating_sub(1));
    let n: u64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("--since {s:?}: want Unix seconds or an age like 30m"))?;
    let mul = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => anyhow::bail!("--since {s:?}: the unit must be s, m, h or d"),
    };
    let now = Time::now();
    Ok(Time {
        sec: now.sec.saturating_sub(n.saturating_mul(mul)),
        nsec: 0,
    })
}

pub async fn run(a: RecoveryArgs) -> anyhow::Result<()> {
    let (kind, j) = match a.kind {
        Kind::Merge(j) => (JobKind::Merge, j),
        Kind::Dc(j) => (JobKind::Dc, j),
    };
    if j.verify && kind == JobKind::Merge {
        anyhow::bail!("--verify applies to dc");
    }
    let s = j.c.session().await?;
    let nodes: Vec<SocketAddr> = match &j.node {
        Some(n) => vec![
            apsis_proto::Addr::parse_dnet(n)
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .0,
        ],
        None => {
            let mut v: Vec<SocketAddr> = s
                .client()
                .routes()
                .entries()
                .into_iter()
                .map(|(_, _, r)| r.addr)
                .collect();
            v.sort();
            v.dedup();
            v
        }
    };
    if nodes.is_empty() {
        anyhow::bail!("no node serves any backend");
    }
    let mut flags = 0;
    if j.dry_run {
        flags |= job_flags::DRY_RUN;
    }
    if j.resume {
        flags |= job_flags::RESUME;
    }
    if j.verify {
        flags |= job_flags::VERIFY;
    }
    let req = JobRequest {
        kind,
        flags,
        since: match &j.since {
            Some(t) => parse_since(t)?,
            None => Time::default(),
        },
    };
    let multi = MultiProgress::new();
    if !std::io::stderr().is_terminal() || j.c.json {
        multi.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template("{prefix:22} {bar:30} {percent:>3}% {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    let jobs = nodes.iter().map(|&addr| {
        let bar = multi.add(ProgressBar::new(1000));
        bar.set_style(style.clone());
        bar.set_prefix(addr.to_string());
        let s = &s;
        let json = j.c.json;
        let backend = j.backend;
        async move {
            let mut finals: Vec<Value> = Vec::new();
            let mut stream = s.recovery_job(addr, backend, &req).await?;
            while let Some(p) = stream.next().await {
                let p = p?;
                bar.set_position((p["fraction"].as_f64().unwrap_or(0.0) * 1000.0) as u64);
                bar.set_message(format!(
                    "backend {} {} {} copied {} handed off {} errors {}",
                    p["backend"],
                    p["phase"].as_str().unwrap_or(""),
                    p["peer"].as_str().unwrap_or(""),
                    p["copied_keys"],
                    p["handed_off"],
                    p["errors"]
                ));
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"node": addr.to_string(), "progress": p})
                    );
                }
                if p["done"].as_bool() == Some(true) {
                    finals.push(p);
                }
            }
            bar.finish();
            anyhow::Ok((addr, finals))
        }
    });
    let results = apsis_client::session::join_all(jobs).await;
    let mut errors = 0u64;
    let mut failed = 0;
    for r in results {
        match r {
            Ok((addr, finals)) => {
                for p in finals {
                    errors += p["errors"].as_u64().unwrap_or(0);
                    if !j.c.json {
                        print_summary(addr, &p);
                    }
                }
            }
            Err(e) => {
                failed += 1;
                eprintln!("recovery failed: {e}");
            }
        }
    }
    if failed > 0 || errors > 0 {
        anyhow::bail!(
            "{failed} node(s) failed, {errors} error(s); run again (with --resume to continue)"
        );
    }
    Ok(())
}

fn print_summary(addr: SocketAddr, p: &Value) {
    let n = |k: &str| p[k].as_u64().unwrap_or(0);
    if p["dry_run"].as_bool() == Some(true) {
        println!(
            "{addr} backend {} {}: {} buckets, {} differ; would copy {} keys, hand off {}",
            n("backend"),
            p["kind"].as_str().unwrap_or(""),
            n("buckets"),
            n("buckets_differing"),
            n("would_copy"),
            n("would_hand_off"),
        );
    } else {
        println!(
            "{addr} backend {} {}: {} buckets, {} differ; copied {} keys ({} bytes), handed off {}, dropped {} prepared, repaired {}, {} errors",
            n("backend"),
            p["kind"].as_str().unwrap_or(""),
            n("buckets"),
            n("buckets_differing"),
            n("copied_keys"),
            n("copied_bytes"),
            n("handed_off"),
            n("prepared_dropped"),
            n("repaired"),
            n("errors"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::parse_since;

    #[test]
    fn since_takes_seconds_or_an_age() {
        assert_eq!(parse_since("1700000000").unwrap().sec, 1_700_000_000);
        let now = apsis_proto::Time::now().sec;
        let t = parse_since("2h").unwrap().sec;
        assert!(t <= now - 7200 && t >= now - 7300);
        assert!(parse_since("2w").is_err());
        assert!(parse_since("abc").is_err());
    }
}
