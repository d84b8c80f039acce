//! Node configuration: Apsis' own TOML file, and the Elliptics `dnet_ioserv` JSON config
//! ([`dnet`]), both turned into one [`NodeConfig`].
//!
//! TOML (all keys optional except what a backend needs):
//! ```toml
//! [node]
//! addresses = ["127.0.0.1:1025"]   # listen and advertise; "host:port[:family]"
//! remotes = []                      # peers to connect to at start
//! join = false
//! no_csum = false                   # Elliptics' NO_CSUM flag: no checksums verified or
//!                                   #   written, so damaged data goes undetected
//! auth_cookie = ""                  # sent as AUTH when joining a remote: nodes
//!                                   #   whose cookies differ do not join
//! wait_timeout_secs = 5
//! check_timeout_secs = 60
//! stall_count = 3
//! max_frame_bytes = 268435456
//! frame_memory = "1G"              # large frames being received, node-wide (apsis_node::frames);
//!                                   #   at least max_frame_bytes + 120
//! frame_timeout_secs = 60           # a frame bringing less than 64 KiB (or its rest) in
//!                                   #   this long closes its connection; 0 = no limit
//! max_connections = 4096           # fewer if the open-file limit leaves less room (fdlimit)
//! max_inflight_per_connection = 1024
//! keepalive_idle_secs = 10          # TCP keepalive on every connection, as Elliptics sets it:
//! keepalive_interval_secs = 10      #   a peer silent for idle + interval x count (40 s) is
//! keepalive_count = 3               #   dropped; idle 0 = off
//! monitor_port = 0                  # 0 = off; HTTP JSON, Prometheus and health on this port
//! client_net_prio = 0               # IP type of service on client connections (0 = leave)
//! server_net_prio = 0               #   and on connections with other nodes
//! log_level = "info"
//! log_file = "/var/log/apsis.log"   # appended to (created with its directory); default stderr
//! daemon = false                    # apsis server goes to the background once it serves
//! worker_threads = 0                # 0 = one per core
//!
//! [recovery]                        # see apsis_node::recovery
//! auto = true                       # merge and dc in the background
//! interval_secs = 60
//! rate_keys = 20000                 # copies per second, 0 = no limit
//! rate_bytes = "64M"                # bytes copied per second, 0 = no limit
//! prepare_timeout_secs = 86400      # prepared records older than this are dropped
//! scrub_interval_secs = 604800      # verify every record this often, 0 = never
//! chunk_keys = 131072               # versions held in memory per side
//!
//! [[backend]]
//! id = 1
//! group = 1
//! dir = "/var/lib/apsis/1"          # data and the `ids` file
//! sync = -1                         # 0 durable per write (group commit), N seconds, -1 never
//! blob_size = "1G"
//! records_in_blob = 50000000
//! size_limit = "0"                 # most bytes the backend's files may take, 0 = the disk
//! defrag_percentage = 25            # defrag a closed base once this much of it is dead
//! defrag_rate = "128M"              # defrag I/O budget per second, 0 = unthrottled
//! reuse_bases = true                # a dropped base's file becomes the next base (docs/format.md)
//! cache_size = "0"                  # CACHE / CACHE_ONLY ioflags (see apsis_node::cache), 0 = none
//! cache_sync_timeout = 30           # seconds before a dirty cache entry is written back
//! read_only = false
//! enable = true
//! ```

use apsis_proto::HEADER_SIZE;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub mod dnet;

/// The default listening port, Elliptics' own.
pub const DEFAULT_PORT: u16 = 1025;

/// Where a node writes its log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogSink {
    Stderr,
    /// Appended to; created, with its directory, when missing.
    File(PathBuf),
}

