//! Folded stacks (`main;a;b 123`), weighted by instructions executed: the
//! input of flamegraph.pl and inferno.

use std::collections::BTreeMap;

use decode::calls::CallEvent;

use super::{Out, ThreadInfo, Writer};
use crate::callstream::CallSink;

/// The weights of every distinct stack, written at the end.
pub(crate) struct Folded<'w> {
    out: Out<'w>,
    weights: BTreeMap<String, u64>,
    /// The stack being weighed (kept to spare an allocation per segment).
    key: String,
}

impl<'w> Folded<'w> {
    pub(crate) fn new(out: &'w mut dyn std::io::Write) -> Self {
        Folded { out: Out::new(out), weights: BTreeMap::new(), key: String::new() }
    }
}

impl CallSink for Folded<'_> {
    fn event(&mut self, e: CallEvent<'_>) -> bool {
        if let CallEvent::Closed { segment, callers } = e {
            if segment.gap.is_none() {
                self.key.clear();
                for f in callers.iter().map(|c| &c.segment.function).chain([&segment.function]) {
                    if !self.key.is_empty() {
                        self.key.push(';');
                    }
                    self.key.push_str(f.as_deref().unwrap_or("??"));
                }
                match self.weights.get_mut(&self.key) {
                    Some(w) => *w += segment.insn_count(),
                    None => {
                        self.weights.insert(self.key.clone(), segment.insn_count());
                    }
                }
            }
        }
        true
    }
}

impl Writer for Folded<'_> {
    fn begin_thread(&mut self, _: &ThreadInfo) {}
    fn end_thread(&mut self, _: &ThreadInfo) {}
    fn failed(&self) -> bool {
        self.out.failed()
    }

    fn finish(&mut self) -> std::io::Result<()> {
        for (k, v) in std::mem::take(&mut self.weights) {
            if !self.out.put(&format!("{k} {v}\n")) {
                break;
            }
        }
        self.out.finish()
    }
}
