//! `bts history`: GDB's `record instruction-history` and
//! `record function-call-history`, line for line, from a trace file.

use std::collections::HashMap;

use decode::classify::decode_at;
use decode::flow::AddrMap;
use serde_json::{json, Value};

use crate::model::Image;
use crate::timeline::Entry;

/// What `--insns` prints (GDB's /m /s, /r, /f modifiers).
#[derive(Debug, Clone, Copy, Default)]
pub struct InsnOpts {
    /// Interleave source lines (GDB `/s`).
    pub source: bool,
    /// Show the raw instruction bytes (GDB `/r`).
    pub raw: bool,
    /// Leave out function names (GDB `/f`).
    pub no_fn: bool,
    /// Intel syntax instead of AT&T.
    pub intel: bool,
}

/// What `--calls` prints (GDB's /l, /i, /c modifiers).
#[derive(Debug, Clone, Copy, Default)]
pub struct CallOpts {
    /// Source lines of each segment (GDB `/l`).
    pub lines: bool,
    /// Instruction ranges of each segment (GDB `/i`).
    pub insn_range: bool,
    /// Indent by call depth (GDB `/c`).
    pub indent: bool,
}

fn gap_text(e: &Entry) -> String {
    match *e {
        Entry::Gap { kind, .. } => format!("[decode error ({}): {}]", kind.code(), kind.text()),
        Entry::Insn { .. } => String::new(),
    }
}

/// A source line's text, from the file if it can be read.
struct Sources(HashMap<String, Option<Vec<String>>>);

impl Sources {
    fn line(&mut self, file: &str, line: u32) -> Option<String> {
        let lines = self.0.entry(file.to_string()).or_insert_with(|| {
            std::fs::read_to_string(file).ok().map(|t| t.lines().map(str::to_string).collect())
        });
        lines.as_ref()?.get((line as usize).checked_sub(1)?).cloned()
    }
}

/// Writes instruction-history lines an entry at a time. What follows an
/// instruction's number (its address, function, bytes and text) is made
/// once per address: a trace runs the same instructions over and over.
pub struct InsnPrinter<'a> {
    img: Option<&'a Image>,
    o: InsnOpts,
    sources: Sources,
    last_loc: Option<(String, u32)>,
    texts: AddrMap<String>,
    number: Decimal,
    line: String,
}

/// Distinct instructions whose text is kept (beyond, the cache starts over).
const TEXTS: usize = 1 << 20;

impl<'a> InsnPrinter<'a> {
    /// A printer for the image `img`.
    pub fn new(img: Option<&'a Image>, o: InsnOpts) -> Self {
        InsnPrinter {
            img,
            o,
            sources: Sources(HashMap::new()),
            last_loc: None,
            texts: AddrMap::default(),
            number: Decimal::default(),
            line: String::new(),
        }
    }

    /// Calls `out` with the lines of entry `e` (with `/s`, the source lines before it).
    pub fn lines(&mut self, e: &Entry, out: &mut impl FnMut(&str)) {
        let Entry::Insn { number, addr, current } = *e else {
            out(&format!("{}\t{}", e.number(), gap_text(e)));
            return;
        };
        if self.o.source {
            let sym = self.img.map(|i| i.syms.lookup(addr)).unwrap_or_default();
            if let (Some(file), Some(line)) = (&sym.file, sym.line) {
                if self.last_loc.as_ref().map(|(f, _)| f) != Some(file) {
                    out(&format!("{file}:"));
                }
                if self.last_loc.as_ref() != Some(&(file.clone(), line)) {
                    out(&format!("{line}\t{}", self.sources.line(file, line).unwrap_or_default()));
                }
                self.last_loc = Some((file.clone(), line));
            }
        }
        if self.texts.len() >= TEXTS {
            self.texts.clear();
        }
        let (img, o) = (self.img, self.o);
        let text = self.texts.entry(addr).or_insert_with(|| insn_text(img, addr, o));
        // The hot path: digits by hand, no formatting machinery.
        self.line.clear();
        self.line.push_str(self.number.set(number));
        self.line.push('\t');
        self.line.push_str(if current { "=> " } else { "   " });
        self.line.push_str(text);
        out(&self.line);
    }
}

/// A number in decimal, kept from one line to the next: the numbers of
/// a history mostly go up by one, which changes a digit or two.
#[derive(Default)]
struct Decimal {
    n: Option<u64>,
    text: String,
}

impl Decimal {
    fn set(&mut self, n: u64) -> &str {
        if self.n.is_some_and(|m| m.checked_add(1) == Some(n)) {
            let mut nines = 0;
            while self.text.ends_with('9') {
                self.text.pop();
                nines += 1;
            }
            match self.text.pop() {
                Some(c) => self.text.push(char::from(c as u8 + 1)),
                None => self.text.push('1'),
            }
            self.text.extend(std::iter::repeat_n('0', nines));
        } else {
            self.text = n.to_string();
        }
        self.n = Some(n);
        &self.text
    }
}

/// An instruction's line after its number and marker.
fn insn_text(img: Option<&Image>, addr: u64, o: InsnOpts) -> String {
    let sym = img.map(|i| i.syms.lookup(addr)).unwrap_or_default();
    let insn = img.and_then(|i| decode_at(&i.code, addr));
    let mut line = format!("0x{addr:016x}");
    if !o.no_fn {
        if let Some(f) = &sym.function {
            line += &format!(" <{f}+{}>", sym.offset);
        }
    }
    line += ":\t";
    if o.raw {
        if let (Some(i), Some(img)) = (&insn, img) {
            let mut bytes = vec![0u8; i.len()];
            img.code.read(addr, &mut bytes);
            let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
            line += &hex.join(" ");
            line += "\t";
        }
    }
    line += &match &insn {
        Some(i) => {
            let mut t = decode::disasm::format_gdb(i, o.intel);
            // Direct branches name their target, as GDB does.
            if i.is_jcc_short_or_near() || i.is_jmp_short_or_near() || i.is_call_near() {
                let target = i.near_branch_target();
                if let Some(s) =
                    img.map(|m| m.syms.lookup(target)).and_then(|s| s.function.map(|f| (f, s.offset)))
                {
                    t += &format!(" <{}+{}>", s.0, s.1);
                }
            }
            t
        }
        None => "(bad)".to_string(),
    };
    line
}

/// One instruction-history entry as JSON (`bts history --json`'s `instructions`).
pub fn insn_json_item(e: &Entry, img: Option<&Image>, intel: bool) -> Value {
    match *e {
        Entry::Gap { number, kind, at } => {
            json!({"number": number, "gap": {"code": kind.code(), "text": kind.text(), "at": format!("{at:#x}")}})
        }
        Entry::Insn { number, addr, current, .. } => {
            let sym = img.map(|i| i.syms.lookup(addr)).unwrap_or_default();
            let text =
                img.and_then(|i| decode_at(&i.code, addr)).map(|i| decode::disasm::format_gdb(&i, intel));
            json!({
                "number": number, "addr": format!("{addr:#x}"), "function": sym.function,
                "offset": sym.offset, "file": sym.file, "line": sym.line, "text": text, "current": current,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Decimal;

    #[test]
    fn numbers_count_up_as_to_string_writes_them() {
        let mut d = Decimal::default();
        for n in (0..2000).chain(9_999_990..10_000_010).chain([5, 99, 100, u64::MAX - 1, u64::MAX]) {
            assert_eq!(d.set(n), n.to_string());
        }
    }
}
