//! What the whole-program benches share: timing a command.

use std::process::Command;
use std::time::Instant;

/// The best of `n` wall-clock runs of the command `cmd` makes (it must
/// succeed), in seconds.
pub fn best_of(n: usize, mut cmd: impl FnMut() -> Command) -> f64 {
    (0..n)
        .map(|_| {
            let t0 = Instant::now();
            let out = cmd().output().expect("run");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            t0.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
}
