//! Installing the bts Valgrind tool where only its owner can change it.
//!
//! Valgrind loads its tool from `VALGRIND_LIB`, and bts often runs as root:
//! a tool file someone else could plant or change would run with bts's
//! rights. So the folder is private and the tool is proved before use:
//!
//! - The folder is `$XDG_CACHE_HOME/bts/valgrind-<hash>`, else
//!   `$HOME/.cache/bts/valgrind-<hash>` (HOME itself is never created),
//!   else a fresh private temporary folder removed after the run.
//! - Every folder on the way is owned by the caller or root and writable by
//!   nobody else (or sticky, like /tmp); `bts` and `valgrind-<hash>` are
//!   the caller's own, mode 0700, never reached through a symlink.
//! - A tool already there is used only if it is a regular file owned by the
//!   caller, not writable by group or others, and byte for byte the tool
//!   embedded in bts; otherwise it is written anew.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{preload_lib, VgError, PRELOAD, TOOL};

/// Why one folder cannot take the tool.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The system refused.
    #[error("{}: {source}", path.display())]
    Io {
        /// The folder or file.
        path: PathBuf,
        /// The system's error.
        source: io::Error,
    },
    /// It belongs to someone else than the caller or root.
    #[error("{} belongs to another user (uid {uid})", path.display())]
    NotOurs {
        /// The folder.
        path: PathBuf,
        /// Its owner.
        uid: u32,
    },
    /// Others may write in it (and it is not sticky).
    #[error("{} is writable by others", path.display())]
    WritableByOthers {
        /// The folder.
        path: PathBuf,
    },
    /// Something other than a folder sits where bts's folder goes.
    #[error("{} is not a folder (a symlink or a file is there)", path.display())]
    NotAFolder {
        /// The path.
        path: PathBuf,
    },
    /// bts's folder is open to others.
    #[error("{} is open to other users (mode {mode:o})", path.display())]
    NotPrivate {
        /// The folder.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The tool just written is not what bts wrote.
    #[error("{}: the tool written there does not read back", path.display())]
    NoReadBack {
        /// The tool's path.
        path: PathBuf,
    },
    /// Valgrind's preload library is missing.
    #[error("{PRELOAD} is not installed")]
    NoPreload,
}

/// Why the tool could not be installed anywhere: why each folder tried was
/// refused, in order.
#[derive(Debug)]
pub struct InstallError(pub Vec<Refusal>);

impl std::fmt::Display for InstallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

impl std::error::Error for InstallError {}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> Refusal + '_ {
    move |source| Refusal::Io { path: path.to_path_buf(), source }
}

const TOOL_NAME: &str = "bts-amd64-linux";

/// The installed tool: the folder to give Valgrind as `VALGRIND_LIB`.
#[derive(Debug)]
pub struct Installed {
    dir: PathBuf,
    /// A private temporary folder, removed when the run is over.
    _temp: Option<tempfile::TempDir>,
}

impl Installed {
    /// The `VALGRIND_LIB` folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() }
}

/// The base folders to try, in order.
fn candidates() -> Vec<PathBuf> {
    let abs = |v: Option<std::ffi::OsString>| {
        v.filter(|s| !s.is_empty()).map(PathBuf::from).filter(|p| p.is_absolute())
    };
    let mut out = Vec::new();
    if let Some(x) = abs(std::env::var_os("XDG_CACHE_HOME")) {
        out.push(x);
    }
    if let Some(h) = abs(std::env::var_os("HOME")) {
        // Never create HOME: only a cache folder inside an existing one.
        if h.is_dir() {
            out.push(h.join(".cache"));
        }
    }
    out
}

