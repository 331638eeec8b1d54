//! Chrome Trace Event JSON: one complete ("X") event per function
//! instance, instruction count as the clock, one track per thread (opens in
//! Perfetto and chrome://tracing). An instance's event is written when it
//! ends, so events come in the order instances end; viewers sort them.

use decode::calls::CallEvent;
use serde_json::json;

use super::{Out, ThreadInfo, Writer};
use crate::callstream::CallSink;

/// The events of every thread, then the document's other fields.
pub(crate) struct Chrome<'w> {
    out: Out<'w>,
    events: usize,
    pid: i32,
    tid: i32,
    min_level: i32,
}

impl<'w> Chrome<'w> {
    pub(crate) fn new(out: &'w mut dyn std::io::Write) -> Self {
        let mut out = Out::new(out);
        out.put("{\"displayTimeUnit\":\"ns\",\"otherData\":{\"clock\":\"instructions executed\"},\"traceEvents\":[");
        Chrome { out, events: 0, pid: 0, tid: 0, min_level: 0 }
    }

    fn event_out(&mut self, v: serde_json::Value) -> bool {
        let sep = if self.events == 0 { "" } else { "," };
        self.events += 1;
        self.out.put(sep) && self.out.put(&v.to_string())
    }
}

impl CallSink for Chrome<'_> {
    fn event(&mut self, e: CallEvent<'_>) -> bool {
        let (pid, tid) = (self.pid, self.tid);
        match e {
            // An instance lasts until its last instruction or its callees' last.
            CallEvent::Ended { frame, end } => self.event_out(json!({
                "name": frame.segment.function.clone().unwrap_or_else(|| "??".into()),
                "cat": if frame.signal { "signal" } else { "function" },
                "ph": "X",
                "ts": frame.begin,
                "dur": end.max(frame.segment.insn_end) + 1 - frame.begin,
                "pid": pid,
                "tid": tid,
                "args": {"level": frame.segment.level - self.min_level, "segments": frame.segments},
            })),
            CallEvent::Closed { segment, .. } if segment.gap.is_some() => self.event_out(
                json!({"name": "trace gap", "ph": "i", "s": "t", "ts": segment.insn_begin, "pid": pid, "tid": tid}),
            ),
            _ => !self.out.failed(),
        }
    }
}

impl Writer for Chrome<'_> {
    fn begin_thread(&mut self, t: &ThreadInfo) {
        (self.pid, self.tid, self.min_level) = (t.pid, t.tid, t.min_level);
        self.event_out(json!({"name": "thread_name", "ph": "M", "pid": t.pid, "tid": t.tid,
                              "args": {"name": format!("thread {}", t.tid)}}));
    }

    fn end_thread(&mut self, _: &ThreadInfo) {}

    fn failed(&self) -> bool {
        self.out.failed()
    }

    fn finish(&mut self) -> std::io::Result<()> {
        self.out.put("]}");
        self.out.finish()
    }
}
