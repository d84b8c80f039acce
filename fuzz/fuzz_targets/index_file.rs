//! Any bytes: decoding a sorted index file never panics; a file that decodes is sorted and its
//! size matches its entry count.
#![no_main]
use apsis_storage::blob::decode_index_file;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((h, n)) = decode_index_file(data) {
        assert_eq!(h.entries as usize, n);
        assert_eq!(h.file_size(), data.len() as u64);
    }
});