/// What a node runs with.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeConfig {
    /// Addresses to listen on (and, unless `advertise` is set, to advertise).
    pub listen: Vec<SocketAddr>,
    /// Addresses to advertise in REVERSE_LOOKUP / ROUTE_LIST (same length as `listen`).
    pub advertise: Vec<SocketAddr>,
    pub remotes: Vec<String>,
    pub join: bool,
    /// Elliptics node flags (`options.flags`, [`apsis_proto::node_flags`]). Of those, Apsis
    /// acts on JOIN_NETWORK (`join`) and NO_CSUM (TOML `no_csum`): every data command then
    /// runs as with the NOCSUM ioflag, as in Elliptics: reads verify no checksum and writes
    /// store none, so damaged data is no longer detected. The rest only show in STATUS.
    pub flags: u64,
    pub auth_cookie: String,
    pub wait_timeout_secs: u64,
    pub check_timeout_secs: u64,
    pub stall_count: u32,
    /// Largest accepted frame payload; a larger one closes the connection.
    pub max_frame_bytes: u64,
    /// Bytes of large frames (above a connection's usual buffer) received and being handled,
    /// node-wide; a connection whose next frame does not fit waits (see [`crate::frames`]).
    pub frame_memory: u64,
    /// A frame that brings less than 64 KiB (or its rest) in this long closes its
    /// connection (`None`: no limit).
    pub frame_timeout: Option<std::time::Duration>,
    pub max_connections: usize,
    pub max_inflight_per_connection: usize,
    /// TCP keepalive on every accepted and every outgoing connection (`None`: off), so a
    /// client or peer that vanished without closing is dropped (see [`apsis_client::keepalive`]).
    pub keepalive: Option<apsis_client::Keepalive>,
    /// IP type of service on client connections (Elliptics' `client_net_prio`), and on
    /// connections with other nodes (`server_net_prio`): those this node opens, and an
    /// accepted one once its peer joins; 0 leaves the system's (see [`apsis_client::tos`]).
    pub client_net_prio: u32,
    pub server_net_prio: u32,
    /// HTTP monitor port on the first listen address's host; 0 = off.
    pub monitor_port: u16,
    pub log_level: String,
    /// Where the log goes: every sink gets every line; none at all is no log (Elliptics'
    /// `null` sink). Stderr unless the config says otherwise.
    pub log: Vec<LogSink>,
    /// `apsis server` goes to the background once the node serves (Elliptics' `daemon`).
    pub daemon: bool,
    /// Runtime worker threads; 0 = one per core.
    pub worker_threads: usize,
    pub backends: Vec<BackendConfig>,
    pub recovery: crate::recovery::RecoveryConfig,
    /// Keys found in the file that Apsis does not know or does not act on, for the operator.
    pub ignored_keys: Vec<String>,
}

/// One backend.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendConfig {
    pub id: u32,
    pub group: u32,
    /// Directory of the engine's files.
    pub dir: PathBuf,
    /// Where the `ids` file lives (Elliptics `history`); defaults to `dir`.
    pub history: PathBuf,
    /// Path prefix reported in lookup replies (`<prefix>-0.<base>`, as eblob names files).
    pub data_prefix: PathBuf,
    pub sync: i64,
    pub blob_size: u64,
    pub records_in_blob: u64,
    pub size_limit_bytes: u64,
    pub defrag_percentage: u32,
    /// Defrag's I/O budget in bytes per second (reads plus writes); 0 = unthrottled.
    pub defrag_rate_bytes: u64,
    /// Keep the file of a base defrag drops whole for the next base (the engine's
    /// `reuse_bases`): up to `blob_size` of disk held for speed.
    pub reuse_bases: bool,
    /// Bytes of the backend's cache (CACHE / CACHE_ONLY ioflags); 0 = no cache, and those
    /// flags are served from disk (as Elliptics without a cache does).
    pub cache_size: u64,
    /// Seconds a dirty cache entry waits before it is written back (Elliptics
    /// `cache.sync_timeout`).
    pub cache_sync_timeout_secs: u64,
    pub read_only: bool,
    pub enable: bool,
}

