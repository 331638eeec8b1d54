//! Symbolization: function, offset and source line of an address, from the
//! ELF symbol tables and DWARF of the module mapped there. Uses `addr2line`
//! (with its `object`-based loader): maintained by the gimli team, pure Rust,
//! reads DWARF 5 and split DWARF, demangles Rust and C++ — and never panics on
//! bad input.

use std::cell::RefCell;
use std::collections::HashMap;

use object::{Object, ObjectSegment};

/// One executable mapping of a traced image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleInfo {
    pub path: String,
    pub start: u64,
    pub end: u64,
    /// File offset mapped at `start`.
    pub offset: u64,
}

/// What is known about an address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Symbol {
    pub module: Option<String>,
    pub function: Option<String>,
    /// Offset from the function's start.
    pub offset: u64,
    /// Offset in the module's file.
    pub file_offset: u64,
    pub file: Option<String>,
    pub line: Option<u32>,
}

impl Symbol {
    /// `fn+0x12`, `fn`, or `module+0x1234` (a file offset), or empty.
    pub fn name_offset(&self) -> String {
        match (&self.function, &self.module) {
            (Some(f), _) if self.offset == 0 => f.clone(),
            (Some(f), _) => format!("{f}+{:#x}", self.offset),
            (None, Some(m)) => {
                let base = m.rsplit('/').next().unwrap_or(m);
                format!("{base}+{:#x}", self.file_offset)
            }
            (None, None) => String::new(),
        }
    }

    /// `file:line`, with the file's last two path components.
    pub fn file_line(&self) -> Option<String> {
        let f = self.file.as_ref()?;
        let short = {
            let parts: Vec<&str> = f.rsplit('/').take(2).collect();
            parts.into_iter().rev().collect::<Vec<_>>().join("/")
        };
        Some(match self.line {
            Some(l) => format!("{short}:{l}"),
            None => short,
        })
    }
}

struct Loaded {
    loader: addr2line::Loader,
    /// Segments: (file offset, file size, virtual address).
    segments: Vec<(u64, u64, u64)>,
}

/// Symbolizes addresses of one image; files are loaded on first use.
pub struct Symbolizer {
    modules: Vec<ModuleInfo>,
    loaded: RefCell<HashMap<String, Option<Loaded>>>,
    cache: RefCell<HashMap<u64, Symbol>>,
}

fn load(path: &str) -> Option<Loaded> {
    if path.starts_with('[') || path.is_empty() {
        return None;
    }
    let data = std::fs::read(path).ok()?;
    let file = object::File::parse(&*data).ok()?;
    let segments = file
        .segments()
        .map(|s| {
            let (off, size) = s.file_range();
            (off, size, s.address())
        })
        .collect();
    let loader = addr2line::Loader::new(path).ok()?;
    Some(Loaded { loader, segments })
}

/// Demangles Rust and C++ symbol names; leaves C names alone (the C++
/// demangler reads a C function named `c` as the type `char`).
pub fn demangle(name: &str) -> String {
    if name.starts_with("_Z") || name.starts_with("_R") || name.starts_with("__Z") {
        addr2line::demangle_auto(name.into(), None).into_owned()
    } else {
        name.to_string()
    }
}

/// The GNU build-id of an ELF file, hex.
pub fn build_id(path: &str) -> Option<String> {
    let data = std::fs::read(path).ok()?;
    let file = object::File::parse(&*data).ok()?;
    let id = file.build_id().ok()??;
    Some(id.iter().map(|b| format!("{b:02x}")).collect())
}

impl Symbolizer {
    pub fn new(modules: Vec<ModuleInfo>) -> Self {
        Symbolizer { modules, loaded: RefCell::default(), cache: RefCell::default() }
    }

    pub fn module_of(&self, addr: u64) -> Option<&ModuleInfo> {
        self.modules.iter().rev().find(|m| (m.start..m.end).contains(&addr))
    }

    pub fn lookup(&self, addr: u64) -> Symbol {
        if let Some(s) = self.cache.borrow().get(&addr) {
            return s.clone();
        }
        let sym = self.resolve(addr);
        self.cache.borrow_mut().insert(addr, sym.clone());
        sym
    }

    fn resolve(&self, addr: u64) -> Symbol {
        let Some(m) = self.module_of(addr) else {
            return Symbol::default();
        };
        let file_off = m.offset + (addr - m.start);
        let mut sym = Symbol { module: Some(m.path.clone()), file_offset: file_off, ..Symbol::default() };
        let mut loaded = self.loaded.borrow_mut();
        let entry = loaded.entry(m.path.clone()).or_insert_with(|| load(&m.path));
        let Some(l) = entry.as_ref() else { return sym };
        // The segment that holds the mapped file offset gives the load bias.
        let Some(&(seg_off, _, seg_addr)) =
            l.segments.iter().find(|&&(o, sz, _)| file_off >= (o & !0xfff) && file_off < o + sz.max(1))
        else {
            return sym;
        };
        let probe = seg_addr.wrapping_add(file_off).wrapping_sub(seg_off);
        if let Some(s) = l.loader.find_symbol_info(probe) {
            sym.function = Some(demangle(s.name()));
            sym.offset = probe.wrapping_sub(s.address());
        }
        if let Ok(Some(loc)) = l.loader.find_location(probe) {
            sym.file = loc.file.map(str::to_string);
            sym.line = loc.line;
        }
        if sym.function.is_none() {
            if let Ok(mut frames) = l.loader.find_frames(probe) {
                if let Ok(Some(f)) = frames.next() {
                    sym.function = f.function.and_then(|n| n.demangle().ok().map(|c| c.into_owned()));
                }
            }
        }
        sym
    }
}
