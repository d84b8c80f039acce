//! Sessions: request settings plus one function per operation.
//!
//! Writes and removes go to every group of the session in parallel and the [`Checker`]
//! decides success from the per-group results (a failure reports every group's error).
//! Reads and lookups try the groups in order — or shuffled, with `mix_groups` — and fall back
//! on error; `read_latest`, `parallel_lookup` and `quorum_lookup` ask every group at once.
//!
//! Read-repair: after a successful whole-object read, the groups that answered missing
//! (−ENOENT), corrupt (−EILSEQ) or −EBADFD — and, for `read_latest`, those holding an older
//! copy — are rewritten in the background with the good copy, its timestamp and user flags,
//! under CAS_TIMESTAMP, so a repair never replaces a newer copy or undoes a newer delete.

use crate::error::{ClientError, Result};
use crate::routes::Route;
use crate::Client;
use apsis_proto::{
    action, backend_command, cflags, cmd, errno, iflags, ioflags, itype, BackendControl,
    BackendStatus, BackendStatusList, BulkRead, Frame, Header, IdRange, IoAttr, IteratorRequest,
    IteratorResponse, LookupReply, MonitorStatRequest, NodeStatus, Time,
};
use sha2::{Digest, Sha512};
use std::io::Read;
use std::net::SocketAddr;
use std::time::Duration;

/// How many per-group successes make a write or remove succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checker {
    AtLeastOne,
    Quorum,
    All,
}

impl Checker {
    pub fn name(self) -> &'static str {
        match self {
            Checker::AtLeastOne => "at_least_one",
            Checker::Quorum => "quorum",
            Checker::All => "all",
        }
    }

    pub fn passes(self, ok: usize, total: usize) -> bool {
        match self {
            Checker::AtLeastOne => ok >= 1,
            Checker::Quorum => ok > total / 2,
            Checker::All => ok == total && total > 0,
        }
    }
}

impl std::str::FromStr for Checker {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "at_least_one" | "one" => Ok(Checker::AtLeastOne),
            "quorum" => Ok(Checker::Quorum),
            "all" => Ok(Checker::All),
            _ => Err(format!("checker {s:?}: at_least_one, quorum or all")),
        }
    }
}

/// One group's outcome.
#[derive(Clone, Debug)]
pub struct GroupResult<T> {
    pub group: u32,
    pub result: Result<T>,
}

/// A write's outcome in every group (the checker already passed).
#[derive(Clone, Debug)]
pub struct WriteResult {
    pub groups: Vec<GroupResult<Option<LookupReply>>>,
}

/// A read's answer.
#[derive(Clone, Debug)]
pub struct ReadResult {
    pub group: u32,
    /// The reply io_attr: size, total_size, timestamp, user_flags, record_flags, checksum in
    /// `parent` when asked.
    pub io: IoAttr,
    /// A view of the received reply (no copy); `to_vec()` for an owned vector.
    pub data: bytes::Bytes,
}

/// One record from an iterator.
#[derive(Clone, Debug)]
pub struct IterItem {
    pub resp: IteratorResponse,
    pub data: Vec<u8>,
}

/// What to iterate.
#[derive(Clone, Debug, Default)]
pub struct IterOptions {
    pub ranges: Vec<IdRange>,
    pub time: Option<(Time, Time)>,
    pub data: bool,
    /// A SERVER_SEND iterator: the node copies every record it walks to these groups (as
    /// [`Session::server_send`] does) and reports each copy's status; empty = a plain one.
    pub send_to: Vec<u32>,
    /// With `send_to`: `iflags::MOVE` and / or `iflags::OVERWRITE`.
    pub send_flags: u64,
}

/// What READ_RANGE / DEL_RANGE cover inside their id range (see [`Session::read_range`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct RangeOptions {
    /// Keys of the range (in id order) passed over first.
    pub skip: u64,
    /// Most keys read or removed; 0 = all.
    pub limit: u64,
    /// Each object is read from `offset`, `size` bytes (0 = to its end).
    pub offset: u64,
    pub size: u64,
    /// READ_RANGE counts the keys without reading them.
    pub nodata: bool,
}

/// The answer to a range command.
#[derive(Clone, Debug, Default)]
pub struct RangeReply {
    /// The objects read, in id order (empty for DEL_RANGE and NODATA).
    pub items: Vec<ReadResult>,
    /// Keys read, counted or removed.
    pub count: u64,
    /// Keys the node could not read (a damaged record), with the status.
    pub errors: Vec<([u8; 64], i32)>,
}

/// Request settings and the operations.
#[derive(Clone)]
pub struct Session {
    client: Client,
    pub groups: Vec<u32>,
    pub cflags: u64,
    pub ioflags: u32,
    pub namespace: Vec<u8>,
    pub user_flags: u64,
    /// Record timestamp for writes; `None` = now.
    pub timestamp: Option<Time>,
    pub timeout: Duration,
    pub checker: Checker,
    /// Objects larger than this are written in PREPARE / PLAIN_WRITE / COMMIT chunks.
    pub chunk_size: usize,
    pub trace_id: u64,
    /// Reads and lookups try the groups in a random order (spreads load) instead of in order.
    pub mix_groups: bool,
    /// Rewrite missing, corrupt or stale copies found by reads (in the background).
    pub read_repair: bool,
}

fn status_err(f: &Frame) -> Result<()> {
    if f.header.status < 0 {
        Err(ClientError::Status {
            status: f.header.status,
        })
    } else {
        Ok(())
    }
}

