//! The decoder against ground truth: the step recorder logs every
//! instruction it executes; the decoder rebuilds the same sequence from the
//! branch records alone. Plus the history formats, gaps, and exports.

mod common;
use common::*;

use std::path::Path;

fn u64s(b: &[u8]) -> Vec<u64> {
    b.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect()
}

fn hex(s: &serde_json::Value) -> u64 {
    u64::from_str_radix(s.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
}

/// Records `fixture` with the step recorder and its instruction log.
fn record(dir: &Path, fixture_name: &str) -> (Vec<u64>, String) {
    let bin = fixture(fixture_name);
    let file = format!("{fixture_name}.bts");
    let log = dir.join(format!("{fixture_name}.log"));
    let out = bts(
        dir,
        &[
            "run",
            "--backend",
            "step",
            "--no-aslr",
            "--buffer-size",
            "2M",
            "--report",
            "never",
            "-o",
            &file,
            "--insn-log",
            log.to_str().unwrap(),
            "--",
            bin.to_str().unwrap(),
        ],
    );
    assert_ne!(out.status.code(), Some(125), "{}", text(&out.stderr));
    let mut truth = u64s(&std::fs::read(&log).unwrap());
    // A rep-prefixed instruction is stepped once per iteration.
    truth.dedup();
    (truth, file)
}

fn check_against_truth(fixture_name: &str) {
    let dir = scratch(&format!("decode_{fixture_name}"));
    let (truth, file) = record(&dir, fixture_name);
    let out = bts(&dir, &["history", &file, "--json", "1,100000000"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let h: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let insns = h["instructions"].as_array().unwrap();
    assert!(insns.iter().all(|i| i.get("gap").is_none()), "no gaps in a complete trace");
    let (current, executed) = insns.split_last().unwrap();
    assert_eq!(current["current"], true);
    let decoded: Vec<u64> = executed.iter().map(|i| hex(&i["addr"])).collect();
    assert!(decoded.len() > 1000, "{}", decoded.len());
    // The decoded run is the end of the truth: from the first branch's target on.
    assert!(truth.len() >= decoded.len());
    let tail = &truth[truth.len() - decoded.len()..];
    if let Some(i) = tail.iter().zip(&decoded).position(|(a, b)| a != b) {
        panic!(
            "{fixture_name}: instruction {i} of {}: truth {:x?} decoded {:x?}",
            decoded.len(),
            &tail[i.saturating_sub(3)..(i + 3).min(tail.len())],
            &decoded[i.saturating_sub(3)..(i + 3).min(decoded.len())]
        );
    }
    // And what came before is the way to the first record's branch.
    let before = truth.len() - decoded.len();
    assert!(before > 0 && before < 50, "only the run up to the first branch is missing: {before}");
}

#[test]
fn rebuilds_every_instruction_of_branchy_code() {
    check_against_truth("branchy");
}

#[test]
fn rebuilds_every_instruction_of_a_signal_handler_and_longjmp() {
    check_against_truth("segv_handler");
}

#[test]
fn rebuilds_every_instruction_up_to_a_crash_in_a_callback() {
    check_against_truth("callback_crash");
}

#[test]
fn rebuilds_every_instruction_up_to_a_smashed_return() {
    check_against_truth("smash");
}

#[test]
fn history_formats_and_call_structure() {
    let dir = scratch("history_formats");
    let bin = fixture("null_call");
    let out = bts(
        &dir,
        &["run", "--buffer-size", "1M", "-o", "t.bts", "--report", "never", "--", bin.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(139));
    // The last ten instructions, GDB's line format, the current one marked.
    let out = bts(&dir, &["history", "t.bts"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines.len(), 10, "{s}");
    let n0: u64 = lines[0].split('\t').next().unwrap().parse().unwrap();
    for (k, l) in lines.iter().enumerate() {
        let f: Vec<&str> = l.split('\t').collect();
        assert_eq!(f[0].parse::<u64>().unwrap(), n0 + k as u64, "{l}");
        assert!(f[1].starts_with("   0x") || f[1].starts_with("=> 0x"), "{l}");
        assert!(f[1].trim_start_matches("=> ").trim_start().len() >= 18, "{l}");
        assert!(f[1].ends_with(':'), "{l}");
    }
    assert!(lines[8].contains(" <c+") && lines[8].ends_with("call   *%rdx"), "{s}");
    assert!(lines[9].starts_with(&format!("{}\t=> 0x0000000000000000:", n0 + 9)), "{s}");
    // /f and /r.
    let s = text(&bts(&dir, &["history", "t.bts", "--no-fn", "--raw", &format!("{},+1", n0 + 8)]).stdout);
    assert_eq!(s.lines().count(), 1, "{s}");
    assert!(!s.contains('<') && s.contains(":\tff d2\tcall   *%rdx"), "{s}");
    // The call history: main -> a -> b -> c, indented, with lines and ranges.
    let s = text(&bts(&dir, &["history", "--calls", "--indent", "--lines", "--insn-range", "t.bts"]).stdout);
    let tail: Vec<&str> = s.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect();
    let names: Vec<String> = tail.iter().map(|l| l.split('\t').nth(1).unwrap().to_string()).collect();
    assert_eq!(names[0].trim(), "main", "{s}");
    let depth = |x: &String| x.len() - x.trim_start().len();
    assert_eq!(names[1].trim(), "a");
    assert_eq!(names[2].trim(), "b");
    assert_eq!(names[3].trim(), "c");
    assert_eq!(depth(&names[1]), depth(&names[0]) + 2);
    assert_eq!(depth(&names[3]), depth(&names[0]) + 6);
    assert!(tail[3].contains("\tinst ") && tail[3].ends_with("\tat null_call.c:7,11"), "{s}");
    // PLT stubs are named as GDB names them, and the call through one is a
    // tail call at the same depth.
    let all = text(&bts(&dir, &["history", "t.bts", "--calls", "--indent", "1,1000000"]).stdout);
    let lines: Vec<&str> = all.lines().collect();
    let plt = lines.iter().position(|l| l.ends_with("puts@plt")).expect("a puts@plt segment");
    let depth = |l: &str| l.split('\t').nth(1).map_or(0, |n| n.len() - n.trim_start().len());
    // The first call goes through the lazy resolver, which then jumps to puts.
    let callee = lines[plt + 1..]
        .iter()
        .filter(|l| depth(l) == depth(lines[plt]))
        .find(|l| !l.ends_with("??") && !l.contains("_dl_runtime_resolve"))
        .unwrap();
    assert!(callee.trim_end().ends_with("puts"), "{callee}");
    // JSON call history links segments.
    let v: serde_json::Value =
        serde_json::from_slice(&bts(&dir, &["history", "--calls", "--json", "t.bts"]).stdout).unwrap();
    let calls = v["calls"].as_array().unwrap();
    let c = calls.iter().rev().find(|c| c["function"] == "c").unwrap();
    let b = calls.iter().find(|x| x["number"] == c["up"]).unwrap();
    assert_eq!(b["function"], "b");
    // Bad ranges are errors.
    let out = bts(&dir, &["history", "t.bts", "0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("bad range"));
}

#[test]
fn overwritten_trace_shows_gaps_not_garbage() {
    let dir = scratch("history_gaps");
    let bin = fixture("branchy");
    let out = bts(
        &dir,
        &["run", "--buffer-size", "24K", "-o", "t.bts", "--report", "always", "--", bin.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // A small buffer keeps only the newest records: the oldest walk starts
    // at a record's target with nothing before it, and decoding goes on.
    let v: serde_json::Value =
        serde_json::from_slice(&bts(&dir, &["history", "t.bts", "--json", "1,100000000"]).stdout).unwrap();
    assert!(v["instructions"].as_array().unwrap().len() > 1000);
}

#[test]
fn exports_chrome_folded_and_json() {
    let dir = scratch("export");
    let bin = fixture("null_call");
    bts(
        &dir,
        &["run", "--buffer-size", "1M", "-o", "t.bts", "--report", "never", "--", bin.to_str().unwrap()],
    );
    let out = bts(&dir, &["export", "--format", "chrome", "t.bts"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ev = v["traceEvents"].as_array().unwrap();
    let x: Vec<&serde_json::Value> = ev.iter().filter(|e| e["ph"] == "X").collect();
    assert!(!x.is_empty());
    for e in &x {
        assert!(e["ts"].as_u64().is_some() && e["dur"].as_u64().unwrap() >= 1 && e["tid"].as_i64().is_some());
    }
    // Callees nest inside callers on the timeline.
    let find = |n: &str| x.iter().rev().find(|e| e["name"] == n).unwrap();
    let (b, c) = (find("b"), find("c"));
    let end = |e: &serde_json::Value| e["ts"].as_u64().unwrap() + e["dur"].as_u64().unwrap();
    assert!(b["ts"].as_u64() <= c["ts"].as_u64() && end(c) <= end(b));
    let folded = text(&bts(&dir, &["export", "--format", "folded", "t.bts"]).stdout);
    assert!(folded.lines().any(|l| l.starts_with("main;a;b;c ") || l.contains(";main;a;b;c ")), "{folded}");
    let total: u64 = folded.lines().map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap()).sum();
    let h: serde_json::Value =
        serde_json::from_slice(&bts(&dir, &["history", "--json", "t.bts"]).stdout).unwrap();
    assert_eq!(total, h["total"].as_u64().unwrap(), "folded weights add up to every instruction");
    let out = bts(&dir, &["export", "--format", "json", "-o", "e.json", "t.bts"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("e.json")).unwrap()).unwrap();
    assert_eq!(v["version"], 1);
}

#[test]
fn an_export_of_many_threads_keeps_every_call_index_and_reuses_them() {
    let dir = scratch("export-threads");
    let bin = fixture("threads_loop");
    let out = bts(
        &dir,
        &["run", "--buffer-size", "1M", "-o", "t.bts", "--report", "never", "--", bin.to_str().unwrap(), "3"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let first = bts(&dir, &["export", "--format", "folded", "t.bts"]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    let idx = dir.join("t.bts.idx");
    let kept: serde_json::Value = serde_json::from_slice(&std::fs::read(&idx).unwrap()).unwrap();
    let calls = kept["calls"].as_object().unwrap();
    let info: serde_json::Value =
        serde_json::from_slice(&bts(&dir, &["info", "--json", "t.bts"]).stdout).unwrap();
    let threads = info["buffers"].as_array().unwrap().len();
    assert!(threads >= 4, "main and three workers: {info}");
    assert_eq!(calls.len(), threads, "one call index per thread: {:?}", calls.keys().collect::<Vec<_>>());
    let stamp = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
    let before = stamp(&idx);
    let second = bts(&dir, &["export", "--format", "folded", "t.bts"]);
    assert_eq!(text(&second.stdout), text(&first.stdout));
    assert_eq!(stamp(&idx), before, "the kept indexes are used, not rebuilt");
}

#[test]
fn a_cxx_exception_unwinds_to_the_catching_frame() {
    let dir = scratch("cxx_exception");
    let bin = dir.join("exception");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/exception.cpp");
    let ok =
        std::process::Command::new("c++").args(["-g", "-O0", "-o"]).arg(&bin).arg(&src).status().unwrap();
    assert!(ok.success());
    let out = bts(&dir, &["run", "--buffer-size", "4M", "-o", "t.bts", "--", bin.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value =
        serde_json::from_slice(&bts(&dir, &["history", "t.bts", "--calls", "--json", "1,10000000"]).stdout)
            .unwrap();
    let calls = v["calls"].as_array().unwrap();
    let find = |name: &str, from: usize| {
        calls.iter().enumerate().skip(from).find(|(_, c)| c["function"] == name).map(|(i, _)| i)
    };
    let c0 = find("catcher()", 0).expect("catcher");
    let m = find("middle(int)", c0).expect("middle");
    let t = find("thrower(int)", m).expect("thrower");
    let level = |i: usize| calls[i]["level"].as_i64().unwrap();
    assert_eq!(level(m), level(c0) + 1);
    assert_eq!(level(t), level(c0) + 2);
    // The unwinder runs deeper still, then lands in catcher's handler: the
    // same instance of catcher, at catcher's level.
    let back = find("catcher()", t).expect("catcher again");
    assert_eq!(level(back), level(c0), "{:?}", calls[back]);
    let mut prev = calls[back]["prev"].as_u64();
    let mut reached = false;
    while let Some(p) = prev {
        if p as usize == c0 + 1 {
            reached = true;
            break;
        }
        prev = calls[p as usize - 1]["prev"].as_u64();
    }
    assert!(reached, "linked to the first catcher segment");
    // Nothing ran in middle after the throw.
    assert!(calls[t..back].iter().all(|c| c["function"] != "middle(int)"));
}

/// A range of the call history, decoded from the call index's checkpoint
/// before it, reads as the same segments of the whole history: numbers,
/// depths, instruction ranges, source lines and links. The ranges start
/// at the checkpoints themselves (a segment running across one must still
/// show all its lines).
#[test]
fn a_call_history_range_reads_as_the_whole_history_does() {
    let dir = scratch("call_ranges");
    let bin = fixture("long_loop");
    let out = bts(
        &dir,
        &[
            "run",
            "--buffer-size",
            "4M",
            "-o",
            "t.bts",
            "--report",
            "never",
            "--",
            bin.to_str().unwrap(),
            "30",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let opts = ["--calls", "--indent", "--lines", "--insn-range"];
    let whole = text(&bts(&dir, &[&["history", "t.bts", "1,100000000"][..], &opts].concat()).stdout);
    let whole: Vec<&str> = whole.lines().collect();
    let json = |range: &str| -> Vec<serde_json::Value> {
        let out = bts(&dir, &["history", "t.bts", "--calls", "--json", range]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["calls"].as_array().unwrap().clone()
    };
    let whole_json = json("1,100000000");
    assert_eq!(whole_json.len(), whole.len());
    // Where the checkpoints are: the segment running at each.
    let idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("t.bts.idx")).unwrap()).unwrap();
    let calls = idx["calls"].as_object().unwrap().values().next().unwrap();
    let marks: Vec<usize> = calls["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["state"]["made"].as_u64().unwrap() as usize)
        .collect();
    assert!(!marks.is_empty(), "a trace of this size has checkpoints");
    let n = whole.len();
    let mut starts: Vec<usize> = marks.iter().flat_map(|&m| [m.max(2) - 1, m, m + 1]).collect();
    starts.extend([1, n - 2]);
    for k in starts.into_iter().filter(|&k| k >= 1 && k + 2 <= n) {
        let part =
            text(&bts(&dir, &[&["history", "t.bts", &format!("{k},{}", k + 2)][..], &opts].concat()).stdout);
        assert_eq!(part.lines().collect::<Vec<_>>(), whole[k - 1..k + 2], "segments {k}..{}", k + 2);
        assert_eq!(json(&format!("{k},{}", k + 2)), whole_json[k - 1..k + 2], "JSON segments {k}..{}", k + 2);
    }
    // The main loop's segments name their lines.
    assert!(whole.iter().any(|l| l.contains("\tat long_loop.c:")), "{}", whole.join("\n"));
    // A reader that has enough (`| head`) closes the pipe: bts stops
    // without a word.
    for args in
        ["history t.bts 1,10000000", "history t.bts --calls --json 1,10000000", "export --format json t.bts"]
    {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("'{BTS}' {args} | head -c 100 >/dev/null"))
            .current_dir(&dir)
            .output()
            .unwrap();
        assert_eq!(text(&out.stderr), "", "bts {args} | head");
    }
    // A call index of version 1 (no long waits) beside the trace is found
    // old, rebuilt and kept, and the history reads the same.
    let idx_path = dir.join("t.bts.idx");
    let mut idx: serde_json::Value = serde_json::from_slice(&std::fs::read(&idx_path).unwrap()).unwrap();
    let calls = idx["calls"].as_object_mut().unwrap().values_mut().next().unwrap();
    let long_waits = calls["long_waits"].clone();
    assert!(long_waits.is_array(), "{calls}");
    calls["version"] = 1.into();
    calls.as_object_mut().unwrap().remove("long_waits");
    std::fs::write(&idx_path, serde_json::to_vec(&idx).unwrap()).unwrap();
    assert_eq!(json("1,100000000"), whole_json);
    let idx: serde_json::Value = serde_json::from_slice(&std::fs::read(&idx_path).unwrap()).unwrap();
    let calls = idx["calls"].as_object().unwrap().values().next().unwrap();
    assert_eq!(calls["version"], 2);
    assert_eq!(calls["long_waits"], long_waits);
}
