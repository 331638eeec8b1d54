//! Writing a file the user named (`-o`, `--json-file`) by the shell's rules
//! for `>`, without its risks.
//!
//! - A symlink is followed, as `>` follows it; a dangling one creates its target.
//! - A device, FIFO or socket is written through, never replaced.
//! - An existing regular file is rewritten in place (same inode, owner,
//!   mode and links); one without any write permission bit is refused.
//!   The space is reserved first, so a full disk fails before the old
//!   contents are touched; a write that fails anyway leaves the file empty,
//!   never half-written.
//! - A new file (mode 0600: a trace shows the address layout of the traced
//!   process) is written aside under a private name and linked into place
//!   only when complete (and only if nothing appeared there meanwhile), so a
//!   partial file is never left behind.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why a file could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The system refused.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The system's error.
        source: io::Error,
    },
    /// A folder is there.
    #[error("{path} is a directory")]
    IsDirectory {
        /// The path.
        path: String,
    },
    /// The file has no write permission.
    #[error("{path} is read-only; bts does not overwrite it")]
    ReadOnly {
        /// The file.
        path: String,
    },
    /// The symlinks never end.
    #[error("{path}: too many levels of symbolic links")]
    SymlinkLoop {
        /// The path.
        path: String,
    },
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> WriteError + '_ {
    move |source| WriteError::Io { path: path.display().to_string(), source }
}

/// Writes `bytes` to `path` by the rules of this module.
pub fn write(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let mut target = path.to_path_buf();
    for _ in 0..40 {
        match std::fs::symlink_metadata(&target) {
            Ok(m) if m.file_type().is_symlink() => {
                let link = std::fs::read_link(&target).map_err(io_err(&target))?;
                target = match target.parent() {
                    Some(dir) if link.is_relative() => dir.join(link),
                    _ => link,
                };
            }
            Ok(m) if m.is_dir() => {
                return Err(WriteError::IsDirectory { path: target.display().to_string() })
            }
            Ok(m) if m.is_file() => {
                if m.permissions().mode() & 0o222 == 0 {
                    return Err(WriteError::ReadOnly { path: target.display().to_string() });
                }
                return rewrite_in_place(&target, bytes);
            }
            Ok(m) if is_special(&m.file_type()) => return write_through(&target, bytes),
            Ok(_) => return write_through(&target, bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => match create_new(&target, bytes) {
                // Something appeared there meanwhile: look again.
                Err(WriteError::Io { source, .. }) if source.kind() == io::ErrorKind::AlreadyExists => {
                    continue
                }
                other => return other,
            },
            Err(e) => return Err(io_err(&target)(e)),
        }
    }
    Err(WriteError::SymlinkLoop { path: path.display().to_string() })
}

fn is_special(t: &std::fs::FileType) -> bool {
    t.is_char_device() || t.is_block_device() || t.is_fifo() || t.is_socket()
}

/// A device or FIFO: written as `>` would, nothing created or replaced.
fn write_through(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let mut f = OpenOptions::new().write(true).open(path).map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))?;
    f.flush().map_err(io_err(path))
}

/// An existing regular file: the same inode, rewritten.
fn rewrite_in_place(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let f = OpenOptions::new().write(true).custom_flags(libc::O_NOFOLLOW).open(path).map_err(io_err(path))?;
    reserve(&f, bytes.len()).map_err(io_err(path))?;
    let written = (|| {
        let mut w = &f;
        w.write_all(bytes)?;
        f.set_len(bytes.len() as u64)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        // Never a half-written trace: an empty file says clearly it is not one.
        let _ = f.set_len(0);
        return Err(io_err(path)(e));
    }
    Ok(())
}

/// Reserves `len` bytes for the file, so that a full disk fails here,
/// before anything was overwritten. File systems that cannot reserve are
/// written without.
fn reserve(f: &File, len: usize) -> io::Result<()> {
    use std::os::unix::io::AsRawFd;
    if len == 0 {
        return Ok(());
    }
    // SAFETY: fallocate on an fd we own, with plain integer arguments.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len as libc::off_t) };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL) => Ok(()),
        _ => Err(e),
    }
}

