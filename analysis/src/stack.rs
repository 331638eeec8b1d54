//! The call stack at the end of a thread's trace, from its branches alone:
//! the calls not yet returned from, newest first. No unwinding tables are
//! needed, so it works for a process long gone, from any recorder.

use decode::BranchKind;
use serde::Serialize;

use crate::model::Image;

/// Frames kept at most.
pub const MAX_FRAMES: usize = 32;

/// One frame: where the thread stood, or a call site not yet returned to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Frame {
    /// The instruction, hex.
    pub addr: String,
    /// `function+offset`.
    pub function: Option<String>,
    /// The source file, as the debug information names it (full path).
    pub file: Option<String>,
    /// The source line.
    pub line: Option<u32>,
}

/// The call sites still open at the end of `branches` (oldest first, with
/// their kinds), newest first: walking back, a return opens a level that
/// its call closes; a call met at level zero was never returned from.
pub fn open_calls(branches: &[(u64, u64)], kinds: &[BranchKind], max: usize) -> Vec<u64> {
    let mut depth = 0usize;
    let mut out = Vec::new();
    for (&(from, _), kind) in branches.iter().zip(kinds).rev() {
        match kind {
            BranchKind::Return => depth += 1,
            BranchKind::Call if depth == 0 => {
                out.push(from);
                if out.len() >= max {
                    break;
                }
            }
            BranchKind::Call => depth -= 1,
            _ => {}
        }
    }
    out
}

/// The frames of a thread that stopped at `pc`: `pc` itself, then its open
/// call sites.
pub fn call_stack(img: Option<&Image>, branches: &[(u64, u64)], kinds: &[BranchKind], pc: u64) -> Vec<Frame> {
    let mut addrs = vec![pc];
    addrs.extend(open_calls(branches, kinds, MAX_FRAMES - 1));
    addrs
        .into_iter()
        .map(|a| {
            let sym = img.map(|i| i.syms.lookup(a));
            let function = sym.as_ref().map(|s| s.name_offset()).filter(|n| !n.is_empty());
            Frame {
                addr: format!("{a:#x}"),
                function,
                file: sym.as_ref().and_then(|s| s.file.clone()),
                line: sym.as_ref().and_then(|s| s.line),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use BranchKind::*;

    #[test]
    fn calls_returned_from_are_not_frames() {
        // main calls a (0x10), a calls b (0x20) which returns, a calls c (0x30), c jumps.
        let b = [(0x10, 0x100), (0x20, 0x200), (0x210, 0x24), (0x30, 0x300), (0x310, 0x320)];
        let k = [Call, Call, Return, Call, Conditional];
        assert_eq!(open_calls(&b, &k, 8), vec![0x30, 0x10]);
        assert_eq!(open_calls(&b, &k, 1), vec![0x30]);
        // A return whose call is older than the trace leaves the stack empty.
        assert_eq!(open_calls(&[(0x500, 0x10)], &[Return], 8), Vec::<u64>::new());
    }
}