impl BackendConfig {
    /// A backend with defaults in `dir`.
    pub fn new(id: u32, group: u32, dir: impl Into<PathBuf>) -> BackendConfig {
        let dir = dir.into();
        BackendConfig {
            id,
            group,
            history: dir.clone(),
            data_prefix: dir.join("data"),
            dir,
            sync: -1,
            blob_size: 1 << 30,
            records_in_blob: 50_000_000,
            size_limit_bytes: 0,
            defrag_percentage: 25,
            defrag_rate_bytes: 128 << 20,
            reuse_bases: true,
            cache_size: 0,
            cache_sync_timeout_secs: 30,
            read_only: false,
            enable: true,
        }
    }
}

impl NodeConfig {
    /// A single node on `listen` with one blob backend in group 1 under `data_dir`:
    /// what `apsis server` runs with no arguments.
    pub fn single(listen: SocketAddr, data_dir: &Path) -> NodeConfig {
        NodeConfig {
            listen: vec![listen],
            advertise: vec![listen],
            remotes: Vec::new(),
            join: false,
            flags: 0,
            auth_cookie: String::new(),
            wait_timeout_secs: 5,
            check_timeout_secs: 60,
            stall_count: 3,
            max_frame_bytes: 256 << 20,
            frame_memory: 1 << 30,
            frame_timeout: Some(std::time::Duration::from_secs(60)),
            max_connections: 4096,
            max_inflight_per_connection: 1024,
            keepalive: Some(apsis_client::Keepalive::ELLIPTICS),
            client_net_prio: 0,
            server_net_prio: 0,
            monitor_port: 0,
            log_level: "info".into(),
            log: vec![LogSink::Stderr],
            daemon: false,
            worker_threads: 0,
            backends: vec![BackendConfig::new(1, 1, data_dir.join("backend-1"))],
            recovery: Default::default(),
            ignored_keys: Vec::new(),
        }
    }

