//! `bts info`: what a trace file holds, checked against the file itself.

mod common;
use common::*;

use bts_reader::{StreamKind, TraceFile};

#[test]
fn info_counts_what_the_file_holds() {
    let dir = scratch("info_counts");
    let bin = fixture("thread_crash");
    let out = bts(
        &dir,
        &["run", "--backend", "fast", "--report", "never", "-o", "t.bts", "--", bin.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(139), "{}", text(&out.stderr));
    let file = dir.join("t.bts");
    let info = json(&bts(&dir, &["info", "--json", "t.bts"]));
    let tf = TraceFile::read(&file).unwrap();

    // Every byte of the file is in one section kind or another.
    let total: u64 = info["sections"].as_array().unwrap().iter().map(|s| s["bytes"].as_u64().unwrap()).sum();
    assert_eq!(total, std::fs::metadata(&file).unwrap().len());
    let streams = info["sections"].as_array().unwrap().iter().find(|s| s["name"] == "STREAM").unwrap();
    assert_eq!(streams["count"].as_u64().unwrap(), tf.streams.len() as u64);

    // Threads, the crashed one, records.
    let threads: Vec<i32> = tf
        .streams
        .iter()
        .filter_map(|s| match s.kind {
            StreamKind::Thread { tid, .. } => Some(tid),
            _ => None,
        })
        .collect();
    assert!(threads.len() >= 2, "main and worker");
    assert_eq!(info["threads"], threads.len());
    let branches: usize = tf.streams.iter().map(|s| s.records.iter().filter(|r| r.is_branch()).count()).sum();
    let context: usize = tf.streams.iter().map(|s| s.records.len()).sum::<usize>() - branches;
    assert_eq!(info["branches"], branches);
    assert_eq!(info["context_records"], context);
    assert!(context > 0, "each thread's arrival is a context record");
    let clocks: Vec<u64> =
        tf.streams.iter().flat_map(|s| s.records.iter()).filter(|r| !r.is_branch()).map(|r| r.to).collect();
    let span = (*clocks.iter().min().unwrap(), *clocks.iter().max().unwrap());
    assert_eq!(info["time_span_ns"], serde_json::json!([span.0, span.1]));
    let crashed: Vec<&serde_json::Value> =
        info["buffers"].as_array().unwrap().iter().filter(|b| b["crashed"] == true).collect();
    assert_eq!(crashed.len(), 1);
    assert_eq!(crashed[0]["tid"], tf.meta.tid.unwrap());
    assert_eq!(info["processes"].as_array().unwrap(), &[serde_json::json!(tf.meta.pid)]);
    assert_eq!(info["signal"], "SIGSEGV");

    // The program is among the modules; the text says the same.
    let path = bin.to_str().unwrap();
    assert!(info["modules"].as_array().unwrap().iter().any(|m| m["path"] == path));
    let t = text(&bts(&dir, &["info", "t.bts"]).stdout);
    assert!(t.contains(&format!("{} branches, {} context records", branches, context)), "{t}");
    assert!(t.contains(path), "{t}");
}

#[test]
fn info_on_a_bad_file_names_it() {
    let dir = scratch("info_bad");
    std::fs::write(dir.join("junk.bts"), b"BTSTRACE\x02\0\0\0garbage").unwrap();
    let out = bts(&dir, &["info", "junk.bts"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("junk.bts"), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
}

/// A name that is no file to read (a folder) is named in the error of
/// every command that reads traces, not called "the trace".
#[test]
fn a_folder_given_as_a_trace_is_named() {
    let dir = scratch("info_folder");
    std::fs::create_dir_all(dir.join("d.bts")).unwrap();
    for args in [
        &["info", "d.bts"][..],
        &["last-branch", "d.bts"],
        &["history", "d.bts"],
        &["cut", "d.bts", "--last", "5", "-o", "x.bts"],
        &["filter", "d.bts", "--pid", "1", "-o", "x.bts"],
    ] {
        let out = bts(&dir, args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("d.bts: Is a directory"), "{args:?}: {err}");
        assert!(!err.contains("the trace:"), "{args:?}: {err}");
    }
}
