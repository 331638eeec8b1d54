//! The hardware backend's branch source: one legacy BTS perf event per
//! thread, read when a trace is taken.

use std::collections::HashMap;

use bts_reader::perf::{self, BtsEvent};
use ds_alloc::BtsRecord;
use ptrace_shim::HardwareSource;

pub struct PerfSource {
    bytes: usize,
    events: HashMap<i32, BtsEvent>,
}

impl PerfSource {
    pub fn new(bytes: usize) -> Self {
        PerfSource { bytes, events: HashMap::new() }
    }
}

impl HardwareSource for PerfSource {
    fn start(&mut self, tid: i32) -> Result<(), ptrace_shim::SourceError> {
        let ev = perf::open_bts(tid, self.bytes)?;
        self.events.insert(tid, ev);
        Ok(())
    }

    fn read(&mut self, tid: i32) -> Option<(Vec<BtsRecord>, u64)> {
        let r = self.events.get(&tid)?.read().ok()?;
        Some((r.records, r.lost))
    }

    fn stop(&mut self, tid: i32) {
        self.events.remove(&tid);
    }
}
