//! `bts run` on real crashing and exiting programs.

mod common;
use common::*;

fn run_json(test: &str, fixture_name: &str, extra: &[&str]) -> (std::process::Output, std::path::PathBuf) {
    let dir = scratch(test);
    let bin = fixture(fixture_name);
    let mut args = vec!["run", "--json", "-n", "16"];
    args.extend_from_slice(extra);
    args.push("--");
    args.push(bin.to_str().unwrap());
    (bts(&dir, &args), dir)
}

#[test]
fn null_function_pointer_after_a_b_c() {
    for backend in ["fast", "step"] {
        let (out, dir) = run_json(&format!("null_call_{backend}"), "null_call", &["--backend", backend]);
        assert_eq!(out.status.code(), Some(128 + 11), "{}", text(&out.stderr));
        let r = json(&out);
        assert_eq!(r["version"], 1);
        assert_eq!(r["backend"], backend);
        assert_eq!(r["outcome"]["kind"], "signal");
        assert_eq!(r["outcome"]["signal"], 11);
        assert_eq!(r["outcome"]["signal_name"], "SIGSEGV");
        assert_eq!(r["outcome"]["fault_addr"], "0x0");
        assert_eq!(r["outcome"]["tid"], r["pid"]);
        let t = crashed_thread(&r);
        let br = t["branches"].as_array().unwrap();
        assert_eq!(br.len(), 16);
        let last = br.last().unwrap();
        assert_eq!(last["kind"], "call");
        assert_eq!(last["to"], "0x0");
        assert!(last["from_sym"].as_str().unwrap().starts_with("c+"), "{last}");
        assert!(last["from_line"].as_str().unwrap().ends_with("null_call.c:11"), "{last}");
        // The way in: main -> a -> b -> c, in that order, among the branches.
        let calls: Vec<&str> =
            br.iter().filter(|b| b["kind"] == "call").filter_map(|b| b["to_sym"].as_str()).collect();
        let pos = |f: &str| {
            calls.iter().position(|s| *s == f).unwrap_or_else(|| panic!("no call to {f}: {calls:?}"))
        };
        assert!(pos("a") < pos("b") && pos("b") < pos("c"), "{calls:?}");
        // The trace file exists and says the same.
        let file = r["trace_file"].as_str().unwrap();
        let again = bts(&dir, &["last-branch", "--json", "-n", "16", file]);
        assert!(again.status.success(), "{}", text(&again.stderr));
        assert_eq!(pairs(crashed_thread(&json(&again))), pairs(t));
        // Last instructions end at the fault address.
        let insns = t["last_instructions"].as_array().unwrap();
        let cur = insns.last().unwrap();
        assert_eq!(cur["current"], true);
        assert_eq!(cur["addr"], "0x0");
        assert!(insns.iter().any(|i| i["text"].as_str().unwrap().starts_with("call")));
    }
}

