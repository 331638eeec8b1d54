//! Symbolization: function, offset, source file:line and inlined frames of
//! an address, from the ELF symbol tables and DWARF of the module mapped
//! there — or of its separate debug file, found by build-id or debuglink.
//! Uses `addr2line` (with its `object`-based loader): maintained by the gimli
//! developers, pure Rust, reads DWARF 5 and split DWARF, demangles Rust and
//! C++, and is built not to panic on bad input. Modules without a file (the
//! vDSO) are symbolized from their bytes in the trace.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol, ObjectSymbolTable};

pub use crate::mapping::Mapping;

/// One frame of an address: the innermost is the inlined callee.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frame {
    /// The function.
    pub function: Option<String>,
    /// The source file.
    pub file: Option<String>,
    /// The source line.
    pub line: Option<u32>,
}

/// What is known about an address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Symbol {
    /// The module's path.
    pub module: Option<String>,
    /// The function's name.
    pub function: Option<String>,
    /// Offset from the function's start.
    pub offset: u64,
    /// Offset in the module's file.
    pub file_offset: u64,
    /// The source file.
    pub file: Option<String>,
    /// The source line.
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

enum Source {
    /// DWARF and symbols from a file (the module, or its debug file).
    File(Box<addr2line::Loader>),
    /// Only the dynamic symbols of an in-memory image: (address, size, name).
    Symbols(Vec<(u64, u64, String)>),
}

struct Loaded {
    source: Source,
    /// PLT stubs: (start, end, `name@plt`), sorted.
    plt: Vec<(u64, u64, String)>,
    /// Segments: (file offset, file size, virtual address).
    segments: Vec<(u64, u64, u64)>,
    /// The debug file used, if not the module itself.
    debug_file: Option<PathBuf>,
}

/// Where separate debug files live: `$BTS_DEBUG_DIR` (colon-separated) and
/// `/usr/lib/debug`.
fn debug_roots() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = std::env::var("BTS_DEBUG_DIR")
        .map(|v| v.split(':').filter(|s| !s.is_empty()).map(PathBuf::from).collect())
        .unwrap_or_default();
    roots.push(PathBuf::from("/usr/lib/debug"));
    roots
}

fn has_dwarf(path: &Path) -> bool {
    let Ok(data) = std::fs::read(path) else { return false };
    let Ok(f) = object::File::parse(&*data) else { return false };
    f.section_by_name(".debug_info").is_some_and(|s| s.size() > 0)
}

/// The separate debug file of a module: by build-id, then by debuglink.
pub fn find_debug_file(path: &str) -> Option<PathBuf> {
    let data = std::fs::read(path).ok()?;
    let file = object::File::parse(&*data).ok()?;
    if let Ok(Some(id)) = file.build_id() {
        if id.len() > 1 {
            let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
            for root in debug_roots() {
                let p = root.join(".build-id").join(&hex[..2]).join(format!("{}.debug", &hex[2..]));
                if p.is_file() {
                    return Some(p);
                }
            }
        }
    }
    if let Ok(Some((name, _crc))) = file.gnu_debuglink() {
        let name = String::from_utf8_lossy(name).into_owned();
        let dir = Path::new(path).parent().unwrap_or(Path::new("/"));
        let mut candidates = vec![dir.join(&name), dir.join(".debug").join(&name)];
        for root in debug_roots() {
            candidates.push(root.join(dir.strip_prefix("/").unwrap_or(dir)).join(&name));
        }
        for c in candidates {
            if c.is_file() && c != Path::new(path) {
                return Some(c);
            }
        }
    }
    None
}

fn segments_of(file: &object::File) -> Vec<(u64, u64, u64)> {
    file.segments()
        .map(|s| {
            let (off, size) = s.file_range();
            (off, size, s.address())
        })
        .collect()
}

fn load(path: &str) -> Option<Loaded> {
    if path.starts_with('[') || path.is_empty() {
        return None;
    }
    let data = std::fs::read(path).ok()?;
    let file = object::File::parse(&*data).ok()?;
    let segments = segments_of(&file);
    let own_dwarf = file.section_by_name(".debug_info").is_some_and(|s| s.size() > 0);
    let debug_file = if own_dwarf { None } else { find_debug_file(path).filter(|p| has_dwarf(p)) };
    // Stripped, with no debug file: its MiniDebugInfo names what .dynsym does not.
    let stripped = file.section_by_name(".symtab").is_none();
    if !own_dwarf && debug_file.is_none() && stripped {
        if let Some(syms) = crate::minidebug::symbols(&file) {
            let plt = plt_stubs(&file);
            return Some(Loaded { source: Source::Symbols(syms), plt, segments, debug_file: None });
        }
    }
    let loader = addr2line::Loader::new(debug_file.as_deref().unwrap_or(Path::new(path)))
        .or_else(|_| addr2line::Loader::new(path))
        .ok()?;
    let plt = plt_stubs(&file);
    Some(Loaded { source: Source::File(Box::new(loader)), plt, segments, debug_file })
}

