//! Object commands: write, read, lookup, remove, ls, range.

use crate::ClientOpts;
use apsis_proto::{ioflags, IdRange, LookupReply};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

#[derive(Args)]
pub struct KeyArgs {
    pub key: String,
    #[command(flatten)]
    pub c: ClientOpts,
}

#[derive(Args)]
pub struct RemoveArgs {
    /// Keys to remove (several are removed concurrently, as Elliptics' bulk_remove).
    #[arg(required = true)]
    pub keys: Vec<String>,
    #[command(flatten)]
    pub c: ClientOpts,
}

#[derive(Args)]
pub struct WriteArgs {
    pub key: String,
    /// File to write, or - for standard input.
    pub file: String,
    /// Append to the object instead of replacing it.
    #[arg(long)]
    append: bool,
    /// Write at this offset inside the object.
    #[arg(long, default_value_t = 0)]
    offset: u64,
    /// User flags stored with the record.
    #[arg(long, default_value_t = 0)]
    user_flags: u64,
    #[command(flatten)]
    pub c: ClientOpts,
}

#[derive(Args)]
pub struct ReadArgs {
    pub key: String,
    /// Output file (default: standard output).
    #[arg(short = 'o', long)]
    output: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    offset: u64,
    /// Bytes to read (0 = to the end).
    #[arg(long, default_value_t = 0)]
    size: u64,
    /// Read the newest copy across groups.
    #[arg(long)]
    latest: bool,
    #[command(flatten)]
    pub c: ClientOpts,
}

#[derive(Args)]
pub struct LsArgs {
    /// Group to list (default: the first of --groups).
    #[arg(long)]
    group: Option<u32>,
    #[command(flatten)]
    pub c: ClientOpts,
}

#[derive(Args)]
pub struct RangeArgs {
    /// First id of the range in hex (shorter is padded with 0s); default: the lowest id.
    #[arg(long)]
    from: Option<String>,
    /// Last id of the range in hex (shorter is padded with fs); default: the highest id.
    #[arg(long)]
    to: Option<String>,
    /// Group to read (default: the first of --groups).
    #[arg(long)]
    group: Option<u32>,
    /// Keys of the range passed over first.
    #[arg(long, default_value_t = 0)]
    skip: u64,
    /// Most keys (0 = all).
    #[arg(long, default_value_t = 0)]
    limit: u64,
    /// Only count the keys (READ_RANGE with NODATA).
    #[arg(long)]
    count: bool,
    /// Remove the keys (DEL_RANGE) instead of reading them.
    #[arg(long)]
    remove: bool,
    #[command(flatten)]
    pub c: ClientOpts,
}

/// A hex id, padded to 64 bytes with `pad`.
fn parse_id(s: &str, pad: u8) -> anyhow::Result<[u8; 64]> {
    apsis_proto::id_from_hex(s.trim(), pad)
        .ok_or_else(|| anyhow::anyhow!("an id is up to 128 hex digits, in pairs: {s:?}"))
}

