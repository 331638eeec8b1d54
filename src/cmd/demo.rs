//! `bts demo`: bts traces a crashing program built into itself.

use std::hint::black_box;
use std::process::ExitCode;

use crate::args::{BackendArg, OutputArgs, RecordArgs, ReportWhen};
use crate::exit::EXIT_BTS_FAILED;

/// Runs `bts run -- <self> __demo-crash` and explains the expected crash.
pub fn run(backend: BackendArg, json: bool) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            crate::errln!("bts: cannot find my own executable: {e}");
            return ExitCode::from(EXIT_BTS_FAILED);
        }
    };
    // A private folder (0700, random name): a predictable name in /tmp could
    // be a symlink someone planted.
    let dir = match tempfile::Builder::new().prefix("bts-demo-").tempdir() {
        Ok(d) => d.keep(),
        Err(e) => {
            crate::errln!("bts: cannot make a folder for the demo's trace: {e}");
            return ExitCode::from(EXIT_BTS_FAILED);
        }
    };
    let rec = RecordArgs {
        out: OutputArgs { branches: 16, insns: 12, json, all_threads: false },
        backend,
        buffer_size: 64 * 1024,
        json_file: None,
        output: Some(dir.join("demo.bts")),
        report: ReportWhen::Crash,
        no_pin: false,
        per_cpu_buffer: None,
        insn_log: None,
        stack_size: ptrace_shim::DEFAULT_STACK_BYTES,
    };
    let code = crate::cmd::run::run_status(&rec, false, false, vec![exe.into(), "__demo-crash".into()]);
    if code == 128 + libc::SIGSEGV {
        if !json {
            crate::errln!(
                "\nbts demo: the program above called a NULL function pointer in stage_c, \
                 reached through main -> stage_a -> stage_b -> stage_c; the branches show the way."
            );
        }
        ExitCode::SUCCESS
    } else {
        crate::errln!("bts demo: expected the demo program to die of SIGSEGV, but its status was {code}");
        ExitCode::FAILURE
    }
}

#[inline(never)]
fn stage_c(depth: u64) -> u64 {
    let mut acc = black_box(depth);
    for i in 0..black_box(3u64) {
        acc = acc.wrapping_mul(31).wrapping_add(i);
    }
    if black_box(acc) != 0 {
        // SAFETY: deliberately not safe: the demo calls address 0 so that a
        // NULL function-pointer call can be traced. The process dies of
        // SIGSEGV at the call's target; nothing after it runs.
        unsafe { std::arch::asm!("call {f}", f = in(reg) black_box(0usize), clobber_abi("C")) };
    }
    acc
}

#[inline(never)]
fn stage_b(x: u64) -> u64 {
    if black_box(x).is_multiple_of(2) {
        stage_c(x + 1)
    } else {
        stage_c(x)
    }
}

#[inline(never)]
fn stage_a(x: u64) -> u64 {
    stage_b(black_box(x) * 3)
}

/// The demo program: main -> stage_a -> stage_b -> stage_c -> NULL.
pub fn crash() -> ExitCode {
    // The Rust runtime catches SIGSEGV to detect stack overflows; the demo
    // wants the plain default action so the trace ends at the bad call.
    // SAFETY: resetting a signal disposition to its default.
    unsafe { libc::signal(libc::SIGSEGV, libc::SIG_DFL) };
    let r = stage_a(black_box(7));
    crate::outln!("unreachable: {r}");
    ExitCode::SUCCESS
}
