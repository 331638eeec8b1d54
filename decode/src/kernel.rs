//! The kernel filter. Hardware leaks kernel addresses across the CPL
//! boundary: a user→kernel record is an event (system call, interrupt,
//! trap) at its `from`; kernel→kernel records are dropped; a kernel→user
//! record says where user code resumed. The result holds user addresses
//! only, unless the caller may see kernel addresses and asks for them.

use ds_alloc::{BtsRecord, RecordKind};

use crate::classify::{self, BranchKind, Shape};
use crate::flow::AddrMap;
use crate::CodeMap;

/// How a filtered record transfers control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer {
    /// A branch instruction at `from` executed.
    Branch,
    /// A system call at `from` executed; user code resumed at `to`.
    Syscall,
    /// An asynchronous event (interrupt, trap, signal) struck before the
    /// instruction at `from` executed.
    Async,
    /// User code resumed at `to`, but where it left is unknown (the
    /// user→kernel record was lost or overwritten).
    Resume,
}

/// A record after filtering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Branch {
    /// The source.
    pub from: u64,
    /// The destination.
    pub to: u64,
    /// What crossing between user and kernel it is.
    pub transfer: Transfer,
}

/// True for a kernel address: bit 63 set, or at or above the kernel's
/// `_text` when it is known.
pub fn is_kernel(addr: u64, kernel_text: Option<u64>) -> bool {
    ds_alloc::is_kernel_address(addr) || kernel_text.is_some_and(|t| addr >= t)
}

/// Options of the filter.
#[derive(Debug, Clone, Copy, Default)]
pub struct Filter {
    /// Keep kernel records as they are (only for a privileged caller).
    pub keep_kernel: bool,
    /// The kernel's `_text`, when known: everything at or above it is kernel.
    pub kernel_text: Option<u64>,
}

/// May this process see kernel addresses? Root, or perf_event_paranoid <= 1.
pub fn may_see_kernel() -> bool {
    // SAFETY: geteuid has no arguments and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .is_some_and(|p| p <= 1)
}

/// Filters a raw record stream (oldest first). Context records are dropped.
pub fn filter(records: &[BtsRecord], code: &CodeMap, f: Filter) -> Vec<Branch> {
    let mut out = Vec::with_capacity(records.len());
    let mut k = KernelFilter::new(f);
    for r in records {
        k.feed(r, code, &mut out);
    }
    out
}

/// [`filter`] a record at a time, for traces read a chunk at a time. A
/// filter is for the records of one image: it keeps what it decoded of
/// each branch source, by address, so every `feed` must pass it the same
/// code map.
#[derive(Debug, Clone)]
pub struct KernelFilter {
    f: Filter,
    /// A user→kernel event waiting for the kernel→user record.
    pending: Option<(u64, Transfer)>,
    /// The instruction at each source met, decoded once.
    shapes: AddrMap<Shape>,
}

/// Sources whose shape is kept (beyond, the cache starts over).
const SHAPES: usize = 1 << 20;

impl KernelFilter {
    /// A filter with nothing pending.
    pub fn new(f: Filter) -> Self {
        KernelFilter { f, pending: None, shapes: AddrMap::default() }
    }

    /// The kind of a transfer from `from` to `to`, its source decoded once.
    fn kind(&mut self, code: &CodeMap, from: u64, to: u64) -> BranchKind {
        if self.shapes.len() >= SHAPES {
            self.shapes.clear();
        }
        let shape =
            self.shapes.entry(from).or_insert_with(|| Shape::of(classify::decode_at(code, from).as_ref()));
        shape.kind(to)
    }

    /// [`user_transfer`], its source decoded once.
    fn transfer(&mut self, code: &CodeMap, from: u64, to: u64) -> Transfer {
        transfer_of(self.kind(code, from, to))
    }

    /// Nothing is pending: the next record starts afresh, as in a new filter.
    pub fn is_idle(&self) -> bool {
        self.pending.is_none()
    }

