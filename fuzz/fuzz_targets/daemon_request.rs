//! Whatever a client sends the daemon (garbage, cut or oversized frames,
//! messages of another shape) is a request or an error: the framing and
//! the request decoder never panic, and what decodes encodes back to
//! itself.
#![no_main]

use broker::protocol::{decode_request, encode, read_frame, MAX_REQUEST};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // As one payload.
    if let Ok(req) = decode_request(data) {
        let frame = encode(&req).expect("a decoded request encodes");
        assert_eq!(decode_request(&frame[4..]).expect("and decodes again"), req);
    }
    // As a stream of frames.
    let mut r = data;
    while let Ok(payload) = read_frame(&mut r, MAX_REQUEST) {
        let _ = decode_request(&payload);
    }
});
