//! MiniDebugInfo: the `.gnu_debugdata` section that Fedora and others put
//! in stripped binaries, an xz-compressed ELF whose `.symtab` names the
//! functions `.dynsym` does not export (static ones, and every function of
//! an executable). Decompressed with `lzma-rs` (pure Rust, returns errors
//! on bad input), never beyond [`MAX_BYTES`].

use std::io::Write;

use object::{Object, ObjectSection, ObjectSymbol};

/// The most a `.gnu_debugdata` may decompress to (real ones are a few
/// hundred KiB): more is taken as bad input, not as memory to give.
pub const MAX_BYTES: usize = 64 << 20;

/// A writer that refuses to grow past a limit.
struct Bounded(Vec<u8>);

impl Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > MAX_BYTES {
            return Err(std::io::Error::other("MiniDebugInfo decompresses past its limit"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The function symbols of `file`'s MiniDebugInfo with those of its
/// `.dynsym`: (address, size, name), sorted, one per address. None when
/// the file has no `.gnu_debugdata`, or it cannot be read.
pub fn symbols(file: &object::File) -> Option<Vec<(u64, u64, String)>> {
    let packed = file.section_by_name(".gnu_debugdata")?.data().ok()?;
    let mut out = Bounded(Vec::new());
    lzma_rs::xz_decompress(&mut std::io::BufReader::new(packed), &mut out).ok()?;
    let inner = object::File::parse(&*out.0).ok()?;
    let text = |s: &object::Symbol| s.kind() == object::SymbolKind::Text && s.address() != 0;
    let mut syms: Vec<(u64, u64, String)> = inner
        .symbols()
        .filter(text)
        .chain(file.dynamic_symbols().filter(text))
        .filter_map(|s| Some((s.address(), s.size(), s.name().ok()?.to_string())))
        .collect();
    syms.sort();
    syms.dedup_by_key(|s| s.0);
    Some(syms)
}
