//! Fault injection: bts never harms the process it traces, the files it
//! writes, or the system it runs on. Each test runs the real thing.

mod common;
use common::*;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `bts ARGS` with the environment changed by `env` (None removes a variable).
fn bts_env(dir: &Path, args: &[&str], env: &[(&str, Option<&str>)]) -> Output {
    let mut c = Command::new(BTS);
    c.args(args).current_dir(dir).stdin(Stdio::null());
    for (k, v) in env {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    output_within(&mut c, LIMIT)
}

// ---- 1. -o never replaces what is there --------------------------------

#[test]
fn output_goes_through_devices_and_symlinks_and_never_replaces_a_file() {
    let dir = scratch("trust_output");
    let bin = fixture("null_call");
    let run = |out: &str| bts(&dir, &["run", "--backend", "fast", "-o", out, "--", bin.to_str().unwrap()]);
    // A device is written through and stays a device.
    let out = run("/dev/null");
    assert_eq!(out.status.code(), Some(139), "{}", text(&out.stderr));
    assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());
    // A symlink is followed: the link stays, its target gets the trace.
    std::fs::write(dir.join("target.bts"), b"old").unwrap();
    std::os::unix::fs::symlink("target.bts", dir.join("link.bts")).unwrap();
    let out = run("link.bts");
    assert_eq!(out.status.code(), Some(139), "{}", text(&out.stderr));
    assert!(std::fs::symlink_metadata(dir.join("link.bts")).unwrap().file_type().is_symlink());
    let lb = bts(&dir, &["last-branch", "target.bts"]);
    assert!(lb.status.success(), "the target holds the trace: {}", text(&lb.stderr));
    // An existing file keeps its inode (and its hard links).
    std::fs::hard_link(dir.join("target.bts"), dir.join("other-name.bts")).unwrap();
    let ino = std::fs::metadata(dir.join("target.bts")).unwrap().ino();
    run("target.bts");
    assert_eq!(std::fs::metadata(dir.join("target.bts")).unwrap().ino(), ino);
    assert_eq!(
        std::fs::read(dir.join("other-name.bts")).unwrap(),
        std::fs::read(dir.join("target.bts")).unwrap()
    );
    // A read-only file is refused, untouched; the report and status still come.
    std::fs::write(dir.join("ro.bts"), b"precious").unwrap();
    std::fs::set_permissions(dir.join("ro.bts"), std::fs::Permissions::from_mode(0o444)).unwrap();
    let out = run("ro.bts");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(139), "{err}");
    assert!(err.contains("ro.bts is read-only"), "{err}");
    assert!(err.contains("Last 16 branches"), "{err}");
    assert_eq!(std::fs::read(dir.join("ro.bts")).unwrap(), b"precious");
    // A folder is refused.
    std::fs::create_dir(dir.join("folder.bts")).unwrap();
    let err = text(&run("folder.bts").stderr);
    assert!(err.contains("is a directory"), "{err}");
    let partial: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(partial.is_empty(), "{partial:?}");
}

#[test]
fn a_full_disk_leaves_no_partial_file() {
    if !is_root() {
        eprintln!("needs root to mount a small tmpfs; the rule is unit-tested in bts-reader::outfile");
        return;
    }
    let dir = scratch("trust_full_disk");
    let mnt = dir.join("small");
    std::fs::create_dir(&mnt).unwrap();
    let ok =
        Command::new("mount").args(["-t", "tmpfs", "-o", "size=8k", "tmpfs"]).arg(&mnt).status().unwrap();
    assert!(ok.success(), "mount tmpfs");
    let bin = fixture("null_call");
    let out = bts(&mnt, &["run", "--backend", "fast", "-o", "t.bts", "--", bin.to_str().unwrap()]);
    let names: Vec<String> = std::fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let _ = Command::new("umount").arg(&mnt).status();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(139), "{err}");
    assert!(err.contains("could not save the trace") && err.contains("No space left"), "{err}");
    assert!(names.is_empty(), "nothing left behind: {names:?}");
}

// ---- 2, 3. The Valgrind tool: never someone else's, any HOME ----------

