//! What a trace file says of how its process ended, from the session's
//! stops: the one place the CLI and the broker build it.

use bts_reader::Meta;

use crate::{sys, Crash, Outcome};

impl Crash {
    /// The file's metadata for this crash of `command`.
    pub fn meta(&self, command: &[String]) -> Meta {
        Meta {
            command: command.to_vec(),
            pid: self.pid,
            outcome: "signal".into(),
            signal: Some(self.signal),
            signal_name: Some(sys::signal_name(self.signal)),
            fault_addr: self.fault_addr,
            si_code: Some(self.si_code),
            tid: Some(self.tid),
            pc: Some(self.pc),
            ..Meta::default()
        }
    }
}

impl Outcome {
    /// The file's metadata for process `pid` of `command` that ended so.
    pub fn meta(self, command: &[String], pid: i32) -> Meta {
        let mut m = Meta { command: command.to_vec(), pid, ..Meta::default() };
        match self {
            Outcome::Exited(c) => {
                m.outcome = "exit".into();
                m.code = Some(c);
            }
            Outcome::Signaled(s) => {
                m.outcome = "signal".into();
                m.signal = Some(s);
                m.signal_name = Some(sys::signal_name(s));
            }
            Outcome::Detached(_) => m.outcome = "detached".into(),
        }
        m
    }
}
