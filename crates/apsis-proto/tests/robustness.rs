//! Decoders on hostile input: random bytes, mutated valid messages, truncations and counts that
//! claim far more than the buffer holds. Nothing may panic or allocate by a claimed count, and
//! `check_frame` refuses an oversized frame from its header alone.

#[path = "common/roundtrip.rs"]
mod roundtrip;

use apsis_proto::wire::{Put, Reader};
use apsis_proto::*;
use roundtrip::exercise;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn addr(port: u16) -> Addr {
    Addr(format!("127.0.0.1:{port}").parse().unwrap())
}

/// One valid encoding of every structure.
fn samples() -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    let mut h = Header::new(cmd::WRITE, cflags::NEED_ACK);
    h.id = [7; ID_SIZE];
    h.trans = 42;
    let io = IoAttr {
        id: [7; ID_SIZE],
        size: 5,
        flags: ioflags::APPEND,
        timestamp: Time { sec: 1, nsec: 2 },
        ..IoAttr::default()
    };
    let mut p = Vec::new();
    io.encode_into(&mut p);
    p.extend_from_slice(b"hello");
    v.push(Frame::new(h, p.clone()).encode());
    v.push(p);
    v.push(
        NodeInfo {
            addrs: vec![addr(1025), Addr("[::1]:1026".parse().unwrap())],
            backends: vec![BackendIds {
                backend_id: 1,
                group: 2,
                flags: 0,
                ids: vec![[9; ID_SIZE], [10; ID_SIZE]],
            }],
        }
        .encode(),
    );
    v.push(
        RouteList {
            node_addr_num: 1,
            addrs: vec![addr(1), addr(2)],
        }
        .encode(),
    );
    v.push(
        LookupReply {
            addr: addr(1025),
            info: FileInfo {
                flen: 0,
                checksum: [3; ID_SIZE],
                record_flags: 0x140,
                size: 5,
                offset: 144,
                mtime: Time { sec: 9, nsec: 9 },
            },
            path: b"/data/data-0.0".to_vec(),
        }
        .encode(),
    );
    v.push(
        Auth {
            cookie: b"secret".to_vec(),
            flags: 0,
        }
        .encode(),
    );
    v.push(
        NodeStatus {
            nflags: -1,
            status_flags: -1,
            log_level: u32::MAX,
        }
        .encode(),
    );
    v.push(MonitorStatRequest { categories: 0xf7 }.encode());
    v.push(
        BackendControl {
            backend_id: 1,
            command: backend_command::SET_IDS,
            defrag_level: 0,
            delay_ms: 0,
            ids: vec![[1; ID_SIZE]],
        }
        .encode(),
    );
    v.push(
        BackendStatusList {
            backends: vec![BackendStatus {
                backend_id: 1,
                state: 1,
                read_only: true,
                ..BackendStatus::default()
            }],
        }
        .encode(3),
    );
    v.push(
        IteratorRequest {
            id: 0,
            action: action::START,
            time_begin: Time::default(),
            time_end: Time::EMPTY,
            itype: itype::NETWORK,
            flags: iflags::DATA | iflags::KEY_RANGE,
            timeout_secs: 5,
            ranges: vec![IdRange {
                begin: [0; ID_SIZE],
                end: [0xff; ID_SIZE],
            }],
            groups: vec![1, 2],
        }
        .encode(),
    );
    let mut resp = Vec::new();
    IteratorResponse {
        id: 0,
        key: [5; ID_SIZE],
        status: 0,
        timestamp: Time::default(),
        user_flags: 0,
        size: 3,
        iterated_keys: 1,
        total_keys: 3,
        record_flags: 0x140,
    }
    .encode_into(&mut resp);
    resp.extend_from_slice(b"one");
    v.push(resp);
    v.push(BulkRead { keys: vec![io, io] }.encode());
    let mut ids = Vec::new();
    encode_backends(
        &[BackendIds {
            backend_id: 1,
            group: 0,
            flags: BackendIds::FLAG_DISABLE,
            ids: vec![],
        }],
        &mut ids,
    );
    v.push(ids);
    v
}

