//! Recorders deliver through the allocator: the locked-memory limit, and
//! per-CPU catch-all buffers.

mod common;
use common::*;

use std::process::Command;

/// `sh -c SCRIPT` without CAP_IPC_LOCK (root drops it from its bounding
/// set), so RLIMIT_MEMLOCK binds as for an ordinary user.
fn sh_without_ipc_lock(script: &str) -> Command {
    // SAFETY: geteuid has no arguments.
    let mut c = if unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new("setpriv");
        c.args(["--bounding-set", "-ipc_lock", "--inh-caps", "-ipc_lock", "--", "sh"]);
        c
    } else {
        Command::new("sh")
    };
    c.arg("-c").arg(script);
    c
}

#[test]
fn a_buffer_over_the_memlock_limit_fails_up_front() {
    let dir = scratch("memlock");
    let bin = fixture("exit3");
    let script = format!("ulimit -l 16 && exec {BTS} run --buffer-size 64K -- {}", bin.display());
    let out = sh_without_ipc_lock(&script).current_dir(&dir).output().unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("RLIMIT_MEMLOCK is 16384 bytes"), "{err}");
    assert!(err.contains("needs 77824 more"), "64 KiB + 10 KiB slack, in whole pages: {err}");
    assert!(out.stdout.is_empty(), "the program never ran");
    // A buffer that fits runs normally.
    let script = format!("ulimit -l 256 && exec {BTS} run --buffer-size 16K -- {}", bin.display());
    let out = sh_without_ipc_lock(&script).current_dir(&dir).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
}

#[test]
fn cap_ipc_lock_lifts_the_memlock_limit_as_the_kernel_does() {
    // SAFETY: geteuid has no arguments.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: CAP_IPC_LOCK cannot be had here; the limit test above covers this user");
        return;
    }
    let dir = scratch("memlock_cap");
    let bin = fixture("exit3");
    // Root keeps CAP_IPC_LOCK: a 16 MiB buffer under a 16 KiB limit is fine,
    // as the kernel would lock it.
    let script =
        format!("ulimit -l 16 && exec {BTS} run --backend fast --buffer-size 16M -- {}", bin.display());
    let out = Command::new("sh").arg("-c").arg(&script).current_dir(&dir).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let doctor = Command::new(BTS).arg("doctor").output().unwrap();
    assert!(text(&doctor.stdout).contains("CAP_IPC_LOCK"), "{}", text(&doctor.stdout));
}

#[test]
fn unfollowed_children_land_in_the_cpu_catch_all_buffer() {
    let dir = scratch("per_cpu");
    let bin = fixture("fork_crash");
    let out = bts(&dir, &["run", "--per-cpu-buffer", "64K", "-o", "t.bts", "--", bin.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // system() spawns its shell with vfork: the child shares the parent's
    // memory until exec and is traced until then, but followed by no buffer.
    let mut found = false;
    for cpu in 0..64 {
        let out = bts(&dir, &["last-branch", "--json", "-n", "100000", "--cpu", &cpu.to_string(), "t.bts"]);
        if !out.status.success() {
            assert!(text(&out.stderr).contains("no catch-all buffer"), "{}", text(&out.stderr));
            break;
        }
        let r = json(&out);
        let t = &r["threads"][0];
        assert_eq!(t["cpu"], cpu);
        let br = t["branches"].as_array().unwrap();
        if br.iter().any(|b| b["to_sym"] == "execve") {
            found = true;
        }
    }
    assert!(found, "the vfork child's way to execve is in a catch-all buffer");
    // And not in the parent's own buffer after its spawn call.
    let r = json(&bts(&dir, &["last-branch", "--json", "-n", "100000", "t.bts"]));
    let main = &r["threads"][0];
    assert!(!main["branches"].as_array().unwrap().iter().any(|b| b["to_sym"] == "execve"));
}
