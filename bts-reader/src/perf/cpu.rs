//! What the CPU and the kernel say about branch tracing here.

/// The CPU as /proc/cpuinfo describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuInfo {
    /// `vendor_id` (`GenuineIntel`, `AuthenticAMD`).
    pub vendor: String,
    /// The CPU family.
    pub family: u32,
    /// The CPU model.
    pub model: u32,
    /// `model name`.
    pub model_name: String,
    /// Running under a hypervisor (the `hypervisor` flag).
    pub hypervisor: bool,
    /// The `ds_cpl` / `dtes64` flags: the CPU has a Debug Store.
    pub debug_store: bool,
}

impl CpuInfo {
    /// The first CPU of /proc/cpuinfo.
    pub fn read() -> CpuInfo {
        std::fs::read_to_string("/proc/cpuinfo").map(|t| CpuInfo::parse(&t)).unwrap_or_default()
    }

    /// Parses the first processor's block.
    pub fn parse(text: &str) -> CpuInfo {
        let mut c = CpuInfo::default();
        for line in text.lines() {
            if line.trim().is_empty() && !c.vendor.is_empty() {
                break;
            }
            let Some((k, v)) = line.split_once(':') else { continue };
            let (k, v) = (k.trim(), v.trim());
            match k {
                "vendor_id" => c.vendor = v.to_string(),
                "cpu family" => c.family = v.parse().unwrap_or(0),
                "model" => c.model = v.parse().unwrap_or(0),
                "model name" => c.model_name = v.to_string(),
                "flags" => {
                    let flags: Vec<&str> = v.split_whitespace().collect();
                    c.hypervisor = flags.contains(&"hypervisor");
                    c.debug_store = flags.contains(&"dtes64") || flags.contains(&"ds_cpl");
                }
                _ => {}
            }
        }
        c
    }

    /// An Intel CPU.
    pub fn is_intel(&self) -> bool {
        self.vendor == "GenuineIntel"
    }

    /// An AMD CPU.
    pub fn is_amd(&self) -> bool {
        self.vendor == "AuthenticAMD" || self.vendor == "HygonGenuine"
    }

    /// Models GDB refuses BTS on for erratum AAJ122 (wrong "from"
    /// addresses after EIST transitions, T-states, C1E or thermal throttling).
    pub fn has_bts_erratum(&self) -> bool {
        self.is_intel()
            && self.family == 6
            && matches!(self.model, 0x1a | 0x1e | 0x1f | 0x2e | 0x25 | 0x2c | 0x2f | 0x2a | 0x2d | 0x3a)
    }
}

fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// `kernel.perf_event_paranoid`.
pub fn perf_event_paranoid() -> Option<i32> {
    read_trim("/proc/sys/kernel/perf_event_paranoid")?.parse().ok()
}

/// `kernel.perf_event_mlock_kb`.
pub fn perf_event_mlock_kb() -> Option<u64> {
    read_trim("/proc/sys/kernel/perf_event_mlock_kb")?.parse().ok()
}

/// The dynamic PMU type of `intel_bts`, if the kernel registered it.
pub fn intel_bts_type() -> Option<u32> {
    read_trim("/sys/bus/event_source/devices/intel_bts/type")?.parse().ok()
}

/// True if the kernel isolates page tables (PTI), under which `intel_bts`
/// is not registered.
pub fn page_table_isolation() -> bool {
    read_trim("/sys/devices/system/cpu/vulnerabilities/meltdown").is_some_and(|s| s.contains("PTI"))
}

/// The core PMU's name (`/sys/bus/event_source/devices/cpu/caps/pmu_name`),
/// absent when the hypervisor exposes no PMU.
pub fn core_pmu_name() -> Option<String> {
    read_trim("/sys/bus/event_source/devices/cpu/caps/pmu_name")
        .or_else(|| read_trim("/sys/bus/event_source/devices/cpu_core/caps/pmu_name"))
}

/// True if the process has CAP_IPC_LOCK (perf then ignores RLIMIT_MEMLOCK).
pub use ds_alloc::alloc::has_cap_ipc_lock;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpuinfo() {
        let t = "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 46\n\
                 model name\t: Intel(R) Xeon(R) CPU X7560\nflags\t\t: fpu dtes64 ds_cpl hypervisor\n\n\
                 processor\t: 1\nvendor_id\t: Other\n";
        let c = CpuInfo::parse(t);
        assert_eq!(c.vendor, "GenuineIntel");
        assert_eq!((c.family, c.model), (6, 0x2e));
        assert!(c.hypervisor && c.debug_store);
        assert!(c.has_bts_erratum());
        let amd = CpuInfo::parse("vendor_id : AuthenticAMD\ncpu family : 25\nmodel : 1\nflags : fpu\n");
        assert!(amd.is_amd() && !amd.has_bts_erratum() && !amd.debug_store);
    }
}
