//! Per-key serialisation: requests without NOLOCK on the same (id, group) run one at a time.
//!
//! Keys hash onto a fixed number of stripes (bounded memory whatever the key count); two keys
//! on one stripe are serialised too, which costs a little concurrency and never correctness.

use tokio::sync::{Mutex, MutexGuard};

const STRIPES: usize = 4096;

pub struct KeyLocks {
    stripes: Vec<Mutex<()>>,
}

impl Default for KeyLocks {
    fn default() -> Self {
        KeyLocks {
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }
}

impl KeyLocks {
    pub async fn lock(&self, id: &[u8; 64], group: u32) -> MutexGuard<'_, ()> {
        let h = u64::from_le_bytes(id[8..16].try_into().expect("8 bytes"))
            ^ (group as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.stripes[(h % STRIPES as u64) as usize].lock().await
    }
}
