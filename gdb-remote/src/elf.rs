//! What GDB needs to place each module of a traced image: its load bias,
//! its dynamic section and, for the executable, its entry point — read
//! from the ELF files the trace's mappings name.

use object::elf::{FileHeader64, PT_DYNAMIC, PT_INTERP, PT_LOAD};
use object::read::elf::{FileHeader, ProgramHeader};
use object::LittleEndian;

use decode::Mapping;

/// One module of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Its path.
    pub path: String,
    /// Load bias: run-time address minus link-time address.
    pub bias: u64,
    /// Run-time address of the dynamic section.
    pub dynamic: Option<u64>,
    /// Run-time entry point.
    pub entry: Option<u64>,
    /// It is the executable (it names an interpreter, or is not position-independent).
    pub is_main: bool,
}

struct Elf {
    /// (file offset, virtual address, file size) of each PT_LOAD.
    loads: Vec<(u64, u64, u64)>,
    dynamic: Option<u64>,
    entry: u64,
    interp: bool,
    exec_type: bool,
}

fn parse(data: &[u8]) -> Option<Elf> {
    let e = LittleEndian;
    let h = FileHeader64::<LittleEndian>::parse(data).ok()?;
    let mut elf = Elf {
        loads: Vec::new(),
        dynamic: None,
        entry: h.e_entry(e),
        interp: false,
        exec_type: h.e_type(e) == object::elf::ET_EXEC,
    };
    for ph in h.program_headers(e, data).ok()? {
        match ph.p_type(e) {
            PT_LOAD => elf.loads.push((ph.p_offset(e), ph.p_vaddr(e), ph.p_filesz(e))),
            PT_DYNAMIC => elf.dynamic = Some(ph.p_vaddr(e)),
            PT_INTERP => elf.interp = true,
            _ => {}
        }
    }
    Some(elf)
}

/// The modules of `maps` that are ELF files on this machine, in address
/// order, one per path (placed by its first executable mapping).
pub fn images(maps: &[&Mapping]) -> Vec<Image> {
    let mut sorted: Vec<&&Mapping> = maps.iter().collect();
    sorted.sort_by_key(|m| m.start);
    let mut out: Vec<Image> = Vec::new();
    for m in sorted {
        if !m.path.starts_with('/') || out.iter().any(|i| i.path == m.path) {
            continue;
        }
        let Ok(data) = std::fs::read(&m.path) else { continue };
        let Some(elf) = parse(&data) else { continue };
        // The segment the mapping begins (segments may share a page:
        // the one that starts on the mapping's page wins).
        let starts_here = elf.loads.iter().find(|&&(o, _, _)| o & !0xfff == m.offset);
        let holds =
            elf.loads.iter().rev().find(|&&(o, _, sz)| m.offset >= o & !0xfff && m.offset < o + sz.max(1));
        let Some(&(off, vaddr, _)) = starts_here.or(holds) else { continue };
        // The mapping's start is the link address of its file offset, plus the bias.
        let linked = vaddr.wrapping_sub(off).wrapping_add(m.offset);
        let bias = m.start.wrapping_sub(linked);
        let is_main = elf.interp || elf.exec_type;
        out.push(Image {
            path: m.path.clone(),
            bias,
            dynamic: elf.dynamic.map(|d| d.wrapping_add(bias)),
            entry: is_main.then(|| elf.entry.wrapping_add(bias)),
            is_main,
        });
    }
    // Only one executable: a program that maps another (a second
    // interpreter-bearing file) keeps the lowest, its own.
    if let Some(first) = out.iter().position(|i| i.is_main) {
        for (k, i) in out.iter_mut().enumerate() {
            if k != first && i.is_main {
                i.is_main = false;
                i.entry = None;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_is_placed_by_its_own_mapping() {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let exe = std::fs::read_link("/proc/self/exe").unwrap().display().to_string();
        let mut mappings = Vec::new();
        for l in maps.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 6 || !f[1].contains('x') {
                continue;
            }
            let (s, e) = f[0].split_once('-').unwrap();
            mappings.push(Mapping {
                path: f[5].to_string(),
                start: u64::from_str_radix(s, 16).unwrap(),
                end: u64::from_str_radix(e, 16).unwrap(),
                offset: u64::from_str_radix(f[2], 16).unwrap(),
            });
        }
        let refs: Vec<&Mapping> = mappings.iter().collect();
        let imgs = images(&refs);
        let me = imgs.iter().find(|i| i.path == exe).expect("the test binary");
        assert!(me.is_main);
        // The entry point GDB will compute must be where this process's
        // own entry is: the kernel's AT_ENTRY.
        let auxv = std::fs::read("/proc/self/auxv").unwrap();
        let at_entry = auxv
            .chunks(16)
            .map(|c| {
                (
                    u64::from_le_bytes(c[..8].try_into().unwrap()),
                    u64::from_le_bytes(c[8..].try_into().unwrap()),
                )
            })
            .find(|&(k, _)| k == 9)
            .unwrap()
            .1;
        assert_eq!(me.entry, Some(at_entry));
        assert!(imgs.iter().filter(|i| i.is_main).count() == 1);
        assert!(imgs.iter().any(|i| i.path.contains("libc")));
    }
}
