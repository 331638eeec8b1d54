//! Saved traces: `bts last-branch` after the process is gone, and bad files.

mod common;
use common::*;

fn crash_trace(dir: &std::path::Path) -> std::path::PathBuf {
    let bin = fixture("null_call");
    let out = bts(dir, &["run", "--report", "never", "-o", "crash.bts", "--", bin.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(139));
    dir.join("crash.bts")
}

#[test]
fn last_branch_reads_a_saved_trace() {
    let dir = scratch("last_branch");
    let file = crash_trace(&dir);
    let out = bts(&dir, &["last-branch", "-n", "5", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.contains("got SIGSEGV at address 0x0"), "{s}");
    assert!(s.contains("Last 5 branches of thread"), "{s}");
    let rows = s.lines().filter(|l| l.contains(" -> ")).count();
    assert_eq!(rows, 5, "{s}");
    let r = json(&bts(&dir, &["last-branch", "--json", "-n", "3", file.to_str().unwrap()]));
    let t = crashed_thread(&r);
    assert_eq!(t["branches"].as_array().unwrap().len(), 3);
    assert!(t["lost"].as_u64().unwrap() > 0, "a 64 KiB buffer wraps over a whole run");
    // --thread picks a thread; an unknown one is an error.
    let tid = t["tid"].to_string();
    let again = json(&bts(&dir, &["last-branch", "--json", "--thread", &tid, file.to_str().unwrap()]));
    assert_eq!(again["threads"].as_array().unwrap().len(), 1);
    let out = bts(&dir, &["last-branch", "--thread", "1", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no thread 1 in this trace"));
}

#[test]
fn truncated_and_corrupt_files_are_clear_errors() {
    let dir = scratch("corrupt");
    let file = crash_trace(&dir);
    let bytes = std::fs::read(&file).unwrap();
    let bad = dir.join("bad.bts");
    let check = |data: &[u8], expect: &str| {
        std::fs::write(&bad, data).unwrap();
        let out = bts(&dir, &["last-branch", bad.to_str().unwrap()]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(expect), "expected '{expect}' in: {err}");
        assert!(!err.contains("panicked"), "{err}");
    };
    check(&[], "not a bts trace file");
    check(b"#!/bin/sh\necho hi\n", "not a bts trace file");
    check(&bytes[..6], "truncated");
    for cut in [20, 100, bytes.len() / 2, bytes.len() - 1] {
        check(&bytes[..cut], "truncated");
    }
    // Whole but for its end marker (16 bytes): a recording cut short.
    check(&bytes[..bytes.len() - 16], "no end marker");
    for at in [40, bytes.len() / 3, bytes.len() - 40] {
        let mut b = bytes.clone();
        b[at] ^= 0xff;
        check(&b, "corrupt");
    }
    let out = bts(&dir, &["last-branch", "/nonexistent.bts"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("No such file"));
}

#[test]
fn a_cut_trace_is_valid_and_keeps_the_code_its_records_need() {
    let dir = scratch("cut_valid");
    let file = crash_trace(&dir);
    let f = file.to_str().unwrap();
    for (how, arg) in [("--last", "40"), ("--range", "100..160"), ("--first", "30")] {
        let name = format!("cut{how}.bts");
        let out = bts(&dir, &["cut", f, how, arg, "-o", &name]);
        assert!(out.status.success(), "{how}: {}", text(&out.stderr));
        let cut = bts_reader::TraceFile::read(&dir.join(&name)).unwrap_or_else(|e| panic!("{how}: {e}"));
        let kept: usize =
            cut.streams.iter().map(|s| s.records.iter().filter(|r| r.is_branch()).count()).sum();
        assert!(kept > 0 && kept <= 60, "{how}: {kept}");
        // Every kept branch decodes: the instruction history has no gap.
        let h = bts(&dir, &["history", &name, "1,+100000"]);
        assert!(h.status.success(), "{how}: {}", text(&h.stderr));
        assert!(!text(&h.stdout).contains("decode error"), "{how}: {}", text(&h.stdout));
    }
    // The end of the trace, cut or not, reads the same.
    let whole = text(&bts(&dir, &["history", f]).stdout);
    let last = text(&bts(&dir, &["history", "cut--last.bts"]).stdout);
    let tail =
        |s: &str| s.lines().map(|l| l.split_once('\t').map_or(l, |x| x.1).to_string()).collect::<Vec<_>>();
    assert_eq!(tail(&whole), tail(&last));
    // An existing file is never overwritten.
    let again = bts(&dir, &["cut", f, "--last", "5", "-o", "cut--last.bts"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again.stderr).contains("does not overwrite"), "{}", text(&again.stderr));
}

/// Each stream of a trace: whose, and its records, in a canonical order.
fn streams_of(tf: &bts_reader::TraceFile) -> Vec<String> {
    let mut v: Vec<String> =
        tf.streams.iter().map(|s| format!("{:?} {} {:?}", s.kind, s.overwritten, s.records)).collect();
    v.sort();
    v
}

/// `all.bts` in `dir`: sh and its two children (one exits 3, one crashes),
/// followed, on the fast recorder.
fn three_process_trace(dir: &std::path::Path) {
    let (exit3, null_call) = (fixture("exit3"), fixture("null_call"));
    let script = format!("{}; {}; true", exit3.display(), null_call.display());
    let out = bts(
        dir,
        &[
            "run",
            "--backend",
            "fast",
            "--follow-fork",
            "--report",
            "never",
            "-o",
            "all.bts",
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn split_then_merge_gives_back_the_same_records() {
    let dir = scratch("split_merge");
    three_process_trace(&dir);
    let all = bts_reader::TraceFile::read(&dir.join("all.bts")).unwrap();
    let pids: std::collections::BTreeSet<i32> = all.modules.iter().map(|m| m.pid).collect();
    assert_eq!(pids.len(), 3, "sh and its two children");
    for (by, parts_expected) in [("process", pids.len()), ("thread", all.streams.len())] {
        let out = bts(&dir, &["split", "all.bts", "--by", by, "-o", by]);
        assert!(out.status.success(), "{by}: {}", text(&out.stderr));
        let parts: Vec<String> = text(&out.stdout).lines().map(str::to_string).collect();
        assert_eq!(parts.len(), parts_expected, "{by}: {parts:?}");
        for p in &parts {
            let tf = bts_reader::TraceFile::read(&dir.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
            assert!(!tf.streams.is_empty(), "{p}");
            // Each part holds the code its records need.
            let h = bts(&dir, &["history", p, "1,+100000"]);
            assert!(
                h.status.success() && !text(&h.stdout).contains("decode error"),
                "{p}: {}",
                text(&h.stdout)
            );
        }
        let mut args = vec!["merge"];
        args.extend(parts.iter().map(String::as_str));
        let merged = format!("merged-{by}.bts");
        args.extend(["-o", &merged]);
        let out = bts(&dir, &args);
        assert!(out.status.success(), "{by}: {}", text(&out.stderr));
        let m = bts_reader::TraceFile::read(&dir.join(&merged)).unwrap();
        assert_eq!(streams_of(&m), streams_of(&all), "{by}: split then merge is the same records");
        assert_eq!(m.meta, all.meta, "{by}: the first process's metadata");
        let mods = |tf: &bts_reader::TraceFile| {
            let mut v: Vec<String> = tf.modules.iter().map(|m| format!("{m:?}")).collect();
            v.sort();
            v
        };
        assert_eq!(mods(&m), mods(&all), "{by}");
        // A part named twice: its buffers would be there twice.
        let out = bts(&dir, &["merge", &parts[0], &parts[1], &parts[0], "-o", "twice.bts"]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{by}: {err}");
        assert!(err.contains(&format!("is in both {} and {}", parts[0], parts[0])), "{by}: {err}");
        assert!(!dir.join("twice.bts").exists(), "{by}");
    }
}

#[test]
fn filter_keeps_the_records_whose_ends_lie_in_the_chosen_code() {
    let dir = scratch("filter");
    three_process_trace(&dir);
    let all = bts_reader::TraceFile::read(&dir.join("all.bts")).unwrap();
    let context = |tf: &bts_reader::TraceFile| -> usize {
        tf.streams.iter().map(|s| s.records.iter().filter(|r| !r.is_branch()).count()).sum()
    };
    let branches = |tf: &bts_reader::TraceFile| -> Vec<(u64, u64, i32, u32)> {
        let mut v = Vec::new();
        for s in &tf.streams {
            if let bts_reader::StreamKind::Thread { pid, generation, .. } = s.kind {
                v.extend(s.records.iter().filter(|r| r.is_branch()).map(|r| (r.from, r.to, pid, generation)));
            }
        }
        v
    };

    // A function: each kept branch leaves or enters it.
    assert!(bts(&dir, &["filter", "all.bts", "--function", "c", "-o", "c.bts"]).status.success());
    let c = bts_reader::TraceFile::read(&dir.join("c.bts")).unwrap();
    let r = json(&bts(&dir, &["last-branch", "--json", "--all-threads", "-n", "100000", "c.bts"]));
    let mut n = 0;
    for t in r["threads"].as_array().unwrap() {
        for b in t["branches"].as_array().unwrap() {
            let in_c = |k: &str| b[k].as_str().is_some_and(|s| s == "c" || s.starts_with("c+"));
            assert!(in_c("from_sym") || in_c("to_sym"), "{b}");
            n += 1;
        }
    }
    assert!(n >= 3, "the loop in c and the NULL call");
    assert_eq!(context(&c), context(&all), "context records are kept");

    // A module: each kept branch has an end in it.
    assert!(bts(&dir, &["filter", "all.bts", "--module", "libc.so.6", "-o", "libc.bts"]).status.success());
    let libc = bts_reader::TraceFile::read(&dir.join("libc.bts")).unwrap();
    let kept = branches(&libc);
    assert!(!kept.is_empty());
    for (from, to, pid, gen) in kept {
        let in_libc = |a: u64| {
            all.modules.iter().any(|m| {
                (m.pid, m.generation) == (pid, gen) && m.map.path.ends_with("/libc.so.6") && m.map.contains(a)
            })
        };
        assert!(in_libc(from) || in_libc(to), "{from:#x} -> {to:#x}");
    }

    // A process: its buffers whole, its modules only.
    let pid = all.streams.iter().rev().find_map(|s| match s.kind {
        bts_reader::StreamKind::Thread { pid, crashed: true, .. } => Some(pid),
        _ => None,
    });
    let pid = pid.expect("the crashed child");
    assert!(bts(&dir, &["filter", "all.bts", "--pid", &pid.to_string(), "-o", "p.bts"]).status.success());
    let p = bts_reader::TraceFile::read(&dir.join("p.bts")).unwrap();
    assert!(p.modules.iter().all(|m| m.pid == pid));
    let mine: Vec<_> = branches(&all).into_iter().filter(|b| b.2 == pid).collect();
    assert_eq!(branches(&p), mine);
    let h = bts(&dir, &["history", "p.bts", "1,+100000"]);
    assert!(h.status.success() && !text(&h.stdout).contains("decode error"), "{}", text(&h.stdout));

    // Nothing chosen: a usage error.
    assert_eq!(bts(&dir, &["filter", "all.bts", "-o", "none.bts"]).status.code(), Some(2));
    // A module, thread or process the trace does not hold (a name cut
    // short, a pid mistyped): an error that lists what it holds, no file.
    for (args, said) in [
        (["--module", "libc"], "no module `libc` (it has: "),
        (["--tid", "1"], "no buffer of thread 1 (it has: "),
        (["--pid", "1"], "no thread buffer of process 1 (it has: "),
    ] {
        let out = bts(&dir, &[&["filter", "all.bts", "-o", "absent.bts"][..], &args].concat());
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(said), "{args:?}: {err}");
        assert!(!dir.join("absent.bts").exists(), "{args:?}");
    }
    let err = text(&bts(&dir, &["filter", "all.bts", "--module", "libc", "-o", "absent.bts"]).stderr);
    assert!(err.contains("libc.so.6"), "{err}");
    let err = text(&bts(&dir, &["filter", "all.bts", "--pid", "1", "-o", "absent.bts"]).stderr);
    assert!(err.contains(&pid.to_string()), "{err}");

    // bts cut --time: a branch's time is its thread's last arrival.
    let info = json(&bts(&dir, &["info", "--json", "all.bts"]));
    let (t1, t2) = (info["time_span_ns"][0].as_u64().unwrap(), info["time_span_ns"][1].as_u64().unwrap());
    let after_arrival: usize = all
        .streams
        .iter()
        .map(|s| match s.records.iter().position(|r| !r.is_branch()) {
            Some(i) => s.records[i..].iter().filter(|r| r.is_branch()).count(),
            None => 0,
        })
        .sum();
    assert!(bts(&dir, &["cut", "all.bts", "--time", &format!("{t1}..{t2}"), "-o", "t.bts"]).status.success());
    let t = bts_reader::TraceFile::read(&dir.join("t.bts")).unwrap();
    assert_eq!(branches(&t).len(), after_arrival);
    // A cut that keeps nothing (before the first arrival, past the end):
    // an error that says what the trace has, and no file.
    for (how, said) in [
        (["--time", &format!("0..{}", t1 - 1)], format!("branches timed from {t1} to")),
        (["--range", "100000000..100000001"], "no branch 100000000..100000001 in any buffer".into()),
    ] {
        let out = bts(&dir, &[&["cut", "all.bts", "-o", "t0.bts"][..], &how].concat());
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{how:?}: {err}");
        assert!(err.contains(&said), "{how:?}: {err}");
        assert!(!dir.join("t0.bts").exists());
    }
}