#[test]
fn text_report_names_the_signal_and_the_functions() {
    let dir = scratch("null_call_text");
    let bin = fixture("null_call");
    let out = bts(&dir, &["run", "-n", "8", "--", bin.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(139));
    let err = text(&out.stderr);
    assert!(err.contains("got SIGSEGV at address 0x0"), "{err}");
    assert!(err.contains("Last 8 branches of thread"), "{err}");
    assert!(err.contains("<c+0x"), "{err}");
    assert!(err.contains("=> 0x0"), "{err}");
    // The program's own output passes through untouched.
    assert_eq!(text(&out.stdout), "calling a\n");
    let pid = err.split("(pid ").nth(1).unwrap().split(')').next().unwrap();
    assert!(dir.join(format!("bts-{pid}.bts")).exists());
}

#[test]
fn crash_in_a_worker_thread() {
    let (out, _) = run_json("thread_crash", "thread_crash", &[]);
    assert_eq!(out.status.code(), Some(139), "{}", text(&out.stderr));
    let r = json(&out);
    let t = crashed_thread(&r);
    assert_ne!(t["tid"], r["pid"], "the worker crashed, not main");
    assert_eq!(r["outcome"]["tid"], t["tid"]);
    assert_eq!(r["threads"].as_array().unwrap().len(), 2);
    let last = t["branches"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["kind"], "call");
    assert_eq!(last["to_sym"], "worker_fault");
    let cur = t["last_instructions"].as_array().unwrap().last().unwrap().clone();
    assert!(cur["sym"].as_str().unwrap().starts_with("worker_fault+"), "{cur}");
}

#[test]
fn crash_inside_a_callback_called_by_libc() {
    let (out, dir) = run_json("callback_crash", "callback_crash", &[]);
    assert_eq!(out.status.code(), Some(139), "{}", text(&out.stderr));
    let r = json(&out);
    let t = crashed_thread(&r);
    let br = t["branches"].as_array().unwrap();
    let last = br.last().unwrap();
    // libc's sort called our comparator: the call comes from libc.
    assert_eq!(last["kind"], "call");
    assert_eq!(last["to_sym"], "compare_items");
    assert!(!last["from_sym"].as_str().unwrap_or("").starts_with("main"), "{last}");
    let from = u64::from_str_radix(last["from"].as_str().unwrap().trim_start_matches("0x"), 16).unwrap();
    let to = u64::from_str_radix(last["to"].as_str().unwrap().trim_start_matches("0x"), 16).unwrap();
    assert!(from.abs_diff(to) > 1 << 24, "the caller is in another module: {last}");
    // Further back: main's call into the sort (through the PLT).
    let out = bts(&dir, &["last-branch", "--json", "-n", "100000", r["trace_file"].as_str().unwrap()]);
    let all = json(&out);
    let br = crashed_thread(&all)["branches"].as_array().unwrap().clone();
    let from_main = br
        .iter()
        .rposition(|b| b["kind"] == "call" && b["from_sym"].as_str().is_some_and(|s| s.starts_with("main+")))
        .expect("a call from main");
    assert!(br[from_main..].iter().all(|b| b["to_sym"] != "main"), "main did not return before the crash");
}

#[test]
fn return_to_a_smashed_return_address() {
    let (out, _) = run_json("smash", "smash", &[]);
    assert_eq!(out.status.code(), Some(139), "{}", text(&out.stderr));
    let r = json(&out);
    assert_eq!(r["outcome"]["fault_addr"], "0x41414141");
    let last = crashed_thread(&r)["branches"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["kind"], "return");
    assert_eq!(last["to"], "0x41414141");
    assert!(last["from_sym"].as_str().unwrap().starts_with("smash+"));
}

#[test]
fn abort_is_reported_with_its_signal() {
    let (out, _) = run_json("abort", "abort", &[]);
    assert_eq!(out.status.code(), Some(128 + 6), "{}", text(&out.stderr));
    let r = json(&out);
    assert_eq!(r["outcome"]["signal_name"], "SIGABRT");
    assert!(r["outcome"]["fault_addr"].is_null());
    let br = crashed_thread(&r)["branches"].as_array().unwrap().clone();
    // abort() raises the signal with a system call.
    assert_eq!(br.last().unwrap()["kind"], "syscall");
    assert!(br.iter().any(|b| b["to_sym"] == "abort"), "no call to abort");
}

#[test]
fn a_program_that_handles_its_own_segv_is_not_a_crash() {
    let (out, dir) = run_json("segv_handler", "segv_handler", &[]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "recovered\n", "no report on stdout");
    assert!(text(&out.stderr).is_empty(), "{}", text(&out.stderr));
    let files: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert!(files.is_empty(), "no trace written for a clean run");
}

#[test]
fn normal_exit_passes_the_code_through_quietly() {
    let dir = scratch("exit3");
    let bin = fixture("exit3");
    let out = bts(&dir, &["run", "--", bin.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{}", text(&out.stderr));
    // --report always reports the exit and writes the trace.
    let out = bts(
        &dir,
        &["run", "--report", "always", "--json", "-n", "100000", "-o", "t.bts", "--", bin.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(3));
    let r = json(&out);
    assert_eq!(r["outcome"]["kind"], "exit");
    assert_eq!(r["outcome"]["code"], 3);
    let t = &r["threads"][0];
    assert_eq!(t["crashed"], false);
    assert!(t["branches"].as_array().unwrap().iter().any(|b| b["to_sym"] == "exit"));
    assert!(dir.join("t.bts").exists());
}

#[test]
fn follow_fork_reports_the_crashing_child() {
    let dir = scratch("fork_follow");
    let bin = fixture("fork_crash");
    // Not followed: the child runs untraced (no int3 left in it) and dies of
    // its own SIGSEGV; system()'s shell works.
    let out = bts(&dir, &["run", "--backend", "fast", "--", bin.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "system: 5\nchild: signal 11\n");
    assert!(!text(&out.stderr).contains("SIGSEGV"));
    let out = bts(
        &dir,
        &["run", "--backend", "fast", "--follow-fork", "-o", "child.bts", "--", bin.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let err = text(&out.stderr);
    assert!(err.contains("got SIGSEGV at address 0x0"), "{err}");
    let saved = err.split("trace saved to ").nth(1).unwrap().split(' ').next().unwrap();
    assert!(saved.starts_with("child.") && saved != "child.bts", "{saved}");
    assert!(dir.join("child.bts").exists(), "the parent's trace is kept too");
    let r = json(&bts(&dir, &["last-branch", "--json", saved]));
    assert_eq!(r["outcome"]["signal_name"], "SIGSEGV");
    let t = crashed_thread(&r);
    let last = t["branches"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["to"], "0x0");
    assert!(last["from_sym"].as_str().unwrap().starts_with("child_work"));
    assert!(stdout.contains("child: signal 11"));
}

#[test]
fn a_program_that_cannot_be_executed_is_a_clear_error() {
    let dir = scratch("noexec");
    let out = bts(&dir, &["run", "--", "/nonexistent/program"]);
    assert_eq!(out.status.code(), Some(127), "not found, as env says it");
    let err = text(&out.stderr);
    assert!(err.contains("cannot execute /nonexistent/program"), "{err}");
    assert!(!err.contains("panicked"));
}

#[test]
fn an_exec_is_followed_by_every_backend() {
    let dir = scratch("exec_followed");
    let bin = fixture("null_call");
    for backend in ["fast", "valgrind"] {
        let script = format!("exec {}", bin.display());
        let out = bts(&dir, &["run", "--backend", backend, "--json", "--", "sh", "-c", &script]);
        assert_eq!(out.status.code(), Some(139), "{backend}: {}", text(&out.stderr));
        let r = json(&out);
        let last = crashed_thread(&r)["branches"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["to"], "0x0", "{backend}");
        assert!(last["from_sym"].as_str().unwrap().starts_with("c+"), "{backend}: {last}");
    }
}
