//! The Valgrind tool's trace files are read back by bts: a corrupt or
//! truncated one must be an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = bts_reader::valgrind::VgTrace::parse(data);
    let _ = bts_reader::valgrind::parse_log(&String::from_utf8_lossy(data));
});
