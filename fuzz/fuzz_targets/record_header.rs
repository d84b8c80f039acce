//! Any bytes: decoding a record header never panics, and whatever decodes re-encodes to the
//! same bytes (the checksum covers every field) with sizes that do not overflow.
#![no_main]
use apsis_storage::blob::format::RecordHeader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(h) = RecordHeader::decode(data) {
        assert_eq!(&h.encode()[..], &data[..128]);
        let _ = (h.disk_size(), h.data_start(), h.chunk_count());
    }
});
