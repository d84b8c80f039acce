//! The Elliptics 3.0 `dnet_ioserv -c FILE.json` configuration, read into a [`NodeConfig`].
//!
//! An operator moving from Elliptics should be able to start Apsis on the file they already have.
//! The JSON is walked by hand rather than through `#[derive(Deserialize)]` so that every key is
//! accounted for: a key Apsis maps is used, a key Elliptics knows but Apsis does not act on is
//! accepted and listed in [`NodeConfig::ignored_keys`] with the reason, and a key neither knows is
//! listed as `(unknown)`. Nothing is dropped silently. A wrong type, a missing required key or a
//! value Elliptics would refuse is a [`ConfigError`] naming the key's path
//! (`backends[0].blob_size`).
//!
//! Layout (protocol reference §5): `logger` {level, root}, `options` {address, remote, join,
//! flags, auth_cookie, thread counts, timeouts, monitor {port, top}, cache {...}, ...} and
//! `backends` [{backend_id, type "blob", group, history, data, eblob keys...}]. The eblob keys
//! may be strings or numbers (`"sync": "30"` and `"sync": 30` are the same), as Elliptics passes
//! them to eblob as text.
//!
//! This module does not check what holds for every config whatever its source (ids above 4095,
//! directories used twice): that is [`NodeConfig::validate`].

use super::{parse_size, BackendConfig, ConfigError, LogSink, NodeConfig};
use serde_json::{Map, Value};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// Elliptics keeps the cookie in a 32-byte buffer with `snprintf`: 31 bytes and a NUL.
const AUTH_COOKIE_BYTES_MAX: usize = 31;
/// Elliptics' defaults for a zero (or absent) `wait_timeout`, `check_timeout` and `stall_count`.
const WAIT_TIMEOUT_SECS_DEFAULT: u64 = 5;
const CHECK_TIMEOUT_SECS_DEFAULT: u64 = 60;
const STALL_COUNT_DEFAULT: u32 = 3;

/// Parses a `dnet_ioserv` JSON configuration.
///
/// `options.address` entries become both `listen` and `advertise`, index for index: as Elliptics
/// does, the node listens on the unspecified address (`0.0.0.0`, or `::` for an IPv6 address) at
/// the entry's port and advertises the entry itself. Several entries sharing a port (one node on
/// several networks, told apart by address group) therefore give equal `listen` entries, which
/// are one socket to bind. Entries are ordered by address group, stably, as Elliptics orders them.
pub fn from_json(text: &str) -> Result<NodeConfig, ConfigError> {
    let root: Value = serde_json::from_str(text).map_err(|e| ConfigError(format!("JSON: {e}")))?;
    let root = object(&root, "the top level")?;
    let mut walk = Walk::default();

    let (mut logger, mut options, mut backends) = (None, None, None);
    for (key, value) in root {
        match key.as_str() {
            "logger" => logger = Some(value),
            "options" => options = Some(value),
            "backends" => backends = Some(value),
            _ => walk.unknown(key),
        }
    }
    let logger = logger.ok_or_else(|| {
        ConfigError(
            "logger: missing (required; `loggers` with a numeric level is the 2.26 layout)".into(),
        )
    })?;
    let options = required(options, "options")?;
    let backends = required(backends, "backends")?;

    let (log_level, log) = walk.logger(logger)?;
    let mut cfg = walk.options(options)?;
    cfg.log_level = log_level;
    cfg.log = log;
    cfg.backends = walk.backends(backends)?;
    if let Some((size, sync_timeout)) = walk.node_cache {
        for b in cfg.backends.iter_mut().filter(|b| b.cache_size == 0) {
            b.cache_size = size;
            if let Some(t) = sync_timeout {
                b.cache_sync_timeout_secs = t;
            }
        }
    }
    cfg.ignored_keys = walk.ignored;
    Ok(cfg)
}

/// Collects what the file says that Apsis does not act on.
#[derive(Default)]
struct Walk {
    ignored: Vec<String>,
    /// `options.cache`: (size, sync_timeout) for every backend without a cache of its own.
    node_cache: Option<(u64, Option<u64>)>,
}

impl Walk {
    fn note(&mut self, path: &str, why: &str) {
        self.ignored.push(format!("{path} ({why})"));
    }

    fn unknown(&mut self, path: &str) {
        self.note(path, "unknown");
    }

    fn no_effect(&mut self, path: &str) {
        self.note(path, "no effect in Apsis");
    }

    /// `logger`: returns the `tracing` level and where the log goes.
    fn logger(&mut self, logger: &Value) -> Result<(String, Vec<LogSink>), ConfigError> {
        let mut level = None;
        let mut sinks = None;
        for (key, value) in object(logger, "logger")? {
            let path = format!("logger.{key}");
            match key.as_str() {
                "level" => level = Some(log_level(value, &path)?),
                "root" => sinks = Some(self.log_handlers(value, &path)?),
                _ => self.unknown(&path),
            }
        }
        Ok((
            required(level, "logger.level")?,
            sinks.unwrap_or_else(|| vec![LogSink::Stderr]),
        ))
    }

