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
