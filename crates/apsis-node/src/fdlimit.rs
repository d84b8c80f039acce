//! The open-file limit, and the connections that fit under it.
//!
//! A node holds a descriptor for each connection and each open base file. Linux's default soft
//! limit (1024) is far below `max_connections` (4096) on its own. Past the limit, whatever
//! opens a descriptor next fails with EMFILE: a client's accept, or the engine's next base or
//! index file. So at start the node raises its soft limit to the hard one, as nginx
//! (`worker_rlimit_nofile`), Redis and every Go program do ([`raise`]). Once its backends are
//! open, the connections it accepts are capped at what still fits, with [`RESERVE`]
//! descriptors kept for the engine ([`connection_limit`]), and a warning when that is below
//! `max_connections`, as Redis lowers `maxclients`. A burst of clients then waits on its own
//! accepts instead of failing the engine's next file open.

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Descriptors kept for the engine beyond those open when the backends were opened: new bases,
/// their indexes, defrag's copies, recovery's peers, the monitor.
pub const RESERVE: u64 = 256;

/// Fewest connections a node accepts however tight the limit (it then warns that the engine
/// may fail to open files).
pub const MIN_CONNECTIONS: usize = 16;

/// The soft limit before and after [`raise`], and the hard limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub before: u64,
    pub soft: u64,
    pub hard: u64,
}

/// `u64::MAX` for "unlimited".
fn value(v: Option<u64>) -> u64 {
    v.unwrap_or(u64::MAX)
}

/// Raises the soft limit on open files to the hard limit (no privilege needed). A failure
/// leaves the limit as it was.
pub fn raise() -> Limits {
    let l = getrlimit(Resource::Nofile);
    let (before, hard) = (value(l.current), value(l.maximum));
    if before < hard {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: l.maximum,
                maximum: l.maximum,
            },
        );
    }
    Limits {
        before,
        soft: value(getrlimit(Resource::Nofile).current),
        hard,
    }
}

/// Descriptors this process holds now (`/proc/self/fd`); `None` where that cannot be read.
pub fn open_now() -> Option<u64> {
    // The directory's own descriptor is among the entries: one less.
    let n = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(n.saturating_sub(1))
}

/// How many connections to accept: `wanted` (`max_connections`), or what fits under `soft`
/// beside the `in_use` descriptors and the [`RESERVE`], and never fewer than
/// [`MIN_CONNECTIONS`].
pub fn connection_limit(wanted: usize, soft: u64, in_use: u64) -> usize {
    let fits = soft.saturating_sub(in_use.saturating_add(RESERVE));
    let fits = usize::try_from(fits).unwrap_or(usize::MAX);
    wanted.min(fits.max(MIN_CONNECTIONS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_fit_beside_the_files_and_the_reserve() {
        // Room for all.
        assert_eq!(connection_limit(4096, 1 << 20, 100), 4096);
        // Debian's default soft limit without a raise: 1024 - 100 - 256.
        assert_eq!(connection_limit(4096, 1024, 100), 668);
        // Nothing fits: the floor.
        assert_eq!(connection_limit(4096, 300, 100), MIN_CONNECTIONS);
        assert_eq!(connection_limit(8, 300, 100), 8);
        // Unlimited.
        assert_eq!(connection_limit(4096, u64::MAX, 100), 4096);
    }

    #[test]
    fn raising_ends_at_the_hard_limit() {
        let l = raise();
        assert!(l.soft >= l.before);
        assert_eq!(l.soft, l.hard);
        assert!(
            open_now().unwrap() >= 3,
            "stdin, stdout and stderr at least"
        );
    }
}