    /// `logger.root`: blackhole handlers, each with its `sinks`. A `file` sink's path gets the
    /// log (so a script that reads the file it gave `dnet_ioserv` finds the node's lines
    /// there), a `null` sink nothing, a `console` sink stderr. The handlers' `formatter` and
    /// `type` are accepted and listed: Apsis formats its own lines and writes each at once.
    fn log_handlers(&mut self, value: &Value, path: &str) -> Result<Vec<LogSink>, ConfigError> {
        let mut out = Vec::new();
        for (i, h) in array(value, path)?.iter().enumerate() {
            let hp = format!("{path}[{i}]");
            for (key, v) in object(h, &hp)? {
                let kp = format!("{hp}.{key}");
                match key.as_str() {
                    "sinks" => {
                        for (j, sink) in array(v, &kp)?.iter().enumerate() {
                            self.log_sink(sink, &format!("{kp}[{j}]"), &mut out)?;
                        }
                    }
                    "formatter" => self.note(&kp, "Apsis formats its own log lines"),
                    "type" => self.note(&kp, "Apsis writes each log line at once"),
                    _ => self.unknown(&kp),
                }
            }
        }
        Ok(out)
    }

    fn log_sink(
        &mut self,
        sink: &Value,
        path: &str,
        out: &mut Vec<LogSink>,
    ) -> Result<(), ConfigError> {
        let o = object(sink, path)?;
        let tp = format!("{path}.type");
        let kind = string(required(o.get("type"), &tp)?, &tp)?;
        for key in o.keys().filter(|k| *k != "type") {
            let kp = format!("{path}.{key}");
            match (kind, key.as_str()) {
                ("file", "path") => {}
                ("file", "flush") => self.note(&kp, "Apsis writes each log line at once"),
                _ => self.unknown(&kp),
            }
        }
        match kind {
            "file" => {
                let pp = format!("{path}.path");
                let p = string(required(o.get("path"), &pp)?, &pp)?;
                out.push(LogSink::File(PathBuf::from(p)));
            }
            "null" => {}
            "console" => out.push(LogSink::Stderr),
            other => {
                self.note(
                    path,
                    &format!("sink type {other:?} not supported; logging to stderr"),
                );
                out.push(LogSink::Stderr);
            }
        }
        Ok(())
    }

    /// `options`: everything of the node but its backends and log level.
    fn options(&mut self, options: &Value) -> Result<NodeConfig, ConfigError> {
        let mut addresses = None;
        let mut auth_cookie = None;
        let (mut io_threads, mut nonblocking_threads, mut net_threads) = (None, None, None);
        let mut remotes = Vec::new();
        let mut join = false;
        let mut flags = 0;
        let mut wait_timeout_secs = 0;
        let mut check_timeout_secs = 0;
        let mut stall_count = 0;
        let mut monitor_port = 0;
        let mut daemon = false;
        let (mut client_net_prio, mut server_net_prio) = (0, 0);

        for (key, value) in object(options, "options")? {
            let path = format!("options.{key}");
            match key.as_str() {
                "address" => addresses = Some(parse_addresses(value, &path)?),
                "remote" => remotes = strings(value, &path)?,
                "join" => join = boolean(value, &path)?,
                "flags" => {
                    flags = uint(value, &path)?;
                    self.node_flags(flags, &path);
                }
                "auth_cookie" => {
                    let mut cookie = string(value, &path)?.to_owned();
                    if cookie.len() > AUTH_COOKIE_BYTES_MAX {
                        let mut end = AUTH_COOKIE_BYTES_MAX;
                        while !cookie.is_char_boundary(end) {
                            end -= 1;
                        }
                        cookie.truncate(end);
                        self.note(&path, "only the first 31 bytes are used, as in Elliptics");
                    }
                    auth_cookie = Some(cookie);
                }
                // Apsis sizes its runtime itself (`worker_threads` 0 = one per core).
                "io_thread_num" => {
                    io_threads = Some(uint(value, &path)?);
                    self.no_effect(&path);
                }
                "nonblocking_io_thread_num" => {
                    nonblocking_threads = Some(uint(value, &path)?);
                    self.no_effect(&path);
                }
                "net_thread_num" => {
                    net_threads = Some(uint(value, &path)?);
                    self.no_effect(&path);
                }
                "wait_timeout" => wait_timeout_secs = uint(value, &path)?,
                "check_timeout" => check_timeout_secs = uint(value, &path)?,
                "stall_count" => stall_count = uint_in::<u32>(value, &path)?,
                "daemon" => daemon = boolean(value, &path)?,
                "parallel" => {
                    boolean(value, &path)?;
                    self.no_effect(&path);
                }
                "client_net_prio" => client_net_prio = uint_in::<u32>(value, &path)?,
                "server_net_prio" => server_net_prio = uint_in::<u32>(value, &path)?,
                "bg_ionice_class" | "bg_ionice_prio" | "removal_delay" | "indexes_shard_count" => {
                    uint(value, &path)?;
                    self.no_effect(&path);
                }
                "mallopt_mmap_threshold" => {
                    int(value, &path)?;
                    self.no_effect(&path);
                }
                "handystats_config" => {
                    string(value, &path)?;
                    self.no_effect(&path);
                }
                "monitor" => monitor_port = self.monitor(value, &path)?,
                "cache" => self.node_cache = Some(self.cache(value, &path)?),
                _ => self.unknown(&path),
            }
        }

        let addresses: Vec<(SocketAddr, u32)> = required(addresses, "options.address")?;
        let auth_cookie = required(auth_cookie, "options.auth_cookie")?;
        required(io_threads, "options.io_thread_num")?;
        required(nonblocking_threads, "options.nonblocking_io_thread_num")?;
        required(net_threads, "options.net_thread_num")?;

        let advertise: Vec<SocketAddr> = addresses.iter().map(|&(addr, _)| addr).collect();
        let listen: Vec<SocketAddr> = advertise.iter().map(|a| unspecified(*a)).collect();
        let mut cfg = NodeConfig::single(listen[0], Path::new("."));
        cfg.listen = listen;
        cfg.advertise = advertise;
        cfg.backends.clear();
        cfg.remotes = remotes;
        cfg.join = join;
        // Elliptics sets JOIN_NETWORK from `join`, never from `flags`.
        let join_bit = apsis_proto::node_flags::JOIN_NETWORK;
        cfg.flags = (flags & !join_bit) | if join { join_bit } else { 0 };
        cfg.auth_cookie = auth_cookie;
        cfg.wait_timeout_secs = nonzero_or(wait_timeout_secs, WAIT_TIMEOUT_SECS_DEFAULT);
        cfg.check_timeout_secs = nonzero_or(check_timeout_secs, CHECK_TIMEOUT_SECS_DEFAULT);
        cfg.stall_count = if stall_count == 0 {
            STALL_COUNT_DEFAULT
        } else {
            stall_count
        };
        cfg.monitor_port = monitor_port;
        cfg.daemon = daemon;
        cfg.client_net_prio = client_net_prio;
        cfg.server_net_prio = server_net_prio;
        cfg.worker_threads = 0;
        Ok(cfg)
    }

