//! Starting one `apsis server` process and learning where it listens.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

/// A server that printed its `listening ADDR` line (and `monitor http://ADDR/` when asked).
pub struct Started {
    pub child: Child,
    pub addr: SocketAddr,
    pub monitor: Option<SocketAddr>,
}

/// Spawns `cmd` (an `apsis server …` command; its stdout is taken here), waits until it
/// prints where it listens — and where its monitor listens when `with_monitor` — and keeps
/// draining its stdout in a thread so the server never blocks on it. A server that exits
/// first is an error carrying its exit status.
pub fn start_server(cmd: &mut Command, with_monitor: bool) -> std::io::Result<Started> {
    let mut child = cmd.stdout(Stdio::piped()).spawn()?;
    let mut out = BufReader::new(child.stdout.take().expect("stdout is piped"));
    let (mut addr, mut monitor) = (None, None);
    let parse = |s: &str| {
        s.parse::<SocketAddr>()
            .map_err(|e| std::io::Error::other(format!("address {s:?}: {e}")))
    };
    while addr.is_none() || (with_monitor && monitor.is_none()) {
        let mut line = String::new();
        if out.read_line(&mut line)? == 0 {
            let st = child.wait()?;
            return Err(std::io::Error::other(format!(
                "server exited before listening ({st})"
            )));
        }
        if let Some(a) = line.trim().strip_prefix("listening ") {
            addr = Some(parse(a)?);
        } else if let Some(m) = line.trim().strip_prefix("monitor http://") {
            monitor = Some(parse(m.trim_end_matches('/'))?);
        }
    }
    std::thread::spawn(move || {
        let mut s = String::new();
        while out.read_line(&mut s).map(|n| n > 0).unwrap_or(false) {
            s.clear();
        }
    });
    Ok(Started {
        child,
        addr: addr.expect("loop ends with an address"),
        monitor,
    })
}

/// Whether the tests run as root (network namespaces and FUSE mounts need it).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// `GET path` from an HTTP server (a node's monitor): the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr)?;
    c.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: apsis\r\nConnection: close\r\n\r\n"
    )?;
    let mut r = String::new();
    c.read_to_string(&mut r)?;
    let bad = || std::io::Error::other(format!("not an HTTP response: {r:?}"));
    let (head, body) = r.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    Ok((status, body.to_string()))
}
