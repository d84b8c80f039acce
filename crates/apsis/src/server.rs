//! `apsis server`.

use apsis_node::{config::DEFAULT_PORT, Node, NodeConfig};
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;
use tracing_subscriber::fmt::writer::{BoxMakeWriter, MakeWriterExt};
use tracing_subscriber::{layer::SubscriberExt, reload, util::SubscriberInitExt, EnvFilter};

#[derive(Args)]
pub struct ServerArgs {
    /// Config file: Apsis TOML, or the Elliptics dnet_ioserv JSON (`.json`).
    #[arg(short = 'c', long)]
    config: Option<PathBuf>,
    /// Listen address (without a config file).
    #[arg(long)]
    listen: Option<String>,
    /// Data directory (without a config file).
    #[arg(long)]
    data: Option<PathBuf>,
    /// sync for the default backend: 0 durable per write, N seconds, -1 never.
    #[arg(long, allow_hyphen_values = true)]
    sync: Option<i64>,
    /// HTTP monitor port (0 = off).
    #[arg(long)]
    monitor_port: Option<u16>,
    /// Go to the background once the node serves (as the config's `daemon`): the command
    /// prints where the node listens and its pid, and exits.
    #[arg(long)]
    daemon: bool,
    /// Print the effective configuration and exit.
    #[arg(long)]
    check: bool,
}

/// The default data directory: `$APSIS_DATA_DIR`, else `$XDG_DATA_HOME/apsis`, else
/// `$HOME/.local/share/apsis`, else `./apsis-data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("APSIS_DATA_DIR") {
        return d.into();
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(d).join("apsis");
    }
    if let Some(h) = std::env::var_os("HOME") {
        return PathBuf::from(h).join(".local/share/apsis");
    }
    PathBuf::from("apsis-data")
}

pub fn run(a: ServerArgs) -> anyhow::Result<()> {
    let mut cfg = match &a.config {
        Some(p) => NodeConfig::load(p)?,
        None => {
            let listen = match &a.listen {
                Some(l) => {
                    apsis_proto::Addr::parse_dnet(l)
                        .map_err(|e| anyhow::anyhow!("{e}"))?
                        .0
                }
                None => std::net::SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
            };
            NodeConfig::single(listen, &a.data.clone().unwrap_or_else(default_data_dir))
        }
    };
    if a.config.is_some() && (a.listen.is_some() || a.data.is_some()) {
        anyhow::bail!("--listen and --data apply only without -c");
    }
    if let Some(s) = a.sync {
        for b in &mut cfg.backends {
            b.sync = s;
        }
    }
    if let Some(p) = a.monitor_port {
        cfg.monitor_port = p;
    }
    cfg.validate()?;
    if a.check {
        println!("{cfg:#?}");
        return Ok(());
    }
    let filter =
        EnvFilter::try_from_env("APSIS_LOG").unwrap_or_else(|_| EnvFilter::new(&cfg.log_level));
    let (layer, handle) = reload::Layer::new(filter);
    let LogOutput {
        writer,
        ansi,
        files: log_files,
    } = log_output(&cfg.log)?;
    // Before any thread exists (the runtime's): only then is fork safe.
    let daemon = if a.daemon || cfg.daemon {
        if cfg.log.contains(&apsis_node::LogSink::Stderr) {
            eprintln!("apsis: in the background stderr is /dev/null: give the log a file (log_file, or a file sink) to keep it");
        }
        Some(Daemon::fork()?)
    } else {
        None
    };
    tracing_subscriber::registry()
        .with(layer)
        .with(writer.map(|w| {
            tracing_subscriber::fmt::layer()
                .with_writer(w)
                .with_ansi(ansi)
        }))
        .init();
    let setter: apsis_node::LogLevelSetter =
        Arc::new(move |level: &str| handle.reload(EnvFilter::new(level)).is_ok());
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if cfg.worker_threads > 0 {
        rt.worker_threads(cfg.worker_threads);
    }
    // Replies are written when a worker thread runs out of tasks, as Redis writes them
    // before its event loop sleeps.
    apsis_node::install_reply_batching(&mut rt);
    let rt = rt.enable_all().build()?;
    rt.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        // Taken before the node starts: SIGHUP's default would end the process.
        let mut term = signal(SignalKind::terminate())?;
        let mut hup = signal(SignalKind::hangup())?;
        let node = match Node::start(cfg, Some(setter)).await {
            Ok(n) => n,
            Err(e) => {
                if let Some(d) = daemon {
                    d.failed(&e.to_string());
                }
                return Err(e.into());
            }
        };
        let mut started = String::new();
        for a in &node.listen {
            started.push_str(&format!("listening {a}\n"));
        }
        if let Some(m) = node.monitor {
            started.push_str(&format!("monitor http://{m}/\n"));
        }
        match daemon {
            Some(d) => d.serving(&started),
            None => {
                use std::io::Write;
                print!("{started}");
                let _ = std::io::stdout().flush();
            }
        }
        loop {
            tokio::select! {
                _ = term.recv() => {
                    tracing::info!("SIGTERM: shutting down");
                    break;
                }
                _ = tokio::signal::ctrl_c() => {
                    tracing::info!("SIGINT: shutting down");
                    break;
                }
                _ = node.wait() => break,
                // As dnet_ioserv: SIGHUP reopens the log files (after logrotate moved them).
                _ = hup.recv() => {
                    for f in &log_files {
                        match f.reopen() {
                            Ok(()) => tracing::info!(path = %f.path.display(), "SIGHUP: log file reopened"),
                            Err(e) => tracing::warn!(path = %f.path.display(), error = %e, "SIGHUP: log file not reopened; writing on to the old one"),
                        }
                    }
                }
            }
        }
        node.shutdown().await;
        Ok(())
    })
}

