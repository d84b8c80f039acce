//! Operation histories and their checker.
//!
//! Workers record every operation: its key, what it did, when it was invoked and completed,
//! and its outcome. Values written are unique per key (the helpers in [`crate::History`]'s
//! callers embed the key and a sequence number), so a read's value names the write it came
//! from. [`History::check`] then verifies, per key:
//!
//! - **no wrong data**: every value read was written to that key by a write invoked before
//!   the read completed (nothing corrupt, nothing from another key, nothing invented);
//! - **no lost write**: a read that promises the newest copy ([`Kind::ReadLatest`], and the
//!   final verification after the faults are healed) returns the last mutation acknowledged
//!   before it was invoked, or one invoked after that (acknowledged or not); it returns
//!   "not found" only when that mutation is a remove.
//!
//! Plain reads ([`Kind::Read`], groups in order with fallback) are only held to the first rule:
//! a group that missed writes while one of its nodes was down serves an older copy until
//! recovery brings it up to date, which is the consistency Elliptics sessions give.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::time::Instant;

/// What an operation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Write(Vec<u8>),
    Remove,
    /// Groups in order, with fallback.
    Read,
    /// The newest copy across groups (also the final verification).
    ReadLatest,
}

/// How it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged (a write or remove under its checker), or a read with this value.
    Ok(Option<Vec<u8>>),
    /// A read that found no object (−ENOENT).
    NotFound,
    /// Failed or timed out: a mutation may or may not have been applied.
    Failed(String),
}

/// One recorded operation.
#[derive(Clone, Debug)]
pub struct Op {
    pub key: Vec<u8>,
    pub kind: Kind,
    pub invoked: Instant,
    pub completed: Instant,
    pub outcome: Outcome,
    /// Free text for diagnosis (which groups acknowledged, which group answered).
    pub note: String,
}

/// A broken promise found by the checker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// A read returned a value no write of that key (invoked before the read completed) wrote.
    WrongData { key: String, value: String },
    /// A newest-copy read returned an older value than the last acknowledged mutation, or
    /// nothing although it was a write.
    Lost {
        key: String,
        expected: String,
        got: String,
        /// The key's operations up to the read, as "+ms..ms kind outcome note".
        trace: Vec<String>,
    },
}

/// Every operation of a test run.
#[derive(Default)]
pub struct History {
    ops: Mutex<Vec<Op>>,
}

fn show(v: &[u8]) -> String {
    String::from_utf8_lossy(&v[..v.len().min(48)]).into_owned()
}

impl History {
    pub fn new() -> History {
        History::default()
    }

    pub fn record(&self, op: Op) {
        self.ops.lock().push(op);
    }

    /// Records `kind` on `key`, invoked at `invoked` and completed now.
    pub fn push(&self, key: &[u8], kind: Kind, invoked: Instant, outcome: Outcome) {
        self.push_noted(key, kind, invoked, outcome, String::new());
    }

