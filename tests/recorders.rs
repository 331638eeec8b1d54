//! The `fast` recorder must record exactly what the `step` oracle records,
//! record for record, from the program's first instruction to its end.

mod common;
use common::*;

/// Every branch of the main thread, from exec to the end.
fn trace(dir: &std::path::Path, backend: &str, fixture_name: &str) -> (Vec<(String, String)>, Option<i32>) {
    trace_thread(dir, backend, fixture_name, false)
}

/// Every branch of the main thread, or of the crashed one with `crashed`.
fn trace_thread(
    dir: &std::path::Path,
    backend: &str,
    fixture_name: &str,
    crashed: bool,
) -> (Vec<(String, String)>, Option<i32>) {
    let bin = fixture(fixture_name);
    let file = format!("{fixture_name}-{backend}.bts");
    let (out, r) = record_whole(dir, backend, &bin, &file, "2M");
    let code = out.status.code();
    let pick = |t: &&serde_json::Value| if crashed { t["crashed"] == true } else { t["tid"] == r["pid"] };
    let t = r["threads"].as_array().unwrap().iter().find(pick).expect("the thread").clone();
    assert_eq!(t["lost"], 0, "the buffer held the whole run");
    (pairs(&t), code)
}

fn compare(fixture_name: &str) {
    let dir = scratch(&format!("compare_{fixture_name}"));
    let (step, step_code) = trace(&dir, "step", fixture_name);
    let (fast, fast_code) = trace(&dir, "fast", fixture_name);
    assert_eq!(step_code, fast_code);
    assert!(step.len() > 1000, "a whole run from exec has thousands of branches: {}", step.len());
    if let Some(i) = step.iter().zip(&fast).position(|(a, b)| a != b) {
        panic!(
            "{fixture_name}: first difference at branch {i} of {}: step {:?} fast {:?}",
            step.len(),
            &step[i.saturating_sub(2)..(i + 3).min(step.len())],
            &fast[i.saturating_sub(2)..(i + 3).min(fast.len())]
        );
    }
    assert_eq!(step.len(), fast.len(), "{fixture_name}: same records, different counts");
}

#[test]
fn identical_on_branchy_code() {
    // Jump tables, function pointers, recursion, rep movs, loop/jrcxz,
    // short-circuit conditions, a signal handler.
    compare("branchy");
}

#[test]
fn identical_on_a_null_call_crash() {
    compare("null_call");
}

#[test]
fn identical_on_a_smashed_return() {
    compare("smash");
}

#[test]
fn identical_on_a_callback_crash() {
    compare("callback_crash");
}

#[test]
fn identical_on_abort() {
    compare("abort");
}

#[test]
fn identical_on_a_recovered_segv() {
    // Signal delivery to a handler and a siglongjmp out of it.
    compare("segv_handler");
}

#[test]
fn identical_on_exit() {
    compare("exit3");
}

#[test]
fn identical_on_the_crashing_worker_thread() {
    // Threads interleave differently from run to run; each thread's own
    // branches do not depend on that here.
    let dir = scratch("compare_thread_crash");
    let (step, sc) = trace_thread(&dir, "step", "thread_crash", true);
    let (fast, fc) = trace_thread(&dir, "fast", "thread_crash", true);
    assert_eq!((sc, fc), (Some(139), Some(139)));
    assert!(step.len() > 100, "{}", step.len());
    assert_eq!(step, fast);
}

#[test]
fn identical_per_thread_when_threads_share_a_single_stepped_site() {
    // Far branches cannot be emulated: the fast recorder lifts the int3 and
    // single-steps them, stopping the other thread meanwhile so it cannot
    // run through the site unrecorded.
    let dir = scratch("compare_far_jumps");
    let bin = fixture("far_jumps");
    let workers = |backend: &str| -> Vec<Vec<(String, String)>> {
        let file = format!("{backend}.bts");
        let (out, r) = record_whole(&dir, backend, &bin, &file, "1M");
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "450 450\n");
        let mut ts: Vec<&serde_json::Value> =
            r["threads"].as_array().unwrap().iter().filter(|t| t["tid"] != r["pid"]).collect();
        ts.sort_by_key(|t| t["tid"].as_i64());
        ts.iter().map(|t| pairs(t)).collect()
    };
    let step = workers("step");
    let fast = workers("fast");
    assert_eq!(step.len(), 2);
    for (s, f) in step.iter().zip(&fast) {
        assert!(s.len() > 600, "{}", s.len());
        assert_eq!(s, f);
    }
}
