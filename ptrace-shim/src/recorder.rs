//! The recorders: how each thread's branches become known. The session
//! runs the ptrace event loop (threads, signals, crashes, detaching); a
//! recorder only decides how a thread is resumed and, for the hardware,
//! where its records come from. This is the one place that knows which
//! [`Backend`] is in use.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use ds_alloc::BtsRecord;

use crate::space::{BlockEnd, Space};
use crate::sys::Pid;
use bts_reader::perf::{self, BtsEvent, PerfError};

use crate::{Backend, Error, Result};

/// How the session resumes a thread that has no step in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resume {
    /// Run freely (the hardware records).
    Continue,
    /// Execute one instruction, then stop.
    SingleStep,
    /// Run to the next int3 or system call (the fast recorder).
    ToNextStop,
}

/// One way of recording branches.
pub(crate) trait Recorder {
    /// Which backend this is.
    fn backend(&self) -> Backend;
    /// How to resume a thread standing at `pc` in `space`.
    fn resume(&mut self, space: &mut Space, pc: u64) -> Resume;
    /// Its int3 sites trap (the fast recorder plants them).
    fn plants(&self) -> bool {
        false
    }
    /// It sees the entry into a signal handler by itself; otherwise the
    /// session single-steps into the handler to record that branch.
    fn sees_handler_entry(&self) -> bool {
        false
    }
    /// A thread of the root process single-stepped the instruction at `from`.
    fn stepped(&mut self, _from: u64) -> Result<()> {
        Ok(())
    }
    /// Tracing ends: flush what it keeps outside the buffers.
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
    /// A thread to record starts.
    fn start_thread(&mut self, _tid: Pid) -> std::result::Result<(), PerfError> {
        Ok(())
    }
    /// Records the recorder holds outside the session's buffers, oldest
    /// first, with how many it lost (the hardware).
    fn take_records(&mut self, _tid: Pid) -> Option<(Vec<BtsRecord>, u64)> {
        None
    }
    /// A recorded thread is gone.
    fn stop_thread(&mut self, _tid: Pid) {}
}

/// The recorder for `backend`: `bytes` is the size of a hardware buffer,
/// `insn_log` names the step recorder's log of executed instructions.
pub(crate) fn for_backend(
    backend: Backend,
    bytes: usize,
    insn_log: Option<&Path>,
) -> Result<Box<dyn Recorder>> {
    Ok(match backend {
        Backend::Step => {
            let log = match insn_log {
                Some(p) => Some(std::io::BufWriter::new(
                    std::fs::File::create(p).map_err(|e| Error::os(p.display().to_string(), e))?,
                )),
                None => None,
            };
            Box::new(Step { log })
        }
        Backend::Fast => Box::new(Fast),
        Backend::Hardware => Box::new(Hardware { bytes, events: HashMap::new() }),
    })
}

/// Single-steps every instruction: slow, exact by construction.
struct Step {
    /// The address of every instruction the root process executed.
    log: Option<std::io::BufWriter<std::fs::File>>,
}

impl Recorder for Step {
    fn backend(&self) -> Backend {
        Backend::Step
    }

    fn resume(&mut self, _space: &mut Space, _pc: u64) -> Resume {
        Resume::SingleStep
    }

    fn stepped(&mut self, from: u64) -> Result<()> {
        if let Some(log) = self.log.as_mut() {
            log.write_all(&from.to_le_bytes()).map_err(|e| Error::os("writing the instruction log", e))?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        if let Some(mut log) = self.log.take() {
            log.flush().map_err(|e| Error::os("writing the instruction log", e))?;
        }
        Ok(())
    }
}

/// An int3 at the end of each straight-line run; the branch there is
/// evaluated and emulated by the session (`eval`).
struct Fast;

impl Recorder for Fast {
    fn backend(&self) -> Backend {
        Backend::Fast
    }

    fn resume(&mut self, space: &mut Space, pc: u64) -> Resume {
        // Code that cannot be read is stepped.
        match space.block_end(pc) {
            BlockEnd::Branch(site) if space.plant(site).is_ok() => Resume::ToNextStop,
            _ => Resume::SingleStep,
        }
    }

    fn plants(&self) -> bool {
        true
    }
}

/// Intel BTS through perf, one event per thread, read when a trace is
/// taken; ptrace only follows threads and holds crashes.
struct Hardware {
    bytes: usize,
    events: HashMap<Pid, BtsEvent>,
}

impl Recorder for Hardware {
    fn backend(&self) -> Backend {
        Backend::Hardware
    }

    fn resume(&mut self, _space: &mut Space, _pc: u64) -> Resume {
        Resume::Continue
    }

    fn sees_handler_entry(&self) -> bool {
        true
    }

    fn start_thread(&mut self, tid: Pid) -> std::result::Result<(), PerfError> {
        self.events.insert(tid, perf::open_bts(tid, self.bytes)?);
        Ok(())
    }

    fn take_records(&mut self, tid: Pid) -> Option<(Vec<BtsRecord>, u64)> {
        let r = self.events.get(&tid)?.read().ok()?;
        Some((r.records, r.lost))
    }

    fn stop_thread(&mut self, tid: Pid) {
        self.events.remove(&tid);
    }
}