    /// `options.flags`: lists the bits Apsis does not act on. JOIN_NETWORK follows `join`
    /// and NO_CSUM is honoured (see [`NodeConfig::flags`]).
    fn node_flags(&mut self, flags: u64, path: &str) {
        use apsis_proto::node_flags as nf;
        for (bit, name, why) in [
            (
                nf::NO_ROUTE_LIST,
                "NO_ROUTE_LIST",
                "a node needs its peers' routes to forward",
            ),
            (nf::MIX_STATES, "MIX_STATES", "client-side read order"),
            (
                nf::RANDOMIZE_STATES,
                "RANDOMIZE_STATES",
                "client-side read order",
            ),
            (
                nf::KEEPS_IDS_IN_CLUSTER,
                "KEEPS_IDS_IN_CLUSTER",
                "ids are kept in each backend's ids file",
            ),
        ] {
            if flags & bit != 0 {
                self.note(
                    &format!("{path} {name}"),
                    &format!("no effect in Apsis: {why}"),
                );
            }
        }
        let known = nf::JOIN_NETWORK
            | nf::NO_ROUTE_LIST
            | nf::MIX_STATES
            | nf::NO_CSUM
            | nf::RANDOMIZE_STATES
            | nf::KEEPS_IDS_IN_CLUSTER;
        if flags & !known != 0 {
            self.note(&format!("{path} {:#x}", flags & !known), "unknown bits");
        }
    }

    /// `options.monitor`: returns the port (0 = off).
    fn monitor(&mut self, monitor: &Value, path: &str) -> Result<u16, ConfigError> {
        let mut port = 0;
        for (key, value) in object(monitor, path)? {
            let path = format!("{path}.{key}");
            match key.as_str() {
                "port" => port = uint_in::<u16>(value, &path)?,
                "top" => {
                    for (key, value) in object(value, &path)? {
                        let path = format!("{path}.{key}");
                        match key.as_str() {
                            "top_length" | "events_size" | "period_in_seconds" => {
                                uint(value, &path)?;
                            }
                            _ => self.unknown(&path),
                        }
                    }
                    self.no_effect(&path);
                }
                _ => self.unknown(&path),
            }
        }
        Ok(port)
    }

    /// `options.cache` or `backends[i].cache`: (size, sync_timeout). Apsis keeps one LRU per
    /// shard, so `pages_proportions` (Elliptics' segments) is checked and noted.
    fn cache(&mut self, cache: &Value, path: &str) -> Result<(u64, Option<u64>), ConfigError> {
        let mut size = None;
        let mut sync_timeout = None;
        for (key, value) in object(cache, path)? {
            let key_path = format!("{path}.{key}");
            match key.as_str() {
                "size" => size = Some(uint(value, &key_path)?),
                "sync_timeout" => sync_timeout = Some(uint(value, &key_path)?),
                "shards" => {
                    uint(value, &key_path)?;
                    self.note(&key_path, "Apsis uses 16 shards");
                }
                "pages_proportions" => {
                    for (i, item) in array(value, &key_path)?.iter().enumerate() {
                        uint_in::<u32>(item, &format!("{key_path}[{i}]"))?;
                    }
                    self.note(&key_path, "Apsis uses one LRU per shard");
                }
                _ => self.unknown(&key_path),
            }
        }
        let size = required(size, &format!("{path}.size"))?;
        if size == 0 {
            return Err(ConfigError(format!("{path}.size: must be above 0")));
        }
        Ok((size, sync_timeout))
    }

    fn backends(&mut self, backends: &Value) -> Result<Vec<BackendConfig>, ConfigError> {
        let mut out: Vec<BackendConfig> = Vec::new();
        for (index, backend) in array(backends, "backends")?.iter().enumerate() {
            let path = format!("backends[{index}]");
            let b = self.backend(backend, &path)?;
            if let Some(other) = out.iter().position(|o| o.id == b.id) {
                return Err(ConfigError(format!(
                    "{path}.backend_id: {} is already the id of backends[{other}]",
                    b.id
                )));
            }
            out.push(b);
        }
        Ok(out)
    }

