//! Counters the monitor reports: per command (count, failures, time, bytes) and per backend.
//!
//! The per-command counters are written by every request. One set shared by all worker
//! threads was a cache line that moved between CPUs on nearly every request (an atomic add
//! on a line the other CPU wrote last costs what a cache miss does); each thread now adds to
//! one of [`CMD_SHARDS`] sets of its own, on cache lines of their own, and a reader sums them
//! ([`Stats::command`]).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// Command numbers 0..CMD_SLOTS are counted; anything else lands in the UNKNOWN slot.
pub const CMD_SLOTS: usize = 29;

/// Sets of per-command counters; threads take them in turn (more threads than sets share).
pub const CMD_SHARDS: usize = 16;

/// One command's counters in one shard.
#[derive(Default)]
struct CmdCounter {
    successes: AtomicU64,
    failures: AtomicU64,
    time_us: AtomicU64,
    bytes: AtomicU64,
}

/// One command's counters summed over the shards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CmdTotals {
    pub successes: u64,
    pub failures: u64,
    pub time_us: u64,
    pub bytes: u64,
}

/// One thread's set of per-command counters, starting on a cache line of its own (128 bytes:
/// adjacent-line prefetch pairs lines).
#[repr(align(128))]
struct CmdShard([CmdCounter; CMD_SLOTS]);

impl Default for CmdShard {
    fn default() -> Self {
        CmdShard(std::array::from_fn(|_| CmdCounter::default()))
    }
}

/// The shard the calling thread writes to, chosen at its first request.
fn my_shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Relaxed) % CMD_SHARDS;
    }
    SHARD.with(|s| *s)
}

/// Node-wide counters.
pub struct Stats {
    cmds: Box<[CmdShard]>,
    pub connections_open: AtomicU64,
    pub connections_total: AtomicU64,
    pub frames_rejected: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Requests sent on to their owner (and misses retried on the previous owner).
    pub forwarded: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            cmds: (0..CMD_SHARDS).map(|_| CmdShard::default()).collect(),
            connections_open: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            frames_rejected: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
        }
    }
}

impl Stats {
    pub fn slot(cmd: i32) -> usize {
        if cmd > 0 && (cmd as usize) < CMD_SLOTS {
            cmd as usize
        } else {
            apsis_proto::cmd::UNKNOWN as usize
        }
    }

    pub fn record(&self, cmd: i32, ok: bool, time_us: u64, bytes: u64) {
        let c = &self.cmds[my_shard()].0[Self::slot(cmd)];
        if ok {
            c.successes.fetch_add(1, Relaxed);
        } else {
            c.failures.fetch_add(1, Relaxed);
        }
        c.time_us.fetch_add(time_us, Relaxed);
        c.bytes.fetch_add(bytes, Relaxed);
    }

    /// Command slot `i`'s counters (see [`Stats::slot`]), summed over the threads' shards.
    pub fn command(&self, i: usize) -> CmdTotals {
        let mut t = CmdTotals::default();
        for shard in self.cmds.iter() {
            let c = &shard.0[i];
            t.successes += c.successes.load(Relaxed);
            t.failures += c.failures.load(Relaxed);
            t.time_us += c.time_us.load(Relaxed);
            t.bytes += c.bytes.load(Relaxed);
        }
        t
    }

    /// Every command slot's totals, by slot.
    pub fn commands(&self) -> impl Iterator<Item = (usize, CmdTotals)> + '_ {
        (0..CMD_SLOTS).map(|i| (i, self.command(i)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts from several threads (more than there are shards) add up, per command.
    #[test]
    fn commands_sum_every_threads_counts() {
        let stats = std::sync::Arc::new(Stats::default());
        let threads: Vec<_> = (0..CMD_SHARDS + 3)
            .map(|_| {
                let s = stats.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        s.record(apsis_proto::cmd::READ, true, 2, 10);
                    }
                    s.record(apsis_proto::cmd::READ, false, 1, 0);
                    s.record(-5, true, 0, 0);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let n = (CMD_SHARDS + 3) as u64;
        let read = stats.command(apsis_proto::cmd::READ as usize);
        assert_eq!(
            read,
            CmdTotals {
                successes: 100 * n,
                failures: n,
                time_us: 201 * n,
                bytes: 1000 * n,
            }
        );
        let unknown = stats.command(Stats::slot(-5));
        assert_eq!(unknown.successes, n);
        let counted: u64 = stats
            .commands()
            .map(|(_, t)| t.successes + t.failures)
            .sum();
        assert_eq!(counted, 102 * n);
    }
}
