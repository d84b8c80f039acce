//! `apsis server`.

use apsis_node::{config::DEFAULT_PORT, Node, NodeConfig};
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;
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
    tracing_subscriber::registry()
        .with(layer)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
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