    /// Reads a config file: `.json` is the Elliptics `dnet_ioserv` format, anything else TOML.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        let is_json =
            path.extension().is_some_and(|e| e == "json") || text.trim_start().starts_with('{');
        let cfg = if is_json {
            dnet::from_json(&text)?
        } else {
            NodeConfig::from_toml(&text)?
        };
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn from_toml(text: &str) -> Result<NodeConfig, ConfigError> {
        let file: TomlFile =
            toml::from_str(text).map_err(|e| ConfigError(format!("config: {e}")))?;
        let n = file.node.unwrap_or_default();
        let mut listen = Vec::new();
        for a in n
            .addresses
            .unwrap_or_else(|| vec![format!("127.0.0.1:{DEFAULT_PORT}")])
        {
            let (sa, _) =
                apsis_proto::Addr::parse_dnet(&a).map_err(|e| ConfigError(e.to_string()))?;
            listen.push(sa);
        }
        let mut cfg = NodeConfig::single(listen[0], Path::new("."));
        cfg.advertise = listen.clone();
        cfg.listen = listen;
        cfg.backends.clear();
        if let Some(v) = n.remotes {
            cfg.remotes = v;
        }
        if let Some(v) = n.join {
            cfg.join = v;
        }
        if n.no_csum == Some(true) {
            cfg.flags |= apsis_proto::node_flags::NO_CSUM;
        }
        if let Some(v) = n.auth_cookie {
            cfg.auth_cookie = v;
        }
        if let Some(v) = n.wait_timeout_secs {
            cfg.wait_timeout_secs = v;
        }
        if let Some(v) = n.check_timeout_secs {
            cfg.check_timeout_secs = v;
        }
        if let Some(v) = n.stall_count {
            cfg.stall_count = v;
        }
        if let Some(v) = n.max_frame_bytes {
            cfg.max_frame_bytes = v;
        }
        match &n.frame_memory {
            Some(v) => cfg.frame_memory = parse_size(v)?,
            // Unset, the budget follows a larger frame limit: room for one such frame.
            None => {
                cfg.frame_memory = cfg
                    .frame_memory
                    .max(cfg.max_frame_bytes.saturating_add(HEADER_SIZE as u64))
            }
        }
        if let Some(v) = n.frame_timeout_secs {
            cfg.frame_timeout = (v > 0).then(|| std::time::Duration::from_secs(v));
        }
        if let Some(v) = n.max_connections {
            cfg.max_connections = v;
        }
        if let Some(v) = n.max_inflight_per_connection {
            cfg.max_inflight_per_connection = v;
        }
        if n.keepalive_idle_secs.is_some()
            || n.keepalive_interval_secs.is_some()
            || n.keepalive_count.is_some()
        {
            let d = apsis_client::Keepalive::ELLIPTICS;
            let idle = n.keepalive_idle_secs.unwrap_or(d.idle.as_secs());
            cfg.keepalive = match idle {
                0 => None,
                _ => Some(
                    apsis_client::Keepalive::from_secs(
                        idle,
                        n.keepalive_interval_secs.unwrap_or(d.interval.as_secs()),
                        n.keepalive_count.unwrap_or(d.count),
                    )
                    .map_err(|e| ConfigError(format!("node: {e}")))?,
                ),
            };
        }
        if let Some(v) = n.monitor_port {
            cfg.monitor_port = v;
        }
        if let Some(v) = n.client_net_prio {
            cfg.client_net_prio = v;
        }
        if let Some(v) = n.server_net_prio {
            cfg.server_net_prio = v;
        }
        if let Some(v) = n.log_level {
            cfg.log_level = v;
        }
        if let Some(p) = n.log_file {
            cfg.log = vec![LogSink::File(p)];
        }
        if let Some(v) = n.daemon {
            cfg.daemon = v;
        }
        if let Some(v) = n.worker_threads {
            cfg.worker_threads = v;
        }
        if let Some(r) = file.recovery {
            let c = &mut cfg.recovery;
            if let Some(v) = r.auto {
                c.auto = v;
            }
            if let Some(v) = r.interval_secs {
                c.interval_secs = v;
            }
            if let Some(v) = r.rate_keys {
                c.rate_keys = v;
            }
            if let Some(v) = r.rate_bytes {
                c.rate_bytes = parse_size(&v)?;
            }
            if let Some(v) = r.prepare_timeout_secs {
                c.prepare_timeout_secs = v;
            }
            if let Some(v) = r.scrub_interval_secs {
                c.scrub_interval_secs = v;
            }
            if let Some(v) = r.chunk_keys {
                c.chunk_keys = v.clamp(1, 10_000_000);
            }
        }
        for b in file.backend.unwrap_or_default() {
            let mut bc = BackendConfig::new(b.id, b.group, &b.dir);
            if let Some(h) = b.history {
                bc.history = h;
            }
            if let Some(v) = b.sync {
                bc.sync = v;
            }
            if let Some(v) = b.blob_size {
                bc.blob_size = parse_size(&v)?;
            }
            if let Some(v) = b.records_in_blob {
                bc.records_in_blob = v;
            }
            if let Some(v) = b.size_limit {
                bc.size_limit_bytes = parse_size(&v)?;
            }
            if let Some(v) = b.cache_size {
                bc.cache_size = parse_size(&v)?;
            }
            if let Some(v) = b.cache_sync_timeout {
                bc.cache_sync_timeout_secs = v;
            }
            if let Some(v) = b.defrag_percentage {
                bc.defrag_percentage = v;
            }
            if let Some(v) = b.defrag_rate {
                bc.defrag_rate_bytes = parse_size(&v)?;
            }
            if let Some(v) = b.reuse_bases {
                bc.reuse_bases = v;
            }
            if let Some(v) = b.read_only {
                bc.read_only = v;
            }
            if let Some(v) = b.enable {
                bc.enable = v;
            }
            cfg.backends.push(bc);
        }
        Ok(cfg)
    }

