//! Counters the monitor reports: per command (count, failures, time, bytes) and per backend.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Command numbers 0..CMD_SLOTS are counted; anything else lands in the UNKNOWN slot.
pub const CMD_SLOTS: usize = 29;

#[derive(Default)]
pub struct CmdCounter {
    pub successes: AtomicU64,
    pub failures: AtomicU64,
    pub time_us: AtomicU64,
    pub bytes: AtomicU64,
}

/// Node-wide counters.
pub struct Stats {
    pub cmds: Vec<CmdCounter>,
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
            cmds: (0..CMD_SLOTS).map(|_| CmdCounter::default()).collect(),
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
        let c = &self.cmds[Self::slot(cmd)];
        if ok {
            c.successes.fetch_add(1, Relaxed);
        } else {
            c.failures.fetch_add(1, Relaxed);
        }
        c.time_us.fetch_add(time_us, Relaxed);
        c.bytes.fetch_add(bytes, Relaxed);
    }
}