    /// [`History::push`] with a diagnostic note.
    pub fn push_noted(
        &self,
        key: &[u8],
        kind: Kind,
        invoked: Instant,
        outcome: Outcome,
        note: String,
    ) {
        self.record(Op {
            key: key.to_vec(),
            kind,
            invoked,
            completed: Instant::now(),
            outcome,
            note,
        });
    }

    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().clone()
    }

    /// How many operations of each kind succeeded and failed:
    /// (writes ok, writes failed, reads ok, reads failed or not found).
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let ops = self.ops.lock();
        let mut c = (0, 0, 0, 0);
        for o in ops.iter() {
            let ok = matches!(o.outcome, Outcome::Ok(_));
            match (&o.kind, ok) {
                (Kind::Write(_) | Kind::Remove, true) => c.0 += 1,
                (Kind::Write(_) | Kind::Remove, false) => c.1 += 1,
                (_, true) => c.2 += 1,
                (_, false) => c.3 += 1,
            }
        }
        c
    }

    /// Writes and removes in `[from, to)` (by invocation): (acknowledged, total).
    pub fn writes_between(&self, from: Instant, to: Instant) -> (usize, usize) {
        let ops = self.ops.lock();
        let w = ops.iter().filter(|o| {
            matches!(o.kind, Kind::Write(_) | Kind::Remove) && o.invoked >= from && o.invoked < to
        });
        w.fold((0, 0), |(ok, n), o| {
            (ok + matches!(o.outcome, Outcome::Ok(_)) as usize, n + 1)
        })
    }

    /// Checks the history (see the module doc); empty when every promise was kept.
    pub fn check(&self) -> Vec<Violation> {
        let ops = self.ops.lock();
        let t0 = ops.iter().map(|o| o.invoked).min();
        let line = |o: &Op| {
            let ms = |t: Instant| t0.map(|z| t.duration_since(z).as_millis()).unwrap_or(0);
            let what = match &o.kind {
                Kind::Write(v) => format!("write {}", show(v)),
                k => format!("{k:?}"),
            };
            let how = match &o.outcome {
                Outcome::Ok(Some(v)) => format!("-> {}", show(v)),
                Outcome::Ok(None) => "-> ok".into(),
                Outcome::NotFound => "-> not found".into(),
                Outcome::Failed(e) => format!("-> failed: {e}"),
            };
            format!(
                "+{}..{}ms {what} {how} {}",
                ms(o.invoked),
                ms(o.completed),
                o.note
            )
        };
        let mut by_key: BTreeMap<&[u8], Vec<&Op>> = BTreeMap::new();
        for o in ops.iter() {
            by_key.entry(&o.key).or_default().push(o);
        }
        let mut out = Vec::new();
        for (key, ops) in by_key {
            let key_s = show(key);
            let mutations: Vec<&Op> = ops
                .iter()
                .copied()
                .filter(|o| matches!(o.kind, Kind::Write(_) | Kind::Remove))
                .collect();
            for r in ops
                .iter()
                .filter(|o| matches!(o.kind, Kind::Read | Kind::ReadLatest))
            {
                // Rule 1: the value comes from a write of this key invoked before the read ended.
                let source = match &r.outcome {
                    Outcome::Ok(Some(v)) => {
                        let w = mutations
                            .iter()
                            .find(|m| m.kind == Kind::Write(v.clone()) && m.invoked <= r.completed);
                        if w.is_none() {
                            out.push(Violation::WrongData {
                                key: key_s.clone(),
                                value: show(v),
                            });
                            continue;
                        }
                        w.copied()
                    }
                    Outcome::NotFound => None,
                    _ => continue,
                };
                if r.kind != Kind::ReadLatest {
                    continue;
                }
                // Rule 2: not older than the last mutation acknowledged before the read began.
                let Some(last) = mutations
                    .iter()
                    .filter(|m| matches!(m.outcome, Outcome::Ok(_)) && m.completed < r.invoked)
                    .max_by_key(|m| m.completed)
                else {
                    continue;
                };
                let fresh = match source {
                    Some(w) => w.invoked >= last.invoked,
                    // Not found: fine if the last acknowledged mutation is a remove, or a
                    // remove was invoked after it.
                    None => {
                        last.kind == Kind::Remove
                            || mutations
                                .iter()
                                .any(|m| m.kind == Kind::Remove && m.invoked >= last.invoked)
                    }
                };
                if !fresh {
                    out.push(Violation::Lost {
                        key: key_s.clone(),
                        expected: match &last.kind {
                            Kind::Write(v) => show(v),
                            _ => "<removed>".into(),
                        },
                        got: match source.map(|w| &w.kind) {
                            Some(Kind::Write(v)) => show(v),
                            _ => "<not found>".into(),
                        },
                        trace: {
                            let upto: Vec<String> = ops
                                .iter()
                                .filter(|o| o.invoked <= r.invoked && !matches!(o.kind, Kind::Read))
                                .map(|o| line(o))
                                .collect();
                            upto[upto.len().saturating_sub(8)..].to_vec()
                        },
                    });
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    fn op(key: &str, kind: Kind, t0: Instant, a: u64, b: u64, outcome: Outcome) -> Op {
        Op {
            key: key.into(),
            kind,
            invoked: at(t0, a),
            completed: at(t0, b),
            outcome,
            note: String::new(),
        }
    }

    #[test]
    fn the_checker_finds_wrong_data_and_lost_writes() {
        let t0 = Instant::now();
        let w = |v: &str| Kind::Write(v.into());
        let ok = |v: Option<&str>| Outcome::Ok(v.map(|v| v.as_bytes().to_vec()));
        let h = History::new();
        h.record(op("a", w("a1"), t0, 0, 1, ok(None)));
        h.record(op("a", w("a2"), t0, 2, 3, ok(None)));
        h.record(op(
            "a",
            w("a3"),
            t0,
            4,
            9,
            Outcome::Failed("timeout".into()),
        ));
        // Fine: a plain read may be stale; a latest read may see the unacknowledged a3.
        h.record(op("a", Kind::Read, t0, 5, 6, ok(Some("a1"))));
        h.record(op("a", Kind::ReadLatest, t0, 10, 11, ok(Some("a3"))));
        assert!(h.check().is_empty(), "{:?}", h.check());
        // Lost: a latest read older than the last acknowledged write.
        h.record(op("a", Kind::ReadLatest, t0, 12, 13, ok(Some("a1"))));
        // Wrong data: never written to this key.
        h.record(op("a", Kind::Read, t0, 12, 13, ok(Some("b1"))));
        // Lost: nothing found although the last acknowledged mutation is a write.
        h.record(op("a", Kind::ReadLatest, t0, 14, 15, Outcome::NotFound));
        let v = h.check();
        assert_eq!(v.len(), 3, "{v:?}");
        assert!(
            matches!(&v[0], Violation::Lost { expected, got, .. } if expected == "a2" && got == "a1")
        );
        assert!(matches!(&v[1], Violation::WrongData { value, .. } if value == "b1"));
        assert!(matches!(&v[2], Violation::Lost { got, .. } if got == "<not found>"));
        // A remove makes "not found" right.
        let h = History::new();
        h.record(op("k", w("k1"), t0, 0, 1, ok(None)));
        h.record(op("k", Kind::Remove, t0, 2, 3, ok(None)));
        h.record(op("k", Kind::ReadLatest, t0, 4, 5, Outcome::NotFound));
        assert!(h.check().is_empty());
        assert_eq!(h.counts(), (2, 0, 0, 1));
    }
}
