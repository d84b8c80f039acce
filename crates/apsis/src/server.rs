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
    let (writer, ansi) = log_writer(&cfg.log)?;
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
    let rt = rt.enable_all().build()?;
    rt.block_on(async move {
        let node = Node::start(cfg, Some(setter)).await?;
        for a in &node.listen {
            println!("listening {a}");
        }
        if let Some(m) = node.monitor {
            println!("monitor http://{m}/");
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
            _ = node.wait() => {}
        }
        node.shutdown().await;
        Ok(())
    })
}

/// One writer for every sink of the node's log (`None`: no sink, no log), and whether its
/// lines may carry colours (only when they go to stderr alone, and stderr is a terminal).
/// A file is opened for appending, created with its directory when missing; one that cannot be
/// is an error before the node starts, as `dnet_ioserv` refuses to start without its log.
fn log_writer(sinks: &[apsis_node::LogSink]) -> anyhow::Result<(Option<BoxMakeWriter>, bool)> {
    use apsis_node::LogSink;
    use std::io::IsTerminal;
    let mut all: Option<BoxMakeWriter> = None;
    for sink in sinks {
        let w = match sink {
            LogSink::Stderr => BoxMakeWriter::new(std::io::stderr),
            LogSink::File(p) => {
                let open = || {
                    if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                        std::fs::create_dir_all(dir)?;
                    }
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(p)
                };
                let f = open().map_err(|e| anyhow::anyhow!("log file {}: {e}", p.display()))?;
                BoxMakeWriter::new(std::sync::Mutex::new(f))
            }
        };
        all = Some(match all {
            None => w,
            Some(prev) => BoxMakeWriter::new(prev.and(w)),
        });
    }
    let ansi = sinks == [LogSink::Stderr] && std::io::stderr().is_terminal();
    Ok((all, ansi))
}
