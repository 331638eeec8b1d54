//! The function segments of every thread as plain JSON, written as they
//! close.

use decode::calls::CallEvent;
use serde_json::json;

use super::{pretty_at, Out, ThreadInfo, Writer};
use crate::callstream::CallSink;

/// `{"threads": [{"instructions", "pid", "segments": [...], "tid"}], "version": 1}`.
pub(crate) struct Json<'w> {
    out: Out<'w>,
    threads: usize,
    segments: usize,
    min_level: i32,
}

impl<'w> Json<'w> {
    pub(crate) fn new(out: &'w mut dyn std::io::Write) -> Self {
        let mut out = Out::new(out);
        out.put("{\n  \"threads\": [");
        Json { out, threads: 0, segments: 0, min_level: 0 }
    }
}

impl CallSink for Json<'_> {
    fn event(&mut self, e: CallEvent<'_>) -> bool {
        let CallEvent::Closed { segment: s, .. } = e else { return true };
        let v = json!({"number": s.number, "function": s.function, "level": s.level - self.min_level,
                       "insn_begin": s.insn_begin, "insn_end": s.insn_end, "up": s.up.map(|u| u + 1),
                       "signal": s.signal, "tail_call": s.tail_call,
                       "gap": s.gap.map(|g| g.text())});
        let sep = if self.segments == 0 { "\n        " } else { ",\n        " };
        self.segments += 1;
        self.out.put(sep) && self.out.put(&pretty_at(&v, 8))
    }
}

impl Writer for Json<'_> {
    fn begin_thread(&mut self, t: &ThreadInfo) {
        let sep = if self.threads == 0 { "\n" } else { ",\n" };
        self.threads += 1;
        self.segments = 0;
        self.min_level = t.min_level;
        self.out.put(&format!(
            "{sep}    {{\n      \"instructions\": {},\n      \"pid\": {},\n      \"segments\": [",
            t.instructions, t.pid
        ));
    }

    fn end_thread(&mut self, t: &ThreadInfo) {
        let close = if self.segments == 0 { "]" } else { "\n      ]" };
        self.out.put(&format!("{close},\n      \"tid\": {}\n    }}", t.tid));
    }

    fn failed(&self) -> bool {
        self.out.failed()
    }

    fn finish(&mut self) -> std::io::Result<()> {
        self.out.put(if self.threads == 0 {
            "],\n  \"version\": 1\n}"
        } else {
            "\n  ],\n  \"version\": 1\n}"
        });
        self.out.finish()
    }
}
