//! What the whole-program benches share: timing a command.

use std::process::Command;
use std::time::Instant;

use nix::sys::resource::{getrusage, UsageWho};

/// The best of `n` wall-clock runs of the command `cmd` makes (it must
/// succeed), in seconds.
#[allow(dead_code)] // each bench is its own crate, and uses one of these
pub fn best_of(n: usize, mut cmd: impl FnMut() -> Command) -> f64 {
    (0..n).map(|_| wall_time(cmd())).fold(f64::MAX, f64::min)
}

/// One run of `cmd` (it must succeed), in wall-clock seconds.
fn wall_time(mut cmd: Command) -> f64 {
    let t0 = Instant::now();
    let out = cmd.output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    t0.elapsed().as_secs_f64()
}

/// One run of `cmd` (it must succeed), in CPU seconds (user and system) of
/// it and of every process it waited for. On a shared machine this moves
/// less than wall-clock time: time the machine gives others is not in it.
#[allow(dead_code)]
pub fn cpu_time(mut cmd: Command) -> f64 {
    let used = || {
        let u = getrusage(UsageWho::RUSAGE_CHILDREN).expect("getrusage");
        let s = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 * 1e-6;
        s(u.user_time()) + s(u.system_time())
    };
    let before = used();
    let out = cmd.output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    used() - before
}

/// The median of `v` (not empty).
#[allow(dead_code)]
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
