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
    for at in [40, bytes.len() / 3, bytes.len() - 40] {
        let mut b = bytes.clone();
        b[at] ^= 0xff;
        check(&b, "corrupt");
    }
    let out = bts(&dir, &["last-branch", "/nonexistent.bts"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("No such file"));
}