    fn backend(&mut self, backend: &Value, path: &str) -> Result<BackendConfig, ConfigError> {
        let (mut id, mut group, mut history, mut data, mut kind) = (None, None, None, None, None);
        let mut enable = true;
        let mut read_only = false;
        let mut sync = None;
        let mut blob_size = None;
        let mut size_limit_bytes = None;
        let mut records_in_blob = None;
        let mut defrag_percentage = None;
        let mut cache = None;

        for (key, value) in object(backend, path)? {
            let path = format!("{path}.{key}");
            match key.as_str() {
                "backend_id" => id = Some(uint_in::<u32>(value, &path)?),
                "type" => kind = Some((string(value, &path)?, path)),
                "group" => group = Some(uint_in::<u32>(value, &path)?),
                "history" => history = Some(PathBuf::from(string(value, &path)?)),
                "enable" => enable = boolean(value, &path)?,
                "read_only" => read_only = boolean(value, &path)?,
                "cache" => cache = Some(self.cache(value, &path)?),
                "io_thread_num" | "nonblocking_io_thread_num" => {
                    uint(value, &path)?;
                    self.no_effect(&path);
                }
                // eblob keys: a string or a number, as eblob reads them from text.
                "data" => data = Some(eblob_text(value, &path)?),
                "sync" => sync = Some(eblob_int(value, &path)?),
                "blob_size" => blob_size = Some(eblob_size(value, &path)?),
                "blob_size_limit" => size_limit_bytes = Some(eblob_size(value, &path)?),
                "records_in_blob" => records_in_blob = Some(eblob_uint(value, &path)?),
                "defrag_percentage" => {
                    let p = eblob_uint(value, &path)?;
                    defrag_percentage = Some(u32::try_from(p).map_err(|_| out_of_range(&path))?);
                }
                "blob_flags"
                | "defrag_timeout"
                | "defrag_time"
                | "defrag_splay"
                | "index_block_size"
                | "index_block_bloom_length"
                | "periodic_timeout" => {
                    eblob_uint(value, &path)?;
                    self.no_effect(&path);
                }
                "datasort_dir" => {
                    eblob_text(value, &path)?;
                    self.no_effect(&path);
                }
                _ => self.unknown(&path),
            }
        }

        let id = required(id, &format!("{path}.backend_id"))?;
        let (kind, kind_path) = required(kind, &format!("{path}.type"))?;
        if kind != "blob" {
            return Err(ConfigError(format!(
                "{kind_path}: backend type {kind:?} is not supported; Apsis runs \"blob\" only"
            )));
        }
        let group = required(group, &format!("{path}.group"))?;
        let history = required(history, &format!("{path}.history"))?;
        let data = required(data, &format!("{path}.data"))?;
        let dir = engine_dir(&data).ok_or_else(|| {
            ConfigError(format!(
                "{path}.data: {data:?} is not a file prefix such as \"/srv/elliptics/1/data\""
            ))
        })?;

        let mut b = BackendConfig::new(id, group, dir);
        b.history = history;
        b.data_prefix = PathBuf::from(data);
        b.enable = enable;
        b.read_only = read_only;
        if let Some(v) = sync {
            b.sync = v;
        }
        if let Some(v) = blob_size {
            b.blob_size = v;
        }
        if let Some(v) = size_limit_bytes {
            b.size_limit_bytes = v;
        }
        if let Some(v) = records_in_blob {
            b.records_in_blob = v;
        }
        if let Some(v) = defrag_percentage {
            b.defrag_percentage = v;
        }
        if let Some((size, sync_timeout)) = cache {
            b.cache_size = size;
            if let Some(t) = sync_timeout {
                b.cache_sync_timeout_secs = t;
            }
        }
        Ok(b)
    }
}

/// The engine's directory for eblob prefix `data`: `<parent>/<name>.apsis`. eblob names its files
/// `<data>-0.N`, so two backends may share a directory with different prefixes; a directory per
/// prefix keeps them apart, and never mixes Apsis' files with eblob's.
fn engine_dir(data: &str) -> Option<PathBuf> {
    let data = Path::new(data);
    let name = data.file_name()?;
    let mut dir_name = name.to_os_string();
    dir_name.push(".apsis");
    Some(data.parent().unwrap_or(Path::new("")).join(dir_name))
}

/// `options.address`: `host:port:family[-addrgroup]` each, ordered by address group.
fn parse_addresses(value: &Value, path: &str) -> Result<Vec<(SocketAddr, u32)>, ConfigError> {
    let mut out = Vec::new();
    for (i, item) in array(value, path)?.iter().enumerate() {
        let item_path = format!("{path}[{i}]");
        let text = string(item, &item_path)?;
        let parsed = apsis_proto::Addr::parse_dnet(text)
            .map_err(|e| ConfigError(format!("{item_path}: {e}")))?;
        out.push(parsed);
    }
    if out.is_empty() {
        return Err(ConfigError(format!(
            "{path}: no address; a server needs one"
        )));
    }
    out.sort_by_key(|&(_, group)| group);
    Ok(out)
}

/// What Elliptics binds for an advertised address: any host, same family and port.
fn unspecified(addr: SocketAddr) -> SocketAddr {
    let ip = match addr {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    SocketAddr::new(ip, addr.port())
}

/// Blackhole's severities onto `tracing`'s; `notice` sits between debug and info, and goes to info.
fn log_level(value: &Value, path: &str) -> Result<String, ConfigError> {
    let level = match value.as_str() {
        Some("debug") => "debug",
        Some("notice") | Some("info") => "info",
        Some("warning") => "warn",
        Some("error") => "error",
        _ => {
            return Err(ConfigError(format!(
                "{path}: want debug, notice, info, warning or error, found {}",
                describe(value)
            )))
        }
    };
    Ok(level.into())
}

fn nonzero_or(value: u64, default: u64) -> u64 {
    if value == 0 {
        default
    } else {
        value
    }
}

fn required<T>(value: Option<T>, path: &str) -> Result<T, ConfigError> {
    value.ok_or_else(|| ConfigError(format!("{path}: missing (required)")))
}

fn wrong(path: &str, want: &str, value: &Value) -> ConfigError {
    ConfigError(format!("{path}: want {want}, found {}", describe(value)))
}

fn out_of_range(path: &str) -> ConfigError {
    ConfigError(format!("{path}: out of range"))
}

/// A value as an error message shows it: its JSON kind, and the value if it is short.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) if s.len() <= 40 => format!("string {s:?}"),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

fn object<'a>(value: &'a Value, path: &str) -> Result<&'a Map<String, Value>, ConfigError> {
    value
        .as_object()
        .ok_or_else(|| wrong(path, "an object", value))
}

