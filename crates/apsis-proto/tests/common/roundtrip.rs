//! Feeds bytes to the frame checker and to every payload decoder, and checks what decodes.
//!
//! Shared by the tests (`tests/vectors.rs`, `tests/robustness.rs`) and the fuzz target
//! (`fuzz/fuzz_targets/frame.rs`, which includes this file by path). Decoders must never panic.
//! Where a decode succeeds:
//! * structures whose every byte is a field re-encode to exactly the input bytes;
//! * structures with reserved or normalised bytes (padding, zero slots, the AUTH tail, the
//!   sockaddr padding, the BULK_READ header io_attr) re-encode to something that decodes to the
//!   same value.

use apsis_proto::wire::Reader;
use apsis_proto::*;

/// Runs everything on `data`. Panics (an assertion) only on a real codec bug.
pub fn exercise(data: &[u8]) {
    framing(data);
    payloads(data);
}

fn framing(data: &[u8]) {
    let declared =
        (data.len() >= HEADER_SIZE).then(|| u64::from_le_bytes(data[112..120].try_into().unwrap()));
    for max in [0, 1, 207, 1 << 20, u64::MAX] {
        match check_frame(data, max) {
            Ok(Some(n)) => {
                let size = declared.expect("a whole frame has a header");
                assert!(size <= max);
                assert_eq!(n as u64, HEADER_SIZE as u64 + size);
                assert!(n <= data.len());
                let f = Frame::decode(&data[..n])
                    .expect("check_frame said whole: Frame::decode must agree");
                assert_eq!(f.encode(), &data[..n]);
                assert_eq!(f.payload.len() as u64, size);
            }
            Ok(None) => {
                if let Some(size) = declared {
                    assert!(size <= max);
                    assert!(
                        ((data.len() - HEADER_SIZE) as u64) < size,
                        "a whole frame reported short"
                    );
                }
            }
            Err(ProtoError::TooLarge { size, max: m }) => {
                assert_eq!(Some(size), declared);
                assert!(size > max && m == max);
            }
            Err(e) => panic!("check_frame: unexpected error {e}"),
        }
    }
    if let Ok(f) = Frame::decode(data) {
        assert_eq!(f.encode(), data);
    }
    if let Ok(h) = Header::decode(data) {
        assert_eq!(&h.encode()[..], &data[..HEADER_SIZE]);
        let _ = (
            h.version(),
            format!("{h:?}"),
            cmd::name(h.cmd),
            errno::name(h.status),
        );
    }
}

/// `decode(encode(x)) == x` for a value `x` that decoded.
macro_rules! idempotent {
    ($v:expr, $enc:expr, $dec:expr) => {{
        let v = $v;
        let bytes = $enc(&v);
        let again = $dec(&bytes[..]).expect("re-encoded value must decode");
        assert_eq!(again, v, "decode(encode(x)) != x");
        assert_eq!($enc(&again), bytes, "encode is not stable");
    }};
}

