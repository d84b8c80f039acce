//! Any bytes: decoding a sorted index file never panics; a file that decodes is sorted, its
//! size matches its entry count, and it re-encodes to the same bytes.
#![no_main]
use apsis_storage::blob::format::{decode_index, encode_index};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((h, entries)) = decode_index(data) {
        assert_eq!(h.entries as usize, entries.len());
        assert_eq!(h.file_size(), data.len() as u64);
        assert!(entries.windows(2).all(|w| w[0].key <= w[1].key));
        assert_eq!(encode_index(&h, &entries), data);
    }
});
