//! The artifacts folder of `bts ci`: one trace file per kept process,
//! never over a file that was there before, and at most `--max-artifacts`
//! of them (the oldest of this step removed first).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use bts_reader::TraceFile;

/// Why the folder cannot take the traces.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactsError {
    /// The folder could not be made.
    #[error("cannot create the artifacts folder {path}: {source}")]
    Create {
        /// The folder.
        path: String,
        /// The system's error.
        source: std::io::Error,
    },
    /// Something other than a folder is there.
    #[error("{path} exists and is not a folder")]
    NotAFolder {
        /// The path.
        path: String,
    },
}

/// The trace files of one step.
pub struct Artifacts {
    dir: PathBuf,
    max: Option<usize>,
    /// Files written by this step, oldest first, and whether each is a crash's.
    written: VecDeque<(PathBuf, bool)>,
    /// Files of this step removed to stay within `max`.
    removed: Vec<PathBuf>,
}

impl Artifacts {
    /// The folder `dir`, made if needed (as `mkdir -p` would).
    pub fn open(dir: &Path, max: Option<usize>) -> Result<Artifacts, ArtifactsError> {
        let shown = dir.display().to_string();
        std::fs::create_dir_all(dir)
            .map_err(|source| ArtifactsError::Create { path: shown.clone(), source })?;
        if !dir.is_dir() {
            return Err(ArtifactsError::NotAFolder { path: shown });
        }
        Ok(Artifacts { dir: dir.to_path_buf(), max, written: VecDeque::new(), removed: Vec::new() })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A name for process `pid` running `command` that no file has:
    /// `PID-PROGRAM.bts`, or `PID-PROGRAM.N.bts` when taken (an earlier step).
    fn fresh_name(&self, pid: i32, command: &[String]) -> PathBuf {
        let program = command.first().and_then(|c| Path::new(c).file_name()).map(|n| n.to_string_lossy());
        let stem: String = format!("{pid}-{}", program.as_deref().unwrap_or("process"))
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || "-_.+".contains(c) { c } else { '_' })
            .collect();
        let mut path = self.dir.join(format!("{stem}.bts"));
        let mut n = 1;
        while path.symlink_metadata().is_ok() {
            path = self.dir.join(format!("{stem}.{n}.bts"));
            n += 1;
        }
        path
    }

    /// Writes the trace of process `pid`; returns its path (none with
    /// `--max-artifacts 0`). Beyond the limit, the oldest file of this
    /// step goes: a clean process's before any crash's.
    pub fn save(
        &mut self,
        tf: &TraceFile,
        pid: i32,
        crash: bool,
    ) -> Result<Option<PathBuf>, bts_reader::Error> {
        if self.max == Some(0) {
            return Ok(None);
        }
        let path = self.fresh_name(pid, &tf.meta.command);
        tf.write(&path)?;
        self.written.push_back((path.clone(), crash));
        while self.max.is_some_and(|m| self.written.len() > m) {
            let victim = self.written.iter().position(|(_, c)| !c).unwrap_or(0);
            if let Some((old, _)) = self.written.remove(victim) {
                if std::fs::remove_file(&old).is_ok() {
                    self.removed.push(old);
                }
            }
        }
        Ok(Some(path))
    }

    /// Whether this step's file at `path` is still there.
    pub fn kept(&self, path: &str) -> bool {
        self.written.iter().any(|(p, _)| p.to_string_lossy() == path)
    }

    /// The files removed to stay within the limit.
    pub fn removed(&self) -> &[PathBuf] {
        &self.removed
    }
}
