//! Per-key serialisation: requests without NOLOCK on the same (id, group) run one at a time.
//!
//! Keys hash onto a fixed number of stripes (bounded memory whatever the key count); two keys
//! on one stripe are serialised too, which costs a little concurrency and never correctness.

use std::sync::Arc;
use tokio::sync::{Mutex, OwnedMutexGuard};

const STRIPES: usize = 4096;

pub struct KeyLocks {
    stripes: Vec<Arc<Mutex<()>>>,
}

impl Default for KeyLocks {
    fn default() -> Self {
        KeyLocks {
            stripes: (0..STRIPES).map(|_| Arc::new(Mutex::new(()))).collect(),
        }
    }
}

impl KeyLocks {
    /// The key's lock; owned, so a mutation can keep it until its group commit.
    pub async fn lock(&self, id: &[u8; 64], group: u32) -> OwnedMutexGuard<()> {
        let h = u64::from_le_bytes(id[8..16].try_into().expect("8 bytes"))
            ^ (group as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let m = &self.stripes[(h % STRIPES as u64) as usize];
        // Nearly always free: try without building a waiter first. The wait is boxed: its
        // future would otherwise be part of (and moved with) every request's.
        match m.clone().try_lock_owned() {
            Ok(g) => g,
            Err(_) => Box::pin(m.clone().lock_owned()).await,
        }
    }
}
