//! Opening the events the way GDB and perf do, and mapping their buffers.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{fence, Ordering};

use perf_event_open_sys as sys;
use sys::bindings::{self as b, perf_event_attr};

use super::cpu::{self, CpuInfo};
use super::error::{self, PerfError};
use super::ring::{self, BtsRead, RingSource};

const PAGE: usize = 4096;

/// The legacy BTS event as GDB opens it: branch instructions, period 1,
/// IP (= from) and ADDR (= to), user space only.
pub fn bts_attr() -> perf_event_attr {
    let mut a = perf_event_attr { size: std::mem::size_of::<perf_event_attr>() as u32, ..Default::default() };
    a.type_ = b::PERF_TYPE_HARDWARE;
    a.config = u64::from(b::PERF_COUNT_HW_BRANCH_INSTRUCTIONS);
    a.__bindgen_anon_1.sample_period = 1;
    a.sample_type = u64::from(b::PERF_SAMPLE_IP | b::PERF_SAMPLE_ADDR);
    a.set_exclude_kernel(1);
    a.set_exclude_hv(1);
    a.set_exclude_idle(1);
    a
}

/// The `intel_bts` PMU event (AUX area, raw 24-byte records), user space only.
pub fn intel_bts_attr(pmu_type: u32) -> perf_event_attr {
    let mut a = perf_event_attr { size: std::mem::size_of::<perf_event_attr>() as u32, ..Default::default() };
    a.type_ = pmu_type;
    a.set_exclude_kernel(1);
    a.set_exclude_hv(1);
    a
}

/// PEBS through precise sampling of retired instructions, with the
/// interrupted registers.
pub fn pebs_attr(period: u64) -> perf_event_attr {
    let mut a = perf_event_attr { size: std::mem::size_of::<perf_event_attr>() as u32, ..Default::default() };
    a.type_ = b::PERF_TYPE_HARDWARE;
    a.config = u64::from(b::PERF_COUNT_HW_INSTRUCTIONS);
    a.__bindgen_anon_1.sample_period = period.max(1);
    a.sample_type = u64::from(b::PERF_SAMPLE_IP | b::PERF_SAMPLE_ADDR) | u64::from(b::PERF_SAMPLE_REGS_INTR);
    a.sample_regs_intr = super::pebs::GPR_MASK;
    a.set_precise_ip(2);
    a.set_exclude_kernel(1);
    a.set_exclude_hv(1);
    a
}

fn open(attr: &mut perf_event_attr, tid: i32) -> Result<OwnedFd, i32> {
    // SAFETY: `attr` is a valid, fully initialised perf_event_attr with its
    // size set; the other arguments are integers.
    let fd = unsafe { sys::perf_event_open(attr, tid, -1, -1, libc::c_ulong::from(b::PERF_FLAG_FD_CLOEXEC)) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO));
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A shared mapping, unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(fd: &OwnedFd, len: usize, offset: usize, writable: bool) -> Result<Mapping, i32> {
        let prot = if writable { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_READ };
        // SAFETY: a fresh shared mapping of the perf fd; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO));
        }
        Ok(Mapping { ptr: ptr as *mut u8, len })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `len` bytes long and lives as long as self;
        // the kernel may write to it concurrently, which readers handle by
        // re-reading the head (see ring::read_bts_ring).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    fn read_u64(&self, off: usize) -> u64 {
        assert!(off + 8 <= self.len);
        // SAFETY: in bounds (checked) and 8-aligned (header offsets are).
        let v = unsafe { std::ptr::read_volatile(self.ptr.add(off) as *const u64) };
        fence(Ordering::Acquire);
        v
    }

    fn write_u64(&self, off: usize, v: u64) {
        assert!(off + 8 <= self.len);
        // SAFETY: in bounds, aligned, and only called on writable mappings.
        unsafe { std::ptr::write_volatile(self.ptr.add(off) as *mut u64, v) };
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what mmap returned.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

/// Rounds a byte size up to a power-of-two number of pages.
pub fn ring_pages(bytes: usize) -> usize {
    bytes.div_ceil(PAGE).max(1).next_power_of_two()
}

/// A legacy BTS event of one thread and its read-only (overwrite) ring.
pub struct BtsEvent {
    _fd: OwnedFd,
    map: Mapping,
    data_offset: usize,
    data_size: usize,
    /// The ring's data pages.
    pub pages: usize,
}

/// Opens the BTS event for `tid` with a ring of about `bytes`, halving the
/// page count while the mmap fails.
pub fn open_bts(tid: i32, bytes: usize) -> Result<BtsEvent, PerfError> {
    let c = CpuInfo::read();
    error::check_cpu(&c)?;
    let mut attr = bts_attr();
    let fd = open(&mut attr, tid).map_err(|e| error::diagnose_open(e, &c))?;
    let mut pages = ring_pages(bytes);
    let mut last = 0;
    while pages > 0 {
        match Mapping::new(&fd, (pages + 1) * PAGE, 0, false) {
            Ok(map) => {
                let mut data_offset = PAGE;
                let mut data_size = pages * PAGE;
                let hdr_size = map.bytes()[ring::OFF_SIZE..ring::OFF_SIZE + 4].to_vec();
                if u32::from_le_bytes(hdr_size.try_into().expect("4")) as usize > ring::OFF_DATA_SIZE {
                    data_offset = map.read_u64(ring::OFF_DATA_OFFSET) as usize;
                    data_size = map.read_u64(ring::OFF_DATA_SIZE) as usize;
                }
                if data_offset + data_size > map.len {
                    return Err(PerfError::RingOutsideMapping);
                }
                return Ok(BtsEvent { _fd: fd, map, data_offset, data_size, pages });
            }
            Err(e) => {
                last = e;
                pages /= 2;
            }
        }
    }
    Err(error::diagnose_mmap(last, 1))
}

impl RingSource for BtsEvent {
    fn data_head(&self) -> u64 {
        self.map.read_u64(ring::OFF_DATA_HEAD)
    }
    fn copy(&self, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&self.map.bytes()[self.data_offset..self.data_offset + self.data_size]);
    }
}