fn array<'a>(value: &'a Value, path: &str) -> Result<&'a Vec<Value>, ConfigError> {
    value
        .as_array()
        .ok_or_else(|| wrong(path, "an array", value))
}

fn string<'a>(value: &'a Value, path: &str) -> Result<&'a str, ConfigError> {
    value.as_str().ok_or_else(|| wrong(path, "a string", value))
}

fn strings(value: &Value, path: &str) -> Result<Vec<String>, ConfigError> {
    array(value, path)?
        .iter()
        .enumerate()
        .map(|(i, item)| string(item, &format!("{path}[{i}]")).map(str::to_owned))
        .collect()
}

/// A boolean; 0 and 1 are taken too, as hand-written configs often have them.
fn boolean(value: &Value, path: &str) -> Result<bool, ConfigError> {
    match value {
        Value::Bool(b) => Ok(*b),
        Value::Number(n) if n.as_u64() == Some(0) => Ok(false),
        Value::Number(n) if n.as_u64() == Some(1) => Ok(true),
        _ => Err(wrong(path, "true or false", value)),
    }
}

fn uint(value: &Value, path: &str) -> Result<u64, ConfigError> {
    value
        .as_u64()
        .ok_or_else(|| wrong(path, "an unsigned integer", value))
}

fn uint_in<T: TryFrom<u64>>(value: &Value, path: &str) -> Result<T, ConfigError> {
    T::try_from(uint(value, path)?).map_err(|_| out_of_range(path))
}

fn int(value: &Value, path: &str) -> Result<i64, ConfigError> {
    value
        .as_i64()
        .ok_or_else(|| wrong(path, "an integer", value))
}

/// An eblob key as text, as Elliptics hands it to eblob.
fn eblob_text(value: &Value, path: &str) -> Result<String, ConfigError> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(wrong(path, "a string or a number", value)),
    }
}

fn eblob_uint(value: &Value, path: &str) -> Result<u64, ConfigError> {
    match value {
        Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| wrong(path, "an unsigned integer", value)),
        _ => uint(value, path),
    }
}

fn eblob_int(value: &Value, path: &str) -> Result<i64, ConfigError> {
    match value {
        Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| wrong(path, "an integer", value)),
        _ => int(value, path),
    }
}

