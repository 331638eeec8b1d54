//! Stock GDB against bts's remote stub, post-mortem: real gdb in batch
//! mode, on traces of real crashes, compared with bts's own commands.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{bts, fixture, scratch, text, BTS};

/// Records `prog` with the fast recorder into DIR/t.bts.
fn record(dir: &Path, prog: &Path) -> String {
    let out =
        bts(dir, &["run", "--backend", "fast", "--no-aslr", "-o", "t.bts", "--", prog.to_str().unwrap()]);
    assert!(dir.join("t.bts").exists(), "no trace: {}", text(&out.stderr));
    "t.bts".into()
}

/// Runs `bts gdb FILE` with GDB commands, returning what GDB printed.
fn gdb(dir: &Path, file: &str, commands: &str) -> String {
    common::gdb_batch(dir, &[file], commands)
}

/// `N\t   0xADDR <sym>:` of an instruction-history line: (N, address, symbol).
fn insn_key(line: &str) -> Option<(u64, u64, String)> {
    let (n, rest) = line.split_once('\t')?;
    let n = n.trim().parse().ok()?;
    let rest = rest.trim_start_matches([' ', '=', '>']);
    let (addr, rest) = rest.split_once([' ', ':'])?;
    let addr = u64::from_str_radix(addr.strip_prefix("0x")?, 16).ok()?;
    let sym =
        rest.split_once('>').map(|(s, _)| s.trim_start_matches([' ', '<']).to_string()).unwrap_or_default();
    Some((n, addr, sym))
}

/// `N\t  name\tinst A,B` of a call-history line: (N, name, A, B).
fn call_key(line: &str) -> Option<(u64, String, u64, u64)> {
    let mut f = line.split('\t');
    let n = f.next()?.trim().parse().ok()?;
    let name = f.next()?.trim().to_string();
    let (a, b) = f.next()?.strip_prefix("inst ")?.split_once(',')?;
    Some((n, name, a.trim().parse().ok()?, b.trim().parse().ok()?))
}

/// Instruction keys with symbols kept only for the program's own
/// functions: GDB names libc's from its DWARF (`_IO_new_file_write`), bts
/// from its symbol table (`_IO_file_write`).
fn own_symbols(keys: &[(u64, u64, String)]) -> Vec<(u64, u64, String)> {
    let own = |s: &str| {
        ["main", "a", "b", "c", "worker", "worker_fault"].contains(&s.split('+').next().unwrap_or(""))
    };
    keys.iter().map(|(n, a, s)| (*n, *a, if own(s) { s.clone() } else { String::new() })).collect()
}

/// The number of the newest executed instruction, from `bts history`.
fn last_insn(dir: &Path, file: &str) -> u64 {
    let out = text(&bts(dir, &["history", file]).stdout);
    out.lines().filter(|l| !l.contains("=>")).filter_map(insn_key).map(|k| k.0).max().expect("history lines")
}

#[test]
fn gdb_histories_equal_bts_histories() {
    let dir = scratch("gdb_histories");
    let file = record(&dir, &fixture("null_call"));
    let last = last_insn(&dir, &file);
    let range = format!("{},{last}", last - 199);
    let ours: Vec<_> =
        text(&bts(&dir, &["history", &file, &range]).stdout).lines().filter_map(insn_key).collect();
    let gdb_out = gdb(&dir, &file, &format!("record instruction-history {range}"));
    let theirs: Vec<_> = gdb_out.lines().filter_map(insn_key).collect();
    assert_eq!(ours.len(), 200, "{ours:?}");
    // Number, address and <function+offset> of every instruction; the
    // disassembly itself is GDB's or iced-x86's and differs in syntax.
    assert_eq!(own_symbols(&theirs), own_symbols(&ours), "gdb said:\n{gdb_out}");
    assert!(ours.iter().any(|o| o.2 == "c+0"), "{ours:?}");

    // bts's newest segment is the instruction at the stop, which GDB's
    // history (executed instructions only) leaves out.
    let tail = text(&bts(&dir, &["history", &file, "--calls", "--insn-range"]).stdout);
    let newest = tail.lines().filter_map(call_key).map(|k| k.0).max().expect("call history");
    let range = format!("{},{}", newest - 300, newest - 1);
    let calls = text(&bts(&dir, &["history", &file, "--calls", "--insn-range", &range]).stdout);
    let ours: Vec<_> = calls.lines().filter_map(call_key).collect();
    let gdb_out = gdb(&dir, &file, &format!("record function-call-history /i {range}"));
    let theirs: Vec<_> = gdb_out.lines().filter_map(call_key).collect();
    assert!(ours.len() > 100, "{calls}");
    assert_eq!(ours.len(), theirs.len(), "gdb said:\n{gdb_out}");
    for (o, t) in ours.iter().zip(&theirs) {
        // Numbers and instruction ranges everywhere; names where both
        // read the program's own symbols (libc's come from its DWARF in
        // GDB, from its symbol table in bts).
        assert_eq!((o.0, o.2, o.3), (t.0, t.2, t.3), "segment {o:?} vs {t:?}");
        if ["main", "a", "b", "c"].contains(&o.1.as_str()) {
            assert_eq!(o.1, t.1);
        }
    }
    let mine: Vec<&str> = ours.iter().map(|o| o.1.as_str()).filter(|n| n.len() == 1).collect();
    assert!(mine.ends_with(&["a", "b", "c"]), "{mine:?}");
}

