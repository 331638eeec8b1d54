//! `bts doctor` and the hardware backend's errors, for real on this machine.

mod common;
use common::*;

#[test]
fn doctor_reports_the_machine() {
    let dir = scratch("doctor");
    let out = bts(&dir, &["doctor", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    let vendor = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("vendor_id"))
        .unwrap()
        .trim_start_matches([' ', '\t', ':']);
    assert_eq!(d["cpu_vendor"], vendor);
    let paranoid: i64 =
        std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid").unwrap().trim().parse().unwrap();
    assert_eq!(d["perf_event_paranoid"], paranoid);
    assert_eq!(d["ptrace"]["available"], true, "the tests run where ptrace works");
    let auto = d["auto_picks"].as_str().unwrap();
    if d["hardware_bts"]["available"] == true {
        assert_eq!(auto, "perf");
    } else {
        let vg = d["recorders"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r[0] == "valgrind" && r[1]["available"] == true);
        assert_eq!(auto, if vg { "valgrind (bts run), fast (bts attach)" } else { "fast" });
        assert!(!d["hardware_bts"]["detail"].as_str().unwrap().is_empty());
    }
    let text_out = bts(&dir, &["doctor"]);
    let t = text(&text_out.stdout);
    assert!(t.contains("hardware BTS") && t.contains("--backend auto picks"), "{t}");
}

#[test]
fn the_perf_backend_fails_up_front_with_the_kernels_reason() {
    let dir = scratch("perf_backend");
    let d: serde_json::Value = serde_json::from_slice(&bts(&dir, &["doctor", "--json"]).stdout).unwrap();
    if d["hardware_bts"]["available"] == true {
        return; // a machine with BTS: nothing refuses
    }
    let reason = d["hardware_bts"]["detail"].as_str().unwrap().to_string();
    let bin = fixture("exit3");
    let out = bts(&dir, &["run", "--backend", "perf", "--", bin.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(125));
    let err = text(&out.stderr);
    assert_eq!(err.trim(), format!("bts: {reason}"));
    assert!(reason.contains("--backend fast"), "names the way out: {reason}");
    // auto falls back and says why in the report.
    let out = bts(&dir, &["run", "--report", "always", "--json", "--", bin.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    let r = json(&out);
    let vg =
        d["recorders"].as_array().unwrap().iter().any(|r| r[0] == "valgrind" && r[1]["available"] == true);
    assert_eq!(r["backend"], if vg { "valgrind" } else { "fast" });
    let note = r["backend_note"].as_str().unwrap();
    let why = reason.trim_end_matches("; use --backend fast");
    assert!(note.starts_with("hardware BTS unavailable") && note.contains(why), "{note}");
}

#[test]
fn pebs_is_owned_through_the_allocator_and_refused_here_for_real() {
    use ds_alloc::{Allocator, Target};
    let mut alloc = Allocator::new();
    let first = alloc.register("first", 64 << 20);
    let second = alloc.register("second", 64 << 20);
    let me = std::process::id() as i32;
    match bts_reader::perf::open_pebs(&mut alloc, first, me, 10_000, 8192) {
        Ok(ev) => {
            // A machine with PEBS: the second tracer is refused as busy.
            let e = bts_reader::perf::open_pebs(&mut alloc, second, me, 10_000, 8192).err().unwrap();
            assert!(e.to_string().contains("owned by first"), "{e}");
            drop(ev);
        }
        Err(e) => {
            // Refused by the kernel or the CPU here, with a reason; the
            // ownership was given back, so the second tracer may try.
            assert!(!e.to_string().is_empty());
            assert_eq!(alloc.pebs_owner(Target::Task(me as u32)), None);
            let e2 = bts_reader::perf::open_pebs(&mut alloc, second, me, 10_000, 8192).err().unwrap();
            assert_eq!(e2.to_string(), e.to_string());
            assert_eq!(alloc.charged_pages(second).unwrap(), 0, "a refused request costs nothing");
        }
    }
}
