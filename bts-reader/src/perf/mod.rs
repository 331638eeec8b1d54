//! The hardware backend: Intel BTS (legacy event and `intel_bts` AUX) and
//! PEBS through `perf_event_open`.

pub mod cpu;
pub mod error;
pub mod open;
pub mod pebs;
pub mod ring;

pub use error::PerfError;
pub use open::{open_bts, open_intel_bts, open_pebs, probe_bts, BtsEvent, IntelBtsEvent, PebsEvent};
pub use ring::{parse_bts_ring, read_bts_ring, BtsRead, MmapHeader, RingSource};