#[test]
fn reverse_stepi_lands_where_bts_history_says() {
    let dir = scratch("gdb_reverse_stepi");
    let file = record(&dir, &fixture("null_call"));
    let last = last_insn(&dir, &file);
    let ours: Vec<_> = text(&bts(&dir, &["history", &file, &format!("{},{last}", last - 20)]).stdout)
        .lines()
        .filter_map(insn_key)
        .collect();
    for k in [1u64, 7, 20] {
        let out = gdb(&dir, &file, &format!("reverse-stepi {k}\nprintf \"PC=%#lx\\n\", $pc"));
        let pc = out.lines().find_map(|l| l.strip_prefix("PC=")).unwrap_or_else(|| panic!("{out}"));
        let pc = u64::from_str_radix(pc.trim_start_matches("0x"), 16).unwrap();
        // One reverse-stepi from the stop goes to the newest executed instruction.
        let want = ours.iter().find(|o| o.0 == last + 1 - k).unwrap();
        assert_eq!(pc, want.1, "after {k} reverse-stepi: {out}");
    }
}

#[test]
fn bt_and_reverse_finish_at_the_stop() {
    let dir = scratch("gdb_bt");
    let file = record(&dir, &fixture("null_call"));
    let out = gdb(&dir, &file, "bt\nreverse-stepi\nreverse-finish\nbt 1");
    // At the stop (pc 0, called from c), GDB unwinds through the saved stack.
    let frames: Vec<&str> = out.lines().filter(|l| l.starts_with('#')).collect();
    let order: Vec<&str> = ["c (", "b (", "a (", "main ("]
        .into_iter()
        .filter(|f| frames.iter().any(|l| l.contains(&format!(" in {f}"))))
        .collect();
    assert_eq!(order, ["c (", "b (", "a (", "main ("], "{out}");
    // reverse-finish from c's call goes back to the call of c, in b.
    assert!(out.lines().any(|l| l.starts_with("#0") && l.contains(" in b (")), "{out}");
    assert!(out.contains("Target is recording using Branch Trace Store"), "{out}");
}

#[test]
fn last_branch_in_gdb_matches_bts_last_branch() {
    let dir = scratch("gdb_last_branch");
    let file = record(&dir, &fixture("null_call"));
    let rows = common::branch_rows;
    let ours = rows(&text(&bts(&dir, &["last-branch", "-n", "8", &file]).stdout));
    let out = gdb(&dir, &file, "last-branch 8");
    let theirs = rows(&out);
    assert_eq!(ours.len(), 8);
    assert_eq!(theirs, ours, "gdb said:\n{out}");
    // Program symbols and lines are named the same way.
    let line_of = |s: &str, needle: &str| s.lines().find(|l| l.contains(needle)).map(str::to_string);
    let g = line_of(&out, "<c+0x3f>").unwrap();
    assert!(g.contains("null_call.c:11"), "{g}");
    // The stub's own monitor command gives bts's report.
    let out = gdb(&dir, &file, "monitor last-branch 3");
    assert_eq!(rows(&out), ours[5..].to_vec(), "{out}");
}

