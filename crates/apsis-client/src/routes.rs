//! The route table: per group, the sorted ring ids of every backend and where it lives.
//!
//! The owner of key K in group G is the entry with the largest id ≤ K, wrapping around to the
//! largest id when none is ≤ K (Elliptics placement).

use apsis_proto::BackendIds;
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// One route: a backend on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub addr: SocketAddr,
    pub backend_id: i32,
}

#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    groups: BTreeMap<u32, Vec<([u8; 64], Route)>>,
}

impl RouteTable {
    /// Replaces everything known about `addr` with its handshake's backends.
    pub fn set_node(&mut self, addr: SocketAddr, backends: &[BackendIds]) {
        for v in self.groups.values_mut() {
            v.retain(|(_, r)| r.addr != addr);
        }
        self.update(addr, backends);
    }

    /// Applies backend updates (UPDATE_IDS): a disabled backend's ids leave the table.
    pub fn update(&mut self, addr: SocketAddr, backends: &[BackendIds]) {
        for b in backends {
            for v in self.groups.values_mut() {
                v.retain(|(_, r)| !(r.addr == addr && r.backend_id == b.backend_id));
            }
            if b.flags & BackendIds::FLAG_DISABLE != 0 {
                continue;
            }
            let v = self.groups.entry(b.group).or_default();
            for id in &b.ids {
                v.push((
                    *id,
                    Route {
                        addr,
                        backend_id: b.backend_id,
                    },
                ));
            }
            v.sort_by_key(|e| e.0);
        }
        self.groups.retain(|_, v| !v.is_empty());
    }

    /// The backend owning `id` in `group`.
    pub fn owner(&self, group: u32, id: &[u8; 64]) -> Option<Route> {
        let v = self.groups.get(&group)?;
        if v.is_empty() {
            return None;
        }
        let i = match v.partition_point(|(p, _)| p <= id) {
            0 => v.len() - 1,
            n => n - 1,
        };
        Some(v[i].1)
    }

    pub fn groups(&self) -> Vec<u32> {
        self.groups.keys().copied().collect()
    }

    /// Every (group, ring id, route), sorted.
    pub fn entries(&self) -> Vec<(u32, [u8; 64], Route)> {
        self.groups
            .iter()
            .flat_map(|(g, v)| v.iter().map(move |(id, r)| (*g, *id, *r)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_is_largest_point_not_above_the_key_wrapping() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let mut t = RouteTable::default();
        t.set_node(
            a,
            &[BackendIds {
                backend_id: 1,
                group: 1,
                flags: 0,
                ids: vec![[0x40; 64]],
            }],
        );
        t.set_node(
            b,
            &[BackendIds {
                backend_id: 2,
                group: 1,
                flags: 0,
                ids: vec![[0x80; 64]],
            }],
        );
        assert_eq!(t.owner(1, &[0x50; 64]).unwrap().addr, a);
        assert_eq!(t.owner(1, &[0x80; 64]).unwrap().addr, b);
        assert_eq!(t.owner(1, &[0xff; 64]).unwrap().addr, b);
        assert_eq!(
            t.owner(1, &[0x00; 64]).unwrap().addr,
            b,
            "wraps to the largest"
        );
        assert!(t.owner(2, &[0; 64]).is_none());
        t.update(
            b,
            &[BackendIds {
                backend_id: 2,
                group: 0,
                flags: BackendIds::FLAG_DISABLE,
                ids: vec![],
            }],
        );
        assert_eq!(t.owner(1, &[0xff; 64]).unwrap().addr, a);
    }
}
