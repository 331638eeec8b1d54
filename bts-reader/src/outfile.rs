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
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
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

/// Where a path leads, symlinks followed.
enum Target {
    /// An existing regular file.
    Regular(PathBuf),
    /// A device, FIFO or socket (or anything else that is not a file).
    Through(PathBuf),
    /// Nothing yet.
    Missing(PathBuf),
}

fn resolve(path: &Path) -> Result<Target, WriteError> {
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
                return Ok(Target::Regular(target));
            }
            Ok(_) => return Ok(Target::Through(target)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Target::Missing(target)),
            Err(e) => return Err(io_err(&target)(e)),
        }
    }
    Err(WriteError::SymlinkLoop { path: path.display().to_string() })
}

/// Writes `bytes` to `path` by the rules of this module.
pub fn write(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    for _ in 0..40 {
        match resolve(path)? {
            Target::Regular(t) => return rewrite_in_place(&t, bytes),
            Target::Through(t) => return write_through(&t, bytes),
            Target::Missing(t) => match create_new(&t, &mut |w| w.write_all(bytes)) {
                // Something appeared there meanwhile: look again.
                Err(WriteError::Io { source, .. }) if source.kind() == io::ErrorKind::AlreadyExists => {
                    continue
                }
                other => return other,
            },
        }
    }
    Err(WriteError::SymlinkLoop { path: path.display().to_string() })
}

/// Writes what `produce` writes to `path` by the rules of this module,
/// without holding it in memory: a new file is written aside and linked
/// into place; an existing one is rewritten in place only once the whole
/// text was written aside (so a failing `produce` leaves it as it was).
pub fn write_with(
    path: &Path,
    produce: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
) -> Result<(), WriteError> {
    for _ in 0..40 {
        match resolve(path)? {
            Target::Regular(t) => return rewrite_in_place_from(&t, produce),
            Target::Through(t) => {
                let f = OpenOptions::new().write(true).open(&t).map_err(io_err(&t))?;
                let mut w = io::BufWriter::new(f);
                produce(&mut w).and_then(|()| w.flush()).map_err(io_err(&t))?;
                return Ok(());
            }
            Target::Missing(t) => match create_new(&t, produce) {
                Err(WriteError::Io { source, .. }) if source.kind() == io::ErrorKind::AlreadyExists => {
                    continue
                }
                other => return other,
            },
        }
    }
    Err(WriteError::SymlinkLoop { path: path.display().to_string() })
}

/// An existing regular file, rewritten in place from a text made aside.
fn rewrite_in_place_from(
    path: &Path,
    produce: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
) -> Result<(), WriteError> {
    // Beside the file; in a folder bts may not write to, an unnamed file
    // in the temporary folder.
    let (aside, f) = match aside_file(path) {
        Ok((tmp, f)) => (Aside(Some(tmp)), f),
        Err(_) => {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .mode(0o600)
                .custom_flags(libc::O_TMPFILE)
                .open(std::env::temp_dir())
                .map_err(io_err(path))?;
            (Aside(None), f)
        }
    };
    let mut w = io::BufWriter::new(f);
    produce(&mut w).and_then(|()| w.flush()).map_err(io_err(path))?;
    let mut text = w.into_inner().map_err(|e| io_err(path)(e.into_error()))?;
    let len = text.metadata().map_err(io_err(path))?.len();
    let f = OpenOptions::new().write(true).custom_flags(libc::O_NOFOLLOW).open(path).map_err(io_err(path))?;
    reserve(&f, len as usize).map_err(io_err(path))?;
    let written = (|| {
        use std::io::Seek;
        text.seek(io::SeekFrom::Start(0))?;
        let mut w = &f;
        io::copy(&mut io::Read::by_ref(&mut text), &mut w)?;
        f.set_len(len)?;
        f.sync_all()
    })();
    drop(aside);
    if let Err(e) = written {
        let _ = f.set_len(0);
        return Err(io_err(path)(e));
    }
    Ok(())
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

/// A private file beside `path` (mode 0600), opened for reading and writing.
fn aside_file(path: &Path) -> Result<(PathBuf, File), WriteError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name =
        path.file_name().ok_or_else(|| WriteError::IsDirectory { path: path.display().to_string() })?;
    for n in 0..100u32 {
        let tmp = dir.join(format!(".{}.{}.{n}.partial", name.to_string_lossy(), std::process::id()));
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_err(path)(e)),
        }
    }
    Err(io_err(path)(io::Error::other("no free name for a file beside it")))
}

/// A new file: written aside, linked into place when complete.
fn create_new(
    path: &Path,
    produce: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
) -> Result<(), WriteError> {
    let (tmp, f) = aside_file(path)?;
    let mut aside = Aside(Some(tmp.clone()));
    let mut w = io::BufWriter::new(f);
    produce(&mut w).and_then(|()| w.flush()).map_err(io_err(path))?;
    let f = w.into_inner().map_err(|e| io_err(path)(e.into_error()))?;
    f.sync_all().map_err(io_err(path))?;
    drop(f);
    link_no_replace(&tmp, path).map_err(io_err(path))?;
    aside.0 = None;
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
    fn written_as_produced() {
        use std::os::unix::fs::MetadataExt;
        let d = dir("with");
        let p = d.join("e.json");
        write_with(&p, &mut |w| w.write_all(b"new text")).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new text");
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        let ino = std::fs::metadata(&p).unwrap().ino();
        write_with(&p, &mut |w| w.write_all(b"x")).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"x");
        assert_eq!(std::fs::metadata(&p).unwrap().ino(), ino, "same inode");
        // A producer that fails leaves the file as it was, and nothing aside.
        let failed = write_with(&p, &mut |w| {
            w.write_all(b"half")?;
            Err(io::Error::other("no more"))
        });
        assert!(matches!(failed, Err(WriteError::Io { .. })));
        assert_eq!(std::fs::read(&p).unwrap(), b"x");
        let q = d.join("never.json");
        assert!(write_with(&q, &mut |_| Err(io::Error::other("no"))).is_err());
        assert!(!q.exists());
        assert!(leftovers(&d).is_empty(), "{:?}", leftovers(&d));
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
        assert!(std::os::unix::fs::FileTypeExt::is_char_device(
            &std::fs::metadata("/dev/null").unwrap().file_type()
        ));
        let e = write(Path::new("/dev/full"), b"x").unwrap_err();
        assert!(e.to_string().contains("No space left"), "{e}");
    }
}
