//! Any bytes: the frame checker and every apsis-proto payload decoder never panic; whatever
//! decodes re-encodes to the same bytes (fields only) or to bytes that decode to the same value
//! (structures with padding or reserved bytes). The checks are shared with the crate's tests.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../../crates/apsis-proto/tests/common/roundtrip.rs"]
mod roundtrip;

fuzz_target!(|data: &[u8]| {
    roundtrip::exercise(data);
});
