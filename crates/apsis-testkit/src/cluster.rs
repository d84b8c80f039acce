//! A cluster of real `apsis server` processes and the faults that can be done to it.

use crate::disk::FaultyDisk;
use crate::netns::Fabric;
use apsis_client::{Client, ClientOptions};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Where the nodes run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Net {
    /// All on 127.0.0.1, ephemeral ports.
    Loopback,
    /// Each node in its own network namespace on a bridge (root only); needed for
    /// [`Cluster::partition`].
    Namespaces,
}

/// What to start.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// For each node, the groups of its backends (one backend per group).
    pub nodes: Vec<Vec<u32>>,
    pub net: Net,
    /// Node `wait_timeout` and `check_timeout` (seconds) and `stall_count`.
    pub wait_timeout_secs: u64,
    pub check_timeout_secs: u64,
    pub stall_count: u32,
    /// Backend `sync`.
    pub sync: i64,
    /// The `[recovery]` section. By default background recovery is off, so a test sees
    /// exactly the faults it makes; recovery tests turn it on with a short interval.
    pub recovery: String,
    /// Nodes whose backend directories sit on their own [`FaultyDisk`] (root and
    /// `/dev/fuse`), for tests that make a disk fail or fill up ([`Cluster::disk`]).
    pub faulty_disks: Vec<usize>,
    /// Extra lines for every `[[backend]]` section (e.g. `blob_size = "8M"`).
    pub backend_extra: String,
    /// Extra lines for every node's `[node]` section (e.g. `keepalive_idle_secs = 1`).
    pub node_extra: String,
    /// Every node serves the HTTP monitor, on a port of its own ([`NodeHandle::monitor`]).
    pub monitor: bool,
}

impl ClusterSpec {
    /// `nodes` with short timeouts (1 s) so failures are detected within seconds.
    pub fn new(nodes: Vec<Vec<u32>>, net: Net) -> ClusterSpec {
        ClusterSpec {
            nodes,
            net,
            wait_timeout_secs: 1,
            check_timeout_secs: 1,
            stall_count: 2,
            sync: -1,
            recovery: "auto = false".into(),
            faulty_disks: Vec::new(),
            backend_extra: String::new(),
            node_extra: String::new(),
            monitor: false,
        }
    }

    /// Every group served by some node, sorted.
    pub fn groups(&self) -> Vec<u32> {
        let mut g: Vec<u32> = self.nodes.iter().flatten().copied().collect();
        g.sort();
        g.dedup();
        g
    }
}

/// One node: its process, address and files.
pub struct NodeHandle {
    pub addr: SocketAddr,
    /// The HTTP monitor's address, with [`ClusterSpec::monitor`].
    pub monitor: Option<SocketAddr>,
    pub dir: PathBuf,
    child: Option<Child>,
    paused: bool,
}

impl NodeHandle {
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
    fn signal(&self, sig: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
        }
    }
    /// The server's log (stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

/// Running nodes; every process is killed and every namespace removed on drop.
pub struct Cluster {
    bin: PathBuf,
    pub spec: ClusterSpec,
    pub nodes: Vec<NodeHandle>,
    fabric: Option<Fabric>,
    /// By node; unmounted before the temporary directory goes.
    disks: Vec<Option<FaultyDisk>>,
    _dir: tempfile::TempDir,
}

/// The port every node uses inside its own namespace.
const NS_PORT: u16 = 1025;

impl Cluster {
    /// Starts every node of `spec` with the `apsis` binary `bin` (tests pass
    /// `env!("CARGO_BIN_EXE_apsis")`). Node i lists nodes 0..i as remotes, so later nodes
    /// join the earlier ones; a restarted node lists every other node.
    pub fn start(bin: impl Into<PathBuf>, spec: ClusterSpec) -> std::io::Result<Cluster> {
        let dir = tempfile::Builder::new().prefix("apsis-cluster").tempdir()?;
        let fabric = match spec.net {
            Net::Loopback => None,
            Net::Namespaces => Some(Fabric::new()?),
        };
        let groups = spec.nodes.clone();
        let mut c = Cluster {
            bin: bin.into(),
            spec: ClusterSpec {
                nodes: Vec::new(),
                ..spec
            },
            nodes: Vec::new(),
            fabric,
            disks: Vec::new(),
            _dir: dir,
        };
        for g in groups {
            c.add_node(g)?;
        }
        Ok(c)
    }

