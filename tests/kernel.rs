//! Traces that interleave kernel and user records the way hardware BTS
//! does: kernel addresses never reach a report, and the decoder folds them
//! into system calls and asynchronous events.

mod common;
use common::*;

use bts_reader::{CodeRange, Meta, Stream, StreamKind, TraceFile};
use ds_alloc::BtsRecord;

const K: u64 = 0xffff_ffff_8100_0000;

/// 0x1000: syscall; 0x1002: nop; 0x1003: mov eax, ecx; 0x1005: jmp 0x1000
fn trace() -> TraceFile {
    let code = vec![0x0f, 0x05, 0x90, 0x89, 0xc8, 0xeb, 0xf9];
    let recs = vec![
        BtsRecord::branch(0x1005, 0x1000),
        BtsRecord::branch(0x1000, K),          // syscall entry
        BtsRecord::branch(K + 0x40, K + 0x80), // inside the kernel
        BtsRecord::branch(K + 0x90, 0x1002),   // sysret
        BtsRecord::branch(0x1003, K + 0x100),  // interrupt before the mov
        BtsRecord::branch(K + 0x140, 0x1003),  // iret
        BtsRecord::branch(0x1005, 0x1000),
    ];
    TraceFile {
        meta: Meta {
            command: vec!["synthetic".into()],
            pid: 7,
            backend: "perf".into(),
            outcome: "exit".into(),
            code: Some(0),
            ..Meta::default()
        },
        modules: vec![],
        streams: vec![Stream {
            kind: StreamKind::Thread { pid: 7, generation: 1, tid: 7, crashed: false, last_pc: Some(0x1002) },
            capacity: 100,
            overwritten: 0,
            lost: 0,
            records: recs,
        }],
        code: vec![CodeRange { pid: 7, generation: 1, addr: 0x1000, bytes: code }],
        states: Vec::new(),
    }
}

#[test]
fn kernel_records_become_syscalls_and_async_events() {
    let dir = scratch("kernel_filter");
    trace().write(&dir.join("k.bts")).unwrap();
    let out = bts(&dir, &["last-branch", "--json", "k.bts"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let r = json(&out);
    let br = r["threads"][0]["branches"].as_array().unwrap();
    let got: Vec<(String, String, String)> = br
        .iter()
        .map(|b| {
            (
                b["from"].as_str().unwrap().into(),
                b["to"].as_str().unwrap().into(),
                b["kind"].as_str().unwrap().into(),
            )
        })
        .collect();
    let want = [
        ("0x1005", "0x1000", "jump"),
        ("0x1000", "0x1002", "syscall"),
        ("0x1003", "0x1003", "async"),
        ("0x1005", "0x1000", "jump"),
    ];
    assert_eq!(
        got,
        want.iter().map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string())).collect::<Vec<_>>()
    );
    // The instruction history: the interrupted mov runs once, after the event.
    let h: serde_json::Value =
        serde_json::from_slice(&bts(&dir, &["history", "k.bts", "--json", "1,100"]).stdout).unwrap();
    let addrs: Vec<&str> =
        h["instructions"].as_array().unwrap().iter().map(|i| i["addr"].as_str().unwrap()).collect();
    assert_eq!(addrs, ["0x1000", "0x1002", "0x1003", "0x1005", "0x1000", "0x1002"]);
    let all = text(&bts(&dir, &["history", "k.bts", "1,100"]).stdout);
    assert!(!all.contains("ffffffff"), "{all}");
}

#[test]
fn kernel_addresses_only_on_request_of_a_privileged_caller() {
    let dir = scratch("kernel_keep");
    trace().write(&dir.join("k.bts")).unwrap();
    // The tests run as root: --kernel is allowed and shows the kernel side.
    let out = bts(&dir, &["history", "k.bts", "--calls", "--kernel", "--json", "1,100"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["calls"].as_array().unwrap().iter().any(|c| c["gap"].is_object()),
        "kernel code is not decodable: gaps"
    );
}

#[test]
fn golden_history_lines() {
    let dir = scratch("kernel_golden");
    trace().write(&dir.join("k.bts")).unwrap();
    let insns = text(&bts(&dir, &["history", "k.bts"]).stdout);
    assert_eq!(
        insns,
        "1\t   0x0000000000001000:\tsyscall\n\
         2\t   0x0000000000001002:\tnop\n\
         3\t   0x0000000000001003:\tmov    %ecx,%eax\n\
         4\t   0x0000000000001005:\tjmp    0x1000\n\
         5\t   0x0000000000001000:\tsyscall\n\
         6\t=> 0x0000000000001002:\tnop\n"
    );
    let raw = text(&bts(&dir, &["history", "k.bts", "--raw", "--intel", "3,+2"]).stdout);
    assert_eq!(raw, "3\t   0x0000000000001003:\t89 c8\tmov    eax,ecx\n4\t   0x0000000000001005:\teb f9\tjmp    short 0x1000\n");
    let calls = text(&bts(&dir, &["history", "k.bts", "--calls", "--insn-range", "--indent"]).stdout);
    assert_eq!(calls, "1\t??\tinst 1,6\n");
}

#[test]
fn random_records_give_gaps_never_a_panic() {
    let dir = scratch("random_records");
    // Real code bytes (a compiled fixture's text), records at random.
    let bin = fixture("branchy");
    let data = std::fs::read(&bin).unwrap();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..4 {
        let base = 0x1000u64;
        let span = data.len() as u64;
        let records: Vec<BtsRecord> = (0..500)
            .map(|_| {
                let pick = |r: u64| match r % 5 {
                    0 => r,                      // anywhere, kernel included
                    _ => base + (r >> 8) % span, // inside the code
                };
                BtsRecord { from: pick(next()), to: pick(next()), flags: next() % 3 }
            })
            .collect();
        let tf = TraceFile {
            meta: Meta { command: vec!["random".into()], pid: 9, outcome: "exit".into(), ..Meta::default() },
            modules: vec![],
            streams: vec![Stream {
                kind: StreamKind::Thread {
                    pid: 9,
                    generation: 1,
                    tid: 9,
                    crashed: round % 2 == 0,
                    last_pc: Some(next()),
                },
                capacity: 2000,
                overwritten: 0,
                lost: 0,
                records,
            }],
            code: vec![CodeRange { pid: 9, generation: 1, addr: base, bytes: data.clone() }],
            states: Vec::new(),
        };
        tf.write(&dir.join("r.bts")).unwrap();
        for args in [
            vec!["last-branch", "--json", "-n", "5000", "r.bts"],
            vec!["history", "r.bts", "--json", "1,10000000"],
            vec!["history", "r.bts", "--calls", "--lines", "--insn-range", "--indent", "1,10000000"],
            vec!["export", "--format", "chrome", "r.bts"],
            vec!["export", "--format", "folded", "r.bts"],
        ] {
            let out = bts(&dir, &args);
            let err = text(&out.stderr);
            assert!(!err.contains("panicked"), "{args:?}: {err}");
            assert!(out.status.code() == Some(0) || out.status.code() == Some(1), "{args:?}: {err}");
        }
    }
}
