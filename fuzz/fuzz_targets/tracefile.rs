//! The trace-file parser on arbitrary bytes: an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = bts_reader::TraceFile::from_bytes(data);
});