    /// Checks what a node cannot run with.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, v) in [
            ("client_net_prio", self.client_net_prio),
            ("server_net_prio", self.server_net_prio),
        ] {
            if v > 255 {
                return Err(ConfigError(format!(
                    "{name} is an IP type of service, 0..=255, not {v}"
                )));
            }
        }
        if self.listen.is_empty() {
            return Err(ConfigError("no listen address".into()));
        }
        if self.advertise.len() != self.listen.len() {
            return Err(ConfigError("advertise and listen differ in length".into()));
        }
        let mut ids = std::collections::HashSet::new();
        let mut dirs = std::collections::HashSet::new();
        for b in &self.backends {
            if !ids.insert(b.id) {
                return Err(ConfigError(format!("backend id {} appears twice", b.id)));
            }
            if b.id > 4095 {
                return Err(ConfigError(format!("backend id {} above 4095", b.id)));
            }
            if !dirs.insert(b.dir.clone()) {
                return Err(ConfigError(format!(
                    "backend {}: directory {} is used by another backend",
                    b.id,
                    b.dir.display()
                )));
            }
            if b.group == 0 {
                return Err(ConfigError(format!(
                    "backend {}: group 0 is not a group",
                    b.id
                )));
            }
        }
        if self.max_frame_bytes < 4096 {
            return Err(ConfigError("max_frame_bytes below 4096".into()));
        }
        // Every valid frame must fit the budget, or it would wait for ever.
        let frame = self.max_frame_bytes.saturating_add(HEADER_SIZE as u64);
        if self.frame_memory < frame {
            return Err(ConfigError(format!(
                "frame_memory ({}) below one frame of max_frame_bytes ({}) and its header",
                self.frame_memory, self.max_frame_bytes
            )));
        }
        if self.frame_memory > 1 << 40 {
            return Err(ConfigError(format!(
                "frame_memory ({}) above 1T",
                self.frame_memory
            )));
        }
        Ok(())
    }
}