impl Session {
    pub fn new(client: Client, groups: Vec<u32>) -> Session {
        Session {
            client,
            groups,
            cflags: 0,
            ioflags: 0,
            namespace: Vec::new(),
            user_flags: 0,
            timestamp: None,
            timeout: Duration::from_secs(5),
            checker: Checker::AtLeastOne,
            chunk_size: 8 << 20,
            trace_id: 0,
            mix_groups: false,
            read_repair: true,
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The id of a key name: sha512(name), or sha512(namespace ‖ 0 ‖ name).
    pub fn id(&self, key: &[u8]) -> [u8; 64] {
        let mut h = Sha512::new();
        if !self.namespace.is_empty() {
            h.update(&self.namespace);
            h.update([0u8]);
        }
        h.update(key);
        h.finalize().into()
    }

    fn route(&self, group: u32, id: &[u8; 64]) -> Result<Route> {
        self.client
            .with_routes(|t| t.owner(group, id))
            .ok_or(ClientError::NoRoute { group })
    }

    /// The groups in the order reads try them (a copy only when they are shuffled).
    fn read_groups(&self) -> std::borrow::Cow<'_, [u32]> {
        if self.mix_groups && self.groups.len() > 1 {
            let mut g = self.groups.clone();
            fastrand::shuffle(&mut g);
            g.into()
        } else {
            self.groups.as_slice().into()
        }
    }

    /// Sends one request and collects its replies; a negative final status is an error.
    ///
    /// The header is borrowed down to the socket, and the functions on a request's way are
    /// plain functions returning their callee's future where they can: every `async fn`
    /// level keeps its own copy of its arguments, and a read's future (moved once as a
    /// whole when it is made) was 2.2 KB before, its copy 5 % of a client's time.
    pub fn transact<'a>(
        &'a self,
        addr: SocketAddr,
        h: &'a Header,
        payload: &'a [u8],
    ) -> impl std::future::Future<Output = Result<Vec<Frame>>> + Send + 'a {
        self.transact_parts(addr, h, [payload])
    }

    /// [`Session::transact`] with the payload in parts (an io_attr, then the data).
    async fn transact_parts<const N: usize>(
        &self,
        addr: SocketAddr,
        h: &Header,
        parts: [&[u8]; N],
    ) -> Result<Vec<Frame>> {
        let frames = self
            .client
            .request_parts(addr, h, &parts, self.timeout)
            .await?;
        if let Some(last) = frames.last() {
            status_err(last)?;
        }
        Ok(frames)
    }

    /// A request's header with the session's trace id.
    fn plain_header(&self, c: i32, flags: u64) -> Header {
        let mut h = Header::new(c, flags);
        h.trace_id = self.trace_id;
        h
    }

    /// A data request's header as this session sends it (NEED_ACK, the session's cflags and
    /// trace id) for `backend` in `group`; the connection fills in `trans` and `size`. Public
    /// for callers that speak the protocol themselves (`apsis bench --client plain`).
    pub fn header(&self, c: i32, group: u32, id: [u8; 64], backend: i32) -> Header {
        let mut h = self.plain_header(c, cflags::NEED_ACK | self.cflags);
        h.group = group;
        h.id = id;
        h.backend_id = backend;
        h
    }

    fn now(&self) -> Time {
        self.timestamp.unwrap_or_else(Time::now)
    }

    /// Writes one io_attr + data to one group; the reply's file info when there is one.
    async fn write_group(
        &self,
        group: u32,
        io: &IoAttr,
        data: &[u8],
    ) -> Result<Option<LookupReply>> {
        let r = self.route(group, &io.id)?;
        let h = self.header(cmd::WRITE, group, io.id, r.backend_id);
        let p = io.encode();
        let frames = self.transact_parts(r.addr, &h, [&p, data]).await?;
        match frames.iter().find(|f| !f.payload.is_empty()) {
            Some(f) => Ok(Some(
                LookupReply::decode(&f.payload)
                    .map_err(|e| ClientError::Protocol(e.to_string()))?,
            )),
            None => Ok(None),
        }
    }

    /// Sends the same write to every group in parallel and applies the checker.
    async fn write_all_groups(&self, io: &IoAttr, data: &[u8]) -> Result<WriteResult> {
        if self.groups.is_empty() {
            return Err(ClientError::NoRoute { group: 0 });
        }
        if let [group] = self.groups[..] {
            // One group (the common case): awaited in place. Through `join_all` the request's
            // future would be built in a vector and moved out of it again.
            let result = self.write_group(group, io, data).await;
            return self
                .check(vec![GroupResult { group, result }])
                .map(|groups| WriteResult { groups });
        }
        let futs = self.groups.iter().map(|&g| async move {
            GroupResult {
                group: g,
                result: self.write_group(g, io, data).await,
            }
        });
        let groups = join_all(futs).await;
        self.check(groups).map(|groups| WriteResult { groups })
    }

    fn check<T>(&self, groups: Vec<GroupResult<T>>) -> Result<Vec<GroupResult<T>>> {
        let ok = groups.iter().filter(|g| g.result.is_ok()).count();
        let total = groups.len();
        if self.checker.passes(ok, total) {
            return Ok(groups);
        }
        let mut errs: Vec<(u32, ClientError)> = groups
            .into_iter()
            .filter_map(|g| g.result.err().map(|e| (g.group, e)))
            .collect();
        if total == 1 {
            // One group: its own error says it all.
            return Err(errs.pop().map(|(_, e)| e).unwrap_or(ClientError::Status {
                status: -errno::EIO,
            }));
        }
        Err(ClientError::Checker {
            checker: self.checker.name(),
            ok,
            total,
            groups: errs,
        })
    }

    /// A write's io_attr as this session sends it: the record's timestamp (the session's, or
    /// now), its user flags, `flags` with its ioflags, and `size` bytes at `offset`.
    pub fn io(&self, id: [u8; 64], flags: u32, offset: u64, size: u64) -> IoAttr {
        IoAttr {
            id,
            timestamp: self.now(),
            user_flags: self.user_flags,
            flags: flags | self.ioflags,
            offset,
            size,
            ..IoAttr::default()
        }
    }

    /// Writes (replaces) an object; larger than `chunk_size` goes in PREPARE/PLAIN/COMMIT chunks.
    pub fn write<'a>(
        &'a self,
        key: &[u8],
        data: &'a [u8],
    ) -> impl std::future::Future<Output = Result<WriteResult>> + Send + 'a {
        self.write_id(self.id(key), data)
    }

    pub async fn write_id(&self, id: [u8; 64], data: &[u8]) -> Result<WriteResult> {
        if data.len() <= self.chunk_size {
            let io = self.io(id, 0, 0, data.len() as u64);
            return self.write_all_groups(&io, data).await;
        }
        // Boxed: a chunked write's state would otherwise be part of every write's future.
        Box::pin(self.write_chunked(id, data, |_| {})).await
    }

    /// A chunked write, calling `progress(bytes_done)` after each chunk.
    pub async fn write_chunked(
        &self,
        id: [u8; 64],
        data: &[u8],
        mut progress: impl FnMut(u64),
    ) -> Result<WriteResult> {
        let total = data.len() as u64;
        let ts = self.now();
        let chunks: Vec<&[u8]> = data.chunks(self.chunk_size.max(1)).collect();
        let n = chunks.len();
        let mut result = None;
        let mut off = 0u64;
        for (i, c) in chunks.into_iter().enumerate() {
            let mut io = self.io(id, 0, off, c.len() as u64);
            io.timestamp = ts;
            if i == 0 {
                io.flags |= ioflags::PREPARE | ioflags::PLAIN_WRITE;
                io.num = total;
            } else if i + 1 == n {
                io.flags |= ioflags::COMMIT | ioflags::PLAIN_WRITE;
                io.num = total;
            } else {
                io.flags |= ioflags::PLAIN_WRITE;
                io.num = off + c.len() as u64;
            }
            if n == 1 {
                io.flags = (io.flags & !ioflags::PLAIN_WRITE) | ioflags::PREPARE | ioflags::COMMIT;
            }
            result = Some(self.write_all_groups(&io, c).await?);
            off += c.len() as u64;
            progress(off);
        }
        result.ok_or_else(|| ClientError::Invalid("empty chunked write".into()))
    }

    /// PREPARE: reserve `psize` bytes and write `data` at `remote_offset`; invisible until commit.
    pub async fn write_prepare(
        &self,
        key: &[u8],
        data: &[u8],
        remote_offset: u64,
        psize: u64,
    ) -> Result<WriteResult> {
        let mut io = self.io(
            self.id(key),
            ioflags::PREPARE | ioflags::PLAIN_WRITE,
            remote_offset,
            data.len() as u64,
        );
        io.num = psize;
        self.write_all_groups(&io, data).await
    }

    /// PLAIN_WRITE: fill the reservation at `remote_offset`.
    pub async fn write_plain(
        &self,
        key: &[u8],
        data: &[u8],
        remote_offset: u64,
    ) -> Result<WriteResult> {
        let mut io = self.io(
            self.id(key),
            ioflags::PLAIN_WRITE,
            remote_offset,
            data.len() as u64,
        );
        io.num = remote_offset + data.len() as u64;
        self.write_all_groups(&io, data).await
    }

    /// COMMIT: write `data` at `remote_offset` and publish the object with `csize` bytes.
    pub async fn write_commit(
        &self,
        key: &[u8],
        data: &[u8],
        remote_offset: u64,
        csize: u64,
    ) -> Result<WriteResult> {
        let mut io = self.io(
            self.id(key),
            ioflags::COMMIT | ioflags::PLAIN_WRITE,
            remote_offset,
            data.len() as u64,
        );
        io.num = csize;
        self.write_all_groups(&io, data).await
    }

    /// Compare-and-swap: replace only if sha512 of the stored data is `old_checksum` (a missing
    /// key always passes); a mismatch is −EBADFD.
    pub async fn write_cas(
        &self,
        key: &[u8],
        data: &[u8],
        old_checksum: [u8; 64],
    ) -> Result<WriteResult> {
        let mut io = self.io(
            self.id(key),
            ioflags::COMPARE_AND_SWAP,
            0,
            data.len() as u64,
        );
        io.parent = old_checksum;
        io.num = data.len() as u64;
        self.write_all_groups(&io, data).await
    }

    /// Elliptics `write_cache`: the object goes to the backends' caches (CACHE) and expires
    /// after `ttl` (zero: never). Add CACHE_ONLY (never written to disk) or
    /// CACHE_REMOVE_FROM_DISK (expiry removes it from disk too) through the session's ioflags.
    /// On a backend without a cache it is an ordinary write.
    pub async fn write_cache(&self, key: &[u8], data: &[u8], ttl: Duration) -> Result<WriteResult> {
        let mut io = self.io(self.id(key), ioflags::CACHE, 0, data.len() as u64);
        io.start = ttl.as_secs();
        self.write_all_groups(&io, data).await
    }

    /// A write with explicit ioflags and offset (APPEND, offset writes, NOCSUM, CAS_TIMESTAMP…).
    pub async fn write_with(
        &self,
        key: &[u8],
        data: &[u8],
        flags: u32,
        offset: u64,
    ) -> Result<WriteResult> {
        let io = self.io(self.id(key), flags, offset, data.len() as u64);
        self.write_all_groups(&io, data).await
    }

    /// Writes many objects concurrently, at most [`BULK_IN_FLIGHT`] at a time; one result per
    /// item, in order.
    pub async fn bulk_write(&self, items: &[(Vec<u8>, Vec<u8>)]) -> Vec<Result<WriteResult>> {
        in_flight(items.iter().map(|(k, v)| self.write(k, v))).await
    }

    /// Reads from one backend. `pinned` sends DIRECT | DIRECT_BACKEND, so that backend itself
    /// answers: `read_latest` reads the very copy whose lookup won, even if a node's or this
    /// client's route table changed in between.
    /// A read's io_attr as this session sends it: `size` bytes (0: to the end) from `offset`,
    /// with the session's ioflags and no timestamp.
    pub fn read_io(&self, id: [u8; 64], offset: u64, size: u64) -> IoAttr {
        IoAttr {
            parent: id,
            id,
            flags: self.ioflags,
            offset,
            size,
            timestamp: Time::default(),
            ..IoAttr::default()
        }
    }

    fn read_at(
        &self,
        group: u32,
        r: Route,
        pinned: bool,
        id: [u8; 64],
        offset: u64,
        size: u64,
    ) -> impl std::future::Future<Output = Result<ReadResult>> + Send + '_ {
        let mut h = self.header(cmd::READ, group, id, r.backend_id);
        if pinned {
            h.flags |= cflags::DIRECT | cflags::DIRECT_BACKEND;
        }
        let p = self.read_io(id, offset, size).encode();
        // The request is made here; only what the reply needs goes into the future.
        async move {
            let frames = self.transact(r.addr, &h, &p).await?;
            let payload = frames
                .into_iter()
                .find(|f| f.payload.len() >= IoAttr::SIZE)
                .ok_or_else(|| ClientError::Protocol("read reply without io_attr".into()))?
                .payload;
            let (io, data) =
                IoAttr::split(&payload).map_err(|e| ClientError::Protocol(e.to_string()))?;
            if io.size != data.len() as u64 {
                return Err(ClientError::Protocol(format!(
                    "read reply: size {} with {} bytes",
                    io.size,
                    data.len()
                )));
            }
            Ok(ReadResult {
                group,
                io,
                // The payload after the io_attr, where the connection received it.
                data: payload.slice(IoAttr::SIZE..),
            })
        }
    }

    /// Reads `size` bytes (0 = to the end) from `offset`, trying the groups in order.
    pub fn read(
        &self,
        key: &[u8],
        offset: u64,
        size: u64,
    ) -> impl std::future::Future<Output = Result<ReadResult>> + Send + '_ {
        // Not an `async fn`: the id is computed here and `read_id`'s future returned as it
        // is, one state machine less to build and move per read.
        self.read_id(self.id(key), offset, size)
    }

    pub async fn read_id(&self, id: [u8; 64], offset: u64, size: u64) -> Result<ReadResult> {
        let mut last = ClientError::NoRoute { group: 0 };
        let mut damaged = Vec::new();
        for &g in self.read_groups().iter() {
            let read = match self.route(g, &id) {
                Ok(r) => self.read_at(g, r, false, id, offset, size).await,
                Err(e) => Err(e),
            };
            match read {
                Ok(r) => {
                    if offset == 0 && size == 0 {
                        self.repair(id, &r, damaged);
                    }
                    return Ok(r);
                }
                Err(e) => {
                    if repairable(&e) {
                        damaged.push(g);
                    }
                    last = e
                }
            }
        }
        Err(last)
    }

    /// Rewrites `good` (a whole object) into `groups` in the background, under CAS_TIMESTAMP.
    fn repair(&self, id: [u8; 64], good: &ReadResult, groups: Vec<u32>) {
        if !self.read_repair || groups.is_empty() || good.io.total_size != good.data.len() as u64 {
            return;
        }
        let mut s = self.clone();
        s.groups = groups;
        s.checker = Checker::AtLeastOne;
        s.ioflags = 0;
        s.cflags = 0;
        let io = IoAttr {
            id,
            timestamp: good.io.timestamp,
            user_flags: good.io.user_flags,
            flags: ioflags::CAS_TIMESTAMP,
            size: good.data.len() as u64,
            ..IoAttr::default()
        };
        let data = good.data.clone();
        let from = good.group;
        tokio::spawn(async move {
            let r = s.write_all_groups(&io, &data).await;
            tracing::debug!(from, to = ?s.groups, ok = r.is_ok(), "read-repair");
        });
    }

    /// Reads the newest copy: looks the key up in every group and reads from the one with the
    /// latest timestamp (then the largest size).
    pub async fn read_latest(&self, key: &[u8]) -> Result<ReadResult> {
        let id = self.id(key);
        let looks = join_all(
            self.groups
                .iter()
                .map(|&g| async move { (g, self.lookup_route(g, id).await) }),
        )
        .await;
        let mut best: Option<(u32, Route, LookupReply)> = None;
        let mut last = ClientError::NoRoute { group: 0 };
        for (g, r) in &looks {
            match r {
                Ok((route, l)) => {
                    let better = best.as_ref().is_none_or(|(_, _, b)| {
                        (l.info.mtime, l.info.size) > (b.info.mtime, b.info.size)
                    });
                    if better {
                        best = Some((*g, *route, l.clone()));
                    }
                }
                Err(e) => last = e.clone(),
            }
        }
        let Some((g, route, b)) = best else {
            return Err(last);
        };
        let r = self.read_at(g, route, true, id, 0, 0).await?;
        // Groups without the key, with a corrupt or an older copy.
        let stale: Vec<u32> = looks
            .iter()
            .filter(|(og, res)| {
                *og != g
                    && match res {
                        Ok((_, l)) => (l.info.mtime, l.info.size) < (b.info.mtime, b.info.size),
                        Err(e) => repairable(e),
                    }
            })
            .map(|(og, _)| *og)
            .collect();
        self.repair(id, &r, stale);
        Ok(r)
    }

    /// LOOKUP in every group at once; one result per group, in session order.
    pub async fn parallel_lookup(&self, key: &[u8]) -> Vec<GroupResult<LookupReply>> {
        let id = self.id(key);
        join_all(self.groups.iter().map(|&g| async move {
            GroupResult {
                group: g,
                result: self.lookup_group(g, id).await,
            }
        }))
        .await
    }

    /// LOOKUP in every group at once, answering with the copy (timestamp, size and checksum)
    /// that more than half of the session's groups hold; with no such majority, the first
    /// group error (or −ENOENT when the groups disagree).
    pub async fn quorum_lookup(&self, key: &[u8]) -> Result<Vec<GroupResult<LookupReply>>> {
        let all = self.parallel_lookup(key).await;
        let total = all.len();
        // (timestamp, size, checksum) of a copy, and how many groups hold it.
        type Copy = (Time, u64, [u8; 64]);
        let mut votes: Vec<(Copy, usize)> = Vec::new();
        for g in &all {
            if let Ok(l) = &g.result {
                let k = (l.info.mtime, l.info.size, l.info.checksum);
                match votes.iter_mut().find(|(v, _)| *v == k) {
                    Some((_, n)) => *n += 1,
                    None => votes.push((k, 1)),
                }
            }
        }
        let winner = votes.iter().find(|(_, n)| *n > total / 2).map(|(k, _)| *k);
        match winner {
            Some(k) => Ok(all
                .into_iter()
                .filter(|g| {
                    g.result
                        .as_ref()
                        .is_ok_and(|l| (l.info.mtime, l.info.size, l.info.checksum) == k)
                })
                .collect()),
            None => {
                Err(all
                    .into_iter()
                    .find_map(|g| g.result.err())
                    .unwrap_or(ClientError::Status {
                        status: -errno::ENOENT,
                    }))
            }
        }
    }

    async fn lookup_group(&self, group: u32, id: [u8; 64]) -> Result<LookupReply> {
        self.lookup_route(group, id).await.map(|(_, l)| l)
    }

    /// LOOKUP in one group, with the backend that answered: the reply names its node and
    /// carries its backend id, also when the request was forwarded or fell back to the
    /// previous owner.
    async fn lookup_route(&self, group: u32, id: [u8; 64]) -> Result<(Route, LookupReply)> {
        let r = self.route(group, &id)?;
        let h = self.header(cmd::LOOKUP, group, id, 0);
        let frames = self.transact(r.addr, &h, &[]).await?;
        let f = frames
            .iter()
            .find(|f| !f.payload.is_empty())
            .ok_or_else(|| ClientError::Protocol("empty lookup reply".into()))?;
        let l =
            LookupReply::decode(&f.payload).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let served = if l.addr.0.port() != 0 && f.header.backend_id >= 0 {
            Route {
                addr: l.addr.0,
                backend_id: f.header.backend_id,
            }
        } else {
            r
        };
        Ok((served, l))
    }

    /// File info of a key from the first group that has it.
    pub async fn lookup(&self, key: &[u8]) -> Result<(u32, LookupReply)> {
        let id = self.id(key);
        let mut last = ClientError::NoRoute { group: 0 };
        for &g in self.read_groups().iter() {
            match self.lookup_group(g, id).await {
                Ok(l) => return Ok((g, l)),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Removes a key from every group; the checker decides success.
    pub async fn remove(&self, key: &[u8]) -> Result<Vec<GroupResult<()>>> {
        let id = self.id(key);
        if self.groups.is_empty() {
            return Err(ClientError::NoRoute { group: 0 });
        }
        let groups = join_all(self.groups.iter().map(|&g| async move {
            let result = async {
                let r = self.route(g, &id)?;
                let h = self.header(cmd::DEL, g, id, r.backend_id);
                let io = IoAttr {
                    parent: id,
                    id,
                    flags: self.ioflags,
                    timestamp: self.now(),
                    ..IoAttr::default()
                };
                let p = io.encode();
                self.transact(r.addr, &h, &p).await.map(|_| ())
            }
            .await;
            GroupResult { group: g, result }
        }))
        .await;
        self.check(groups)
    }

    /// Removes many keys concurrently, at most [`BULK_IN_FLIGHT`] at a time (Elliptics'
    /// `bulk_remove`); one result per key, in order, as [`Session::remove`] gives it.
    pub async fn bulk_remove(&self, keys: &[Vec<u8>]) -> Vec<Result<Vec<GroupResult<()>>>> {
        in_flight(keys.iter().map(|k| self.remove(k))).await
    }

    /// Reads many keys: per group, one BULK_READ per owning backend; keys missing in a group
    /// are retried in the next. Results are in the order of `keys`.
    pub async fn bulk_read(&self, keys: &[Vec<u8>]) -> Vec<Result<ReadResult>> {
        let ids: Vec<[u8; 64]> = keys.iter().map(|k| self.id(k)).collect();
        let mut out: Vec<Result<ReadResult>> = ids
            .iter()
            .map(|_| Err(ClientError::NoRoute { group: 0 }))
            .collect();
        for &g in &self.groups {
            let todo: Vec<usize> = (0..ids.len()).filter(|&i| out[i].is_err()).collect();
            if todo.is_empty() {
                break;
            }
            // Group the keys by owner, sorted by id as Elliptics does.
            let mut by_owner: std::collections::BTreeMap<(SocketAddr, i32), Vec<usize>> =
                Default::default();
            for i in todo {
                match self.route(g, &ids[i]) {
                    Ok(r) => by_owner.entry((r.addr, r.backend_id)).or_default().push(i),
                    Err(e) => out[i] = Err(e),
                }
            }
            for ((addr, backend), mut idx) in by_owner {
                idx.sort_by(|a, b| ids[*a].cmp(&ids[*b]));
                let req = BulkRead {
                    keys: idx
                        .iter()
                        .map(|&i| IoAttr {
                            id: ids[i],
                            flags: self.ioflags,
                            timestamp: Time::EMPTY,
                            ..IoAttr::default()
                        })
                        .collect(),
                };
                let h = self.header(cmd::BULK_READ, g, ids[idx[0]], backend);
                match self.transact(addr, &h, &req.encode()).await {
                    Ok(frames) => {
                        let per_key = frames.iter().filter(|f| f.header.cmd == cmd::READ);
                        for (&i, f) in idx.iter().zip(per_key) {
                            out[i] = if f.header.status < 0 {
                                Err(ClientError::Status {
                                    status: f.header.status,
                                })
                            } else {
                                match IoAttr::split(&f.payload) {
                                    Ok((io, data)) => Ok(ReadResult {
                                        group: g,
                                        io,
                                        data: f.payload.slice_ref(data),
                                    }),
                                    Err(e) => Err(ClientError::Protocol(e.to_string())),
                                }
                            };
                        }
                    }
                    Err(e) => {
                        for &i in &idx {
                            out[i] = Err(e.clone());
                        }
                    }
                }
            }
        }
        out
    }

    /// READ_RANGE: the objects of `group` whose ids lie in `begin ..= end`, in id order. The
    /// range is split at the route table's boundaries and each backend is asked in turn, the
    /// skip and limit carried from one to the next.
    pub async fn read_range(
        &self,
        group: u32,
        begin: [u8; 64],
        end: [u8; 64],
        opts: RangeOptions,
    ) -> Result<RangeReply> {
        self.range_command(cmd::READ_RANGE, group, begin, end, opts)
            .await
    }

    /// DEL_RANGE: removes the objects of `group` whose ids lie in `begin ..= end` (after
    /// `opts.skip`, at most `opts.limit`); returns how many were removed.
    pub async fn remove_range(
        &self,
        group: u32,
        begin: [u8; 64],
        end: [u8; 64],
        opts: RangeOptions,
    ) -> Result<u64> {
        self.range_command(cmd::DEL_RANGE, group, begin, end, opts)
            .await
            .map(|r| r.count)
    }

    async fn range_command(
        &self,
        c: i32,
        group: u32,
        begin: [u8; 64],
        end: [u8; 64],
        opts: RangeOptions,
    ) -> Result<RangeReply> {
        if begin > end {
            return Err(ClientError::Status {
                status: -errno::ERANGE,
            });
        }
        // One request per stretch of the range a backend owns: adjacent pieces of one backend
        // (a single backend's wrapped range) go together, as Elliptics sends them.
        let mut parts: Vec<(IdRange, Route)> = Vec::new();
        for (r, route) in self.client.with_routes(|t| t.ranges(group)) {
            let (lo, hi) = (r.begin.max(begin), r.end.min(end));
            if lo > hi {
                continue;
            }
            match parts.last_mut() {
                Some((prev, pr)) if *pr == route && apsis_ring::next_id(&prev.end) == Some(lo) => {
                    prev.end = hi
                }
                _ => parts.push((IdRange { begin: lo, end: hi }, route)),
            }
        }
        if parts.is_empty() {
            return Err(ClientError::NoRoute { group });
        }
        let mut out = RangeReply::default();
        let mut skip = opts.skip;
        for (r, route) in parts {
            let left = match opts.limit {
                0 => 0,
                l if out.count >= l => break,
                l => l - out.count,
            };
            let io = IoAttr {
                id: r.begin,
                parent: r.end,
                start: skip,
                num: left,
                offset: opts.offset,
                size: opts.size,
                flags: self.ioflags | if opts.nodata { ioflags::NODATA } else { 0 },
                timestamp: Time::EMPTY,
                ..IoAttr::default()
            };
            let p = io.encode();
            let h = self.header(c, group, r.begin, route.backend_id);
            let frames = self.transact(route.addr, &h, &p).await?;
            // Per-key READ replies, then the summary (the last READ reply), then the ack.
            let mut reads: Vec<&Frame> = frames
                .iter()
                .filter(|f| f.header.cmd == cmd::READ)
                .collect();
            let summary = reads
                .pop()
                .ok_or_else(|| ClientError::Protocol("range reply without a summary".into()))?;
            let (sum, _) = IoAttr::split(&summary.payload)
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            out.count += sum.num;
            skip = sum.start;
            for f in reads {
                if f.header.status < 0 {
                    out.errors.push((f.header.id, f.header.status));
                    continue;
                }
                let (io, data) =
                    IoAttr::split(&f.payload).map_err(|e| ClientError::Protocol(e.to_string()))?;
                out.items.push(ReadResult {
                    group,
                    io,
                    data: f.payload.slice_ref(data),
                });
            }
        }
        Ok(out)
    }

    /// SEND (server_send): the nodes holding `keys` in the session's first group copy them to
    /// `groups` themselves (`flags`: `iflags::MOVE` removes the source copies,
    /// `iflags::OVERWRITE` replaces newer copies at the targets). One request per owning
    /// backend; one response per key, whose `status` says how its copy went.
    pub async fn server_send(
        &self,
        keys: &[Vec<u8>],
        groups: &[u32],
        flags: u64,
    ) -> Result<Vec<IteratorResponse>> {
        let ids: Vec<[u8; 64]> = keys.iter().map(|k| self.id(k)).collect();
        self.server_send_ids(&ids, groups, flags).await
    }

    pub async fn server_send_ids(
        &self,
        ids: &[[u8; 64]],
        groups: &[u32],
        flags: u64,
    ) -> Result<Vec<IteratorResponse>> {
        let g = *self
            .groups
            .first()
            .ok_or(ClientError::NoRoute { group: 0 })?;
        let mut by_owner: std::collections::BTreeMap<(SocketAddr, i32), Vec<[u8; 64]>> =
            Default::default();
        for id in ids {
            let r = self.route(g, id)?;
            by_owner
                .entry((r.addr, r.backend_id))
                .or_default()
                .push(*id);
        }
        let mut out = Vec::with_capacity(ids.len());
        for ((addr, _), batch) in by_owner {
            let req = apsis_proto::ServerSend {
                ids: batch,
                groups: groups.to_vec(),
                timeout_secs: self.timeout.as_secs().clamp(1, u32::MAX as u64) as u32,
                flags,
            };
            let mut h = self.plain_header(cmd::SEND, cflags::NEED_ACK | cflags::NOLOCK);
            h.group = g;
            h.id = req.ids[0];
            // The node copies the keys one after another: give it time for all of them.
            let frames = self
                .client
                .request(
                    addr,
                    &h,
                    &req.encode(),
                    self.timeout * req.ids.len().max(1) as u32,
                )
                .await?;
            if let Some(last) = frames.last() {
                status_err(last)?;
            }
            for f in frames
                .iter()
                .filter(|f| f.payload.len() >= IteratorResponse::SIZE)
            {
                let mut r = apsis_proto::wire::Reader::new(&f.payload, "send response");
                out.push(
                    IteratorResponse::decode(&mut r)
                        .map_err(|e| ClientError::Protocol(e.to_string()))?,
                );
            }
        }
        Ok(out)
    }

    /// Starts an iterator on the backend that owns `route_id` in `group`; records arrive on
    /// the returned stream (ended by `None`; an error ends it early).
    pub async fn iterator(
        &self,
        group: u32,
        route_id: [u8; 64],
        opts: IterOptions,
    ) -> Result<IterStream> {
        let r = self.route(group, &route_id)?;
        let mut flags = 0;
        if opts.data {
            flags |= iflags::DATA;
        }
        if !opts.ranges.is_empty() {
            flags |= iflags::KEY_RANGE;
        }
        let (tb, te) = match opts.time {
            Some((a, b)) => {
                flags |= iflags::TS_RANGE;
                (a, b)
            }
            None => (Time::default(), Time::default()),
        };
        let send = !opts.send_to.is_empty();
        if send {
            flags |= opts.send_flags & (iflags::MOVE | iflags::OVERWRITE);
        }
        let req = IteratorRequest {
            id: 0,
            action: action::START,
            time_begin: tb,
            time_end: te,
            itype: if send {
                itype::SERVER_SEND
            } else {
                itype::NETWORK
            },
            flags,
            timeout_secs: self.timeout.as_secs() as u32,
            ranges: opts.ranges,
            groups: opts.send_to,
        };
        let conn = self.client.conn(r.addr).await?;
        let mut h = self.plain_header(cmd::ITERATOR, cflags::NEED_ACK | cflags::NOLOCK);
        h.group = group;
        h.id = route_id;
        h.trans = conn.next_trans();
        let rx = conn.send(&h, &req.encode(), None).await?;
        Ok(IterStream {
            rx,
            timeout: self.timeout,
            done: false,
            addr: r.addr,
        })
    }

    /// Starts a recovery job (merge or dc) on the node at `addr`, on one backend or all of
    /// them, and returns its progress stream. Dropping the stream closes nothing by itself;
    /// the job stops when the connection goes away and can be resumed.
    pub async fn recovery_job(
        &self,
        addr: SocketAddr,
        backend: Option<u32>,
        req: &apsis_proto::recovery::JobRequest,
    ) -> Result<JobStream> {
        let conn = self.client.conn(addr).await?;
        let mut h = self.plain_header(apsis_proto::recovery::cmd::JOB, cflags::NEED_ACK);
        h.backend_id = backend.map_or(-1, |b| b as i32);
        h.trans = conn.next_trans();
        let rx = conn.send(&h, &req.encode(), None).await?;
        Ok(JobStream {
            rx,
            done: false,
            addr,
        })
    }

    /// PAUSE / CONTINUE / CANCEL a running iterator on `addr`.
    pub async fn iterator_control(
        &self,
        addr: SocketAddr,
        group: u32,
        route_id: [u8; 64],
        id: u64,
        act: u32,
    ) -> Result<i32> {
        let req = IteratorRequest {
            id,
            action: act,
            time_begin: Time::default(),
            time_end: Time::default(),
            itype: itype::NETWORK,
            flags: 0,
            timeout_secs: 0,
            ranges: vec![],
            groups: vec![],
        };
        let mut h = self.plain_header(cmd::ITERATOR, cflags::NEED_ACK | cflags::NOLOCK);
        h.group = group;
        h.id = route_id;
        let frames = self.transact(addr, &h, &req.encode()).await?;
        Ok(frames.last().map(|f| f.header.status).unwrap_or(0))
    }

    async fn system(
        &self,
        addr: SocketAddr,
        c: i32,
        flags: u64,
        payload: &[u8],
    ) -> Result<Vec<Frame>> {
        let h = self.plain_header(c, flags);
        self.transact(addr, &h, payload).await
    }

    /// MONITOR_STAT: the node's statistics JSON for `categories`.
    pub async fn monitor_stat(
        &self,
        addr: SocketAddr,
        categories: u64,
    ) -> Result<serde_json::Value> {
        let p = MonitorStatRequest { categories }.encode();
        let frames = self
            .system(
                addr,
                cmd::MONITOR_STAT,
                cflags::NEED_ACK | cflags::DIRECT | cflags::NOLOCK,
                &p,
            )
            .await?;
        let f = frames
            .iter()
            .find(|f| !f.payload.is_empty())
            .ok_or_else(|| ClientError::Protocol("empty monitor reply".into()))?;
        let mut s = String::new();
        flate2::read::ZlibDecoder::new(&f.payload[..])
            .take(256 << 20)
            .read_to_string(&mut s)
            .map_err(|e| ClientError::Protocol(format!("monitor reply: {e}")))?;
        serde_json::from_str(&s).map_err(|e| ClientError::Protocol(format!("monitor json: {e}")))
    }

    /// BACKEND_STATUS of one node.
    pub async fn backend_status(&self, addr: SocketAddr) -> Result<Vec<BackendStatus>> {
        let frames = self
            .system(
                addr,
                cmd::BACKEND_STATUS,
                cflags::NEED_ACK | cflags::DIRECT,
                &[],
            )
            .await?;
        let f = frames
            .iter()
            .find(|f| !f.payload.is_empty())
            .ok_or_else(|| ClientError::Protocol("empty backend status".into()))?;
        Ok(BackendStatusList::decode(&f.payload)
            .map_err(|e| ClientError::Protocol(e.to_string()))?
            .backends)
    }

    /// BACKEND_CONTROL: enable, disable, defrag, read-only, writeable, set ids.
    pub async fn backend_control(
        &self,
        addr: SocketAddr,
        backend_id: u32,
        command: u32,
        ids: Vec<[u8; 64]>,
    ) -> Result<BackendStatus> {
        self.backend_control_with(addr, backend_id, command, ids, 0)
            .await
    }

    /// BACKEND_CONTROL CTL: every command the backend serves waits `delay_ms` first (for
    /// tests, or to slow a backend down on purpose).
    pub async fn backend_delay(
        &self,
        addr: SocketAddr,
        backend_id: u32,
        delay_ms: u32,
    ) -> Result<BackendStatus> {
        self.backend_control_with(addr, backend_id, backend_command::CTL, vec![], delay_ms)
            .await
    }

    async fn backend_control_with(
        &self,
        addr: SocketAddr,
        backend_id: u32,
        command: u32,
        ids: Vec<[u8; 64]>,
        delay_ms: u32,
    ) -> Result<BackendStatus> {
        let p = BackendControl {
            backend_id,
            command,
            defrag_level: 0,
            delay_ms,
            ids,
        }
        .encode();
        let mut h = self.plain_header(cmd::BACKEND_CONTROL, cflags::NEED_ACK | cflags::DIRECT);
        h.id[..4].copy_from_slice(&backend_id.to_le_bytes());
        let frames = self.transact(addr, &h, &p).await?;
        let f = frames
            .iter()
            .find(|f| !f.payload.is_empty())
            .ok_or_else(|| ClientError::Protocol("empty backend control reply".into()))?;
        BackendStatusList::decode(&f.payload)
            .map_err(|e| ClientError::Protocol(e.to_string()))?
            .backends
            .into_iter()
            .next()
            .ok_or_else(|| ClientError::Protocol("backend control reply without status".into()))
    }

    /// STATUS: set (and read back) node flags, the read-only switch and the log level.
    pub async fn node_status(&self, addr: SocketAddr, set: NodeStatus) -> Result<NodeStatus> {
        let frames = self
            .system(
                addr,
                cmd::STATUS,
                cflags::NEED_ACK | cflags::DIRECT,
                &set.encode(),
            )
            .await?;
        let f = frames
            .iter()
            .find(|f| !f.payload.is_empty())
            .ok_or_else(|| ClientError::Protocol("empty status reply".into()))?;
        NodeStatus::decode(&f.payload).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Names of BACKEND_CONTROL commands for the CLI.
    pub fn backend_command(name: &str) -> Option<u32> {
        Some(match name {
            "enable" => backend_command::ENABLE,
            "disable" => backend_command::DISABLE,
            "defrag" => backend_command::START_DEFRAG,
            "stop-defrag" => backend_command::STOP_DEFRAG,
            "read-only" | "ro" => backend_command::READ_ONLY,
            "writable" | "writeable" | "rw" => backend_command::WRITEABLE,
            "set-ids" => backend_command::SET_IDS,
            _ => return None,
        })
    }
}

/// The records of a running iterator.
/// The progress reports of a recovery job running on a node (see [`Session::recovery_job`]).
pub struct JobStream {
    rx: crate::conn::Replies,
    done: bool,
    pub addr: SocketAddr,
}

impl JobStream {
    /// The next progress report (a JSON object); `None` when the job finished. A job may
    /// go quiet for a long time (a large digest), so there is no per-report timeout.
    pub async fn next(&mut self) -> Option<Result<serde_json::Value>> {
        if self.done {
            return None;
        }
        loop {
            let Some(f) = self.rx.recv().await else {
                self.done = true;
                return Some(Err(ClientError::Connection {
                    addr: self.addr.to_string(),
                    msg: "closed during the recovery job".into(),
                }));
            };
            if !f.header.has_more() {
                self.done = true;
                return status_err(&f).err().map(Err);
            }
            if f.payload.is_empty() {
                continue;
            }
            return Some(
                serde_json::from_slice(&f.payload)
                    .map_err(|e| ClientError::Protocol(format!("recovery progress: {e}"))),
            );
        }
    }
}

pub struct IterStream {
    rx: crate::conn::Replies,
    timeout: Duration,
    done: bool,
    pub addr: SocketAddr,
}

impl IterStream {
    /// The next record; `None` at the end. Each record must arrive within the timeout.
    pub async fn next(&mut self) -> Option<Result<IterItem>> {
        if self.done {
            return None;
        }
        loop {
            let f = match tokio::time::timeout(self.timeout, self.rx.recv()).await {
                Ok(Some(f)) => f,
                Ok(None) => {
                    self.done = true;
                    return Some(Err(ClientError::Connection {
                        addr: self.addr.to_string(),
                        msg: "closed during iteration".into(),
                    }));
                }
                Err(_) => {
                    self.done = true;
                    return Some(Err(ClientError::Timeout));
                }
            };
            if !f.header.has_more() {
                self.done = true;
                return match status_err(&f) {
                    Ok(()) => None,
                    Err(e) => Some(Err(e)),
                };
            }
            if f.payload.len() < IteratorResponse::SIZE {
                continue;
            }
            let mut r = apsis_proto::wire::Reader::new(&f.payload, "iterator response");
            return Some(match IteratorResponse::decode(&mut r) {
                Ok(resp) if resp.status == 1 => continue,
                Ok(resp) => Ok(IterItem {
                    resp,
                    data: r.rest().to_vec(),
                }),
                Err(e) => Err(ClientError::Protocol(e.to_string())),
            });
        }
    }
}

/// Whether a group's read error is one read-repair fixes: the copy is missing, corrupt, or
/// failed its checks.
fn repairable(e: &ClientError) -> bool {
    matches!(
        e.errno(),
        x if x == -errno::ENOENT || x == -errno::EILSEQ || x == -errno::EBADFD
    ) && matches!(e, ClientError::Status { .. })
}

/// Requests a bulk operation keeps in flight: enough to fill the connections, few enough that
/// a million-key bulk neither queues past the node's per-connection bound (1024) nor waits out
/// its timeouts in the queue.
pub const BULK_IN_FLIGHT: usize = 256;

/// Runs `futs` with at most [`BULK_IN_FLIGHT`] of them at once; outputs in order.
async fn in_flight<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    use futures_util::StreamExt;
    futures_util::stream::iter(futs)
        .buffered(BULK_IN_FLIGHT)
        .collect()
        .await
}

/// Runs futures concurrently and returns their outputs in order. Every wake-up polls every
/// future that has not finished: for the few of one request's groups, not for bulks (see
/// `in_flight`).
pub async fn join_all<F: std::future::Future>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut futs: Vec<F> = futs.into_iter().collect();
    if futs.len() == 1 {
        // One future (a session with one group): awaited as it is, without the boxes and
        // bookkeeping below.
        let only = futs.pop().expect("one future");
        return vec![only.await];
    }
    let n = futs.len();
    let mut outs: Vec<Option<F::Output>> = (0..n).map(|_| None).collect();
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in pinned.iter_mut().enumerate() {
            if outs[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => outs[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outs.into_iter()
        .map(|o| o.expect("every future completed"))
        .collect()
}
