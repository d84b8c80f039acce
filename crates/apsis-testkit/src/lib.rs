//! The Apsis cluster test harness: N real `apsis server` processes, faults, and a history
//! checker.
//!
//! A [`Cluster`] starts real server processes from a [`ClusterSpec`] (which node serves which
//! groups), either all on loopback or each in its own network namespace joined to a bridge
//! by a veth pair ([`Net::Namespaces`], needs root and `ip`). Every node lists the others as
//! remotes and uses short timeouts, so failure detection and rejoining happen within seconds.
//!
//! Faults: [`Cluster::kill`] (SIGKILL), [`Cluster::pause`] / [`Cluster::resume`]
//! (SIGSTOP / SIGCONT), [`Cluster::restart`] (same address, same data), [`Cluster::wipe`] (a
//! killed node loses its data but keeps its ring ids), [`Cluster::add_node`] (a ring change),
//! [`Cluster::partition`] / [`Cluster::heal`] (the node's veth link goes down / up: it is cut
//! from every other node and from the clients), [`corrupt_copy`] (flips a byte of a
//! stored object's data in the blob file, which the node must report as −EILSEQ), and disks
//! that fail: the nodes named in [`ClusterSpec::faulty_disks`] keep their backends on a
//! [`FaultyDisk`] ([`Cluster::disk`]), a FUSE passthrough that answers EIO on reads, writes or
//! fsyncs, or ENOSPC past a capacity, when the test says so.
//!
//! [`History`] records every operation's invocation, completion and result; its
//! [`History::check`] verifies afterwards that no read returned data that was never written,
//! and that no read that promises the newest copy (`read_latest`, the final verification)
//! returned anything older than the last write acknowledged before it began.
//!
//! # Layout
//! - [`cluster`]: [`ClusterSpec`], [`Cluster`], node processes and their configs.
//! - [`netns`]: network namespaces, the bridge and the veth links.
//! - [`history`]: [`History`], [`Op`], the checker and its [`Violation`]s.
//! - [`faults`]: damage to stored data ([`corrupt_copy`]).
//! - [`disk`]: [`FaultyDisk`], the FUSE filesystem that fails on demand.
//! - [`process`]: starting one server process and reading where it listens (also used by the
//!   single-node tests), and `http_get` for a node's monitor ([`ClusterSpec::monitor`]).

pub mod cluster;
pub mod disk;
pub mod faults;
pub mod history;
pub mod netns;
pub mod process;

pub use cluster::{Cluster, ClusterSpec, Net, NodeHandle};
pub use disk::FaultyDisk;
pub use faults::corrupt_copy;
pub use history::{History, Kind, Op, Outcome, Violation};