/// A size: a number of bytes, or a string with an optional K/M/G/T suffix.
fn eblob_size(value: &Value, path: &str) -> Result<u64, ConfigError> {
    match value {
        Value::String(s) => parse_size(s).map_err(|e| ConfigError(format!("{path}: {e}"))),
        _ => value
            .as_u64()
            .ok_or_else(|| wrong(path, "a size such as \"10G\" or a number of bytes", value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The minimal config of protocol reference §5, for node `port` in `group`.
    fn minimal(port: u16, group: u32, remotes: &[&str]) -> Value {
        json!({
            "logger": {
                "level": "info",
                "root": [{
                    "type": "blocking",
                    "formatter": {
                        "type": "string",
                        "pattern": "{timestamp} {severity}: {message}, attrs: [{...}]"
                    },
                    "sinks": [{"type": "file", "path": "/x/log", "flush": 1}]
                }]
            },
            "options": {
                "address": [format!("127.0.0.1:{port}:2-0")],
                "remote": remotes,
                "join": true,
                "flags": 4,
                "auth_cookie": "secret",
                "wait_timeout": 60,
                "check_timeout": 60,
                "io_thread_num": 4,
                "nonblocking_io_thread_num": 4,
                "net_thread_num": 2,
                "monitor": {"port": port + 1},
                "cache": {"size": 16777216}
            },
            "backends": [{
                "backend_id": 1,
                "type": "blob",
                "group": group,
                "history": format!("/x/{port}/history"),
                "data": format!("/x/{port}/data/data"),
                "sync": "30",
                "blob_size": "10G",
                "records_in_blob": "1000000",
                "periodic_timeout": 15
            }]
        })
    }

    fn parse(v: &Value) -> Result<NodeConfig, ConfigError> {
        from_json(&v.to_string())
    }

    fn err(v: &Value) -> String {
        match parse(v) {
            Ok(cfg) => panic!("accepted: {cfg:?}"),
            Err(e) => e.0,
        }
    }

    /// Sets (or adds, in an object) the value at JSON pointer `pointer`.
    fn set(v: &mut Value, pointer: &str, new: Value) {
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        match v
            .pointer_mut(parent)
            .unwrap_or_else(|| panic!("no {parent}"))
        {
            Value::Object(map) => {
                map.insert(key.to_owned(), new);
            }
            Value::Array(items) => items[key.parse::<usize>().unwrap()] = new,
            _ => panic!("{parent} holds no keys"),
        }
    }

    fn remove(v: &mut Value, pointer: &str) {
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        v.pointer_mut(parent)
            .unwrap()
            .as_object_mut()
            .unwrap()
            .remove(key)
            .unwrap();
    }

    #[test]
    fn minimal_config() {
        let cfg = parse(&minimal(1025, 1, &[])).unwrap();
        cfg.validate().unwrap();
        assert_eq!(
            cfg.listen,
            vec!["0.0.0.0:1025".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            cfg.advertise,
            vec!["127.0.0.1:1025".parse::<SocketAddr>().unwrap()]
        );
        assert!(cfg.remotes.is_empty());
        assert!(cfg.join);
        assert_eq!(cfg.flags, 4 | apsis_proto::node_flags::JOIN_NETWORK);
        assert_eq!(cfg.auth_cookie, "secret");
        assert_eq!(
            (
                cfg.wait_timeout_secs,
                cfg.check_timeout_secs,
                cfg.stall_count
            ),
            (60, 60, 3)
        );
        assert_eq!(cfg.monitor_port, 1026);
        assert_eq!(cfg.log_level, "info");
        assert_eq!(cfg.worker_threads, 0);
        assert_eq!(cfg.backends.len(), 1);
        let b = &cfg.backends[0];
        assert_eq!((b.id, b.group), (1, 1));
        assert_eq!(b.history, Path::new("/x/1025/history"));
        assert_eq!(b.data_prefix, Path::new("/x/1025/data/data"));
        assert_eq!(b.dir, Path::new("/x/1025/data/data.apsis"));
        assert_eq!(b.sync, 30);
        assert_eq!(b.blob_size, 10 << 30);
        assert_eq!(b.records_in_blob, 1_000_000);
        assert_eq!((b.size_limit_bytes, b.defrag_percentage), (0, 25));
        // options.cache applies to every backend without a cache of its own.
        assert_eq!((b.cache_size, b.cache_sync_timeout_secs), (16 << 20, 30));
        assert!(b.enable && !b.read_only);
        for expected in [
            "logger.root[0].formatter (Apsis formats its own log lines)",
            "options.io_thread_num (no effect in Apsis)",
            "options.nonblocking_io_thread_num (no effect in Apsis)",
            "options.net_thread_num (no effect in Apsis)",
            "backends[0].periodic_timeout (no effect in Apsis)",
        ] {
            assert!(
                cfg.ignored_keys.iter().any(|k| k == expected),
                "{expected}: {:?}",
                cfg.ignored_keys
            );
        }
        assert!(
            !cfg.ignored_keys.iter().any(|k| k.contains("unknown")),
            "{:?}",
            cfg.ignored_keys
        );
    }

    #[test]
    fn two_nodes_list_each_other() {
        let a = parse(&minimal(1025, 1, &["127.0.0.1:1035:2"])).unwrap();
        let b = parse(&minimal(1035, 2, &["127.0.0.1:1025:2"])).unwrap();
        assert_eq!(a.remotes, vec!["127.0.0.1:1035:2"]);
        assert_eq!(b.remotes, vec!["127.0.0.1:1025:2"]);
        assert_eq!(b.listen[0].port(), 1035);
        assert_eq!((a.backends[0].group, b.backends[0].group), (1, 2));
        assert_ne!(a.backends[0].dir, b.backends[0].dir);
    }

    #[test]
    fn eblob_numbers_as_strings_or_numbers() {
        let mut v = minimal(1025, 1, &[]);
        let as_strings = parse(&v).unwrap();
        set(&mut v, "/backends/0/sync", json!(30));
        set(&mut v, "/backends/0/blob_size", json!(10u64 << 30));
        set(&mut v, "/backends/0/records_in_blob", json!(1_000_000));
        let as_numbers = parse(&v).unwrap();
        assert_eq!(as_strings.backends, as_numbers.backends);

        set(&mut v, "/backends/0/sync", json!("-1"));
        set(&mut v, "/backends/0/blob_size_limit", json!("1T"));
        set(&mut v, "/backends/0/defrag_percentage", json!("40"));
        set(&mut v, "/backends/0/blob_flags", json!("158"));
        let b = parse(&v).unwrap().backends.remove(0);
        assert_eq!(
            (b.sync, b.size_limit_bytes, b.defrag_percentage),
            (-1, 1 << 40, 40)
        );
    }

    /// `options.flags`: NO_CSUM is kept for the data commands; the bits Apsis does not act on
    /// are listed, by name, and bits Elliptics does not define as unknown.
    #[test]
    fn node_flags_are_kept_and_the_unused_ones_listed() {
        use apsis_proto::node_flags as nf;
        let mut v = minimal(1025, 1, &[]);
        v["options"]["flags"] = json!(2 | 4 | 8 | 32 | 64 | 0x100);
        let cfg = parse(&v).unwrap();
        assert_eq!(cfg.flags, 2 | 4 | 8 | 32 | 64 | 0x100 | nf::JOIN_NETWORK);
        for name in [
            "NO_ROUTE_LIST",
            "MIX_STATES",
            "RANDOMIZE_STATES",
            "KEEPS_IDS_IN_CLUSTER",
        ] {
            let key = format!("options.flags {name} (no effect in Apsis");
            assert!(
                cfg.ignored_keys.iter().any(|k| k.starts_with(&key)),
                "{name}: {:?}",
                cfg.ignored_keys
            );
        }
        assert!(cfg
            .ignored_keys
            .iter()
            .any(|k| k == "options.flags 0x100 (unknown bits)"));
        assert!(!cfg.ignored_keys.iter().any(|k| k.contains("NO_CSUM")));
    }

    /// `client_net_prio` and `server_net_prio` are types of service for the sockets, as in
    /// Elliptics; a value that is not one is refused when the config is checked.
    #[test]
    fn net_prios_are_taken() {
        let mut v = minimal(1025, 1, &[]);
        v["options"]["server_net_prio"] = json!(1);
        v["options"]["client_net_prio"] = json!(6);
        let cfg = parse(&v).unwrap();
        assert_eq!((cfg.client_net_prio, cfg.server_net_prio), (6, 1));
        assert!(!cfg.ignored_keys.iter().any(|k| k.contains("net_prio")));
        v["options"]["client_net_prio"] = json!(256);
        let e = parse(&v).unwrap().validate().unwrap_err().to_string();
        assert!(e.contains("client_net_prio"), "{e}");
    }

    /// `options.daemon` sends `apsis server` to the background, as it does dnet_ioserv.
    #[test]
    fn daemon_is_taken() {
        let mut v = minimal(1025, 1, &[]);
        assert!(!parse(&v).unwrap().daemon);
        v["options"]["daemon"] = json!(true);
        let cfg = parse(&v).unwrap();
        assert!(cfg.daemon);
        assert!(!cfg.ignored_keys.iter().any(|k| k.contains("daemon")));
    }

    /// The logger's sinks decide where the log goes, as they decide where dnet_ioserv's goes.
    #[test]
    fn log_sinks_follow_the_logger() {
        let v = minimal(1025, 1, &[]);
        let cfg = parse(&v).unwrap();
        assert_eq!(cfg.log, vec![LogSink::File("/x/log".into())]);
        let listed = |cfg: &NodeConfig, k: &str| cfg.ignored_keys.iter().any(|i| i.starts_with(k));
        assert!(
            listed(&cfg, "logger.root[0].formatter ("),
            "{:?}",
            cfg.ignored_keys
        );
        assert!(listed(&cfg, "logger.root[0].sinks[0].flush ("));

        let with_sinks = |sinks: Value| {
            let mut v = minimal(1025, 1, &[]);
            v["logger"]["root"][0]["sinks"] = sinks;
            parse(&v)
        };
        assert_eq!(with_sinks(json!([{"type": "null"}])).unwrap().log, vec![]);
        let two = with_sinks(json!([{"type": "file", "path": "/a"}, {"type": "console"}]));
        assert_eq!(
            two.unwrap().log,
            vec![LogSink::File("/a".into()), LogSink::Stderr]
        );
        let odd = with_sinks(json!([{"type": "syslog", "identity": "x"}])).unwrap();
        assert_eq!(odd.log, vec![LogSink::Stderr]);
        assert!(listed(
            &odd,
            "logger.root[0].sinks[0] (sink type \"syslog\" not supported"
        ));
        assert!(listed(&odd, "logger.root[0].sinks[0].identity (unknown)"));
        let e = with_sinks(json!([{"type": "file"}]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("logger.root[0].sinks[0].path"), "{e}");
        let e = with_sinks(json!([{"path": "/a"}])).unwrap_err().to_string();
        assert!(e.contains("logger.root[0].sinks[0].type"), "{e}");

        let mut v = minimal(1025, 1, &[]);
        v["logger"].as_object_mut().unwrap().remove("root");
        assert_eq!(parse(&v).unwrap().log, vec![LogSink::Stderr]);
    }

    #[test]
    fn unknown_keys_are_reported_not_dropped() {
        let mut v = minimal(1025, 1, &[]);
        v["extra"] = json!(1);
        v["options"]["monitor_port"] = json!(20000);
        v["options"]["monitor"]["top"] = json!({"top_length": 50, "colour": "red"});
        v["options"]["cache"]["lru"] = json!(true);
        v["backends"][0]["iterate_thread_num"] = json!(1);
        v["logger"]["frontends"] = json!([]);
        let cfg = parse(&v).unwrap();
        for expected in [
            "extra (unknown)",
            "options.monitor_port (unknown)",
            "options.monitor.top.colour (unknown)",
            "options.monitor.top (no effect in Apsis)",
            "options.cache.lru (unknown)",
            "backends[0].iterate_thread_num (unknown)",
            "logger.frontends (unknown)",
        ] {
            assert!(
                cfg.ignored_keys.iter().any(|k| k == expected),
                "{expected}: {:?}",
                cfg.ignored_keys
            );
        }
        assert_eq!(
            cfg.monitor_port, 1026,
            "the 2.26 monitor_port is not taken for options.monitor.port"
        );
    }

    #[test]
    fn missing_required_keys_are_named() {
        for (pointer, named) in [
            ("/logger", "logger"),
            ("/options", "options"),
            ("/backends", "backends"),
            ("/logger/level", "logger.level"),
            ("/options/address", "options.address"),
            ("/options/auth_cookie", "options.auth_cookie"),
            ("/options/io_thread_num", "options.io_thread_num"),
            (
                "/options/nonblocking_io_thread_num",
                "options.nonblocking_io_thread_num",
            ),
            ("/options/net_thread_num", "options.net_thread_num"),
            ("/options/cache/size", "options.cache.size"),
            ("/backends/0/backend_id", "backends[0].backend_id"),
            ("/backends/0/type", "backends[0].type"),
            ("/backends/0/group", "backends[0].group"),
            ("/backends/0/history", "backends[0].history"),
            ("/backends/0/data", "backends[0].data"),
        ] {
            let mut v = minimal(1025, 1, &[]);
            remove(&mut v, pointer);
            let e = err(&v);
            assert!(
                e.starts_with(&format!("{named}: missing")),
                "{pointer}: {e}"
            );
        }
    }

    #[test]
    fn wrong_types_and_values_are_named() {
        for (pointer, bad, named) in [
            ("/options/join", json!("yes"), "options.join"),
            ("/options/flags", json!(-1), "options.flags"),
            (
                "/options/address",
                json!("127.0.0.1:1025:2"),
                "options.address",
            ),
            ("/options/address", json!([]), "options.address"),
            ("/options/address/0", json!(1025), "options.address[0]"),
            ("/options/address/0", json!("nowhere"), "options.address[0]"),
            ("/options/remote/0", json!(null), "options.remote[0]"),
            ("/options/auth_cookie", json!(7), "options.auth_cookie"),
            ("/options/wait_timeout", json!(1.5), "options.wait_timeout"),
            (
                "/options/monitor/port",
                json!(70000),
                "options.monitor.port",
            ),
            ("/options/cache/size", json!(0), "options.cache.size"),
            ("/options/daemon", json!("no"), "options.daemon"),
            ("/logger/level", json!(4), "logger.level"),
            ("/logger/level", json!("trace"), "logger.level"),
            ("/logger/root", json!({}), "logger.root"),
            ("/backends", json!({}), "backends"),
            ("/backends/0", json!([]), "backends[0]"),
            ("/backends/0/type", json!("leveldb"), "backends[0].type"),
            (
                "/backends/0/backend_id",
                json!("1"),
                "backends[0].backend_id",
            ),
            ("/backends/0/group", json!(1u64 << 32), "backends[0].group"),
            ("/backends/0/sync", json!(true), "backends[0].sync"),
            ("/backends/0/sync", json!("often"), "backends[0].sync"),
            (
                "/backends/0/blob_size",
                json!("10Q"),
                "backends[0].blob_size",
            ),
            (
                "/backends/0/records_in_blob",
                json!("-5"),
                "backends[0].records_in_blob",
            ),
            ("/backends/0/data", json!("/"), "backends[0].data"),
            (
                "/backends/0/read_only",
                json!("false"),
                "backends[0].read_only",
            ),
        ] {
            let mut v = minimal(1025, 1, &["127.0.0.1:1035:2"]);
            set(&mut v, pointer, bad);
            let e = err(&v);
            assert!(e.starts_with(named), "{pointer}: {e}");
        }
        assert!(err(&json!([])).contains("want an object"));
        assert!(from_json("{\"logger\": ")
            .unwrap_err()
            .0
            .starts_with("JSON"));
    }

    #[test]
    fn backend_ids_are_unique_and_prefixes_get_their_own_dirs() {
        let mut v = minimal(1025, 1, &[]);
        let mut second = v["backends"][0].clone();
        second["data"] = json!("/x/1025/data/other");
        v["backends"].as_array_mut().unwrap().push(second.clone());
        assert!(
            err(&v).starts_with("backends[1].backend_id: 1 is already"),
            "{}",
            err(&v)
        );

        v["backends"][1]["backend_id"] = json!(2);
        let cfg = parse(&v).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.backends[0].dir, Path::new("/x/1025/data/data.apsis"));
        assert_eq!(cfg.backends[1].dir, Path::new("/x/1025/data/other.apsis"));
        assert_eq!(engine_dir("data"), Some(PathBuf::from("data.apsis")));
    }

    #[test]
    fn ipv6_family_10_binds_the_unspecified_v6_address() {
        let mut v = minimal(1025, 1, &[]);
        set(
            &mut v,
            "/options/address",
            json!(["::1:1025:10-1", "127.0.0.1:1026:2-0"]),
        );
        let cfg = parse(&v).unwrap();
        cfg.validate().unwrap();
        // Ordered by address group, as Elliptics orders them.
        assert_eq!(
            cfg.advertise,
            vec![
                "127.0.0.1:1026".parse::<SocketAddr>().unwrap(),
                "[::1]:1025".parse().unwrap()
            ]
        );
        assert_eq!(
            cfg.listen,
            vec![
                "0.0.0.0:1026".parse::<SocketAddr>().unwrap(),
                "[::]:1025".parse().unwrap()
            ]
        );
    }

    #[test]
    fn zero_means_the_elliptics_default() {
        let mut v = minimal(1025, 1, &[]);
        set(&mut v, "/options/wait_timeout", json!(0));
        set(&mut v, "/options/check_timeout", json!(0));
        v["options"]["stall_count"] = json!(0);
        let cfg = parse(&v).unwrap();
        assert_eq!(
            (
                cfg.wait_timeout_secs,
                cfg.check_timeout_secs,
                cfg.stall_count
            ),
            (5, 60, 3)
        );
        v["options"]["stall_count"] = json!(7);
        assert_eq!(parse(&v).unwrap().stall_count, 7);
    }

    #[test]
    fn join_owns_flag_bit_0_and_log_levels_map() {
        let mut v = minimal(1025, 1, &[]);
        set(&mut v, "/options/join", json!(false));
        set(&mut v, "/options/flags", json!(1 | 64));
        assert_eq!(parse(&v).unwrap().flags, 64);
        for (blackhole, tracing) in [
            ("debug", "debug"),
            ("notice", "info"),
            ("info", "info"),
            ("warning", "warn"),
            ("error", "error"),
        ] {
            set(&mut v, "/logger/level", json!(blackhole));
            assert_eq!(parse(&v).unwrap().log_level, tracing);
        }
    }

    #[test]
    fn long_cookies_are_cut_as_elliptics_cuts_them() {
        let mut v = minimal(1025, 1, &[]);
        set(&mut v, "/options/auth_cookie", json!("a".repeat(40)));
        let cfg = parse(&v).unwrap();
        assert_eq!(cfg.auth_cookie, "a".repeat(31));
        assert!(cfg
            .ignored_keys
            .iter()
            .any(|k| k.starts_with("options.auth_cookie (only")));
    }
}