/// Installs the tool, or says why it cannot be installed anywhere.
pub fn install() -> Result<Installed, VgError> {
    let hash =
        TOOL.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let leaf = format!("valgrind-{hash:016x}");
    let mut why = Vec::new();
    for base in candidates() {
        let attempt = private_dir(&base, "bts").and_then(|d| private_dir(&d, &leaf)).and_then(|d| {
            place_tool(&d)?;
            Ok(d)
        });
        match attempt {
            Ok(dir) => return Ok(Installed { dir, _temp: None }),
            Err(e) => why.push(e),
        }
    }
    // A fresh private folder (0700, random name) in TMPDIR.
    let tmp = std::env::temp_dir();
    let fresh = secure_ancestors(&tmp)
        .and_then(|_| tempfile::Builder::new().prefix("bts-valgrind-").tempdir_in(&tmp).map_err(io_at(&tmp)));
    match fresh {
        Ok(t) => {
            let dir = t.path().to_path_buf();
            if let Err(e) = place_tool(&dir) {
                why.push(e);
                return Err(VgError::Install(InstallError(why)));
            }
            Ok(Installed { dir, _temp: Some(t) })
        }
        Err(e) => {
            why.push(e);
            Err(VgError::Install(InstallError(why)))
        }
    }
}

/// Checks that nobody but the caller and root can change `path` or any
/// folder above it (a folder writable by others must be sticky).
fn secure_ancestors(path: &Path) -> Result<(), Refusal> {
    let real = path.canonicalize().map_err(io_at(path))?;
    let me = euid();
    for dir in real.ancestors() {
        let m = std::fs::metadata(dir).map_err(io_at(dir))?;
        let sticky = m.mode() & 0o1000 != 0;
        if m.uid() != 0 && m.uid() != me {
            return Err(Refusal::NotOurs { path: dir.to_path_buf(), uid: m.uid() });
        }
        if m.mode() & 0o022 != 0 && !sticky {
            return Err(Refusal::WritableByOthers { path: dir.to_path_buf() });
        }
    }
    Ok(())
}

/// `parent/name`, created 0700 if missing, and checked to be the caller's
/// own private folder (not a symlink, not open to others).
fn private_dir(parent: &Path, name: &str) -> Result<PathBuf, Refusal> {
    if !parent.exists() {
        // A missing cache folder (~/.cache, XDG_CACHE_HOME) is made private.
        std::fs::DirBuilder::new().mode(0o700).create(parent).map_err(io_at(parent))?;
    }
    secure_ancestors(parent)?;
    let parent = parent.canonicalize().map_err(io_at(parent))?;
    let dir = parent.join(name);
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Refusal::Io { path: dir, source: e }),
    }
    let m = std::fs::symlink_metadata(&dir).map_err(io_at(&dir))?;
    if !m.file_type().is_dir() {
        return Err(Refusal::NotAFolder { path: dir });
    }
    if m.uid() != euid() {
        return Err(Refusal::NotOurs { path: dir, uid: m.uid() });
    }
    if m.mode() & 0o077 != 0 {
        return Err(Refusal::NotPrivate { path: dir, mode: m.mode() & 0o777 });
    }
    Ok(dir)
}

/// True if `path` is a tool bts can prove is its own.
fn is_own_tool(path: &Path) -> bool {
    let Ok(mut f) = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path) else {
        return false;
    };
    let Ok(m) = f.metadata() else { return false };
    if !m.is_file() || m.uid() != euid() || m.mode() & 0o022 != 0 || m.len() != TOOL.len() as u64 {
        return false;
    }
    let mut bytes = Vec::with_capacity(TOOL.len());
    f.read_to_end(&mut bytes).is_ok() && bytes == TOOL
}

/// Puts the tool and the link to Valgrind's preload library in `dir`
/// (the caller's private folder).
fn place_tool(dir: &Path) -> Result<(), Refusal> {
    let io = |source: io::Error| Refusal::Io { path: dir.to_path_buf(), source };
    let tool = dir.join(TOOL_NAME);
    if !is_own_tool(&tool) {
        // Several bts processes may install at once: write aside, rename over.
        let tmp = dir.join(format!(".tool.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let mut f: File = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o700)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(TOOL).and_then(|_| f.sync_all()).map_err(io)?;
        std::fs::rename(&tmp, &tool).map_err(io)?;
        if !is_own_tool(&tool) {
            return Err(Refusal::NoReadBack { path: tool });
        }
    }
    let link = dir.join(PRELOAD);
    let target = preload_lib().ok_or(Refusal::NoPreload)?;
    if std::fs::read_link(&link).ok().as_deref() != Some(target.as_path()) {
        let tmp = dir.join(format!(".link.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&target, &tmp).map_err(io)?;
        std::fs::rename(&tmp, &link).map_err(io)?;
    }
    Ok(())
}
