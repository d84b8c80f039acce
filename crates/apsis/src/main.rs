//! The `apsis` command.
//!
//! ```text
//! apsis server [-c FILE.toml|FILE.json] [--listen ADDR] [--data DIR]   run a node (defaults: 127.0.0.1:1025, one backend in group 1)
//! apsis write KEY FILE|-      apsis read KEY [-o FILE]     apsis lookup KEY     apsis remove KEY
//! apsis ls [--group G]        list keys through the iterator
//! apsis range [--from ID] [--to ID] [--skip N] [--limit N] [--count|--remove]   READ_RANGE / DEL_RANGE
//! apsis stat | routes | status [--ro|--rw] [--log-level L] | backend status|enable|disable|defrag|stop-defrag|read-only|writable|delay
//! apsis bench [...]           load generator against an Apsis node or a Redis server
//! apsis recovery merge|dc [--node A [--backend B]] [--dry-run] [--since T] [--resume] [--verify]
//! ```
//!
//! # Layout
//! - `server`: `apsis server` (config, logging with a runtime-settable level, signals).
//! - `objects`: write, read, lookup, remove, ls, range.
//! - `admin`: stat, routes, status, backend.
//! - `bench`: the load generator (Apsis and Redis).

mod admin;
mod bench;
mod objects;
mod recovery;
mod server;

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;

#[derive(Parser)]
#[command(
    name = "apsis",
    version,
    about = "Apsis: an Elliptics-compatible distributed object store"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Options shared by the client commands.
#[derive(Args, Clone, Debug)]
pub struct ClientOpts {
    /// Node to connect to (repeatable); host:port or Elliptics host:port:family.
    #[arg(
        short = 'r',
        long = "remote",
        default_value = "127.0.0.1:1025",
        global = true
    )]
    pub remotes: Vec<String>,
    /// Groups, comma separated.
    #[arg(
        short = 'g',
        long,
        default_value = "1",
        value_delimiter = ',',
        global = true
    )]
    pub groups: Vec<u32>,
    /// Namespace for key ids (sha512(namespace ‖ 0 ‖ key)).
    #[arg(short = 'N', long, default_value = "", global = true)]
    pub namespace: String,
    /// Request timeout in seconds.
    #[arg(long, default_value_t = 5, global = true)]
    pub timeout: u64,
    /// Write checker: at_least_one, quorum or all.
    #[arg(long, default_value = "at_least_one", global = true)]
    pub checker: String,
    /// Machine-readable output.
    #[arg(long, global = true)]
    pub json: bool,
    /// Reads try the groups in a random order instead of in the order given.
    #[arg(long, global = true)]
    pub mix_groups: bool,
    /// Do not rewrite missing, corrupt or stale copies found by reads.
    #[arg(long, global = true)]
    pub no_read_repair: bool,
}

impl ClientOpts {
    pub fn remote_addrs(&self) -> anyhow::Result<Vec<SocketAddr>> {
        self.remotes
            .iter()
            .map(|r| {
                apsis_proto::Addr::parse_dnet(r)
                    .map(|(a, _)| a)
                    .map_err(|e| anyhow::anyhow!("{e}"))
            })
            .collect()
    }

    pub async fn session(&self) -> anyhow::Result<apsis_client::Session> {
        let client = apsis_client::Client::connect(&self.remote_addrs()?, Default::default())
            .await
            .map_err(|e| match &self.remotes[..] {
                // The error names the address already.
                [_] => anyhow::anyhow!("cannot connect: {e}"),
                all => anyhow::anyhow!("cannot connect to any of {}: {e}", all.join(", ")),
            })?;
        let mut s = client.session(self.groups.clone());
        s.namespace = self.namespace.as_bytes().to_vec();
        s.timeout = std::time::Duration::from_secs(self.timeout.max(1));
        s.checker = self
            .checker
            .parse()
            .map_err(|e: String| anyhow::anyhow!(e))?;
        s.mix_groups = self.mix_groups;
        s.read_repair = !self.no_read_repair;
        Ok(s)
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a node. With no arguments: one node on 127.0.0.1:1025, one blob backend in group 1,
    /// data in the default data directory.
    Server(server::ServerArgs),
    /// Write an object from a file or standard input (-).
    Write(objects::WriteArgs),
    /// Read an object to standard output or a file.
    Read(objects::ReadArgs),
    /// Show an object's file info.
    Lookup(objects::KeyArgs),
    /// Remove objects from every group.
    Remove(objects::RemoveArgs),
    /// List keys (through the iterator).
    Ls(objects::LsArgs),
    /// Read, count or remove the objects of an id range, in id order (READ_RANGE / DEL_RANGE).
    Range(objects::RangeArgs),
    /// Node statistics (MONITOR_STAT).
    Stat(admin::StatArgs),
    /// The route table.
    Routes(admin::RoutesArgs),
    /// Node status: read-only switch and log level.
    Status(admin::StatusArgs),
    /// Backend status and control.
    Backend(admin::BackendArgs),
    /// Load generator against an Apsis node or a Redis server.
    Bench(bench::BenchArgs),
    /// Run recovery now: merge (inside groups) or dc (across groups), with progress.
    Recovery(recovery::RecoveryArgs),
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Server(a) => server::run(a),
        other => {
            end_quietly_on_a_closed_pipe();
            init_client_logging();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(async move {
                match other {
                    Cmd::Write(a) => objects::write(a).await,
                    Cmd::Read(a) => objects::read(a).await,
                    Cmd::Lookup(a) => objects::lookup(a).await,
                    Cmd::Remove(a) => objects::remove(a).await,
                    Cmd::Ls(a) => objects::ls(a).await,
                    Cmd::Range(a) => objects::range(a).await,
                    Cmd::Stat(a) => admin::stat(a).await,
                    Cmd::Routes(a) => admin::routes(a).await,
                    Cmd::Status(a) => admin::status(a).await,
                    Cmd::Backend(a) => admin::backend(a).await,
                    Cmd::Bench(a) => bench::run(a).await,
                    Cmd::Recovery(a) => recovery::run(a).await,
                    Cmd::Server(_) => unreachable!("handled above"),
                }
            })
        }
    };
    if let Err(e) = r {
        eprintln!("apsis: {e:#}");
        std::process::exit(1);
    }
}

/// A client command whose output is piped into a reader that stops early (`apsis ls | head`)
/// ends as Unix tools do, killed by SIGPIPE, with nothing on stderr. Rust ignores SIGPIPE,
/// so the next `println!` would panic instead. Sockets are not affected: their writes are
/// `send` with `MSG_NOSIGNAL`, so a peer that closes still gives an error. The server keeps
/// SIGPIPE ignored.
fn end_quietly_on_a_closed_pipe() {
    // SAFETY: called first thing on the main thread, before any other thread exists; it
    // changes only this process's disposition of SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn init_client_logging() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("APSIS_LOG").unwrap_or_else(|_| "error".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
