//! The trace-file parsers on arbitrary bytes: an error, never a panic.
//! Both the whole-file parser and the section-at-a-time reader (which
//! `bts history`, `bts last-branch` and the trace tools use), and the two
//! agree on which files are sound.
#![no_main]

use bts_reader::tracestream::TraceReader;
use libfuzzer_sys::fuzz_target;

fn stream_ok(data: &[u8]) -> bool {
    let Ok(mut r) = TraceReader::new(data) else { return false };
    let mut recs = Vec::new();
    loop {
        match r.next_section() {
            Ok(Some(bts_reader::tracestream::Section::Stream(_))) => loop {
                recs.clear();
                match r.records(&mut recs, 4096) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(_) => return false,
                }
            },
            Ok(Some(_)) => {}
            Ok(None) => return true,
            Err(_) => return false,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let whole = bts_reader::TraceFile::from_bytes(data).is_ok();
    let streamed = stream_ok(data);
    // A file the whole parser takes, the streaming reader takes too.
    assert!(!whole || streamed, "the whole parser took a file the stream reader refused");
});
