//! Chrome Trace Event JSON: one complete ("X") event per function
//! instance, instruction count as the clock, one track per thread (opens in
//! Perfetto and chrome://tracing).

use decode::calls::Segment;
use serde_json::{json, Value};

use crate::timeline::Analysis;

/// The instances of functions: chains of segments linked by prev/next.
fn instances(segs: &[Segment]) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    for (i, s) in segs.iter().enumerate() {
        if s.prev.is_some() || s.gap.is_some() {
            continue;
        }
        let mut chain = vec![i];
        let mut cur = s.next;
        while let Some(n) = cur {
            chain.push(n);
            cur = segs[n].next;
        }
        out.push(chain);
    }
    out
}

/// The last instruction of each instance and everything it called.
fn instance_ends(segs: &[Segment], chains: &[Vec<usize>]) -> Vec<u64> {
    let mut inst_of = vec![usize::MAX; segs.len()];
    for (k, chain) in chains.iter().enumerate() {
        for &s in chain {
            inst_of[s] = k;
        }
    }
    let mut end = vec![0u64; chains.len()];
    for (i, s) in segs.iter().enumerate() {
        let e = s.insn_end;
        let mut cur = Some(i);
        while let Some(x) = cur {
            let k = inst_of[x];
            if k == usize::MAX || end[k] >= e {
                // Ancestors already reach this far.
                if k != usize::MAX {
                    break;
                }
            } else {
                end[k] = e;
            }
            cur = segs[x].up;
        }
    }
    end
}

/// Complete ("X") events, one per function instance, nested by call depth:
/// an instance lasts until its last instruction or its callees' last.
pub fn events(threads: &[Analysis]) -> Value {
    let mut events = Vec::new();
    for an in threads {
        events.push(json!({"name": "thread_name", "ph": "M", "pid": an.pid, "tid": an.tid,
                           "args": {"name": format!("thread {}", an.tid)}}));
        let chains = instances(&an.segments);
        let ends = instance_ends(&an.segments, &chains);
        for (k, chain) in chains.iter().enumerate() {
            let first = &an.segments[chain[0]];
            events.push(json!({
                "name": first.function.clone().unwrap_or_else(|| "??".into()),
                "cat": if first.signal { "signal" } else { "function" },
                "ph": "X",
                "ts": first.insn_begin,
                "dur": ends[k].max(first.insn_end) + 1 - first.insn_begin,
                "pid": an.pid,
                "tid": an.tid,
                "args": {"level": first.level, "segments": chain.len()},
            }));
        }
        for s in an.segments.iter().filter(|s| s.gap.is_some()) {
            events.push(json!({"name": "trace gap", "ph": "i", "s": "t", "ts": s.insn_begin,
                               "pid": an.pid, "tid": an.tid}));
        }
    }
    json!({"traceEvents": events, "displayTimeUnit": "ns",
           "otherData": {"clock": "instructions executed"}})
}