    /// [`Cluster::start`] for a test that needs root for `what` it uses (network namespaces,
    /// FUSE disks): `None`, and the test says it is skipped, without root or when that cannot
    /// be set up outside CI; in CI that is a failure.
    pub fn start_as_root(
        bin: impl Into<PathBuf>,
        spec: ClusterSpec,
        what: &str,
    ) -> Option<Cluster> {
        if !crate::process::is_root() {
            eprintln!("SKIPPED: {what} need root");
            return None;
        }
        match Cluster::start(bin, spec) {
            Ok(c) => Some(c),
            Err(e) if std::env::var_os("CI").is_none() => {
                eprintln!("SKIPPED: {what} unavailable: {e}");
                None
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }

    /// [`Cluster::start_as_root`] with each node in its own network namespace, for tests that
    /// cut hosts off ([`Cluster::partition`]).
    pub fn start_in_namespaces(bin: impl Into<PathBuf>, spec: ClusterSpec) -> Option<Cluster> {
        let spec = ClusterSpec {
            net: Net::Namespaces,
            ..spec
        };
        Cluster::start_as_root(bin, spec, "network namespaces")
    }

    fn write_config(&self, i: usize, remotes: &[SocketAddr]) -> std::io::Result<PathBuf> {
        let n = &self.nodes[i];
        let mut t = String::new();
        let _ = writeln!(t, "[node]");
        let _ = writeln!(t, "addresses = [\"{}\"]", n.addr);
        let r: Vec<String> = remotes.iter().map(|a| format!("\"{a}\"")).collect();
        let _ = writeln!(t, "remotes = [{}]", r.join(", "));
        let _ = writeln!(t, "join = true");
        let _ = writeln!(t, "wait_timeout_secs = {}", self.spec.wait_timeout_secs);
        let _ = writeln!(t, "check_timeout_secs = {}", self.spec.check_timeout_secs);
        let _ = writeln!(t, "stall_count = {}", self.spec.stall_count);
        let _ = writeln!(t, "worker_threads = 2");
        if self.spec.monitor {
            let port = match self.fabric {
                Some(_) => NS_PORT + 1,
                // A port free now, on the loopback the node listens on.
                None => std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
                    .local_addr()?
                    .port(),
            };
            let _ = writeln!(t, "monitor_port = {port}");
        }
        let _ = writeln!(t, "{}", self.spec.node_extra);
        let _ = writeln!(t, "\n[recovery]\n{}", self.spec.recovery);
        for (b, g) in self.spec.nodes[i].iter().enumerate() {
            let _ = writeln!(t, "\n[[backend]]");
            let _ = writeln!(t, "id = {}", b + 1);
            let _ = writeln!(t, "group = {g}");
            let _ = writeln!(t, "dir = \"{}\"", self.backend_dir(i, b).display());
            let _ = writeln!(t, "sync = {}", self.spec.sync);
            let _ = writeln!(t, "{}", self.spec.backend_extra);
        }
        let p = n.dir.join("apsis.toml");
        std::fs::write(&p, t)?;
        Ok(p)
    }

    /// Where backend `b` (0-based) of node `i` keeps its files: on the node's faulty disk
    /// when it has one.
    pub fn backend_dir(&self, i: usize, b: usize) -> PathBuf {
        let name = format!("b{}", b + 1);
        match self.disks.get(i).and_then(|d| d.as_ref()) {
            Some(d) => d.path().join(name),
            None => self.nodes[i].dir.join(name),
        }
    }

    /// Node `i`'s faulty disk (nodes listed in [`ClusterSpec::faulty_disks`]).
    pub fn disk(&self, i: usize) -> &FaultyDisk {
        self.disks[i]
            .as_ref()
            .unwrap_or_else(|| panic!("node {i} is not in ClusterSpec::faulty_disks"))
    }

    fn spawn(&mut self, i: usize, remotes: &[SocketAddr]) -> std::io::Result<()> {
        let cfg = self.write_config(i, remotes)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.nodes[i].dir.join("server.log"))?;
        let mut cmd = match &self.fabric {
            Some(f) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &f.ns(i)]).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        cmd.arg("server")
            .arg("-c")
            .arg(&cfg)
            .env(
                "APSIS_LOG",
                std::env::var("APSIS_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stderr(log);
        let started = crate::process::start_server(&mut cmd, self.spec.monitor).map_err(|e| {
            std::io::Error::other(format!("node {i}: {e}; log:\n{}", self.nodes[i].log()))
        })?;
        let (child, addr) = (started.child, started.addr);
        let n = &mut self.nodes[i];
        n.addr = addr;
        n.monitor = started.monitor;
        n.child = Some(child);
        n.paused = false;
        Ok(())
    }

    /// Starts one more node serving `groups`, with every node started before it as a remote
    /// (after start-up: the ring changes).
    pub fn add_node(&mut self, groups: Vec<u32>) -> std::io::Result<usize> {
        let i = self.nodes.len();
        let ndir = self._dir.path().join(format!("node{i}"));
        std::fs::create_dir_all(&ndir)?;
        let addr = match &mut self.fabric {
            Some(f) => SocketAddr::new(f.add_host(i)?, NS_PORT),
            None => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
        };
        let disk = if self.spec.faulty_disks.contains(&i) {
            let (backing, mnt) = (ndir.join("backing"), ndir.join("disk"));
            std::fs::create_dir_all(&backing)?;
            std::fs::create_dir_all(&mnt)?;
            Some(FaultyDisk::mount(&backing, &mnt)?)
        } else {
            None
        };
        self.disks.push(disk);
        self.spec.nodes.push(groups);
        self.nodes.push(NodeHandle {
            addr,
            monitor: None,
            dir: ndir,
            child: None,
            paused: false,
        });
        let remotes: Vec<SocketAddr> = self.nodes[..i].iter().map(|n| n.addr).collect();
        self.spawn(i, &remotes)?;
        Ok(i)
    }

    /// Every node's address.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }

    /// SIGKILL: the node crashes.
    pub fn kill(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        if n.paused {
            n.signal("-CONT");
        }
        if let Some(mut c) = n.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        n.paused = false;
    }

    /// SIGSTOP: the node hangs with its sockets open.
    pub fn pause(&mut self, i: usize) {
        self.nodes[i].signal("-STOP");
        self.nodes[i].paused = true;
    }

    /// SIGCONT.
    pub fn resume(&mut self, i: usize) {
        self.nodes[i].signal("-CONT");
        self.nodes[i].paused = false;
    }

    /// Loses a killed node's data (its disk was replaced): every backend file goes except the
    /// `ids` file, so the node comes back at the same ring points, empty.
    pub fn wipe(&mut self, i: usize) -> std::io::Result<()> {
        assert!(!self.nodes[i].is_running(), "kill node {i} first");
        for b in 0..self.spec.nodes[i].len() {
            let d = self.backend_dir(i, b);
            for e in std::fs::read_dir(&d)? {
                let p = e?.path();
                if p.file_name().is_some_and(|n| n != "ids") {
                    std::fs::remove_file(&p)?;
                }
            }
        }
        Ok(())
    }

    /// The network namespace node `i` runs in (namespaces only), to run a client beside it.
    pub fn netns(&self, i: usize) -> Option<String> {
        self.fabric.as_ref().map(|f| f.ns(i))
    }

    /// Starts a killed node again: same address, same data, every other node as a remote.
    pub fn restart(&mut self, i: usize) -> std::io::Result<()> {
        assert!(!self.nodes[i].is_running(), "kill node {i} first");
        let remotes: Vec<SocketAddr> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| n.addr)
            .collect();
        self.spawn(i, &remotes)
    }

    /// Cuts node `i` off the network (namespaces only).
    pub fn partition(&self, i: usize) -> std::io::Result<()> {
        self.fabric
            .as_ref()
            .ok_or_else(|| std::io::Error::other("partition needs Net::Namespaces"))?
            .cut(i)
    }

    pub fn heal(&self, i: usize) -> std::io::Result<()> {
        self.fabric
            .as_ref()
            .ok_or_else(|| std::io::Error::other("heal needs Net::Namespaces"))?
            .heal(i)
    }

    /// Client options matching the cluster's timeouts.
    pub fn client_options(&self) -> ClientOptions {
        ClientOptions {
            connect_timeout: Duration::from_secs(self.spec.wait_timeout_secs),
            check_timeout: Duration::from_secs(self.spec.check_timeout_secs),
            stall_count: self.spec.stall_count,
            ..ClientOptions::default()
        }
    }

    /// A client connected to every node that knows every node's backends.
    pub async fn client(&self) -> Client {
        let c = Client::connect(&self.addrs(), self.client_options())
            .await
            .expect("connect to the cluster");
        let want: usize = self.spec.nodes.iter().map(|g| g.len()).sum();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let have = c.with_routes(|t| {
                let mut seen: Vec<_> = t.entries().iter().map(|(_, _, r)| *r).collect();
                seen.sort();
                seen.dedup();
                seen.len()
            });
            if have >= want {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "routes: {have} of {want} backends"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every running node is connected to every other running node.
    pub async fn wait_mesh(&self, client: &Client, within: Duration) {
        let s = client.session(vec![]);
        let running: Vec<SocketAddr> = self
            .nodes
            .iter()
            .filter(|n| n.is_running() && !n.paused)
            .map(|n| n.addr)
            .collect();
        let deadline = Instant::now() + within;
        'again: loop {
            for a in &running {
                let peers = s
                    .monitor_stat(*a, apsis_proto::MonitorStatRequest::IO)
                    .await
                    .ok()
                    .and_then(|j| j["io"]["peers"].as_array().map(|v| v.len()))
                    .unwrap_or(0);
                if peers + 1 < running.len() {
                    assert!(
                        Instant::now() < deadline,
                        "node {a} sees {peers} peers of {}",
                        running.len() - 1
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue 'again;
                }
            }
            return;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}
