//! `bts doctor`: what this machine offers for branch tracing, and why.

use std::process::ExitCode;

use bts_reader::perf::{self, cpu};
use serde::Serialize;

#[derive(Serialize)]
struct Check {
    available: bool,
    /// What was found, or why not.
    detail: String,
}

#[derive(Serialize)]
struct Doctor {
    cpu_vendor: String,
    cpu_family: u32,
    cpu_model: u32,
    cpu_model_name: String,
    hypervisor: bool,
    hardware_bts: Check,
    bts_erratum_aaj122: bool,
    intel_bts_pmu: Check,
    pebs: Check,
    perf_event_paranoid: Option<i32>,
    perf_event_mlock_kb: Option<u64>,
    rlimit_memlock_bytes: Option<u64>,
    cap_ipc_lock: bool,
    ptrace: Check,
    recorders: Vec<(String, Check)>,
    auto_picks: String,
}

/// Tries to PTRACE_SEIZE a child of ours.
fn ptrace_check() -> Check {
    let scope =
        std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope").ok().map(|s| s.trim().to_string());
    let mut child = match std::process::Command::new("sleep").arg("5").spawn() {
        Ok(c) => c,
        Err(e) => return Check { available: false, detail: format!("cannot start a test child: {e}") },
    };
    let pid = child.id() as i32;
    let r = ptrace_shim::sys::seize(pid, 0);
    let _ = child.kill();
    let _ = child.wait();
    let scope = scope.map(|s| format!("kernel.yama.ptrace_scope = {s}")).unwrap_or_else(|| "no Yama".into());
    match r {
        Ok(()) => Check { available: true, detail: format!("PTRACE_SEIZE of a child works ({scope})") },
        Err(e) => {
            Check { available: false, detail: format!("PTRACE_SEIZE of a child failed: {e} ({scope})") }
        }
    }
}

fn pebs_check(c: &cpu::CpuInfo) -> Check {
    if !c.is_intel() {
        return Check { available: false, detail: format!("{} has no PEBS", c.vendor) };
    }
    match cpu::core_pmu_name() {
        None => Check { available: false, detail: "no core PMU is exposed (hypervisor)".into() },
        Some(name) => Check {
            available: true,
            detail: format!(
                "core PMU {name}; the record format is not exposed to user space (fmt0-3 or adaptive)"
            ),
        },
    }
}

fn valgrind_check() -> Check {
    match bts_reader::valgrind::unavailable() {
        Some(why) => Check { available: false, detail: why.to_string() },
        None => {
            let v = std::process::Command::new("valgrind")
                .arg("--version")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default();
            Check { available: true, detail: format!("{v} with the bts tool (launched programs)") }
        }
    }
}

pub fn run(json: bool) -> ExitCode {
    let c = cpu::CpuInfo::read();
    let hw = perf::probe_bts();
    let hardware_bts = match &hw {
        Ok(()) => {
            Check { available: true, detail: "the branch-instructions event with period 1 opens".into() }
        }
        Err(e) => {
            Check { available: false, detail: crate::record::BackendError::Perf(e.clone()).to_string() }
        }
    };
    let intel_bts_pmu = match cpu::intel_bts_type() {
        Some(t) => Check { available: true, detail: format!("PMU type {t}") },
        None => Check { available: false, detail: perf::error::intel_bts_absent(&c).to_string() },
    };
    let ptrace = ptrace_check();
    let soft = |name: &str| Check {
        available: ptrace.available,
        detail: if ptrace.available { format!("{name}: ptrace works") } else { "needs ptrace".into() },
    };
    let memlock = ds_alloc::alloc::current_memlock_limit();
    let d = Doctor {
        cpu_vendor: c.vendor.clone(),
        cpu_family: c.family,
        cpu_model: c.model,
        cpu_model_name: c.model_name.clone(),
        hypervisor: c.hypervisor,
        bts_erratum_aaj122: c.has_bts_erratum(),
        pebs: pebs_check(&c),
        perf_event_paranoid: cpu::perf_event_paranoid(),
        perf_event_mlock_kb: cpu::perf_event_mlock_kb(),
        rlimit_memlock_bytes: (memlock != u64::MAX).then_some(memlock),
        cap_ipc_lock: cpu::has_cap_ipc_lock(),
        recorders: vec![
            ("perf".into(), Check { available: hardware_bts.available, detail: hardware_bts.detail.clone() }),
            ("valgrind".into(), valgrind_check()),
            ("fast".into(), soft("one stop per branch")),
            ("step".into(), soft("single-step")),
        ],
        auto_picks: if hw.is_ok() {
            "perf".into()
        } else if ptrace.available && bts_reader::valgrind::unavailable().is_none() {
            "valgrind (bts run), fast (bts attach)".into()
        } else if ptrace.available {
            "fast".into()
        } else {
            "none".into()
        },
        hardware_bts,
        intel_bts_pmu,
        ptrace,
    };
    if json {
        crate::outln!("{}", serde_json::to_string_pretty(&d).expect("serializes"));
        return ExitCode::SUCCESS;
    }
    let yes = |b: bool| if b { "yes" } else { "no" };
    let mut rows: Vec<(String, String)> = vec![
        (
            "CPU".into(),
            format!(
                "{} (vendor {}, family {}, model {:#x})",
                d.cpu_model_name, d.cpu_vendor, d.cpu_family, d.cpu_model
            ),
        ),
        ("hypervisor".into(), yes(d.hypervisor).into()),
        ("hardware BTS".into(), format!("{}: {}", yes(d.hardware_bts.available), d.hardware_bts.detail)),
        ("erratum AAJ122".into(), yes(d.bts_erratum_aaj122).into()),
        ("intel_bts PMU".into(), format!("{}: {}", yes(d.intel_bts_pmu.available), d.intel_bts_pmu.detail)),
        ("PEBS".into(), format!("{}: {}", yes(d.pebs.available), d.pebs.detail)),
        ("perf_event_paranoid".into(), d.perf_event_paranoid.map_or("unknown".into(), |v| v.to_string())),
        ("perf_event_mlock_kb".into(), d.perf_event_mlock_kb.map_or("unknown".into(), |v| v.to_string())),
        (
            "RLIMIT_MEMLOCK".into(),
            d.rlimit_memlock_bytes.map_or("unlimited".into(), |v| {
                let waived = if d.cap_ipc_lock { " (not binding: CAP_IPC_LOCK)" } else { "" };
                format!("{v} bytes{waived}")
            }),
        ),
        ("CAP_IPC_LOCK".into(), yes(d.cap_ipc_lock).into()),
        ("ptrace".into(), format!("{}: {}", yes(d.ptrace.available), d.ptrace.detail)),
    ];
    for (name, c) in &d.recorders {
        rows.push((format!("recorder {name}"), format!("{}: {}", yes(c.available), c.detail)));
    }
    rows.push(("--backend auto picks".into(), d.auto_picks.clone()));
    let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    for (k, v) in rows {
        crate::outln!("{k:<w$}  {v}");
    }
    ExitCode::SUCCESS
}
