//! Test harness: real `apsis server` processes on ephemeral loopback ports.
#![allow(dead_code)]

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
        let with_monitor = args.iter().any(|a| a == "--monitor-port");
        let started = apsis_testkit::process::start_server(
            apsis()
                .args(&args)
                .env("APSIS_LOG", "warn")
                .stderr(Stdio::inherit()),
            with_monitor,
        )
        .expect("start apsis server");
        Server {
            child: Some(started.child),
            addr: started.addr,
            monitor: started.monitor,
            dir: dir.to_path_buf(),
            args,
        }
    }

    /// [`Server::start`] under `prlimit --nofile=SOFT:HARD` (util-linux): a server with that
    /// open-file limit. (A restart drops the limit.)
    pub fn start_with_nofile(dir: &Path, soft: u64, hard: u64) -> Server {
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--nofile={soft}:{hard}"))
            .arg(env!("CARGO_BIN_EXE_apsis"))
            .args(["server", "--listen", "127.0.0.1:0", "--data"])
            .arg(dir)
            .env("APSIS_LOG", "warn")
            .stderr(Stdio::inherit());
        let started =
            apsis_testkit::process::start_server(&mut cmd, false).expect("start apsis server");
        Server {
            child: Some(started.child),
            addr: started.addr,
            monitor: None,
            dir: dir.to_path_buf(),
            args: Vec::new(),
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
