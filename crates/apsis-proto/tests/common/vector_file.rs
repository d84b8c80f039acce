//! The captured-traffic files in `tests/vectors/`: one parser, shared by the codec tests and
//! the server replay (`crates/apsis/tests/vectors_replay.rs`).
//!
//! A file is a series of `[msg N] dir ... conn C ... len=L` blocks with `HDR:` and `kind:`
//! annotations and hexdump lines `  OOOOOO  xx xx ...  |ascii|`.
#![allow(dead_code)]

use apsis_proto::Frame;
use std::collections::HashMap;
use std::path::Path;

/// One dnet message of a vector file.
#[derive(Debug)]
pub struct Msg {
    /// Index in its file (`[msg N]`).
    pub n: usize,
    /// `client->server`, `server->client` or `node->node`.
    pub dir: String,
    /// For `node->node`: `n1->n2` or `n2->n1`.
    pub route: String,
    /// The capture's connection number.
    pub conn: usize,
    /// The `kind:` annotation (request / reply, MORE follows / final ...).
    pub kind: String,
    /// The `HDR:` annotation as `key=value` pairs.
    pub hdr: HashMap<String, String>,
    pub bytes: Vec<u8>,
    pub frame: Frame,
}

impl Msg {
    /// Sent to the server under test: by a client, or by n1 to n2 (vector 14, where the
    /// server under test plays n2).
    pub fn to_server(&self) -> bool {
        self.dir == "client->server" || self.route == "n1->n2"
    }
}

pub struct Vector {
    pub name: String,
    pub text: String,
    pub msgs: Vec<Msg>,
}

struct Raw {
    n: usize,
    dir: String,
    route: String,
    conn: usize,
    len: usize,
    kind: String,
    hdr: HashMap<String, String>,
    bytes: Vec<u8>,
}

pub fn parse(name: &str, text: &str) -> Vector {
    let mut raw: Vec<Raw> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("[msg ") {
            let (n, rest) = rest.split_once(']').expect("[msg N]");
            let toks: Vec<&str> = rest.split_whitespace().collect();
            let dir = toks[0].to_string();
            let route = if dir == "node->node" {
                toks[1].to_string()
            } else {
                String::new()
            };
            let conn = toks
                .iter()
                .position(|t| *t == "conn")
                .map(|i| toks[i + 1].parse().expect("conn number"))
                .expect("conn");
            let len = toks
                .iter()
                .find_map(|t| t.strip_prefix("len="))
                .expect("len=")
                .parse()
                .unwrap();
            raw.push(Raw {
                n: n.parse().unwrap(),
                dir,
                route,
                conn,
                len,
                kind: String::new(),
                hdr: HashMap::new(),
                bytes: Vec::new(),
            });
            continue;
        }
        let Some(m) = raw.last_mut() else { continue };
        if let Some(h) = line.strip_prefix("HDR: ") {
            for t in h.split_whitespace() {
                if let Some((k, v)) = t.split_once('=') {
                    m.hdr.insert(k.to_string(), v.to_string());
                }
            }
        } else if let Some(k) = line.strip_prefix("kind: ") {
            m.kind = k.to_string();
        } else if line.starts_with("  ")
            && line.len() > 8
            && line[2..8].bytes().all(|b| b.is_ascii_hexdigit())
        {
            let off = usize::from_str_radix(&line[2..8], 16).unwrap();
            assert_eq!(off, m.bytes.len(), "{name} msg {}: hexdump offset", m.n);
            let before = m.bytes.len();
            for t in line[8..].split_whitespace().take(16) {
                if t.len() != 2 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
                    break;
                }
                m.bytes.push(u8::from_str_radix(t, 16).unwrap());
            }
            assert!(
                m.bytes.len() > before,
                "{name} msg {}: empty hexdump line",
                m.n
            );
        }
    }
    let msgs = raw
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            assert_eq!(
                (i, r.bytes.len()),
                (r.n, r.len),
                "{name} msg {}: numbering and len=",
                r.n
            );
            let frame =
                Frame::decode(&r.bytes).unwrap_or_else(|e| panic!("{name} msg {}: {e}", r.n));
            Msg {
                n: r.n,
                dir: r.dir,
                route: r.route,
                conn: r.conn,
                kind: r.kind,
                hdr: r.hdr,
                bytes: r.bytes,
                frame,
            }
        })
        .collect();
    Vector {
        name: name.to_string(),
        text: text.to_string(),
        msgs,
    }
}

/// Every vector file in `dir`, sorted by name.
pub fn load_all(dir: &Path) -> Vec<Vector> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".txt") && n != "README.txt")
        .collect();
    names.sort();
    names
        .iter()
        .map(|n| {
            parse(
                n.trim_end_matches(".txt"),
                &std::fs::read_to_string(dir.join(n)).unwrap(),
            )
        })
        .collect()
}

/// The vector whose name starts with `prefix-`.
pub fn find<'a>(all: &'a [Vector], prefix: &str) -> &'a Vector {
    let p = format!("{prefix}-");
    all.iter()
        .find(|v| v.name.starts_with(&p))
        .unwrap_or_else(|| panic!("no vector {prefix}"))
}
