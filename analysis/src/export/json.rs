//! The function segments of every thread as plain JSON.

use serde_json::{json, Value};

use crate::timeline::Analysis;

/// Segments of every thread as JSON.
pub fn segments(threads: &[Analysis]) -> Value {
    let ts: Vec<Value> = threads
        .iter()
        .map(|an| {
            let segs: Vec<Value> = an
                .segments
                .iter()
                .map(|s| {
                    json!({"number": s.number, "function": s.function, "level": s.level,
                           "insn_begin": s.insn_begin, "insn_end": s.insn_end, "up": s.up.map(|u| u + 1),
                           "signal": s.signal, "tail_call": s.tail_call,
                           "gap": s.gap.map(|g| g.text())})
                })
                .collect();
            json!({"pid": an.pid, "tid": an.tid, "instructions": an.entries.len(), "segments": segs})
        })
        .collect();
    json!({"version": 1, "threads": ts})
}
