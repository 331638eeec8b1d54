//! `bts ci` on real CI-like steps: a shell, a make-like parent that
//! spawns recipes, crashing and failing children, a daemon left behind.
//! Every test runs on the fast (ptrace) recorder and on the Valgrind tool.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{fixture, output_within, scratch, text, BTS, LIMIT};
use serde_json::Value;

const BACKENDS: [&str; 2] = ["fast", "valgrind"];

/// Runs `bts ci --backend BACKEND ARGS -- STEP...` in `dir` with `env`.
fn ci<S: AsRef<std::ffi::OsStr>>(
    dir: &Path,
    backend: &str,
    args: &[&str],
    step: &[S],
    env: &[(&str, &Path)],
) -> Output {
    let mut c = Command::new(BTS);
    c.args(["ci", "--backend", backend])
        .args(args)
        .arg("--")
        .args(step)
        .current_dir(dir)
        .stdin(Stdio::null());
    // The runner's own CI variables must not leak into the test.
    for v in ["GITHUB_ACTIONS", "GITHUB_WORKSPACE", "GITHUB_STEP_SUMMARY"] {
        c.env_remove(v);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    output_within(&mut c, LIMIT)
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn path(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// The files of a folder, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// The line of `needle` in a fixture's source (1-based).
fn line_of(fixture: &str, needle: &str) -> usize {
    let src = repo().join("tests/fixtures").join(fixture);
    let text = std::fs::read_to_string(src).unwrap();
    text.lines().position(|l| l.contains(needle)).expect("marker in the fixture") + 1
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The step of the issue: `sh -c` runs a make-like parent whose recipes
/// are a NULL call (SIGSEGV), an abort (SIGABRT), an `exit(3)` and a
/// program that does not exist (its spawned child exits 127 before exec);
/// the shell prints, then exits with the parent's status (2).
fn make_step() -> Vec<String> {
    let script = format!(
        "{} {} {} {} /no/such/recipe; st=$?; echo step over; exit $st",
        path(&fixture("make_like")),
        path(&fixture("null_call")),
        path(&fixture("abort")),
        path(&fixture("exit3"))
    );
    vec!["sh".into(), "-c".into(), script]
}

fn crash_with<'a>(doc: &'a Value, program: &str) -> &'a Value {
    doc["crashes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["command"][0].as_str().unwrap().ends_with(program))
        .unwrap_or_else(|| panic!("no crash of {program}: {doc:#}"))
}

#[test]
fn every_crash_of_a_step_is_reported_with_its_parents() {
    for backend in BACKENDS {
        let dir = scratch(&format!("ci_every_crash_{backend}"));
        let step = make_step();
        let out = ci(&dir, backend, &["--json", "ci.json"], &step, &[]);
        let err = text(&out.stderr);
        // The step's status and output pass through.
        assert_eq!(out.status.code(), Some(2), "{backend}: {err}");
        assert_eq!(text(&out.stdout), "calling a\nstep over\n", "{backend}");
        assert!(err.contains("make_like: recipe"), "{backend}: {err}");
        let doc = read_json(&dir.join("ci.json"));
        assert_eq!(doc["status"], 2);
        assert_eq!(doc["backend"], backend);
        assert_eq!(doc["crashes"].as_array().unwrap().len(), 2, "{backend}: {doc:#}");
        let segv = crash_with(&doc, "/null_call");
        let abrt = crash_with(&doc, "/abort");
        assert_eq!(segv["outcome"]["signal_name"], "SIGSEGV");
        assert_eq!(abrt["outcome"]["signal_name"], "SIGABRT");
        for c in [segv, abrt] {
            // Parent chain: the make-like parent, then the shell.
            let parents = c["parents"].as_array().unwrap();
            assert_eq!(parents.len(), 2, "{backend}: {c:#}");
            assert!(parents[0]["command"][0].as_str().unwrap().ends_with("/make_like"), "{backend}: {c:#}");
            assert_eq!(c["ppid"], parents[0]["pid"]);
            assert!(parents[1]["command"][0].as_str().unwrap().ends_with("sh"), "{backend}: {c:#}");
            assert_eq!(parents[1]["command"][1], "-c");
        }
        // The exit 3 is reported, not kept; so is the parent's exit 2.
        let exits = doc["failures"].as_array().unwrap();
        let three = exits.iter().find(|e| e["code"] == 3).expect("the exit 3");
        assert!(three["command"][0].as_str().unwrap().ends_with("/exit3"));
        assert_eq!(three["parents"][0]["pid"], segv["ppid"]);
        assert!(exits.iter().any(|e| e["code"] == 2 && e["pid"] == segv["ppid"]), "{backend}: {exits:?}");
        // The recipe that could not be spawned: its child ended before exec.
        assert!(exits.iter().any(|e| e["code"] == 127 && e["ppid"] == segv["ppid"]), "{backend}: {exits:?}");
        assert!(err.contains("exited with code 3"), "{backend}: {err}");
        // Exactly the crashing processes left trace files, each its own.
        let art = dir.join("bts-artifacts");
        let want: Vec<String> = [segv, abrt]
            .iter()
            .map(|c| {
                Path::new(c["trace_file"].as_str().unwrap())
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        let mut want_sorted = want.clone();
        want_sorted.sort();
        assert_eq!(files(&art), want_sorted, "{backend}");
        for c in [segv, abrt] {
            let f = c["trace_file"].as_str().unwrap();
            assert!(f.contains(&c["pid"].to_string()), "{f}");
            let lb = common::bts(&dir, &["last-branch", "--json", f]);
            assert!(lb.status.success(), "{}", text(&lb.stderr));
            let r = common::json(&lb);
            assert_eq!(r["pid"], c["pid"], "{backend}: the file holds that process");
            assert_eq!(r["outcome"]["signal_name"], c["outcome"]["signal_name"]);
        }
        // The NULL call is the last branch of the SIGSEGV.
        let t = common::crashed_thread(segv);
        let last = t["branches"].as_array().unwrap().last().unwrap();
        assert_eq!((last["kind"].as_str(), last["to"].as_str()), (Some("call"), Some("0x0")), "{backend}");
    }
}

#[test]
fn the_annotation_and_summary_point_at_the_crash_line() {
    for backend in BACKENDS {
        let dir = scratch(&format!("ci_github_{backend}"));
        let summary = dir.join("summary.md");
        std::fs::write(&summary, "earlier step\n").unwrap();
        let step = [path(&fixture("make_like")), path(&fixture("null_call")), path(&fixture("abort"))];
        let env: [(&str, &Path); 3] = [
            ("GITHUB_ACTIONS", Path::new("true")),
            ("GITHUB_WORKSPACE", &repo()),
            ("GITHUB_STEP_SUMMARY", &summary),
        ];
        let out = ci(&dir, backend, &[], &step, &env);
        assert_eq!(out.status.code(), Some(2), "{backend}: {}", text(&out.stderr));
        let stdout = text(&out.stdout);
        let null_line = line_of("null_call.c", "return hook(acc);");
        let abort_line = line_of("abort.c", "abort();");
        let want_segv =
            format!("::error file=tests/fixtures/null_call.c,line={null_line},title=null_call (pid ");
        let want_abrt = format!("::error file=tests/fixtures/abort.c,line={abort_line},title=abort (pid ");
        assert!(stdout.lines().any(|l| l.starts_with(&want_segv)), "{backend}: {stdout}");
        // abort() is reported where the program called it, not in libc.
        assert!(stdout.lines().any(|l| l.starts_with(&want_abrt)), "{backend}: {stdout}");
        assert!(stdout.contains("SIGSEGV at address 0x0"), "{stdout}");
        let md = std::fs::read_to_string(&summary).unwrap();
        assert!(md.starts_with("earlier step\n"), "appended, not replaced");
        assert!(md.contains("| pid | process | signal | where | started by | trace |"), "{md}");
        let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| ") && l.contains("SIG")).collect();
        assert_eq!(rows.len(), 2, "{backend}: {md}");
        assert!(rows.iter().any(|r| r.contains(&format!("tests/fixtures/null_call.c:{null_line}"))), "{md}");
        assert!(md.contains("<details>"), "the last branches of each crash");
    }
}

#[test]
fn the_junit_report_has_one_failed_case_per_crash() {
    for backend in BACKENDS {
        let dir = scratch(&format!("ci_junit_{backend}"));
        let step = make_step();
        let out = ci(&dir, backend, &["--junit", "junit.xml"], &step, &[]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
        let xml = std::fs::read_to_string(dir.join("junit.xml")).unwrap();
        let doc =
            roxmltree::Document::parse(&xml).unwrap_or_else(|e| panic!("{backend}: bad XML ({e}): {xml}"));
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "testsuites");
        assert_eq!(root.attribute("tests"), Some("2"));
        assert_eq!(root.attribute("failures"), Some("2"));
        let cases: Vec<_> = root.descendants().filter(|n| n.has_tag_name("testcase")).collect();
        assert_eq!(cases.len(), 2, "{xml}");
        let mut types: Vec<&str> = cases
            .iter()
            .map(|c| {
                let f = c.children().find(|n| n.has_tag_name("failure")).expect("a failure");
                assert!(f.text().unwrap_or("").contains("last "), "the report is the failure text");
                f.attribute("type").unwrap()
            })
            .collect();
        types.sort();
        assert_eq!(types, ["SIGABRT", "SIGSEGV"], "{backend}");
        assert!(cases.iter().any(|c| c.attribute("name").unwrap().contains("/null_call (pid ")));
    }
}

#[test]
fn max_artifacts_keeps_the_newest_and_keep_always_keeps_every_process() {
    for backend in BACKENDS {
        let dir = scratch(&format!("ci_max_{backend}"));
        let nc = fixture("null_call");
        let step = [path(&fixture("make_like")), path(&nc), path(&nc), path(&fixture("abort"))];
        let out = ci(&dir, backend, &["--max-artifacts", "2", "--json", "ci.json"], &step, &[]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        let doc = read_json(&dir.join("ci.json"));
        let crashes = doc["crashes"].as_array().unwrap();
        assert_eq!(crashes.len(), 3, "every crash is reported: {doc:#}");
        // The oldest file went; the newest two stay, and the report says so.
        assert_eq!(files(&dir.join("bts-artifacts")).len(), 2, "{backend}");
        assert!(crashes[0]["trace_file"].is_null(), "{:#}", crashes[0]);
        for c in &crashes[1..] {
            assert!(dir.join(c["trace_file"].as_str().unwrap()).is_file());
        }
        assert_eq!(doc["artifacts_removed"].as_array().unwrap().len(), 1);
        assert!(err.contains("--max-artifacts: 1 older trace file"), "{err}");

        // --keep always: a file for every process of the step.
        let dir = scratch(&format!("ci_keep_{backend}"));
        let step = [path(&fixture("make_like")), path(&fixture("exit3"))];
        let out = ci(&dir, backend, &["--keep", "always", "--json", "ci.json"], &step, &[]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
        let doc = read_json(&dir.join("ci.json"));
        assert_eq!(doc["processes"], 2);
        let kept = files(&dir.join("bts-artifacts"));
        assert_eq!(kept.len(), 2, "{backend}: {kept:?}");
        assert!(
            kept.iter().any(|f| f.ends_with("-exit3.bts"))
                && kept.iter().any(|f| f.ends_with("-make_like.bts"))
        );
    }
}

#[test]
fn a_daemon_left_running_by_the_step_is_named_and_survives() {
    for backend in BACKENDS {
        let dir = scratch(&format!("ci_daemon_{backend}"));
        let flag = dir.join("daemon.done");
        let stop = dir.join("daemon.stop");
        // The daemon runs until told to stop; the step ends after 1 s. Like
        // a real daemon it lets go of the step's output (or the test,
        // reading it to its end, would wait for the daemon).
        let script = format!(
            "{} {} {} </dev/null >/dev/null 2>&1 & sleep 1; echo step over",
            path(&fixture("daemon")),
            path(&flag),
            path(&stop)
        );
        let out = ci(&dir, backend, &["--json", "ci.json"], &["sh", "-c", script.as_str()], &[]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{err}");
        assert_eq!(text(&out.stdout), "step over\n");
        let doc = read_json(&dir.join("ci.json"));
        let left = doc["left_running"].as_array().unwrap();
        let daemon = left
            .iter()
            .find(|p| p["command"][0].as_str().is_some_and(|c| c.ends_with("/daemon")))
            .unwrap_or_else(|| panic!("{backend}: the daemon is not named: {doc:#}"));
        let pid = daemon["pid"].as_i64().unwrap();
        assert!(err.contains(&format!("(pid {pid})")), "{err}");
        assert!(!flag.exists(), "the daemon is still running when bts is done");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        if backend == "fast" {
            assert!(status.contains("TracerPid:\t0\n"), "detached: {status}");
        }
        // Its CPU mask is its own again (bts pins nothing here).
        let cpus = |s: &str| s.lines().find(|l| l.starts_with("Cpus_allowed_list:")).map(str::to_string);
        let mine = std::fs::read_to_string("/proc/self/status").unwrap();
        assert_eq!(cpus(&status), cpus(&mine), "{backend}");
        // Told to stop, it starts a child (fork and exec) and ends, unharmed.
        std::fs::write(&stop, "").unwrap();
        let t0 = std::time::Instant::now();
        while !flag.exists() {
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(60),
                "{backend}: the daemon never finished"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert_eq!(std::fs::read_to_string(&flag).unwrap(), "done 0\n", "{backend}: its child ran");
        if let Some(folder) = doc["valgrind_folder"].as_str() {
            let _ = std::fs::remove_dir_all(folder);
        }
    }
}

#[test]
fn processes_killed_from_outside_are_failures_not_crashes() {
    for backend in BACKENDS {
        let dir = scratch(&format!("ci_killed_{backend}"));
        // Two daemons, killed once both are running.
        let d = path(&fixture("daemon"));
        let script = format!(
            "{d} a.done a.stop a.ready & a=$!; {d} b.done b.stop b.ready & b=$!; \
             while [ ! -e a.ready ] || [ ! -e b.ready ]; do sleep 0.1; done; \
             kill -TERM $a; kill -KILL $b; wait; echo done"
        );
        let out = ci(&dir, backend, &["--json", "ci.json"], &["sh", "-c", script.as_str()], &[]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let doc = read_json(&dir.join("ci.json"));
        assert_eq!(doc["crashes"].as_array().unwrap().len(), 0, "{backend}: {doc:#}");
        let mut signals: Vec<&str> =
            doc["failures"].as_array().unwrap().iter().filter_map(|f| f["signal"].as_str()).collect();
        signals.sort();
        assert_eq!(signals, ["SIGKILL", "SIGTERM"], "{backend}: {doc:#}");
        assert!(files(&dir.join("bts-artifacts")).is_empty(), "no trace of a process that did not crash");
        assert!(text(&out.stderr).contains("was killed by SIGTERM"));
    }
}

#[test]
fn a_step_that_cannot_run_or_crashes_itself_keeps_the_shells_statuses() {
    for backend in BACKENDS {
        let dir = scratch(&format!("ci_status_{backend}"));
        let out = ci(&dir, backend, &[], &["./no-such-step"], &[]);
        assert_eq!(out.status.code(), Some(127), "{}", text(&out.stderr));
        let out = ci(&dir, backend, &["--json", "ci.json"], &[path(&fixture("null_call"))], &[]);
        assert_eq!(out.status.code(), Some(128 + 11), "{}", text(&out.stderr));
        let doc = read_json(&dir.join("ci.json"));
        assert_eq!(doc["status"], 139);
        assert_eq!(doc["crashes"][0]["parents"].as_array().unwrap().len(), 0, "the step itself crashed");
    }
}