fn payloads(data: &[u8]) {
    // dnet_io_attr (+ data): every byte is a field.
    if let Ok((io, rest)) = IoAttr::split(data) {
        let mut out = Vec::new();
        io.encode_into(&mut out);
        assert_eq!(out.len(), IoAttr::SIZE);
        out.extend_from_slice(rest);
        assert_eq!(out, data);
        let _ = format!("{io:?}");
    }
    // dnet_addr: the sockaddr padding is normalised.
    if let Ok(a) = Addr::decode(&mut Reader::new(data, "addr")) {
        idempotent!(a, enc_addr, |b: &[u8]| Addr::decode(&mut Reader::new(
            b, "addr"
        )));
        let _ = a.to_dnet_string();
    }
    // dnet_file_info: the 4 padding bytes are normalised.
    if let Ok(fi) = FileInfo::decode(&mut Reader::new(data, "file info")) {
        idempotent!(
            fi,
            |v: &FileInfo| {
                let mut o = Vec::new();
                v.encode_into(&mut o);
                assert_eq!(o.len(), FileInfo::SIZE);
                o
            },
            |b: &[u8]| FileInfo::decode(&mut Reader::new(b, "file info"))
        );
    }
    // Lookup reply: flen is recomputed from the path.
    if let Ok(lr) = LookupReply::decode(data) {
        let bytes = lr.encode();
        let again = LookupReply::decode(&bytes).expect("re-encoded lookup reply must decode");
        assert_eq!((again.addr, &again.path), (lr.addr, &lr.path));
        let mut info = lr.info;
        info.flen = again.info.flen;
        assert_eq!(again.info, info);
        assert_eq!(again.encode(), bytes);
    }
    if let Ok(ni) = NodeInfo::decode(data) {
        idempotent!(ni, NodeInfo::encode, NodeInfo::decode);
    }
    if let Ok(rl) = RouteList::decode(data) {
        idempotent!(rl, RouteList::encode, RouteList::decode);
    }
    // An id container: every byte is a field.
    let mut r = Reader::new(data, "ids");
    if let Ok(b) = decode_backends(&mut r) {
        let mut out = Vec::new();
        encode_backends(&b, &mut out);
        assert_eq!(out, &data[..r.position()]);
    }
    if let Ok(a) = Auth::decode(data) {
        assert!(a.cookie.len() <= 31 && !a.cookie.contains(&0));
        idempotent!(a, Auth::encode, Auth::decode);
    }
    if let Ok(s) = NodeStatus::decode(data) {
        assert_eq!(s.encode(), data);
    }
    if let Ok(m) = MonitorStatRequest::decode(data) {
        idempotent!(m, MonitorStatRequest::encode, MonitorStatRequest::decode);
    }
    if let Ok(c) = BackendControl::decode(data) {
        idempotent!(c, BackendControl::encode, BackendControl::decode);
    }
    if let Ok(l) = BackendStatusList::decode(data) {
        let slots = data.len().saturating_sub(4) / BackendStatus::SIZE;
        assert!(l.encode(slots).len() <= data.len());
        idempotent!(
            l,
            |v: &BackendStatusList| v.encode(slots),
            BackendStatusList::decode
        );
    }
    if let Ok(ir) = IteratorRequest::decode(data) {
        idempotent!(ir, IteratorRequest::encode, IteratorRequest::decode);
    }
    let mut r = Reader::new(data, "iterator response");
    if let Ok(resp) = IteratorResponse::decode(&mut r) {
        assert_eq!(r.position(), IteratorResponse::SIZE);
        idempotent!(
            resp,
            |v: &IteratorResponse| {
                let mut o = Vec::new();
                v.encode_into(&mut o);
                assert_eq!(o.len(), IteratorResponse::SIZE);
                o
            },
            |b: &[u8]| IteratorResponse::decode(&mut Reader::new(b, "iterator response"))
        );
        let _ = format!("{resp:?}");
    }
    if let Ok(br) = BulkRead::decode(data) {
        assert_eq!(data.len(), (br.keys.len() + 1) * IoAttr::SIZE);
        // The per-key io_attrs are kept byte for byte; only the header io_attr is rebuilt.
        assert_eq!(&br.encode()[IoAttr::SIZE..], &data[IoAttr::SIZE..]);
        idempotent!(br, BulkRead::encode, BulkRead::decode);
    }
    if let Ok(ss) = ServerSend::decode(data) {
        // Ids and groups are kept byte for byte; the reserved head bytes are zeroed.
        assert_eq!(
            &ss.encode()[ServerSend::HEAD_SIZE..],
            &data[ServerSend::HEAD_SIZE..]
        );
        idempotent!(ss, ServerSend::encode, ServerSend::decode);
    }
}

fn enc_addr(a: &Addr) -> Vec<u8> {
    let mut o = Vec::new();
    a.encode_into(&mut o);
    assert_eq!(o.len(), Addr::SIZE);
    o
}