    /// Filters one record, appending what it gives to `out`.
    pub fn feed(&mut self, r: &BtsRecord, code: &CodeMap, out: &mut Vec<Branch>) {
        let (from, to) = match r.kind() {
            RecordKind::Branch { from, to, .. } => (from, to),
            RecordKind::Context { .. } => return,
        };
        let f = self.f;
        if f.keep_kernel {
            let transfer = self.transfer(code, from, to);
            out.push(Branch { from, to, transfer });
            return;
        }
        match (is_kernel(from, f.kernel_text), is_kernel(to, f.kernel_text)) {
            (false, false) => {
                if let Some((pf, _)) = self.pending.take() {
                    // The kernel→user record was lost: the event's end is unknown.
                    out.push(Branch { from: pf, to: pf, transfer: Transfer::Async });
                }
                let transfer = self.transfer(code, from, to);
                out.push(Branch { from, to, transfer });
            }
            (false, true) => {
                let transfer = match self.kind(code, from, to) {
                    BranchKind::Syscall => Transfer::Syscall,
                    _ => Transfer::Async,
                };
                self.pending = Some((from, transfer));
            }
            (true, true) => {}
            (true, false) => match self.pending.take() {
                Some((pf, t)) => out.push(Branch { from: pf, to, transfer: t }),
                None => out.push(Branch { from: to, to, transfer: Transfer::Resume }),
            },
        }
    }
}

/// The transfer of a user→user record, by the instruction at `from`.
pub fn user_transfer(code: &CodeMap, from: u64, to: u64) -> Transfer {
    transfer_of(classify::classify(code, from, to))
}

fn transfer_of(k: BranchKind) -> Transfer {
    match k {
        BranchKind::Syscall => Transfer::Syscall,
        BranchKind::Async => Transfer::Async,
        _ => Transfer::Branch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: u64 = 0xffff_ffff_8100_0000;

    fn code() -> CodeMap {
        let mut m = CodeMap::new();
        // 0x1000: syscall ; 0x1002: nop ; 0x1003: jmp 0x1000 ; 0x1005: mov eax, ecx
        m.insert(0x1000, vec![0x0f, 0x05, 0x90, 0xeb, 0xfb, 0x89, 0xc8]);
        m
    }

    #[test]
    fn syscalls_interrupts_and_kernel_noise() {
        let recs = [
            BtsRecord::branch(0x1003, 0x1000),     // jmp
            BtsRecord::branch(0x1000, K),          // syscall entry
            BtsRecord::branch(K + 0x10, K + 0x80), // kernel internal
            BtsRecord::branch(K + 0x90, 0x1002),   // sysret
            BtsRecord::branch(0x1005, K + 0x200),  // interrupt at the mov
            BtsRecord::branch(K + 0x300, 0x1005),  // iret: the mov runs now
            BtsRecord::context(ds_alloc::ContextKind::TaskDeparts, 5, 1),
            BtsRecord::branch(K + 0x400, 0x1002), // resume without its entry
        ];
        let got = filter(&recs, &code(), Filter::default());
        assert_eq!(
            got,
            vec![
                Branch { from: 0x1003, to: 0x1000, transfer: Transfer::Branch },
                Branch { from: 0x1000, to: 0x1002, transfer: Transfer::Syscall },
                Branch { from: 0x1005, to: 0x1005, transfer: Transfer::Async },
                Branch { from: 0x1002, to: 0x1002, transfer: Transfer::Resume },
            ]
        );
        assert!(got.iter().all(|b| !is_kernel(b.from, None) && !is_kernel(b.to, None)));
        let all = filter(&recs, &code(), Filter { keep_kernel: true, kernel_text: None });
        assert_eq!(all.len(), 7);
        assert!(is_kernel(0x7fff_0000, Some(0x7000_0000)));
    }
}
