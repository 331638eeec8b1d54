//! The short text report of a step, on stderr: each crash with its parent
//! chain, its site and its last branches; then what was left running and
//! what the artifacts limit removed.

use analysis::report::Branch;

use super::{CrashEntry, Proc, StepReport};

/// Failures listed in the text report at most.
const MAX_FAILURES_SHOWN: usize = 20;

/// `1 thing`, `2 things`.
fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn proc_name(p: &Proc) -> String {
    format!("{} (pid {})", p.command.join(" "), p.pid)
}

/// `function+off file:line`, or the address.
pub fn site_text(c: &CrashEntry) -> Option<String> {
    let f = c.site.as_ref()?;
    let mut s = f.function.clone().unwrap_or_else(|| f.addr.clone());
    if let (Some(file), Some(line)) = (&f.file, f.line) {
        s += &format!(" at {file}:{line}");
    }
    Some(s)
}

fn branch_line(b: &Branch) -> String {
    let side = |addr: &str, sym: &Option<String>, line: &Option<String>| {
        let mut s = sym.clone().unwrap_or_else(|| addr.to_string());
        if let Some(l) = line {
            s += &format!(" ({l})");
        }
        s
    };
    format!(
        "{:<11} {} -> {}",
        b.kind,
        side(&b.from, &b.from_sym, &b.from_line),
        side(&b.to, &b.to_sym, &b.to_line)
    )
}

/// One crash, a few lines.
pub fn crash_text(n: usize, c: &CrashEntry) -> String {
    let r = &c.report;
    let mut out = format!("\n[{n}] {} (pid {}) got {}\n", r.command.join(" "), r.pid, c.what());
    if !c.parents.is_empty() {
        let chain: Vec<String> = c.parents.iter().map(proc_name).collect();
        out += &format!("    started by: {}\n", chain.join(" <- "));
    }
    if let Some(s) = site_text(c) {
        out += &format!("    at {s}\n");
    }
    match &r.trace_file {
        Some(f) => out += &format!("    trace: {f}\n"),
        None => out += "    trace: not kept\n",
    }
    if let Some(t) = r.threads.iter().find(|t| t.crashed).or(r.threads.last()) {
        if !t.branches.is_empty() {
            out += &format!("    last {} branches of thread {}, oldest first:\n", t.branches.len(), t.tid);
            for b in &t.branches {
                out += &format!("      {}\n", branch_line(b));
            }
        }
    }
    out
}

/// The whole report.
pub fn step_text(s: &StepReport) -> String {
    let mut out = String::new();
    let procs = count(s.processes, "process", "processes");
    if s.crashes.is_empty() {
        out += &format!("bts ci: no crash in {procs} ({} recorder)\n", s.backend);
    } else {
        out += &format!(
            "bts ci: {} of {procs} crashed ({} recorder); traces in {}/\n",
            s.crashes.len(),
            s.backend,
            s.artifacts.trim_end_matches('/')
        );
        for (i, c) in s.crashes.iter().enumerate() {
            out += &crash_text(i + 1, c);
        }
        out += "\n";
    }
    if !s.failures.is_empty() {
        let n = s.failures.len();
        out +=
            &format!("bts ci: {} failed without crashing:\n", count(n, "other process", "other processes"));
        for f in s.failures.iter().take(MAX_FAILURES_SHOWN) {
            let by = f.parents.first().map(|p| format!(", started by {}", proc_name(p))).unwrap_or_default();
            let how = match (&f.signal, f.code) {
                (Some(sig), _) => format!("was killed by {sig}"),
                (None, Some(c)) => format!("exited with code {c}"),
                (None, None) => "failed".into(),
            };
            out += &format!("  {} (pid {}) {how}{by}\n", f.command.join(" "), f.pid);
        }
        if n > MAX_FAILURES_SHOWN {
            out += &format!("  … and {} more (--json has them all)\n", n - MAX_FAILURES_SHOWN);
        }
    }
    let how = if s.backend == "valgrind" {
        "it runs on under Valgrind, which cannot let go of a process"
    } else {
        "detached, it runs on"
    };
    for p in &s.left_running {
        out += &format!("bts ci: left running by the step: {}; {how}\n", proc_name(p));
    }
    if let Some(dir) = &s.valgrind_folder {
        out +=
            &format!("bts ci: Valgrind goes on writing their logs to {dir}; remove it once they are gone\n");
    }
    if !s.artifacts_removed.is_empty() {
        out += &format!(
            "bts ci: --max-artifacts: {} removed ({})\n",
            count(s.artifacts_removed.len(), "older trace file", "older trace files"),
            s.artifacts_removed.join(", ")
        );
    }
    out
}
