//! Ring placement for Apsis: per-group route tables and owner lookup. Pure data, no I/O.
//!
//! Every backend owns random 64-byte ring points (its `ids` file). In each group the owner of
//! id K is the backend with the largest point ≤ K, wrapping around to the largest point when
//! none is ≤ K (Elliptics placement). Clients and nodes keep one [`RouteTable`] each: clients
//! to send a request straight to its owner, nodes to forward what they do not own.
//!
//! # Layout
//! - [`owner_index`]: the placement rule on a sorted point list.
//! - [`Route`]: one backend on one node.
//! - [`RouteTable`]: group → sorted (point, route); built from handshakes
//!   ([`RouteTable::set_node`]), changed by UPDATE_IDS ([`RouteTable::update`]) and by failure
//!   detection ([`RouteTable::remove_node`]); answers [`RouteTable::owner`] and
//!   [`RouteTable::previous_owner`] (who owned an id before a backend's points arrived).
//! - Ranges, for recovery: [`RouteTable::ranges`] (the inclusive id ranges each backend of a
//!   group owns, covering the whole id space), [`intersect`] and [`next_id`].

use apsis_proto::{BackendIds, IdRange};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// One route: a backend on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Route {
    pub addr: SocketAddr,
    pub backend_id: i32,
}

/// Per group, every ring point and the backend that owns it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteTable {
    groups: BTreeMap<u32, Vec<([u8; 64], Route)>>,
}

/// The placement rule itself: the index of the owner of `id` in a non-empty list of ring
/// points sorted by point (the largest point ≤ id, wrapping to the last). Shared by
/// [`RouteTable`] and a node's table of its own backends.
pub fn owner_index<T>(v: &[([u8; 64], T)], id: &[u8; 64]) -> usize {
    match v.partition_point(|(p, _)| p <= id) {
        0 => v.len() - 1,
        n => n - 1,
    }
}

impl RouteTable {
    /// Replaces everything known about `addr` with its handshake's backends.
    pub fn set_node(&mut self, addr: SocketAddr, backends: &[BackendIds]) {
        self.remove_node(addr);
        self.update(addr, backends);
    }

    /// Forgets a node (it failed or left): its ranges pass to the ring neighbours.
    pub fn remove_node(&mut self, addr: SocketAddr) {
        for v in self.groups.values_mut() {
            v.retain(|(_, r)| r.addr != addr);
        }
        self.groups.retain(|_, v| !v.is_empty());
    }

    /// Applies backend updates (UPDATE_IDS): a backend's points are replaced; a disabled
    /// backend's points leave the table.
    pub fn update(&mut self, addr: SocketAddr, backends: &[BackendIds]) {
        for b in backends {
            for v in self.groups.values_mut() {
                v.retain(|(_, r)| !(r.addr == addr && r.backend_id == b.backend_id));
            }
            if b.flags & BackendIds::FLAG_DISABLE != 0 {
                continue;
            }
            let v = self.groups.entry(b.group).or_default();
            let route = Route {
                addr,
                backend_id: b.backend_id,
            };
            v.extend(b.ids.iter().map(|id| (*id, route)));
            v.sort_by_key(|e| e.0);
        }
        self.groups.retain(|_, v| !v.is_empty());
    }

    /// The backend owning `id` in `group`.
    pub fn owner(&self, group: u32, id: &[u8; 64]) -> Option<Route> {
        let v = self.groups.get(&group).filter(|v| !v.is_empty())?;
        Some(v[owner_index(v, id)].1)
    }

    /// The backend that owned `id` in `group` before `owner`'s points were added: the owner in
    /// the table without `owner`. `None` when there is no other backend in the group. A read
    /// that misses on a backend new to the ring falls back here until recovery moved the key.
    pub fn previous_owner(&self, group: u32, id: &[u8; 64], owner: Route) -> Option<Route> {
        let v = self.groups.get(&group)?;
        let mut i = owner_index(v, id);
        for _ in 0..v.len() {
            if v[i].1 != owner {
                return Some(v[i].1);
            }
            i = if i == 0 { v.len() - 1 } else { i - 1 };
        }
        None
    }