/// The name of the tool's folder (valgrind-HASH) as bts makes it, and the
/// size of the tool.
fn tool_leaf() -> (String, u64) {
    let dir = scratch("trust_tool_leaf");
    let cache = dir.join("cache");
    let bin = fixture("exit3");
    let out = bts_env(
        &dir,
        &["run", "--backend", "valgrind", "--", bin.to_str().unwrap()],
        &[("XDG_CACHE_HOME", Some(cache.to_str().unwrap()))],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let leaf = std::fs::read_dir(cache.join("bts")).unwrap().next().unwrap().unwrap();
    let m = std::fs::symlink_metadata(leaf.path()).unwrap();
    assert_eq!(m.mode() & 0o777, 0o700, "private");
    let len = std::fs::metadata(leaf.path().join("bts-amd64-linux")).unwrap().len();
    (leaf.file_name().to_string_lossy().into_owned(), len)
}

#[test]
fn a_tool_planted_by_another_user_is_never_run() {
    if !is_root() {
        eprintln!("needs root to play the victim of another user");
        return;
    }
    let (leaf, tool_len) = tool_leaf();
    let shared = open_scratch("trust_planted");
    let marker = shared.join("pwned");
    let bin = shared_fixture("exit3");
    // The other user plants a script, the size of the real tool, where
    // bts used to look, and a `bts` folder of theirs in a shared cache.
    let plant = format!(
        "set -e; for base in {s} {s}/xdg; do mkdir -p $base/bts/{leaf}; f=$base/bts/{leaf}/bts-amd64-linux; \
         printf '#!/bin/sh\\ntouch {m}\\n' > $f; truncate -s {tool_len} $f; chmod 755 $f $base/bts $base/bts/{leaf}; done",
        s = shared.display(),
        m = marker.display(),
    );
    let ok = as_nobody("sh").args(["-c", &plant]).status().unwrap();
    assert!(ok.success());
    // No HOME, no XDG_CACHE_HOME, TMPDIR shared: a fresh private folder.
    let out = bts_env(
        &shared,
        &["run", "--backend", "valgrind", "--", bin.to_str().unwrap()],
        &[("HOME", None), ("XDG_CACHE_HOME", None), ("TMPDIR", Some(shared.to_str().unwrap()))],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(!marker.exists(), "bts ran the planted file");
    // XDG_CACHE_HOME names the shared folder where their `bts` folder waits.
    let out = bts_env(
        &shared,
        &["run", "--backend", "valgrind", "--", bin.to_str().unwrap()],
        &[
            ("XDG_CACHE_HOME", Some(shared.join("xdg").to_str().unwrap())),
            ("TMPDIR", Some(shared.to_str().unwrap())),
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(!marker.exists(), "bts ran the planted file");
    // And HOME was never created where it is missing.
    let nohome = shared.join("no-such-home");
    let out = bts_env(
        &shared,
        &["run", "--backend", "valgrind", "--", bin.to_str().unwrap()],
        &[("HOME", Some(nohome.to_str().unwrap())), ("XDG_CACHE_HOME", None)],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(!nohome.exists());
    assert!(!shared.join(".cache").exists());
}

#[test]
fn an_unwritable_home_still_records_as_an_ordinary_user() {
    if !is_root() {
        eprintln!("needs root to become user 65534");
        return;
    }
    let dir = open_scratch("trust_home");
    let bin = shared_fixture("null_call");
    for home in ["/", "/nonexistent"] {
        let out = as_nobody("env")
            .args(["-u", "XDG_CACHE_HOME", &format!("HOME={home}"), BTS, "run", "-o", "t.bts", "--"])
            .arg(&bin)
            .current_dir(&dir)
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(139), "HOME={home}: {err}");
        assert!(err.contains("valgrind recorder"), "the default backend worked: {err}");
    }
}

// ---- 4, 5. The program's own traps ---------------------------------------

#[test]
fn the_programs_own_int3_kills_it_as_natively() {
    let dir = scratch("trust_int3");
    let bin = fixture("own_int3");
    let native = Command::new(&bin).output().unwrap();
    assert_eq!(native.status.signal(), Some(libc::SIGTRAP));
    for backend in ["fast", "step", "valgrind"] {
        let out = bts(&dir, &["run", "--backend", backend, "--json", "--", bin.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(133), "{backend}: {}", text(&out.stderr));
        assert!(text(&out.stdout).starts_with("before 10\n"), "{backend}");
        let r = json(&out);
        assert_eq!(r["outcome"]["signal_name"], "SIGTRAP", "{backend}");
        let cur = crashed_thread(&r)["last_instructions"].as_array().unwrap().last().unwrap().clone();
        let prev = &crashed_thread(&r)["last_instructions"].as_array().unwrap().iter().rev().nth(1).cloned();
        assert_eq!(prev.as_ref().unwrap()["text"], "int3", "{backend}: the int3 ran, the pc is after it");
        assert!(cur["current"].as_bool().unwrap());
    }
}

#[test]
fn a_program_that_handles_sigtrap_gets_every_one_of_its_own() {
    let dir = scratch("trust_sigtrap");
    let bin = fixture("sigtrap_handler");
    let native = Command::new(&bin).output().unwrap();
    assert_eq!(text(&native.stdout), "hits=4\n");
    for backend in ["fast", "step", "valgrind"] {
        let out = bts(
            &dir,
            &["run", "--backend", backend, "--report", "always", "--json", "--", bin.to_str().unwrap()],
        );
        assert_eq!(out.status.code(), Some(0), "{backend}: {}", text(&out.stderr));
        assert!(text(&out.stdout).starts_with("hits=4\n"), "{backend}: {}", text(&out.stdout));
        // The handler's entries are in the trace as signal deliveries.
        let r = json(&bts(
            &dir,
            &["last-branch", "--json", "-n", "100000", &format!("bts-{}.bts", json(&out)["pid"])],
        ));
        let into_handler = r["threads"][0]["branches"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["kind"] == "async" && b["to_sym"] == "on_trap")
            .count();
        assert_eq!(into_handler, 4, "{backend}");
    }
}

// ---- 6. Signals to bts -----------------------------------------------------

/// Waits until `path` has `lines` lines (the traced program finished).
fn wait_lines(path: &Path, lines: usize) -> String {
    let t0 = Instant::now();
    loop {
        let s = std::fs::read_to_string(path).unwrap_or_default();
        if s.lines().count() >= lines || t0.elapsed() > Duration::from_secs(30) {
            return s;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal_bts_while_tracing(attach: bool, sig: i32) {
    let name = format!("trust_sig_{}_{sig}", if attach { "attach" } else { "run" });
    let dir = scratch(&name);
    let bin = fixture("ticker");
    let native = Command::new(&bin).output().unwrap();
    let expected = text(&native.stdout);
    let out_path = dir.join("out.txt");
    let out_file = || std::fs::File::create(&out_path).unwrap();
    let (mut tracee, mut tracer) = if attach {
        let tracee = Command::new(&bin).arg("traced").stdout(out_file()).spawn().unwrap();
        let tracer = Command::new(BTS)
            .args(["attach", "--backend", "fast", &tracee.id().to_string()])
            .current_dir(&dir)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        (Some(tracee), tracer)
    } else {
        let tracer = Command::new(BTS)
            .args(["run", "--backend", "fast", "--"])
            .arg(&bin)
            .arg("traced")
            .current_dir(&dir)
            .stdout(out_file())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        (None, tracer)
    };
    // Three lines out: traced (the ticker waits for that), 37 lines to go.
    wait_lines(&out_path, 3);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(tracer.id() as i32, sig) };
    let status = tracer.wait().unwrap();
    if let Some(t) = tracee.as_mut() {
        assert!(t.wait().unwrap().success(), "the tracee finished normally");
    }
    let got = wait_lines(&out_path, expected.lines().count());
    assert_eq!(got, expected, "signal {sig}: the program's output is as untraced");
    if sig != libc::SIGKILL {
        assert_eq!(status.signal(), Some(sig), "bts ends as the signal meant it to, after detaching");
    }
    // And what was recorded is kept (after SIGKILL, by the tracer process
    // that outlives the bts the user started).
    let t0 = Instant::now();
    let saved = loop {
        let found = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "bts"));
        match found {
            Some(p) if bts(&dir, &["last-branch", p.to_str().unwrap()]).status.success() => break Some(p),
            _ if t0.elapsed() > Duration::from_secs(20) => break None,
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    assert!(saved.is_some(), "signal {sig}: no readable trace in {}", dir.display());
}

#[test]
fn sigkill_to_bts_attach_and_bts_run_leaves_the_program_unharmed() {
    signal_bts_while_tracing(true, libc::SIGKILL);
    signal_bts_while_tracing(false, libc::SIGKILL);
}

#[test]
fn the_tracer_is_not_the_bts_the_user_started() {
    // `killall bts` and `pgrep -x bts` find the front only; the tracer is
    // its child, named bts-tracer.
    let dir = scratch("trust_front");
    let bin = fixture("ticker");
    let mut front = Command::new(BTS)
        .args(["run", "--backend", "fast", "--"])
        .arg(&bin)
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let children = loop {
        let c =
            std::fs::read_to_string(format!("/proc/{}/task/{}/children", front.id(), front.id())).unwrap();
        if !c.trim().is_empty() || t0.elapsed() > Duration::from_secs(10) {
            break c;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let worker: i32 = children.split_whitespace().next().expect("a tracer child").parse().unwrap();
    // The program is traced by bts-tracer, not by the front.
    let t0 = Instant::now();
    let tracer_of_program = loop {
        let kids =
            std::fs::read_to_string(format!("/proc/{worker}/task/{worker}/children")).unwrap_or_default();
        let traced_by = kids.split_whitespace().next().and_then(|p| {
            let st = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
            st.lines().find_map(|l| l.strip_prefix("TracerPid:").map(|v| v.trim().parse::<i32>().unwrap()))
        });
        match traced_by {
            Some(t) if t != 0 => break t,
            _ if t0.elapsed() > Duration::from_secs(10) => break 0,
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    assert_eq!(tracer_of_program, worker);
    // The child names itself right after the fork; by the time it traces
    // the program, the name is set (read earlier, it may still be "bts").
    let comm = std::fs::read_to_string(format!("/proc/{worker}/comm")).unwrap();
    assert_eq!(comm.trim(), "bts-tracer");
    assert!(front.wait().unwrap().success());
}

#[test]
fn sigusr1_sigquit_sigpipe_to_bts_attach_leave_the_program_unharmed() {
    for sig in [libc::SIGUSR1, libc::SIGQUIT, libc::SIGPIPE] {
        signal_bts_while_tracing(true, sig);
    }
}

#[test]
fn sigusr1_sigquit_sigpipe_to_bts_run_leave_the_program_unharmed() {
    for sig in [libc::SIGUSR1, libc::SIGQUIT, libc::SIGPIPE] {
        signal_bts_while_tracing(false, sig);
    }
}

#[test]
fn detaching_while_the_program_spawns_never_hangs_it() {
    // posix_spawn uses vfork: the parent sits in an uninterruptible wait
    // until its child execs, and the child is traced too. Attaching and
    // detaching must not wait for the parent to stop (it cannot until the
    // child goes), nor for an interrupt that another stop cleared.
    let dir = scratch("trust_detach_vfork");
    let log = dir.join("out");
    for round in 0..3 {
        let mut prog =
            Command::new(fixture("spawn_loop")).stdout(std::fs::File::create(&log).unwrap()).spawn().unwrap();
        wait_lines(&log, 1);
        let mut b = Command::new(BTS)
            .args(["attach", "--report", "never", &prog.id().to_string()])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(400 + 150 * round));
        // SAFETY: signalling our own child.
        unsafe { libc::kill(b.id() as i32, libc::SIGINT) };
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = b.try_wait().unwrap() {
                break s;
            }
            if t0.elapsed() > Duration::from_secs(20) {
                let _ = prog.kill();
                panic!("bts attach hangs detaching from a spawning program (round {round})");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "round {round}: bts ended with {status}");
        assert!(prog.wait().unwrap().success(), "round {round}");
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "ready\ndone\n", "round {round}");
    }
}

// ---- 7. bts's own output ---------------------------------------------------

#[test]
fn a_closed_or_full_stdout_keeps_the_programs_status() {
    let dir = scratch("trust_stdout");
    let bin = fixture("null_call");
    for redirect in [">&-", ">/dev/full", "2>&- >/dev/null"] {
        let script = format!("exec {redirect}; exec {BTS} run --backend fast --json -- {}", bin.display());
        let out = Command::new("sh").arg("-c").arg(&script).current_dir(&dir).output().unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(139), "{redirect}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        if redirect == ">/dev/full" {
            assert_eq!(err.matches("cannot write to stdout").count(), 1, "reported once: {err}");
        }
    }
}

// ---- 8, 11. Followed children under Valgrind; JSON -----------------------

#[test]
fn every_crashing_child_is_reported_under_valgrind_with_its_own_file() {
    let dir = scratch("trust_vg_children");
    let null_call = fixture("null_call");
    let spawner = fixture("spawn_crash");
    let sh = format!("{}; echo after", null_call.display());
    let cases: Vec<Vec<String>> = vec![
        vec!["sh".into(), "-c".into(), sh],
        vec![spawner.display().to_string(), null_call.display().to_string()],
        vec![fixture("fork_crash").display().to_string()],
    ];
    for (i, cmd) in cases.iter().enumerate() {
        let file = format!("t{i}.bts");
        let json_file = format!("r{i}.json");
        let mut args: Vec<&str> = vec![
            "run",
            "--backend",
            "valgrind",
            "--follow-fork",
            "-o",
            &file,
            "--json-file",
            &json_file,
            "--",
        ];
        args.extend(cmd.iter().map(String::as_str));
        let out = bts(&dir, &args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{cmd:?}: {err}");
        assert!(err.contains("got SIGSEGV"), "{cmd:?}: {err}");
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join(&json_file)).unwrap()).unwrap();
        let crashed =
            if r["outcome"]["kind"] == "signal" { r.clone() } else { r["other_reports"][0].clone() };
        assert_eq!(crashed["outcome"]["signal_name"], "SIGSEGV", "{cmd:?}: {r}");
        let child = crashed["pid"].as_i64().unwrap();
        assert_ne!(child as u32, out.status.code().unwrap() as u32);
        let own = crashed["command"][0].as_str().unwrap();
        assert!(
            own.ends_with("null_call") || own.ends_with("fork_crash"),
            "{cmd:?}: named by its own command: {own}"
        );
        let child_file = format!("t{i}.{child}.bts");
        assert_eq!(crashed["trace_file"], child_file.as_str());
        assert!(dir.join(&child_file).exists(), "{child_file}");
    }
}

#[test]
fn json_file_is_one_document_apart_from_the_programs_output() {
    let dir = scratch("trust_json_file");
    let bin = fixture("null_call");
    for backend in ["fast", "valgrind"] {
        let out =
            bts(&dir, &["run", "--backend", backend, "--json-file", "r.json", "--", bin.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(139), "{}", text(&out.stderr));
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("r.json")).unwrap()).unwrap();
        assert_eq!(r["outcome"]["signal_name"], "SIGSEGV");
        assert!(text(&out.stderr).contains("Last 16 branches"), "the text report still on stderr");
        assert!(!text(&out.stdout).contains("\"outcome\""), "stdout is the program's");
    }
}

// ---- 9. Fault addresses against the kernel's own -------------------------

#[test]
fn fault_addresses_and_pcs_are_the_kernels() {
    let dir = scratch("trust_faults");
    let bin = fixture_with("faults", "_nopie", &["-no-pie", "-fno-pie"]);
    for (kind, backends) in [
        ("segv", &["fast", "step", "valgrind"][..]),
        ("ill", &["fast", "valgrind"]),
        ("fpe", &["fast", "valgrind"]),
        ("trap", &["fast", "valgrind"]),
        // Valgrind does not raise SIGBUS past the end of a file mapping.
        ("bus", &["fast", "step"]),
    ] {
        let native = Command::new("setarch").args(["-R"]).arg(&bin).args([kind, "report"]).output().unwrap();
        let line = text(&native.stdout);
        let field = |name: &str| {
            let v = line.split_whitespace().find_map(|w| w.strip_prefix(&format!("{name}="))).unwrap();
            u64::from_str_radix(v.trim_start_matches("0x"), 16).unwrap()
        };
        let (addr, pc, code) = (field("addr"), field("pc"), field("code"));
        for backend in backends {
            let out = bts(
                &dir,
                &["run", "--backend", backend, "--no-aslr", "--json", "--", bin.to_str().unwrap(), kind],
            );
            let r = json(&out);
            let outcome = &r["outcome"];
            let mut want_addr = format!("{addr:#x}");
            if kind == "bus" {
                // The mapping is placed anew in each run: same offset into it.
                let map = text(&out.stdout)
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("map=").map(str::to_string));
                let native_map = field("map");
                let ours = u64::from_str_radix(map.unwrap().trim_start_matches("0x"), 16).unwrap();
                want_addr = format!("{:#x}", ours + (addr - native_map));
            }
            assert_eq!(outcome["fault_addr"], want_addr.as_str(), "{kind} {backend} (si_code {code}): {r}");
            let cur = crashed_thread(&r)["last_instructions"].as_array().unwrap().last().unwrap().clone();
            assert_eq!(cur["addr"], format!("{pc:#x}").as_str(), "{kind} {backend}: the pc");
        }
    }
}

// ---- 10. lost + recorded = branches taken ---------------------------------

#[test]
fn lost_plus_recorded_is_every_branch_on_every_backend() {
    let dir = scratch("trust_counts");
    let bin = fixture_with("counted", "_static", &["-static", "-nostdlib", "-fno-pie", "-no-pie"]);
    let mut sums = Vec::new();
    for backend in ["step", "fast", "valgrind"] {
        let file = format!("{backend}.bts");
        let out = bts(
            &dir,
            &["run", "--backend", backend, "--buffer-size", "4K", "-o", &file, "--", bin.to_str().unwrap()],
        );
        assert_eq!(out.status.code(), Some(0), "{backend}: {}", text(&out.stderr));
        let r = json(&bts(&dir, &["last-branch", "--json", &file]));
        let t = &r["threads"][0];
        let (lost, recorded) = (t["lost"].as_u64().unwrap(), t["recorded"].as_u64().unwrap());
        assert!(lost > 0, "{backend}: the buffer overflowed");
        // 4 KiB + 10 KiB of slack = 597 records on every backend (one of
        // them may be a context record).
        assert!((596..=597).contains(&recorded), "{backend}: {recorded}");
        sums.push((backend, lost + recorded));
    }
    // The loop runs 20,000 times: 20,000 taken jumps back and the jump in.
    assert!(sums.iter().all(|&(_, s)| s == 20_001), "{sums:?}");
}

// ---- 12. Smaller defects ---------------------------------------------------

#[test]
fn exec_failures_exit_like_env() {
    let dir = scratch("trust_exec");
    std::fs::write(dir.join("not-exec"), b"#!/bin/sh\n").unwrap();
    for backend in ["fast", "valgrind"] {
        let out = bts(&dir, &["run", "--backend", backend, "--", "/tmp"]);
        assert_eq!(out.status.code(), Some(126), "{backend}");
        assert!(text(&out.stderr).contains("Is a directory"), "{}", text(&out.stderr));
        let out = bts(&dir, &["run", "--backend", backend, "--", "no-such-program-anywhere"]);
        assert_eq!(out.status.code(), Some(127), "{backend}");
        let out = bts(&dir, &["run", "--backend", backend, "--", "./not-exec"]);
        assert_eq!(out.status.code(), Some(126), "{backend}");
        assert!(text(&out.stderr).contains("Permission denied"), "{}", text(&out.stderr));
    }
}

#[test]
fn attaching_to_a_more_privileged_process_names_the_capability() {
    if !is_root() {
        eprintln!("needs root to become user 65534");
        return;
    }
    let out = as_nobody(BTS).args(["attach", "1"]).output().unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("CAP_SYS_PTRACE"), "{err}");
    assert!(!err.contains("/proc/1/mem"), "{err}");
}

#[test]
fn an_attached_program_that_exits_is_said_so() {
    let dir = scratch("trust_attach_exit");
    let bin = fixture("ticker");
    let mut tracee = Command::new(&bin).arg("traced").stdout(Stdio::null()).spawn().unwrap();
    let out = bts(&dir, &["attach", "--backend", "fast", &tracee.id().to_string()]);
    assert!(tracee.wait().unwrap().success());
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    // Named by its command line even when bts attached while it was still
    // inside execve (std spawns with vfork semantics: the command line may
    // not be set up yet when spawn returns).
    let named = format!("pid {} ({} traced)", tracee.id(), bin.display());
    assert!(err.contains(&format!("attached to {named}")), "{err}");
    assert!(err.contains(&format!("{named} exited with code 0")), "{err}");
}

#[test]
fn last_branch_names_the_file_once() {
    let dir = scratch("trust_last_branch");
    let out = bts(&dir, &["last-branch", "missing.bts"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(err.matches("missing.bts").count(), 1, "{err}");
}