#[test]
fn samples_round_trip_and_every_truncation_is_safe() {
    for s in samples() {
        exercise(&s);
        for n in 0..s.len() {
            exercise(&s[..n]);
        }
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..3000 {
        let n = rng.below(700);
        exercise(&rng.bytes(n));
    }
}

#[test]
fn mutated_samples_never_panic() {
    let mut rng = Rng(0xdead_beef_cafe_f00d);
    let samples = samples();
    for _ in 0..6000 {
        let mut s = samples[rng.below(samples.len())].clone();
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(s.len());
            s[i] = match rng.below(4) {
                0 => 0,
                1 => 0xff,
                2 => s[i] ^ (1 << rng.below(8)),
                _ => rng.next() as u8,
            };
        }
        if rng.below(4) == 0 {
            s.truncate(rng.below(s.len() + 1));
        }
        exercise(&s);
    }
}

fn header_with_size(size: u64) -> Vec<u8> {
    let mut h = Header::new(cmd::READ, 0);
    h.size = size;
    h.encode().to_vec()
}

#[test]
fn check_frame_limits() {
    assert_eq!(check_frame(&[], 0).unwrap(), None);
    assert_eq!(check_frame(&[0; HEADER_SIZE - 1], 0).unwrap(), None);
    assert_eq!(
        check_frame(&header_with_size(0), 0).unwrap(),
        Some(HEADER_SIZE)
    );
    // Over the limit: refused from the header alone, before any payload arrived.
    let big = header_with_size(1 << 40);
    assert_eq!(
        check_frame(&big, 1 << 20),
        Err(ProtoError::TooLarge {
            size: 1 << 40,
            max: 1 << 20
        })
    );
    assert!(matches!(
        check_frame(&header_with_size(101), 100),
        Err(ProtoError::TooLarge { .. })
    ));
    let mut whole = header_with_size(100);
    whole.resize(HEADER_SIZE + 100, 0);
    assert_eq!(check_frame(&whole, 100).unwrap(), Some(HEADER_SIZE + 100));
    assert_eq!(check_frame(&whole[..HEADER_SIZE + 99], 100).unwrap(), None);
    // Trailing bytes of the next frame do not matter.
    whole.extend_from_slice(&[1, 2, 3]);
    assert_eq!(check_frame(&whole, 100).unwrap(), Some(HEADER_SIZE + 100));
    // With no real limit, a size near u64::MAX must neither overflow nor wrap to a small total.
    for size in [
        u64::MAX,
        u64::MAX - HEADER_SIZE as u64,
        u64::MAX - HEADER_SIZE as u64 + 1,
    ] {
        let h = header_with_size(size);
        assert_eq!(check_frame(&h, u64::MAX).unwrap(), None, "size {size}");
        assert!(Frame::decode(&h).is_err());
    }
    assert!(Frame::decode(&header_with_size(1)).is_err());
    assert!(Frame::decode(&[0; 10]).is_err());
}

#[test]
fn frames_from_received_bytes_match_copied_ones_and_share_the_buffer() {
    let mut h = Header::new(cmd::READ, cflags::NEED_ACK);
    h.trans = 7;
    let whole = Frame::new(h, vec![5u8; 300]).encode();
    let received = bytes::Bytes::from(whole.clone());
    let shared = Frame::from_bytes(received.clone()).unwrap();
    assert_eq!(shared, Frame::decode(&whole).unwrap());
    // The payload is a view of the received buffer, not a copy of it.
    assert_eq!(shared.payload.as_ptr(), received[HEADER_SIZE..].as_ptr());
    // Short, long and header-only buffers are refused as by `decode`.
    for n in [0, 10, HEADER_SIZE, whole.len() - 1] {
        assert!(Frame::from_bytes(received.slice(..n)).is_err(), "{n} bytes");
    }
    let mut longer = whole.clone();
    longer.push(0);
    assert!(Frame::from_bytes(longer.into()).is_err());
}