/// Symbols of an ELF image held in memory (the vDSO).
fn load_image(bytes: &[u8]) -> Option<Loaded> {
    let file = object::File::parse(bytes).ok()?;
    let segments = segments_of(&file);
    let mut syms: Vec<(u64, u64, String)> = file
        .dynamic_symbols()
        .chain(file.symbols())
        .filter(|s| s.kind() == object::SymbolKind::Text && s.address() != 0)
        .filter_map(|s| Some((s.address(), s.size(), s.name().ok()?.to_string())))
        .collect();
    syms.sort();
    syms.dedup_by_key(|s| s.0);
    Some(Loaded { source: Source::Symbols(syms), plt: Vec::new(), segments, debug_file: None })
}

/// Names the PLT stubs `foo@plt`, as GDB does: each stub of `.plt`,
/// `.plt.sec` and `.plt.got` jumps through a GOT slot, and the dynamic
/// relocation of that slot names the function.
fn plt_stubs(file: &object::File) -> Vec<(u64, u64, String)> {
    use iced_x86::{Decoder, DecoderOptions, FlowControl};
    let Some(dynsym) = file.dynamic_symbol_table() else { return Vec::new() };
    let mut slots: HashMap<u64, String> = HashMap::new();
    for rela in [".rela.plt", ".rela.dyn"] {
        let Some(data) = file.section_by_name(rela).and_then(|s| s.data().ok()) else { continue };
        for e in data.chunks_exact(24) {
            let word = |i: usize| u64::from_le_bytes(e[i..i + 8].try_into().expect("8 bytes"));
            let (offset, info) = (word(0), word(8));
            let sym = (info >> 32) as usize;
            if sym == 0 {
                continue;
            }
            if let Ok(name) = dynsym.symbol_by_index(object::SymbolIndex(sym)).and_then(|s| s.name()) {
                slots.insert(offset, name.to_string());
            }
        }
    }
    let mut out = Vec::new();
    for (sec, entry, skip) in [(".plt", 16u64, 16u64), (".plt.sec", 16, 0), (".plt.got", 8, 0)] {
        let Some(s) = file.section_by_name(sec) else { continue };
        let Ok(data) = s.data() else { continue };
        let base = s.address();
        let mut at = skip;
        while at + entry <= data.len() as u64 {
            let bytes = &data[at as usize..(at + entry) as usize];
            let mut dec = Decoder::with_ip(64, bytes, base + at, DecoderOptions::NONE);
            for insn in dec.iter() {
                if insn.flow_control() == FlowControl::IndirectBranch && insn.is_ip_rel_memory_operand() {
                    if let Some(name) = slots.get(&insn.ip_rel_memory_address()) {
                        out.push((base + at, base + at + entry, format!("{name}@plt")));
                    }
                    break;
                }
            }
            at += entry;
        }
    }
    out.sort();
    out
}