impl BtsEvent {
    /// The whole ring, oldest record first.
    pub fn read(&self) -> Result<BtsRead, PerfError> {
        Ok(ring::read_bts_ring(self)?)
    }
}

/// An `intel_bts` event: header + data ring, and the AUX area in snapshot mode.
pub struct IntelBtsEvent {
    _fd: OwnedFd,
    header: Mapping,
    aux: Mapping,
    data_pages: usize,
}

/// Opens an `intel_bts` AUX event on thread `tid` with an AUX area of `bytes`.
pub fn open_intel_bts(tid: i32, bytes: usize) -> Result<IntelBtsEvent, PerfError> {
    let c = CpuInfo::read();
    error::check_cpu(&c)?;
    let ty = cpu::intel_bts_type().ok_or_else(|| error::intel_bts_absent(&c))?;
    let mut attr = intel_bts_attr(ty);
    let fd = open(&mut attr, tid).map_err(|e| error::diagnose_open(e, &c))?;
    let data_pages = 1;
    let header =
        Mapping::new(&fd, (1 + data_pages) * PAGE, 0, true).map_err(|e| error::diagnose_mmap(e, 2))?;
    let mut pages = ring_pages(bytes);
    let mut last = 0;
    while pages > 0 {
        let off = (1 + data_pages) * PAGE;
        header.write_u64(ring::OFF_AUX_OFFSET, off as u64);
        header.write_u64(ring::OFF_AUX_SIZE, (pages * PAGE) as u64);
        // Read-only AUX: snapshot (overwrite) mode.
        match Mapping::new(&fd, pages * PAGE, off, false) {
            Ok(aux) => return Ok(IntelBtsEvent { _fd: fd, header, aux, data_pages }),
            Err(e) => {
                last = e;
                pages /= 2;
            }
        }
    }
    Err(error::diagnose_mmap(last, 1))
}

impl IntelBtsEvent {
    /// The AUX records oldest first, and how many AUX records were truncated.
    pub fn read(&self) -> (Vec<ds_alloc::BtsRecord>, u64) {
        let aux_head = self.header.read_u64(ring::OFF_AUX_HEAD);
        let (recs, _) = ring::parse_aux_snapshot(self.aux.bytes(), aux_head);
        let data_head = self.header.read_u64(ring::OFF_DATA_HEAD);
        let data = &self.header.bytes()[PAGE..PAGE * (1 + self.data_pages)];
        let ev = ring::scan_aux_events(data, data_head);
        (recs, ev.truncated)
    }
}

/// What `bts doctor` and `--backend auto` learn by trying.
pub fn probe_bts() -> Result<(), PerfError> {
    open_bts(0, PAGE).map(drop)
}

/// A PEBS sampling event of one thread, owned through the allocator.
pub struct PebsEvent {
    _fd: OwnedFd,
    map: Mapping,
    data_size: usize,
    /// The PEBS ownership the allocator granted.
    pub owner: ds_alloc::PebsHandle,
}

/// Takes PEBS ownership of `tid` for `tracer` in `alloc` (a second tracer
/// gets the allocator's "busy" error before any system call), then opens a
/// precise sampling event; on failure the ownership is given back.
pub fn open_pebs(
    alloc: &mut ds_alloc::Allocator,
    tracer: ds_alloc::TracerId,
    tid: i32,
    period: u64,
    bytes: usize,
) -> Result<PebsEvent, PerfError> {
    let c = CpuInfo::read();
    let pages = ring_pages(bytes);
    let config = ds_alloc::PebsConfig {
        format: ds_alloc::PebsFormat::Adaptive,
        reset: period,
        records: pages * PAGE / 176,
    };
    let owner = alloc.request_pebs(tracer, ds_alloc::Target::Task(tid as u32), config)?;
    let opened = (|| {
        if !c.is_intel() {
            return Err(PerfError::NoBts { cpu: c.vendor.clone(), why: "(PEBS is an Intel feature)".into() });
        }
        let mut attr = pebs_attr(period);
        let fd = open(&mut attr, tid).map_err(|e| error::diagnose_open(e, &c))?;
        let map = Mapping::new(&fd, (pages + 1) * PAGE, 0, true)
            .map_err(|e| error::diagnose_mmap(e, pages as u64))?;
        Ok((fd, map))
    })();
    match opened {
        Ok((fd, map)) => Ok(PebsEvent { _fd: fd, map, data_size: pages * PAGE, owner }),
        Err(e) => {
            let _ = alloc.release_pebs(tracer, owner);
            Err(e)
        }
    }
}

impl PebsEvent {
    /// The samples the kernel wrote since `tail`, as PEBS records.
    pub fn read(&self, tail: u64) -> (Vec<ds_alloc::PebsRecord>, u64) {
        let head = self.map.read_u64(ring::OFF_DATA_HEAD);
        let data = &self.map.bytes()[PAGE..PAGE + self.data_size];
        let (recs, _) = super::pebs::parse_pebs_ring(data, tail, head, super::pebs::GPR_MASK);
        (recs, head)
    }
}
