//! Any bytes as a base file: scanning and verifying every record never panics, and records
//! come out in order and inside the file.
#![no_main]
use apsis_storage::blob::scan::Scanner;
use apsis_storage::{Dir, SimDir};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = SimDir::new();
    let dev = dir.open("base", true).expect("open");
    dev.write_at(data, 0).expect("write");
    let mut sc = Scanner::new(&*dev, 0, data.len() as u64);
    let mut last_end = 0;
    while let Ok(Some((off, h))) = sc.next_record() {
        assert!(off >= last_end);
        last_end = off + h.disk_size();
        assert!(last_end <= data.len() as u64);
        let _ = sc.verify(off, &h);
    }
});