/// Demangles Rust and C++ symbol names; leaves C names alone (the C++
/// demangler reads a C function named `c` as the type `char`). Symbol
/// versions (`memcpy@@GLIBC_2.14`) are dropped, as GDB does.
pub fn demangle(name: &str) -> String {
    let name = name.split('@').next().unwrap_or(name);
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

/// Addresses whose symbol a [`Symbolizer`] keeps at most.
pub const SYMBOLS_KEPT: usize = 1 << 17;

/// Symbolizes addresses of one image; files are loaded on first use.
pub struct Symbolizer {
    modules: Vec<Mapping>,
    images: HashMap<String, Vec<u8>>,
    loaded: RefCell<HashMap<String, Option<Loaded>>>,
    cache: RefCell<HashMap<u64, Symbol>>,
}

impl Symbolizer {
    /// A symbolizer over `modules` (each loaded when first needed).
    pub fn new(modules: Vec<Mapping>) -> Self {
        Symbolizer { modules, images: HashMap::new(), loaded: RefCell::default(), cache: RefCell::default() }
    }

    /// The bytes of a module that has no file (the vDSO), from the trace.
    pub fn add_image(&mut self, path: &str, bytes: Vec<u8>) {
        self.images.insert(path.to_string(), bytes);
    }

    /// The mapping that holds `addr`.
    pub fn module_of(&self, addr: u64) -> Option<&Mapping> {
        self.modules.iter().rev().find(|m| (m.start..m.end).contains(&addr))
    }

    /// What is known of `addr`. Answers are kept for the next asking, up
    /// to [`SYMBOLS_KEPT`] addresses (then the cache starts over), so that
    /// a trace through a large program stays in bounded memory.
    pub fn lookup(&self, addr: u64) -> Symbol {
        if let Some(s) = self.cache.borrow().get(&addr) {
            return s.clone();
        }
        let sym = self.resolve(addr);
        let mut cache = self.cache.borrow_mut();
        if cache.len() >= SYMBOLS_KEPT {
            cache.clear();
        }
        cache.insert(addr, sym.clone());
        sym
    }

    /// The debug file used for the module at `addr`, if a separate one.
    pub fn debug_file(&self, addr: u64) -> Option<PathBuf> {
        let m = self.module_of(addr)?;
        self.with_loaded(m, |l, _| l.debug_file.clone()).flatten()
    }

    fn with_loaded<T>(&self, m: &Mapping, f: impl FnOnce(&Loaded, u64) -> T) -> Option<T> {
        let mut loaded = self.loaded.borrow_mut();
        let entry = loaded.entry(m.path.clone()).or_insert_with(|| match self.images.get(&m.path) {
            Some(bytes) => load_image(bytes),
            None => load(&m.path),
        });
        let l = entry.as_ref()?;
        Some(f(l, 0))
    }

    /// The module's link-time address of `addr` (what DWARF and symbols use).
    fn probe(l: &Loaded, m: &Mapping, addr: u64) -> Option<u64> {
        let file_off = m.offset + (addr - m.start);
        let &(seg_off, _, seg_addr) =
            l.segments.iter().find(|&&(o, sz, _)| file_off >= (o & !0xfff) && file_off < o + sz.max(1))?;
        Some(seg_addr.wrapping_add(file_off).wrapping_sub(seg_off))
    }

    fn resolve(&self, addr: u64) -> Symbol {
        let Some(m) = self.module_of(addr) else { return Symbol::default() };
        let file_off = m.offset + (addr - m.start);
        let mut sym = Symbol { module: Some(m.path.clone()), file_offset: file_off, ..Symbol::default() };
        let m = m.clone();
        self.with_loaded(&m, |l, _| {
            let Some(probe) = Self::probe(l, &m, addr) else { return };
            match &l.source {
                Source::Symbols(syms) => {
                    let i = syms.partition_point(|s| s.0 <= probe);
                    if let Some((start, size, name)) = i.checked_sub(1).map(|i| &syms[i]) {
                        if probe < start + (*size).max(1) || *size == 0 {
                            sym.function = Some(demangle(name));
                            sym.offset = probe - start;
                        }
                    }
                }
                Source::File(_) if l.plt.iter().any(|p| (p.0..p.1).contains(&probe)) => {
                    let p = l.plt.iter().find(|p| (p.0..p.1).contains(&probe)).expect("checked");
                    sym.function = Some(p.2.clone());
                    sym.offset = probe - p.0;
                }
                Source::File(loader) => {
                    if let Some(s) = loader.find_symbol_info(probe) {
                        sym.function = Some(demangle(s.name()));
                        sym.offset = probe.wrapping_sub(s.address());
                    }
                    if let Ok(Some(loc)) = loader.find_location(probe) {
                        sym.file = loc.file.map(str::to_string);
                        sym.line = loc.line;
                    }
                    if sym.function.is_none() {
                        if let Ok(mut frames) = loader.find_frames(probe) {
                            if let Ok(Some(f)) = frames.next() {
                                sym.function =
                                    f.function.and_then(|n| n.demangle().ok().map(|c| c.into_owned()));
                            }
                        }
                    }
                }
            }
        });
        sym
    }

    /// Every frame at `addr`, innermost (the inlined callee) first, as
    /// `addr2line -f -i` prints them.
    pub fn frames(&self, addr: u64) -> Vec<Frame> {
        let Some(m) = self.module_of(addr).cloned() else { return Vec::new() };
        self.with_loaded(&m, |l, _| {
            let mut out = Vec::new();
            let (Source::File(loader), Some(probe)) = (&l.source, Self::probe(l, &m, addr)) else {
                return out;
            };
            if let Ok(mut it) = loader.find_frames(probe) {
                while let Ok(Some(f)) = it.next() {
                    out.push(Frame {
                        function: f.function.and_then(|n| n.demangle().ok().map(|c| c.into_owned())),
                        file: f.location.as_ref().and_then(|l| l.file.map(str::to_string)),
                        line: f.location.as_ref().and_then(|l| l.line),
                    });
                }
            }
            out
        })
        .unwrap_or_default()
    }
}