#[test]
fn read_buffer_returns_to_its_start_once_no_frame_holds_it() {
    let mut buf = bytes::BytesMut::with_capacity(READ_BUF);
    let start = buf.as_ptr();
    // Past the distance after which the buffer tries to go back.
    let frame = Frame::new(Header::new(cmd::READ, 0), vec![1u8; 10_000]).encode();
    buf.extend_from_slice(&frame);
    buf.extend_from_slice(&frame[..50]);
    let held = Frame::from_bytes(buf.split_to(frame.len()).freeze()).unwrap();
    // A frame still points into the buffer: it stays where it is (room enough).
    make_read_room(&mut buf);
    assert_eq!(buf.as_ptr() as usize, start as usize + frame.len());
    drop(held);
    // Now nothing does: the unread 50 bytes move to the start, and all 64 KiB are spare.
    make_read_room(&mut buf);
    assert_eq!(buf.as_ptr(), start);
    assert_eq!(&buf[..], &frame[..50]);
    assert_eq!(buf.capacity(), READ_BUF);
    // Empty and at the start: nothing to do.
    buf.clear();
    make_read_room(&mut buf);
    assert_eq!(buf.as_ptr(), start);
    // Held and nearly full: it grows (to a new allocation) instead of waiting.
    buf.extend_from_slice(&vec![0u8; READ_BUF - 100]);
    let held = buf.split_to(10).freeze();
    make_read_room(&mut buf);
    assert!(buf.capacity() - buf.len() >= READ_ROOM);
    drop(held);
}

#[test]
fn a_buffer_grown_for_a_large_frame_is_given_up_after_it() {
    let big = Frame::new(Header::new(cmd::WRITE, 0), vec![7u8; 4 << 20]).encode();
    let small = Frame::new(Header::new(cmd::READ, 0), vec![1u8; 100]).encode();
    let mut buf = bytes::BytesMut::with_capacity(READ_BUF);
    // The large frame's header has come: the room reserved for it is kept while it arrives.
    buf.extend_from_slice(&big[..HEADER_SIZE + 10]);
    buf.reserve(big.len() - buf.len());
    make_read_room(&mut buf);
    assert!(buf.capacity() >= big.len());
    buf.extend_from_slice(&big[HEADER_SIZE + 10..]);
    buf.extend_from_slice(&small[..50]);
    let held = Frame::from_bytes(buf.split_to(big.len()).freeze()).unwrap();
    // Still held: the buffer grows into an allocation of its own, not into the frame's.
    make_read_room(&mut buf);
    assert!(buf.capacity() <= 4 * READ_BUF);
    assert_eq!(&buf[..], &small[..50]);
    assert_eq!(held.payload.len(), 4 << 20);
    // Not held any more: the allocation it grew for is given up for one of the usual size.
    let mut buf = bytes::BytesMut::with_capacity(big.len() + 10);
    buf.extend_from_slice(&big);
    buf.extend_from_slice(&small[..50]);
    drop(buf.split_to(big.len()));
    make_read_room(&mut buf);
    assert_eq!(buf.capacity(), READ_BUF);
    assert_eq!(&buf[..], &small[..50]);
    // Another large frame arriving right behind one is not cut short either.
    let mut buf = bytes::BytesMut::with_capacity(big.len() + big.len());
    buf.extend_from_slice(&big);
    buf.extend_from_slice(&big[..HEADER_SIZE]);
    drop(buf.split_to(big.len()));
    make_read_room(&mut buf);
    assert!(buf.capacity() > 4 * READ_BUF, "kept for the frame arriving");
}