/// Removes the private file unless it was linked into place.
struct Aside(Option<PathBuf>);

impl Drop for Aside {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A new file: written aside, linked into place when complete.
fn create_new(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name =
        path.file_name().ok_or_else(|| WriteError::IsDirectory { path: path.display().to_string() })?;
    let mut aside = Aside(None);
    let mut file = None;
    for n in 0..100u32 {
        let tmp = dir.join(format!(".{}.{}.{n}.partial", name.to_string_lossy(), std::process::id()));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
        {
            Ok(f) => {
                aside.0 = Some(tmp);
                file = Some(f);
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_err(path)(e)),
        }
    }
    let (Some(mut f), Some(tmp)) = (file, aside.0.clone()) else {
        return Err(io_err(path)(io::Error::from(io::ErrorKind::AlreadyExists)));
    };
    f.write_all(bytes).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))?;
    drop(f);
    link_no_replace(&tmp, path).map_err(io_err(path))?;
    Ok(())
}

/// Moves `from` to `to` unless `to` exists (then `AlreadyExists`).
fn link_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
    };
    let (a, b) = (c(from)?, c(to)?);
    // SAFETY: two valid NUL-terminated paths; renameat2 only reads them.
    let r = unsafe {
        libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_NOREPLACE)
    };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EINVAL) {
        return Err(e);
    }
    // A file system without RENAME_NOREPLACE: a hard link never replaces either.
    std::fs::hard_link(from, to)?;
    std::fs::remove_file(from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("bts-outfile-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn leftovers(d: &Path) -> Vec<String> {
        std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".partial"))
            .collect()
    }

    #[test]
    fn new_file_symlink_and_in_place() {
        use std::os::unix::fs::MetadataExt;
        let d = dir("rules");
        let p = d.join("a.bts");
        write(&p, b"one").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"one");
        let ino = std::fs::metadata(&p).unwrap().ino();
        write(&p, b"second, longer").unwrap();
        write(&p, b"3").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"3");
        assert_eq!(std::fs::metadata(&p).unwrap().ino(), ino, "same inode");
        // Through a symlink, to an existing and to a dangling target.
        let link = d.join("link.bts");
        std::os::unix::fs::symlink("a.bts", &link).unwrap();
        write(&link, b"via link").unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read(&p).unwrap(), b"via link");
        let dangling = d.join("dangling.bts");
        std::os::unix::fs::symlink("made.bts", &dangling).unwrap();
        write(&dangling, b"made").unwrap();
        assert_eq!(std::fs::read(d.join("made.bts")).unwrap(), b"made");
        assert!(leftovers(&d).is_empty());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn refusals() {
        let d = dir("refuse");
        assert!(matches!(write(&d, b"x"), Err(WriteError::IsDirectory { .. })));
        let ro = d.join("ro.bts");
        std::fs::write(&ro, b"keep").unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o444)).unwrap();
        assert!(matches!(write(&ro, b"x"), Err(WriteError::ReadOnly { .. })));
        assert_eq!(std::fs::read(&ro).unwrap(), b"keep");
        let a = d.join("loop-a");
        std::os::unix::fs::symlink("loop-b", &a).unwrap();
        std::os::unix::fs::symlink("loop-a", d.join("loop-b")).unwrap();
        assert!(matches!(write(&a, b"x"), Err(WriteError::SymlinkLoop { .. })));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn devices_are_written_through() {
        write(Path::new("/dev/null"), b"nothing").unwrap();
        assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());
        let e = write(Path::new("/dev/full"), b"x").unwrap_err();
        assert!(e.to_string().contains("No space left"), "{e}");
    }
}