/// Where the node's log goes, made from its sinks.
struct LogOutput {
    /// One writer for every sink (`None`: no sink, no log).
    writer: Option<BoxMakeWriter>,
    /// Whether lines may carry colours: only when they go to stderr alone, a terminal.
    ansi: bool,
    /// The files, for SIGHUP to reopen.
    files: Vec<Arc<LogFile>>,
}

/// Opens the log's sinks. A file that cannot be opened is an error before the node starts,
/// as `dnet_ioserv` refuses to start without its log.
fn log_output(sinks: &[apsis_node::LogSink]) -> anyhow::Result<LogOutput> {
    use apsis_node::LogSink;
    use std::io::IsTerminal;
    let mut all: Option<BoxMakeWriter> = None;
    let mut files = Vec::new();
    for sink in sinks {
        let w = match sink {
            LogSink::Stderr => BoxMakeWriter::new(std::io::stderr),
            LogSink::File(p) => {
                let f = Arc::new(LogFile::open(p)?);
                files.push(f.clone());
                BoxMakeWriter::new(f)
            }
        };
        all = Some(match all {
            None => w,
            Some(prev) => BoxMakeWriter::new(prev.and(w)),
        });
    }
    Ok(LogOutput {
        writer: all,
        ansi: sinks == [LogSink::Stderr] && std::io::stderr().is_terminal(),
        files,
    })
}

/// A log file: appended to, created with its directory when missing, and reopened by path on
/// SIGHUP, so a rotation tool can move it away and have the node start a new one.
struct LogFile {
    path: PathBuf,
    file: std::sync::Mutex<std::fs::File>,
}

impl LogFile {
    fn open(path: &std::path::Path) -> anyhow::Result<LogFile> {
        Ok(LogFile {
            path: path.to_path_buf(),
            file: std::sync::Mutex::new(Self::open_file(path)?),
        })
    }

    fn open_file(p: &std::path::Path) -> anyhow::Result<std::fs::File> {
        let open = || {
            if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
        };
        open().map_err(|e| anyhow::anyhow!("log file {}: {e}", p.display()))
    }

    /// Opens the path again; later lines go to the file now there.
    fn reopen(&self) -> anyhow::Result<()> {
        let f = Self::open_file(&self.path)?;
        *self.file.lock().unwrap_or_else(|e| e.into_inner()) = f;
        Ok(())
    }
}

/// The log layer writes each line with one `write_all`, so a line is never split between
/// the old file and the new one.
impl std::io::Write for &LogFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write(buf)
    }
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.file
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_all(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `apsis server` in the background (Elliptics' `daemon`). The command forks: the child
/// leaves the terminal's session, puts /dev/null on its standard streams and starts the node;
/// the parent waits until the child says it serves, prints what the foreground server prints
/// (where it listens) and `pid N`, and exits 0 — or prints why the node did not start and
/// exits with status 1. Unlike `dnet_ioserv`, whose parent exits at the fork, a script can
/// connect as soon as the command returns, and learns of a failed start from its exit status.
struct Daemon {
    /// The child's end of the pipe the parent reads.
    to_parent: std::fs::File,
}

impl Daemon {
    /// Forks; returns in the child only. Must be called before any thread is started.
    fn fork() -> anyhow::Result<Daemon> {
        use std::io::Read;
        use std::os::fd::FromRawFd;
        let mut fds = [0; 2];
        // SAFETY: a two-element array for pipe2 to fill.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            anyhow::bail!("daemon: pipe: {}", std::io::Error::last_os_error());
        }
        // SAFETY: the descriptors were just made by pipe2 and are owned by these files alone.
        let (mut from_child, to_parent) = unsafe {
            (
                std::fs::File::from_raw_fd(fds[0]),
                std::fs::File::from_raw_fd(fds[1]),
            )
        };
        // SAFETY: the process has one thread (the caller's contract), so the child is whole.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            anyhow::bail!("daemon: fork: {}", std::io::Error::last_os_error());
        }
        if pid > 0 {
            drop(to_parent);
            let mut said = String::new();
            let _ = from_child.read_to_string(&mut said);
            match said.strip_prefix("serving\n") {
                Some(lines) => {
                    println!("{lines}pid {pid}");
                    std::process::exit(0);
                }
                None => {
                    let why = said.strip_prefix("failed\n").unwrap_or("");
                    let why = if why.is_empty() {
                        "the node exited before it served"
                    } else {
                        why
                    };
                    eprintln!("apsis: {why}");
                    std::process::exit(1);
                }
            }
        }
        drop(from_child);
        // SAFETY: plain system calls on this process's own descriptors and session.
        unsafe {
            libc::setsid();
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            if null >= 0 {
                for fd in 0..3 {
                    libc::dup2(null, fd);
                }
                if null > 2 {
                    libc::close(null);
                }
            }
        }
        Ok(Daemon { to_parent })
    }

    /// The node serves: the parent prints `lines` and exits 0.
    fn serving(self, lines: &str) {
        self.tell(&format!("serving\n{lines}"));
    }

    /// The node did not start: the parent prints `why` and exits 1.
    fn failed(self, why: &str) {
        self.tell(&format!("failed\n{why}"));
    }

    fn tell(mut self, what: &str) {
        use std::io::Write;
        let _ = self.to_parent.write_all(what.as_bytes());
    }
}
