//! Saving traces and reporting them, for every recorder: the trace file of
//! each process that crashed (or of the first process), the text report on
//! stderr as each comes, and the JSON report once, at the end.

use std::path::{Path, PathBuf};

use bts_reader::TraceFile;

use crate::args::RecordArgs;
use analysis::report::{Report, Selection};

/// `-o FILE` names the first process's trace; a crash in a followed child
/// goes beside it as `FILE-STEM.PID.bts`. The default is `bts-PID.bts`.
pub(crate) fn default_path(rec: &RecordArgs, pid: i32, root: i32) -> PathBuf {
    match &rec.output {
        Some(p) if pid == root => p.clone(),
        Some(p) => {
            let stem = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            p.with_file_name(format!("{stem}.{pid}.bts"))
        }
        None => PathBuf::from(format!("bts-{pid}.bts")),
    }
}

pub(crate) use ptrace_shim::process_command;

/// The reports of one `bts run` or `bts attach`.
pub(crate) struct Reporter<'a> {
    rec: &'a RecordArgs,
    root: i32,
    /// Held for the single JSON document written at the end.
    json: Vec<Report>,
}

impl<'a> Reporter<'a> {
    pub fn new(rec: &'a RecordArgs, root: i32) -> Self {
        Reporter { rec, root, json: Vec::new() }
    }

    fn wants_json(&self) -> bool {
        self.rec.out.json || self.rec.json_file.is_some()
    }

    /// Writes the trace of process `pid` and, if `print`, reports it. A file
    /// that cannot be written is an error message, and the report still comes.
    pub fn save(&mut self, tf: &TraceFile, pid: i32, print: bool) -> bool {
        let path = default_path(self.rec, pid, self.root);
        let mut ok = true;
        let written = match tf.write(&path) {
            Ok(()) => Some(path.display().to_string()),
            Err(e) => {
                crate::errln!("bts: could not save the trace: {e}");
                ok = false;
                None
            }
        };
        if print {
            let out = &self.rec.out;
            let sel = Selection { branches: out.branches, insns: out.insns, thread: None, cpu: None };
            let report = Report::build(tf, written, &sel);
            if !out.json {
                crate::out::err(&report.to_text(out.all_threads));
            }
            if self.wants_json() {
                self.json.push(report);
            }
        }
        ok
    }

    /// Writes the JSON document, once: the first process's report (or the
    /// first one), the others under `other_reports`. False if the file
    /// could not be written.
    pub fn finish(mut self) -> bool {
        if self.json.is_empty() {
            return true;
        }
        let first = self.json.iter().position(|r| r.pid == self.root).unwrap_or(0);
        let mut doc = self.json.remove(first);
        doc.other_reports = std::mem::take(&mut self.json);
        let text = doc.to_json() + "\n";
        if self.rec.out.json {
            crate::out::out(&text);
        }
        match &self.rec.json_file {
            Some(p) => write_report(p, text.as_bytes(), "JSON report"),
            None => true,
        }
    }
}

/// Writes a report (`what` names it in the error) by `-o`'s rules; false,
/// with the error said, when it could not be written.
pub(crate) fn write_report(path: &Path, bytes: &[u8], what: &str) -> bool {
    match bts_reader::outfile::write(path, bytes) {
        Ok(()) => true,
        Err(e) => {
            crate::errln!("bts: could not write the {what}: {e}");
            false
        }
    }
}