/// A configuration that cannot be used, with the reason.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Parses a size with an optional K/M/G/T suffix (powers of 1024), as eblob does.
pub fn parse_size(s: &str) -> Result<u64, ConfigError> {
    let t = s.trim();
    let bad = || {
        ConfigError(format!(
            "size {s:?}: want a number with an optional K, M, G or T"
        ))
    };
    let (num, mul) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(bad()),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    num.trim()
        .parse::<u64>()
        .map_err(|_| bad())?
        .checked_mul(mul)
        .ok_or_else(bad)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TomlFile {
    node: Option<TomlNode>,
    backend: Option<Vec<TomlBackend>>,
    recovery: Option<TomlRecovery>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TomlRecovery {
    auto: Option<bool>,
    interval_secs: Option<u64>,
    rate_keys: Option<u64>,
    rate_bytes: Option<String>,
    prepare_timeout_secs: Option<u64>,
    scrub_interval_secs: Option<u64>,
    chunk_keys: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TomlNode {
    addresses: Option<Vec<String>>,
    remotes: Option<Vec<String>>,
    join: Option<bool>,
    no_csum: Option<bool>,
    auth_cookie: Option<String>,
    wait_timeout_secs: Option<u64>,
    check_timeout_secs: Option<u64>,
    stall_count: Option<u32>,
    max_frame_bytes: Option<u64>,
    frame_memory: Option<String>,
    frame_timeout_secs: Option<u64>,
    max_connections: Option<usize>,
    max_inflight_per_connection: Option<usize>,
    keepalive_idle_secs: Option<u64>,
    keepalive_interval_secs: Option<u64>,
    keepalive_count: Option<u32>,
    monitor_port: Option<u16>,
    client_net_prio: Option<u32>,
    server_net_prio: Option<u32>,
    log_level: Option<String>,
    log_file: Option<PathBuf>,
    daemon: Option<bool>,
    worker_threads: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlBackend {
    id: u32,
    group: u32,
    dir: PathBuf,
    history: Option<PathBuf>,
    sync: Option<i64>,
    blob_size: Option<String>,
    records_in_blob: Option<u64>,
    size_limit: Option<String>,
    defrag_percentage: Option<u32>,
    defrag_rate: Option<String>,
    reuse_bases: Option<bool>,
    cache_size: Option<String>,
    cache_sync_timeout: Option<u64>,
    read_only: Option<bool>,
    enable: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("4k").unwrap(), 4096);
        assert!(parse_size("x").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn toml_roundtrip_and_unknown_keys() {
        let cfg = NodeConfig::from_toml(
            r#"
            [node]
            addresses = ["127.0.0.1:2025"]
            monitor_port = 2026
            [[backend]]
            id = 3
            group = 2
            dir = "/tmp/x"
            sync = 0
            blob_size = "64M"
            reuse_bases = false
            "#,
        )
        .unwrap();
        assert_eq!(cfg.listen[0].port(), 2025);
        assert_eq!(cfg.backends[0].blob_size, 64 << 20);
        assert!(!cfg.backends[0].reuse_bases);
        assert!(BackendConfig::new(1, 1, "/tmp/y").reuse_bases);
        assert_eq!(cfg.backends[0].sync, 0);
        cfg.validate().unwrap();
        let err = NodeConfig::from_toml("[node]\nadress = []\n").unwrap_err();
        assert!(err.0.contains("adress"), "{err}");
    }

    #[test]
    fn keepalive_defaults_to_elliptics_and_can_be_tuned_or_turned_off() {
        use apsis_client::Keepalive;
        use std::time::Duration;
        let ka = |t: &str| NodeConfig::from_toml(&format!("[node]\n{t}")).map(|c| c.keepalive);
        assert_eq!(ka("").unwrap(), Some(Keepalive::ELLIPTICS));
        // Unset keys keep Elliptics' values.
        let k = ka("keepalive_count = 5").unwrap().unwrap();
        assert_eq!(k.count, 5);
        assert_eq!(k.idle, Duration::from_secs(10));
        assert_eq!(k.limit(), Duration::from_secs(60));
        assert_eq!(ka("keepalive_idle_secs = 0").unwrap(), None);
        let err = ka("keepalive_count = 0").unwrap_err();
        assert!(err.0.contains("keepalive_count"), "{err}");
        let err = ka("keepalive_interval_secs = 99999").unwrap_err();
        assert!(err.0.contains("keepalive_interval_secs"), "{err}");
    }

    #[test]
    fn the_frame_budget_holds_at_least_one_frame() {
        use std::time::Duration;
        let cfg =
            |t: &str| NodeConfig::from_toml(&format!("[node]\naddresses = [\"127.0.0.1:1\"]\n{t}"));
        let c = cfg("").unwrap();
        assert_eq!(c.frame_memory, 1 << 30);
        assert_eq!(c.frame_timeout, Some(Duration::from_secs(60)));
        c.validate().unwrap();
        // Unset, the budget follows a larger frame limit.
        let c = cfg("max_frame_bytes = 2147483648").unwrap();
        assert_eq!(c.frame_memory, (2 << 30) + HEADER_SIZE as u64);
        c.validate().unwrap();
        let c = cfg("max_frame_bytes = 16777216\nframe_memory = \"64M\"\nframe_timeout_secs = 0")
            .unwrap();
        assert_eq!((c.frame_memory, c.frame_timeout), (64 << 20, None));
        c.validate().unwrap();
        // Set, it must hold one frame.
        let err = cfg("frame_memory = \"256M\"")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.0.contains("frame_memory"), "{err}");
        let err = cfg("frame_memory = \"2T\"")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.0.contains("above 1T"), "{err}");
    }
}
