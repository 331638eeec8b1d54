//! Folded stacks (`main;a;b 123`), weighted by instructions executed: the
//! input of flamegraph.pl and inferno.

use std::collections::BTreeMap;

use decode::calls::stack_names;

use crate::timeline::Analysis;

/// `main;a;b 123` lines, weighted by instructions executed.
pub fn stacks(threads: &[Analysis]) -> String {
    let mut weights: BTreeMap<String, u64> = BTreeMap::new();
    for an in threads {
        for (i, s) in an.segments.iter().enumerate() {
            if s.gap.is_some() {
                continue;
            }
            *weights.entry(stack_names(&an.segments, i).join(";")).or_default() += s.insn_count();
        }
    }
    weights.into_iter().map(|(k, v)| format!("{k} {v}\n")).collect()
}
