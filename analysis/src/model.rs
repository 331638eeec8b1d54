//! A loaded trace file's images: the code bytes and symbols of each
//! (pid, exec generation), shared by every command that reads traces.

use std::collections::HashMap;

use bts_reader::{StreamKind, TraceFile};
use decode::{CodeMap, Symbolizer};

/// One process image (a pid after one exec): its code and symbols.
pub struct Image {
    /// The code bytes the trace kept.
    pub code: CodeMap,
    /// Symbols and source lines of its modules.
    pub syms: Symbolizer,
}

/// The image a stream ran in (none for a CPU's catch-all buffer).
pub fn image_of<'a>(imgs: &'a HashMap<(i32, u32), Image>, kind: &StreamKind) -> Option<&'a Image> {
    match *kind {
        StreamKind::Thread { pid, generation, .. } => imgs.get(&(pid, generation)),
        StreamKind::Cpu { .. } => None,
    }
}

/// Every image of the trace, by (pid, generation).
pub fn images(tf: &TraceFile) -> HashMap<(i32, u32), Image> {
    let mut mods: HashMap<(i32, u32), Vec<decode::Mapping>> = HashMap::new();
    for m in &tf.modules {
        mods.entry((m.pid, m.generation)).or_default().push(m.map.clone());
    }
    let mut codes: HashMap<(i32, u32), CodeMap> = HashMap::new();
    for c in &tf.code {
        codes.entry((c.pid, c.generation)).or_default().insert(c.addr, c.bytes.clone());
    }
    let keys: Vec<(i32, u32)> = mods.keys().chain(codes.keys()).copied().collect();
    let mut out = HashMap::new();
    for k in keys {
        if out.contains_key(&k) {
            continue;
        }
        let code = codes.remove(&k).unwrap_or_default();
        let modules = mods.remove(&k).unwrap_or_default();
        // Modules with no file (the vDSO) are symbolized from the trace's bytes.
        let images: Vec<(String, Vec<u8>)> = modules
            .iter()
            .filter(|m| m.path.starts_with('[') && m.end > m.start && m.end - m.start <= 1 << 20)
            .map(|m| {
                let mut bytes = vec![0u8; (m.end - m.start) as usize];
                let n = code.read(m.start, &mut bytes);
                bytes.truncate(n);
                (m.path.clone(), bytes)
            })
            .filter(|(_, b)| !b.is_empty())
            .collect();
        let mut syms = Symbolizer::new(modules);
        for (path, bytes) in images {
            syms.add_image(&path, bytes);
        }
        out.insert(k, Image { code, syms });
    }
    out
}