#[test]
fn every_thread_has_its_history() {
    let dir = scratch("gdb_threads");
    let file = record(&dir, &fixture("thread_crash"));
    let out = gdb(&dir, &file, "info threads\nthread apply all record instruction-history");
    let tids: Vec<&str> = out.lines().filter(|l| l.starts_with("Thread ")).collect();
    assert_eq!(tids.len(), 2, "{out}");
    for block in out.split("\nThread ").skip(1) {
        let tid: i32 = block
            .split_whitespace()
            .nth(2)
            .and_then(|t| t.trim_end_matches([')', ':']).parse().ok())
            .unwrap_or_else(|| panic!("{block}"));
        let theirs: Vec<_> = block.lines().filter_map(insn_key).collect();
        assert!(!theirs.is_empty(), "{block}");
        let first = theirs[0].0;
        let last = theirs.last().unwrap().0;
        let ours: Vec<_> = text(
            &bts(&dir, &["history", &file, "--thread", &tid.to_string(), &format!("{first},{last}")]).stdout,
        )
        .lines()
        .filter_map(insn_key)
        .collect();
        assert_eq!(own_symbols(&theirs), own_symbols(&ours), "thread {tid}");
    }
    // Every thread was stopped for the snapshot at the crash: GDB unwinds
    // each, the main thread back to main.
    let out = gdb(&dir, &file, "thread apply all bt");
    // (Where main stands depends on timing: in pthread_join, or still
    // resolving its PLT slot; either way it unwinds back to main.)
    let main_thread = out.split("\nThread ").skip(1).find(|b| !b.contains("worker_fault")).unwrap_or("");
    assert!(main_thread.contains(" in main () at "), "{out}");
    let worker = out.split("\nThread ").skip(1).find(|b| b.contains("worker_fault")).unwrap_or("");
    assert!(worker.contains(" in worker ("), "{out}");
}

#[test]
fn garbage_on_the_wire_gets_errors_never_a_panic() {
    let dir = scratch("gdb_garbage");
    let file = record(&dir, &fixture("null_call"));
    let mut child = Command::new(BTS)
        .args(["gdbserver", "--stdio", &file])
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let mut junk: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    // Packets with bad checksums, cut short, oversized, and malformed ones.
    junk.extend_from_slice(b"$m#00$qXfer:btrace:read:all:0,zz#00$Hgzz#1f");
    for p in
        ["m", "qXfer:btrace", "Hz", "qRcmd,6", "vCont;q", "M10,2:zz", "p999", "qXfer:btrace:read:all:0,fff"]
    {
        let sum = p.bytes().fold(0u8, |s, b| s.wrapping_add(b));
        junk.extend_from_slice(format!("${p}#{sum:02x}").as_bytes());
    }
    junk.push(b'$');
    junk.extend(std::iter::repeat_n(b'A', 70_000));
    junk.extend_from_slice(b"#00$?#3f");
    input.write_all(&junk).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    for reply in
        ["$E.malformed m packet", "$E.malformed H packet", "$E.malformed qRcmd packet", "$E.packet too long"]
    {
        assert!(said.contains(reply), "no {reply} in {said}");
    }
    // A btrace read with no thread selected is refused the way gdbserver does.
    assert!(said.contains("$E.Must select a single thread."), "{said}");
    // The stop reply still comes after all that: SIGSEGV of the crashed thread.
    assert!(said.contains("$T0bthread:"), "{said}");
}

#[test]
fn bad_trace_files_are_clear_errors() {
    let dir = scratch("gdb_bad_file");
    std::fs::write(dir.join("junk.bts"), b"not a trace").unwrap();
    let out = bts(&dir, &["gdbserver", "--stdio", "junk.bts"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("junk.bts: not a bts trace file"), "{}", text(&out.stderr));
    let out = bts(&dir, &["gdb", "missing.bts"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("missing.bts"), "{}", text(&out.stderr));
    let out = bts(&dir, &["gdb", "--attach", "999999999"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no process 999999999"), "{}", text(&out.stderr));
}

/// "Recorded N instructions" of GDB's `info record`.
fn recorded_insns(gdb_out: &str) -> u64 {
    let line = gdb_out.lines().find(|l| l.starts_with("Recorded ")).unwrap_or_else(|| panic!("{gdb_out}"));
    line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{line}"))
}

/// GDB decodes some 8000 branches a second: from a trace file it reads
/// each thread's newest `--gdb-branches` (32768 by default), the same
/// branches a trace cut to them holds, and is told so.
#[test]
fn gdb_reads_the_newest_branches_of_a_large_trace() {
    let dir = scratch("gdb_newest");
    let file = record(&dir, &fixture("null_call"));
    let all = gdb(&dir, &file, "info record");
    assert!(!all.contains("GDB reads the newest"), "a small trace is read whole:\n{all}");
    let capped = common::gdb_batch(&dir, &["--gdb-branches=200", &file], "info record");
    assert!(capped.contains("bts: GDB reads the newest 200 branches of each thread"), "{capped}");
    let cut = bts(&dir, &["cut", &file, "--last", "200", "-o", "last200.bts"]);
    assert!(cut.status.success(), "{}", text(&cut.stderr));
    let of_cut = gdb(&dir, "last200.bts", "info record");
    assert_eq!(recorded_insns(&capped), recorded_insns(&of_cut), "{capped}\n{of_cut}");
    assert!(recorded_insns(&capped) < recorded_insns(&all), "{capped}\n{all}");
    let everything = common::gdb_batch(&dir, &["--gdb-branches=all", &file], "info record");
    assert_eq!(recorded_insns(&everything), recorded_insns(&all));
}
