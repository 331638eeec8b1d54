//! Errors of the hardware backend, each naming its cause and, where the
//! remedy is on this machine, the way out. The way round (another backend)
//! is the caller's to say: see [`PerfError::software_recorders_help`].

use super::cpu::{self, CpuInfo};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
/// Why the hardware cannot record, each naming its cause.
pub enum PerfError {
    /// The CPU has no BTS (or the hypervisor hides it).
    #[error("no hardware BTS on this CPU: {cpu} {why}")]
    NoBts {
        /// The CPU's name.
        cpu: String,
        /// Why, in words.
        why: String,
    },
    /// A CPU whose BTS records are unreliable.
    #[error(
        "BTS is disabled on {cpu} (family 6, model {model:#x}): erratum AAJ122 makes its \
         branch \"from\" addresses unreliable, and GDB refuses it too"
    )]
    Erratum {
        /// The CPU's name.
        cpu: String,
        /// Its model number.
        model: u32,
    },
    /// perf_event_paranoid forbids it.
    #[error(
        "not allowed to record: kernel.perf_event_paranoid is {level}; set it to 1 or less \
         (sysctl kernel.perf_event_paranoid=1) or run bts as root"
    )]
    Paranoid {
        /// The setting.
        level: i32,
    },
    /// The ring cannot be locked in memory.
    #[error(
        "cannot lock the perf buffer: {pages} pages are over perf_event_mlock_kb ({mlock_kb} KiB per CPU) \
         and RLIMIT_MEMLOCK; raise `ulimit -l`, or ask for a smaller --buffer-size"
    )]
    Memlock {
        /// The pages asked for.
        pages: u64,
        /// perf_event_mlock_kb.
        mlock_kb: u64,
    },
    /// Another user of the branch hardware holds it.
    #[error(
        "branch tracing is busy on this thread: another LBR, Intel PT or BTS user \
         (perf, a debugger, a profiler) holds it (EBUSY); stop it"
    )]
    Busy,
    /// No intel_bts PMU.
    #[error("the intel_bts PMU is not registered: {why}; bts falls back to the legacy BTS event")]
    IntelBtsAbsent {
        /// Why, in words.
        why: String,
    },
    /// A system call failed otherwise.
    #[error("{what} failed: {}", errno_name(*errno))]
    Os {
        /// Which.
        what: &'static str,
        /// Its errno.
        errno: i32,
    },
    /// The kernel's ring header points outside the mapping.
    #[error("the kernel reported a perf ring outside its mapping")]
    RingOutsideMapping,
    /// The allocator refused PEBS.
    #[error("PEBS cannot be had: {0}")]
    Pebs(#[from] ds_alloc::Error),
    /// The ring could not be read.
    #[error("{0}")]
    Ring(#[from] super::ring::RingError),
}

impl PerfError {
    /// The hardware cannot record here, but the software recorders can.
    pub fn software_recorders_help(&self) -> bool {
        matches!(self, PerfError::NoBts { .. } | PerfError::Erratum { .. } | PerfError::Busy)
    }
}

fn cpu_label(c: &CpuInfo) -> String {
    if c.model_name.is_empty() {
        c.vendor.clone()
    } else {
        c.model_name.clone()
    }
}

/// Turns a failed `perf_event_open` of the BTS event into a cause.
pub fn diagnose_open(errno: i32, c: &CpuInfo) -> PerfError {
    match errno {
        libc::EACCES | libc::EPERM => {
            PerfError::Paranoid { level: cpu::perf_event_paranoid().unwrap_or(i32::MAX) }
        }
        libc::EBUSY => PerfError::Busy,
        libc::ENOENT | libc::EOPNOTSUPP | libc::ENODEV | libc::EINVAL => {
            let why = if c.is_amd() {
                "(AMD processors have no Branch Trace Store)".to_string()
            } else if c.hypervisor && cpu::core_pmu_name().is_none() {
                "(the hypervisor exposes no performance monitoring unit to this guest)".to_string()
            } else if c.hypervisor {
                "(the hypervisor hides the Debug Store)".to_string()
            } else if !c.debug_store {
                "(the CPU reports no Debug Store: no dtes64/ds_cpl flag)".to_string()
            } else {
                format!("(the kernel refused the branch-instructions event: {})", errno_name(errno))
            };
            PerfError::NoBts { cpu: cpu_label(c), why }
        }
        e => PerfError::Os { what: "perf_event_open", errno: e },
    }
}

/// A failed mmap of the ring even at one page.
pub fn diagnose_mmap(errno: i32, pages: u64) -> PerfError {
    match errno {
        libc::EPERM | libc::ENOMEM => {
            PerfError::Memlock { pages, mlock_kb: cpu::perf_event_mlock_kb().unwrap_or(0) }
        }
        e => PerfError::Os { what: "mmap of the perf ring", errno: e },
    }
}

/// Why `intel_bts` is not there.
pub fn intel_bts_absent(c: &CpuInfo) -> PerfError {
    let why = if !c.is_intel() {
        format!("{} is not an Intel CPU", cpu_label(c))
    } else if cpu::page_table_isolation() {
        "the kernel uses page-table isolation (PTI), under which intel_bts is not offered".to_string()
    } else {
        "the kernel or hypervisor does not offer it".to_string()
    };
    PerfError::IntelBtsAbsent { why }
}

/// The system's words for an errno.
pub fn errno_name(e: i32) -> String {
    std::io::Error::from_raw_os_error(e).to_string()
}

/// Refuses the CPUs GDB refuses, before trying.
pub fn check_cpu(c: &CpuInfo) -> Result<(), PerfError> {
    if c.is_amd() {
        return Err(PerfError::NoBts {
            cpu: cpu_label(c),
            why: "(AMD processors have no Branch Trace Store)".into(),
        });
    }
    if c.has_bts_erratum() {
        return Err(PerfError::Erratum { cpu: cpu_label(c), model: c.model });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intel(model: u32, hypervisor: bool) -> CpuInfo {
        CpuInfo {
            vendor: "GenuineIntel".into(),
            family: 6,
            model,
            model_name: "Intel(R) Xeon(R)".into(),
            hypervisor,
            debug_store: !hypervisor,
        }
    }

    #[test]
    fn messages_name_cause_and_way_out() {
        let amd =
            CpuInfo { vendor: "AuthenticAMD".into(), model_name: "AMD EPYC".into(), ..Default::default() };
        let e = check_cpu(&amd).unwrap_err().to_string();
        assert!(e.contains("AMD processors have no Branch Trace Store"), "{e}");
        assert!(check_cpu(&amd).unwrap_err().software_recorders_help());
        assert!(!diagnose_open(libc::EACCES, &intel(0x55, false)).software_recorders_help());
        let e = check_cpu(&intel(0x2a, false)).unwrap_err().to_string();
        assert!(e.contains("AAJ122") && e.contains("0x2a"), "{e}");
        assert!(check_cpu(&intel(0x55, false)).is_ok());
        let e = diagnose_open(libc::EBUSY, &intel(0x55, false)).to_string();
        assert!(e.contains("EBUSY") && e.contains("Intel PT"), "{e}");
        let e = diagnose_open(libc::EACCES, &intel(0x55, false)).to_string();
        assert!(e.contains("perf_event_paranoid"), "{e}");
        let e = diagnose_mmap(libc::EPERM, 16).to_string();
        assert!(e.contains("ulimit -l") && e.contains("16 pages"), "{e}");
        let e = diagnose_open(libc::ENOENT, &intel(0xcf, true)).to_string();
        assert!(e.contains("hypervisor"), "{e}");
    }
}
