//! Test harness: real `apsis server` processes on ephemeral loopback ports.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub fn apsis() -> Command {
    Command::new(env!("CARGO_BIN_EXE_apsis"))
}

/// A running server; killed (SIGKILL) when dropped unless stopped first.
pub struct Server {
    pub child: Option<Child>,
    pub addr: SocketAddr,
    pub monitor: Option<SocketAddr>,
    pub dir: PathBuf,
    args: Vec<String>,
}

impl Server {
    /// Starts `apsis server --listen 127.0.0.1:0 --data DIR` plus `extra`.
    pub fn start(dir: &Path, extra: &[&str]) -> Server {
        let mut args: Vec<String> = vec![
            "server".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--data".into(),
            dir.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::spawn(dir, args)
    }

    /// Starts with exactly these arguments after `apsis`.
    pub fn spawn(dir: &Path, args: Vec<String>) -> Server {
        let mut child = apsis()
            .args(&args)
            .env("APSIS_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start apsis server");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut addr = None;
        let mut monitor = None;
        loop {
            let mut line = String::new();
            if out.read_line(&mut line).expect("read server stdout") == 0 {
                let st = child.wait();
                panic!("server exited before listening: {st:?}");
            }
            if let Some(a) = line.trim().strip_prefix("listening ") {
                addr = Some(a.parse().expect("listen address"));
                // A monitor line follows only when enabled; it is printed right after.
                if !args.iter().any(|a| a == "--monitor-port") {
                    break;
                }
            } else if let Some(m) = line.trim().strip_prefix("monitor http://") {
                monitor = Some(m.trim_end_matches('/').parse().expect("monitor address"));
                break;
            }
        }
        // Keep draining stdout so the server never blocks on it.
        std::thread::spawn(move || {
            let mut s = String::new();
            while out.read_line(&mut s).map(|n| n > 0).unwrap_or(false) {
                s.clear();
            }
        });
        Server {
            child: Some(child),
            addr: addr.expect("address"),
            monitor,
            dir: dir.to_path_buf(),
            args,
        }
    }

    pub fn remote(&self) -> String {
        self.addr.to_string()
    }

    /// SIGTERM and wait: a graceful stop.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        wait_timeout(&mut c, Duration::from_secs(20))
    }

    /// SIGKILL: a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again with the same arguments (same port when it was fixed; ephemeral otherwise).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop first");
        let s = Server::spawn(&self.dir, self.args.clone());
        *self = s;
    }
}

fn wait_timeout(c: &mut Child, d: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + d;
    loop {
        if let Some(st) = c.try_wait().expect("wait") {
            return st;
        }
        if std::time::Instant::now() > deadline {
            let _ = c.kill();
            panic!("server did not stop within {d:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub async fn session(s: &Server, groups: Vec<u32>) -> apsis_client::Session {
    let c = apsis_client::Client::connect(&[s.addr], Default::default())
        .await
        .expect("connect");
    c.session(groups)
}