#[test]
fn huge_counts_are_refused_without_allocating() {
    // Address container claiming i32::MAX addresses.
    let mut p = Vec::new();
    p.put_i32(i32::MAX);
    p.put_i32(i32::MAX);
    assert!(NodeInfo::decode(&p).is_err());
    assert!(RouteList::decode(&p).is_err());
    // Negative counts.
    let mut p = Vec::new();
    p.put_i32(-1);
    p.put_i32(-1);
    assert!(NodeInfo::decode(&p).is_err());
    assert!(RouteList::decode(&p).is_err());
    // node_addr_num 0 in a route list.
    let mut p = Vec::new();
    p.put_i32(0);
    p.put_i32(0);
    assert!(RouteList::decode(&p).is_err());
    // Id container: many backends, or one backend with u32::MAX ids.
    let mut p = Vec::new();
    p.put_i32(i32::MAX);
    assert!(decode_backends(&mut Reader::new(&p, "t")).is_err());
    let mut p = Vec::new();
    p.put_i32(1);
    p.put_i32(1);
    p.put_u32(1);
    p.put_u32(0);
    p.put_u32(u32::MAX);
    assert!(decode_backends(&mut Reader::new(&p, "t")).is_err());
    // ids_count larger than what follows, by one id.
    let mut p = Vec::new();
    p.put_i32(1);
    p.put_i32(1);
    p.put_u32(1);
    p.put_u32(0);
    p.put_u32(2);
    p.put(&[0; ID_SIZE]);
    assert!(decode_backends(&mut Reader::new(&p, "t")).is_err());
    // BACKEND_CONTROL with u32::MAX ids.
    let mut c = BackendControl {
        backend_id: 1,
        command: 0,
        defrag_level: 0,
        delay_ms: 0,
        ids: vec![],
    }
    .encode();
    c[68..72].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(BackendControl::decode(&c).is_err());
    // Backend status list with u32::MAX entries.
    assert!(BackendStatusList::decode(&u32::MAX.to_le_bytes()).is_err());
    let mut l = 2u32.to_le_bytes().to_vec();
    l.resize(4 + BackendStatus::SIZE, 0);
    assert!(BackendStatusList::decode(&l).is_err(), "count 2, one slot");
    // Iterator request with u64::MAX ranges / u32::MAX groups, or sizes off by one.
    let ir = IteratorRequest {
        id: 0,
        action: action::START,
        time_begin: Time::default(),
        time_end: Time::default(),
        itype: itype::NETWORK,
        flags: 0,
        timeout_secs: 0,
        ranges: vec![],
        groups: vec![],
    };
    let mut p = ir.encode();
    p[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(IteratorRequest::decode(&p).is_err());
    let mut p = ir.encode();
    p[64..68].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(IteratorRequest::decode(&p).is_err());
    let mut p = ir.encode();
    p.push(0);
    assert!(IteratorRequest::decode(&p).is_err(), "trailing byte");
    // BULK_READ: not a whole number of io_attrs, or only the header.
    assert!(BulkRead::decode(&[0; 207]).is_err());
    assert!(BulkRead::decode(&[0; 209]).is_err());
    assert_eq!(BulkRead::decode(&[0; 208]).unwrap().keys.len(), 0);
    // A lookup path longer than PATH_MAX.
    let lr = LookupReply {
        addr: addr(1),
        info: FileInfo {
            flen: 0,
            checksum: [0; ID_SIZE],
            record_flags: 0,
            size: 0,
            offset: 0,
            mtime: Time::default(),
        },
        path: vec![b'a'; LookupReply::PATH_MAX],
    };
    let ok = lr.encode();
    let back = LookupReply::decode(&ok).unwrap();
    assert!(back.path == lr.path && back.info.flen as usize == LookupReply::PATH_MAX + 1);
    let mut long = ok.clone();
    long.pop();
    long.extend_from_slice(b"a\0");
    assert!(LookupReply::decode(&long).is_err());
    long.pop();
    assert!(LookupReply::decode(&long).is_err(), "without the NUL too");
}

#[test]
fn exact_sizes_are_enforced() {
    let auth = Auth {
        cookie: b"c".to_vec(),
        flags: 0,
    }
    .encode();
    assert!(Auth::decode(&auth[..63]).is_err());
    assert!(Auth::decode(&[auth.clone(), vec![0]].concat()).is_err());
    let ms = MonitorStatRequest { categories: 1 }.encode();
    assert!(MonitorStatRequest::decode(&ms[..8]).is_err());
    assert!(MonitorStatRequest::decode(&[ms, vec![0]].concat()).is_err());
    let ns = NodeStatus {
        nflags: 0,
        status_flags: 0,
        log_level: 0,
    }
    .encode();
    assert!(NodeStatus::decode(&ns[..11]).is_err());
    assert!(NodeStatus::decode(&[ns, vec![0]].concat()).is_err());
    // A 32-character cookie without NUL keeps 31, as Elliptics does.
    let mut raw = vec![b'x'; 32];
    raw.resize(64, 0);
    assert_eq!(Auth::decode(&raw).unwrap().cookie.len(), 31);
    // Unknown address families and lengths.
    let mut a = Vec::new();
    addr(1).encode_into(&mut a);
    a[28] = 28;
    assert!(Addr::decode(&mut Reader::new(&a, "t")).is_err());
    a[28] = 16;
    a[30] = 1;
    assert!(Addr::decode(&mut Reader::new(&a, "t")).is_err());
}

#[test]
fn ipv6_addresses_keep_flowinfo_and_scope() {
    let v6: std::net::SocketAddrV6 = "[fe80::1%3]:1025".parse().unwrap();
    let v6 = std::net::SocketAddrV6::new(*v6.ip(), v6.port(), 0x12345, v6.scope_id());
    let a = Addr(std::net::SocketAddr::V6(v6));
    let mut b = Vec::new();
    a.encode_into(&mut b);
    assert_eq!(&b[28..32], &[28, 0, 10, 0]);
    assert_eq!(Addr::decode(&mut Reader::new(&b, "t")).unwrap(), a);
}

#[test]
fn dnet_addresses_parse_or_say_what_is_wrong() {
    let v4: std::net::SocketAddr = "127.0.0.1:1025".parse().unwrap();
    assert_eq!(Addr::parse_dnet("127.0.0.1:1025").unwrap(), (v4, 0));
    assert_eq!(Addr::parse_dnet("127.0.0.1:1025:2").unwrap(), (v4, 0));
    assert_eq!(Addr::parse_dnet("127.0.0.1:1025:2-3").unwrap(), (v4, 3));
    let v6: std::net::SocketAddr = "[::1]:1025".parse().unwrap();
    assert_eq!(Addr::parse_dnet("::1:1025:10").unwrap(), (v6, 0));
    assert_eq!(Addr::parse_dnet("localhost:1025:2").unwrap(), (v4, 0));
    let err = |s: &str| Addr::parse_dnet(s).unwrap_err().to_string();
    assert!(
        err("127.0.0.1").contains("want host:port[:family]"),
        "{}",
        err("127.0.0.1")
    );
    assert!(err("127.0.0.1:port").contains("want host:port[:family]"));
    // What is wrong is said: a name that does not resolve is not a malformed address. (A
    // label over 63 bytes: the resolver refuses it without asking a DNS server.)
    let long = "a".repeat(70);
    let e = err(&format!("{long}:1025"));
    assert!(e.contains(&format!("host {long:?} not resolved")), "{e}");
    let e = err("127.0.0.1:1025:7");
    assert!(e.contains("family 7"), "{e}");
}

#[test]
fn names_of_hostile_values() {
    assert_eq!(errno::name(i32::MIN), "errno");
    assert_eq!(errno::name(i32::MAX), "errno");
    assert_eq!(errno::name(-errno::EROFS), "EROFS");
    assert_eq!(errno::name(errno::EROFS), "EROFS");
    assert_eq!(cmd::name(i32::MIN), "UNKNOWN");
    let mut h = Header::new(i32::MIN, u64::MAX);
    h.status = i32::MIN;
    h.size = u64::MAX;
    let _ = format!("{h:?}");
    exercise(&h.encode());
}