fn bar(total: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() || total < (16 << 20) {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(total);
    if let Ok(s) =
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
    {
        b.set_style(s);
    }
    b
}

fn info_json(group: u32, l: &LookupReply) -> serde_json::Value {
    json!({
        "group": group,
        "address": l.addr.to_dnet_string(),
        "size": l.info.size,
        "offset": l.info.offset,
        "record_flags": l.info.record_flags,
        "timestamp": {"sec": l.info.mtime.sec, "nsec": l.info.mtime.nsec},
        "checksum": apsis_proto::hex(&l.info.checksum),
        "path": String::from_utf8_lossy(&l.path),
    })
}

pub async fn write(a: WriteArgs) -> anyhow::Result<()> {
    let mut data = Vec::new();
    if a.file == "-" {
        std::io::stdin().read_to_end(&mut data)?;
    } else {
        data = std::fs::read(&a.file).map_err(|e| anyhow::anyhow!("{}: {e}", a.file))?;
    }
    let mut s = a.c.session().await?;
    s.user_flags = a.user_flags;
    let id = s.id(a.key.as_bytes());
    let r = if a.append {
        s.write_with(a.key.as_bytes(), &data, ioflags::APPEND, 0)
            .await?
    } else if a.offset > 0 {
        s.write_with(a.key.as_bytes(), &data, 0, a.offset).await?
    } else if data.len() > s.chunk_size {
        let b = bar(data.len() as u64);
        let r = s
            .write_chunked(id, &data, |done| b.set_position(done))
            .await?;
        b.finish_and_clear();
        r
    } else {
        s.write(a.key.as_bytes(), &data).await?
    };
    if a.c.json {
        let groups: Vec<_> = r
            .groups
            .iter()
            .map(|g| match &g.result {
                Ok(Some(l)) => info_json(g.group, l),
                Ok(None) => json!({"group": g.group}),
                Err(e) => json!({"group": g.group, "error": e.to_string(), "status": e.errno()}),
            })
            .collect();
        println!(
            "{}",
            json!({"key": a.key, "id": apsis_proto::hex(&id), "bytes": data.len(), "groups": groups})
        );
    } else {
        for g in &r.groups {
            match &g.result {
                Ok(_) => println!("group {}: wrote {} bytes", g.group, data.len()),
                Err(e) => println!("group {}: failed: {e}", g.group),
            }
        }
    }
    Ok(())
}

pub async fn read(a: ReadArgs) -> anyhow::Result<()> {
    let s = a.c.session().await?;
    let mut out: Box<dyn Write> = match &a.output {
        Some(p) => Box::new(std::io::BufWriter::new(std::fs::File::create(p)?)),
        None => Box::new(std::io::stdout().lock()),
    };
    if a.latest {
        let r = s.read_latest(a.key.as_bytes()).await?;
        out.write_all(&r.data)?;
        out.flush()?;
        return Ok(());
    }
    // Stream in chunks so objects of any size read with bounded memory.
    let chunk = s.chunk_size as u64;
    let first = s
        .read(
            a.key.as_bytes(),
            a.offset,
            if a.size == 0 {
                chunk
            } else {
                a.size.min(chunk)
            },
        )
        .await?;
    let total_size = first.io.total_size;
    let end = if a.size == 0 {
        total_size
    } else {
        (a.offset + a.size).min(total_size)
    };
    let b = bar(end.saturating_sub(a.offset));
    out.write_all(&first.data)?;
    let mut pos = a.offset + first.data.len() as u64;
    b.set_position(pos - a.offset);
    let mut s2 = s.clone();
    s2.groups = vec![first.group];
    while pos < end {
        let r = s2
            .read(a.key.as_bytes(), pos, (end - pos).min(chunk))
            .await?;
        if r.data.is_empty() {
            break;
        }
        out.write_all(&r.data)?;
        pos += r.data.len() as u64;
        b.set_position(pos - a.offset);
    }
    b.finish_and_clear();
    out.flush()?;
    Ok(())
}

pub async fn lookup(a: KeyArgs) -> anyhow::Result<()> {
    let mut s = a.c.session().await?;
    s.cflags |= apsis_proto::cflags::CHECKSUM;
    let (g, l) = s.lookup(a.key.as_bytes()).await?;
    if a.c.json {
        println!("{}", info_json(g, &l));
    } else {
        println!("key:       {}", a.key);
        println!("id:        {}", apsis_proto::hex(&s.id(a.key.as_bytes())));
        println!("group:     {g}");
        println!("address:   {}", l.addr.to_dnet_string());
        println!("size:      {}", l.info.size);
        println!("timestamp: {}.{:09}", l.info.mtime.sec, l.info.mtime.nsec);
        println!("flags:     {:#x}", l.info.record_flags);
        println!("checksum:  {}", apsis_proto::hex(&l.info.checksum));
        println!(
            "path:      {} @ {}",
            String::from_utf8_lossy(&l.path),
            l.info.offset
        );
    }
    Ok(())
}

pub async fn remove(a: RemoveArgs) -> anyhow::Result<()> {
    let s = a.c.session().await?;
    if let [key] = &a.keys[..] {
        let r = s.remove(key.as_bytes()).await?;
        print_removed(&a.c, key, false, &r);
        return Ok(());
    }
    // Several: each key's groups, prefixed with the key; the command fails if any key did.
    let keys: Vec<Vec<u8>> = a.keys.iter().map(|k| k.clone().into_bytes()).collect();
    let mut failed = 0;
    for (key, r) in a.keys.iter().zip(s.bulk_remove(&keys).await) {
        match r {
            Ok(groups) => print_removed(&a.c, key, true, &groups),
            Err(e) => {
                failed += 1;
                match a.c.json {
                    true => println!(
                        "{}",
                        json!({"key": key, "error": e.to_string(), "status": e.errno()})
                    ),
                    false => println!("{key}: {e}"),
                }
            }
        }
    }
    anyhow::ensure!(failed == 0, "{failed} of {} keys not removed", a.keys.len());
    Ok(())
}

/// One removal's outcome per group; human output names the key when several were removed.
fn print_removed(
    c: &crate::ClientOpts,
    key: &str,
    several: bool,
    groups: &[apsis_client::GroupResult<()>],
) {
    let prefix = if several {
        format!("{key}: ")
    } else {
        String::new()
    };
    for g in groups {
        match &g.result {
            Ok(()) if c.json => {
                println!("{}", json!({"key": key, "group": g.group, "removed": true}))
            }
            Ok(()) => println!("{prefix}group {}: removed", g.group),
            Err(e) if c.json => println!(
                "{}",
                json!({"key": key, "group": g.group, "error": e.to_string(), "status": e.errno()})
            ),
            Err(e) => println!("{prefix}group {}: {e}", g.group),
        }
    }
}

pub async fn ls(a: LsArgs) -> anyhow::Result<()> {
    let s = a.c.session().await?;
    let group = a.group.unwrap_or(a.c.groups[0]);
    // One iterator per backend of the group, restricted to the ranges it owns.
    let mut by_backend: std::collections::BTreeMap<_, Vec<IdRange>> = Default::default();
    for (r, route) in s.client().routes().ranges(group) {
        by_backend.entry(route).or_default().push(r);
    }
    if by_backend.is_empty() {
        anyhow::bail!("no route to group {group}");
    }
    let mut seen = std::collections::HashSet::new();
    let mut n = 0u64;
    for ranges in by_backend.into_values() {
        let first = ranges[0].begin;
        let mut it = s
            .iterator(
                group,
                first,
                apsis_client::IterOptions {
                    ranges,
                    ..Default::default()
                },
            )
            .await?;
        while let Some(item) = it.next().await {
            let item = item?;
            if !seen.insert(item.resp.key) {
                continue;
            }
            n += 1;
            if a.c.json {
                println!(
                    "{}",
                    json!({"id": apsis_proto::hex(&item.resp.key), "size": item.resp.size,
                           "timestamp": {"sec": item.resp.timestamp.sec, "nsec": item.resp.timestamp.nsec},
                           "user_flags": item.resp.user_flags, "record_flags": item.resp.record_flags})
                );
            } else {
                println!(
                    "{}  {:>12}  {}.{:09}",
                    apsis_proto::hex(&item.resp.key),
                    item.resp.size,
                    item.resp.timestamp.sec,
                    item.resp.timestamp.nsec
                );
            }
        }
    }
    if !a.c.json {
        eprintln!("{n} keys");
    }
    Ok(())
}

pub async fn range(a: RangeArgs) -> anyhow::Result<()> {
    let s = a.c.session().await?;
    let group = a.group.unwrap_or(a.c.groups[0]);
    let from = parse_id(a.from.as_deref().unwrap_or(""), 0)?;
    let to = parse_id(a.to.as_deref().unwrap_or(""), 0xff)?;
    let opts = apsis_client::RangeOptions {
        skip: a.skip,
        limit: a.limit,
        nodata: a.count,
        ..Default::default()
    };
    if a.remove {
        let n = s.remove_range(group, from, to, opts).await?;
        if a.c.json {
            println!("{}", json!({"group": group, "removed": n}));
        } else {
            println!("{n} keys removed");
        }
        return Ok(());
    }
    let r = s.read_range(group, from, to, opts).await?;
    for item in &r.items {
        let io = &item.io;
        if a.c.json {
            println!(
                "{}",
                json!({"id": apsis_proto::hex(&io.id), "size": io.total_size,
                       "timestamp": {"sec": io.timestamp.sec, "nsec": io.timestamp.nsec},
                       "user_flags": io.user_flags})
            );
        } else {
            println!(
                "{}  {:>12}  {}.{:09}",
                apsis_proto::hex(&io.id),
                io.total_size,
                io.timestamp.sec,
                io.timestamp.nsec
            );
        }
    }
    for (id, status) in &r.errors {
        eprintln!("{}: error {status}", apsis_proto::hex(id));
    }
    if a.c.json && a.count {
        println!("{}", json!({"group": group, "count": r.count}));
    } else if !a.c.json {
        eprintln!("{} keys", r.count);
    }
    Ok(())
}