    /// The groups with at least one backend.
    pub fn groups(&self) -> Vec<u32> {
        self.groups.keys().copied().collect()
    }

    /// Whether any point belongs to `addr`.
    pub fn has_node(&self, addr: SocketAddr) -> bool {
        self.groups
            .values()
            .any(|v| v.iter().any(|(_, r)| r.addr == addr))
    }

    /// The inclusive id ranges each backend of `group` owns, in id order; together they
    /// cover the whole id space exactly once (empty when no backend serves the group). The
    /// last point's range wraps: it is split into its part up to the largest id and the part
    /// from id zero to just below the first point.
    pub fn ranges(&self, group: u32) -> Vec<(IdRange, Route)> {
        let Some(v) = self.groups.get(&group).filter(|v| !v.is_empty()) else {
            return Vec::new();
        };
        let last = v[v.len() - 1].1;
        let mut out = Vec::with_capacity(v.len() + 1);
        if v[0].0 != [0; 64] {
            out.push((range(&[0; 64], &dec(&v[0].0)), last));
        }
        for (i, (p, r)) in v.iter().enumerate() {
            match v.get(i + 1) {
                // Equal points: the last of them owns the id (owner_index), the others nothing.
                Some((next, _)) if next == p => {}
                Some((next, _)) => out.push((range(p, &dec(next)), *r)),
                None => out.push((range(p, &[0xff; 64]), *r)),
            }
        }
        out
    }

    /// Every (group, ring point, route), sorted by group then point.
    pub fn entries(&self) -> Vec<(u32, [u8; 64], Route)> {
        self.groups
            .iter()
            .flat_map(|(g, v)| v.iter().map(move |(id, r)| (*g, *id, *r)))
            .collect()
    }
}

fn range(begin: &[u8; 64], end: &[u8; 64]) -> IdRange {
    IdRange {
        begin: *begin,
        end: *end,
    }
}

/// `id − 1` (for `id > 0`).
fn dec(id: &[u8; 64]) -> [u8; 64] {
    let mut r = *id;
    for b in r.iter_mut().rev() {
        let (v, borrow) = b.overflowing_sub(1);
        *b = v;
        if !borrow {
            break;
        }
    }
    r
}

/// `id + 1`, or `None` after the largest id.
pub fn next_id(id: &[u8; 64]) -> Option<[u8; 64]> {
    let mut r = *id;
    for b in r.iter_mut().rev() {
        let (v, carry) = b.overflowing_add(1);
        *b = v;
        if !carry {
            return Some(r);
        }
    }
    None
}

