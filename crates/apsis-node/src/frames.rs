//! Memory for large incoming frames: one node-wide budget, and a limit on how long a frame may
//! stall half-received.
//!
//! A frame is read whole into its connection's buffer before it is handled (a WRITE of up to
//! `max_frame_bytes`, 256 MiB by default). Bounding each frame does not bound the node: a
//! thousand clients each sending a 256 MiB write at once would ask for 256 GiB. So a frame
//! larger than a connection's usual buffer ([`apsis_proto::READ_BUF`]) is admitted against
//! [`FrameMemory`] (`frame_memory`, 1 GiB by default) as soon as its header arrives, for its
//! whole declared size, and holds that until it has been handled:
//!
//! - while the budget is short, that connection is not read (TCP back-pressure on the sender)
//!   and the others go on; small requests never wait for it;
//! - a frame admitted is sure to fit, so frames never hold parts of the budget while waiting
//!   for each other (no deadlock);
//! - the budget is at least `max_frame_bytes` plus a header, so every valid frame can be
//!   admitted.
//!
//! A sender that stops in the middle of a frame would hold its part for ever, and its
//! connection; so a frame that started arriving must keep arriving: 64 KiB of it (or the rest
//! of it) within every `frame_timeout_secs` (60 by default, so about 1 KiB/s; 0 = no limit),
//! or the connection is closed (counted as `frames_stalled`). A byte now and then does not
//! keep a frame alive. Time spent waiting for the budget does not count: that wait is the
//! node's, not the sender's.
//!
//! Requests a peer sends on a connection the node opened take the same budget
//! (`conn::peer_requests`, through the client library's `Serve::admit`).
//!
//! Elliptics has neither (it allocates each frame as its header arrives); the budget is what
//! Cassandra's `native_transport_max_request_data_in_flight` and Kafka's
//! `queued.max.request.bytes` do, the timeout nginx's `client_body_timeout`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The budget's unit: permits are KiB, so that a frame's count fits the semaphore's `u32`.
const UNIT: u64 = 1 << 10;

/// The node-wide budget for large frames being received and handled.
pub struct FrameMemory {
    sem: Arc<Semaphore>,
    units: u64,
    /// Times a connection had to wait for the budget.
    pub waits: AtomicU64,
    /// Connections closed because their frame stopped arriving.
    pub stalled: AtomicU64,
}

impl FrameMemory {
    /// A budget of `bytes` (rounded down to KiB; [`crate::NodeConfig::validate`] keeps it
    /// at least one frame and within 1 TiB).
    pub fn new(bytes: u64) -> FrameMemory {
        let units = (bytes / UNIT).max(1);
        FrameMemory {
            sem: Arc::new(Semaphore::new(units as usize)),
            units,
            waits: AtomicU64::new(0),
            stalled: AtomicU64::new(0),
        }
    }

    /// What a frame of `total` bytes (header included) costs, in units; `None` for one that
    /// fits a connection's usual buffer and so is not counted.
    pub fn cost(&self, total: usize) -> Option<u32> {
        if total <= apsis_proto::READ_BUF {
            return None;
        }
        // Never more than the whole budget: such a frame waits for all of it.
        let units = (total as u64).div_ceil(UNIT).min(self.units);
        Some(units.try_into().unwrap_or(u32::MAX))
    }

    /// Admits a frame of `units` now, if the budget has room.
    pub fn try_admit(&self, units: u32) -> Option<OwnedSemaphorePermit> {
        self.sem.clone().try_acquire_many_owned(units).ok()
    }

    /// Admits a frame of `units`, waiting until the budget has room (a wait is counted in
    /// [`FrameMemory::waits`]).
    pub async fn admit(&self, units: u32) -> OwnedSemaphorePermit {
        if let Some(p) = self.try_admit(units) {
            return p;
        }
        self.waits.fetch_add(1, Relaxed);
        self.sem
            .clone()
            .acquire_many_owned(units)
            .await
            .expect("the budget's semaphore is never closed")
    }

    /// Admits a frame of `total` bytes (header included), waiting for room; `None` for one
    /// small enough not to be counted ([`FrameMemory::cost`]).
    pub async fn admit_frame(&self, total: usize) -> Option<OwnedSemaphorePermit> {
        Some(self.admit(self.cost(total)?).await)
    }

    /// Bytes of the budget held now.
    pub fn in_use(&self) -> u64 {
        (self.units - self.sem.available_permits() as u64) * UNIT
    }

    /// The budget in bytes.
    pub fn limit(&self) -> u64 {
        self.units * UNIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_frames_are_free_and_large_ones_cost_their_size() {
        let m = FrameMemory::new(4 << 20);
        assert_eq!(m.cost(100), None);
        assert_eq!(m.cost(apsis_proto::READ_BUF), None);
        assert_eq!(m.cost(apsis_proto::READ_BUF + 1), Some(65));
        assert_eq!(m.cost(1 << 20), Some(1024));
        // Larger than the budget: all of it, not a count that could never be granted.
        assert_eq!(m.cost(64 << 20), Some(4096));
        let a = m.try_admit(3000).unwrap();
        assert_eq!(m.in_use(), 3000 << 10);
        assert!(m.try_admit(1200).is_none());
        drop(a);
        assert_eq!(m.in_use(), 0);
        assert_eq!(m.limit(), 4 << 20);
    }

    #[tokio::test]
    async fn a_waiting_frame_is_admitted_when_room_is_freed() {
        let m = Arc::new(FrameMemory::new(2 << 20));
        let a = m.try_admit(1500).unwrap();
        let m2 = m.clone();
        let waiter = tokio::spawn(async move { m2.admit(1000).await });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        drop(a);
        let b = waiter.await.unwrap();
        assert_eq!(m.in_use(), 1000 << 10);
        assert_eq!(m.waits.load(Relaxed), 1);
        drop(b);
    }
}