/// The ids both range lists cover, as sorted, disjoint inclusive ranges. Inputs need not be
/// sorted.
pub fn intersect(a: &[IdRange], b: &[IdRange]) -> Vec<IdRange> {
    let mut out: Vec<IdRange> = Vec::new();
    for x in a {
        for y in b {
            let begin = x.begin.max(y.begin);
            let end = x.end.min(y.end);
            if begin <= end {
                out.push(IdRange { begin, end });
            }
        }
    }
    out.sort_by_key(|r| r.begin);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    fn b(backend_id: i32, group: u32, ids: &[u8]) -> BackendIds {
        BackendIds {
            backend_id,
            group,
            flags: 0,
            ids: ids.iter().map(|&x| [x; 64]).collect(),
        }
    }

    #[test]
    fn ranges_cover_the_id_space_and_agree_with_owner() {
        let (a, c) = (addr(1), addr(2));
        let mut t = RouteTable::default();
        t.set_node(a, &[b(1, 1, &[0x40, 0xc0])]);
        t.set_node(c, &[b(2, 1, &[0x80])]);
        let r = t.ranges(1);
        assert_eq!(r.len(), 4, "wrap part, then one per point");
        assert_eq!(r[0].0.begin, [0; 64]);
        assert_eq!(r[r.len() - 1].0.end, [0xff; 64]);
        for w in r.windows(2) {
            // end + 1 == next begin: contiguous.
            assert_eq!(next_id(&w[0].0.end), Some(w[1].0.begin));
        }
        assert_eq!(next_id(&[0xff; 64]), None);
        for (range, route) in &r {
            for id in [range.begin, range.end] {
                assert_eq!(t.owner(1, &id), Some(*route));
            }
        }
        assert!(t.ranges(9).is_empty());
        // A single point at zero owns everything in one range.
        let mut one = RouteTable::default();
        one.set_node(a, &[b(1, 1, &[0])]);
        assert_eq!(one.ranges(1).len(), 1);
        // Intersection.
        let mine: Vec<IdRange> = r
            .iter()
            .filter(|(_, rt)| rt.addr == a)
            .map(|(x, _)| *x)
            .collect();
        let half = [range(&[0; 64], &[0x7f; 64])];
        let i = intersect(&mine, &half);
        assert_eq!(i.len(), 2);
        assert_eq!(i[1].begin, [0x40; 64]);
        assert_eq!(i[1].end, [0x7f; 64]);
    }

    #[test]
    fn owner_is_largest_point_not_above_the_key_wrapping() {
        let (a, c) = (addr(1), addr(2));
        let mut t = RouteTable::default();
        t.set_node(a, &[b(1, 1, &[0x40])]);
        t.set_node(c, &[b(2, 1, &[0x80])]);
        assert_eq!(t.owner(1, &[0x50; 64]).unwrap().addr, a);
        assert_eq!(t.owner(1, &[0x80; 64]).unwrap().addr, c);
        assert_eq!(t.owner(1, &[0xff; 64]).unwrap().addr, c);
        assert_eq!(t.owner(1, &[0x00; 64]).unwrap().addr, c, "wraps");
        assert!(t.owner(2, &[0; 64]).is_none());
        t.update(
            c,
            &[BackendIds {
                flags: BackendIds::FLAG_DISABLE,
                ..b(2, 0, &[])
            }],
        );
        assert_eq!(t.owner(1, &[0xff; 64]).unwrap().addr, a);
    }

    #[test]
    fn a_removed_node_passes_its_ranges_to_the_neighbour() {
        let mut t = RouteTable::default();
        t.set_node(addr(1), &[b(1, 1, &[0x10, 0x90]), b(2, 2, &[0x10])]);
        t.set_node(addr(2), &[b(1, 1, &[0x50])]);
        assert_eq!(t.owner(1, &[0x60; 64]).unwrap().addr, addr(2));
        t.remove_node(addr(2));
        assert_eq!(t.owner(1, &[0x60; 64]).unwrap().addr, addr(1));
        assert!(!t.has_node(addr(2)));
        t.remove_node(addr(1));
        assert!(t.groups().is_empty());
    }

    #[test]
    fn previous_owner_is_the_owner_without_the_new_backend() {
        let mut t = RouteTable::default();
        t.set_node(addr(1), &[b(1, 1, &[0x10, 0x90])]);
        let before = t.clone();
        t.set_node(addr(2), &[b(7, 1, &[0x50, 0x60])]);
        for k in 0..=255u8 {
            let id = [k; 64];
            let now = t.owner(1, &id).unwrap();
            let prev = t.previous_owner(1, &id, now);
            if now.addr == addr(2) {
                assert_eq!(prev, before.owner(1, &id), "key {k:#x}");
            } else {
                assert_eq!(prev.unwrap().addr, addr(2), "the only other backend");
            }
        }
        let mut solo = RouteTable::default();
        solo.set_node(addr(1), &[b(1, 1, &[0x10, 0x90])]);
        let o = solo.owner(1, &[0x20; 64]).unwrap();
        assert_eq!(solo.previous_owner(1, &[0x20; 64], o), None);
    }
}
