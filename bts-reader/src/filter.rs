//! `bts filter`: the records of a trace whose ends lie in the chosen code
//! (a module, a function, kernel space) or whose thread or process is
//! chosen; context records are kept, so where and when the task ran stays
//! known. Two passes a section at a time (count, then write): any size of
//! trace takes bounded memory.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use decode::symbols::Symbolizer;
use ds_alloc::BtsRecord;

use crate::newtrace::NewTrace;
use crate::tracestream::{open, Section};
use crate::{Error, Module, Result, StreamKind};

/// What to keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// Records with an end in a module whose path is this or ends in `/this`.
    Module(String),
    /// Records with an end in this function (as the report names it).
    Function(String),
    /// The buffers of this thread.
    Tid(i32),
    /// The buffers of this process.
    Pid(i32),
    /// Records with an end in kernel space.
    Kernel,
}

/// Where user space ends.
const KERNEL: u64 = 0xffff_8000_0000_0000;

/// Records read at a time.
const CHUNK: usize = 1 << 16;

/// Decides record by record, image by image.
struct Chooser<'a> {
    filter: &'a Filter,
    modules: HashMap<(i32, u32), Vec<Module>>,
    symbols: HashMap<(i32, u32), Symbolizer>,
}

impl Chooser<'_> {
    fn keeps_stream(&self, kind: &StreamKind) -> bool {
        match (self.filter, kind) {
            (Filter::Tid(t), StreamKind::Thread { tid, .. }) => tid == t,
            (Filter::Pid(p), StreamKind::Thread { pid, .. }) => pid == p,
            (Filter::Tid(_) | Filter::Pid(_), StreamKind::Cpu { .. }) => false,
            _ => true,
        }
    }

    fn in_module(&self, image: (i32, u32), addr: u64, name: &str) -> bool {
        self.modules
            .get(&image)
            .is_some_and(|mods| mods.iter().any(|m| m.map.contains(addr) && is_named(&m.map.path, name)))
    }

    fn in_function(&mut self, image: (i32, u32), addr: u64, name: &str) -> bool {
        let mods = &self.modules;
        let syms = self.symbols.entry(image).or_insert_with(|| {
            Symbolizer::new(
                mods.get(&image).map(|m| m.iter().map(|m| m.map.clone()).collect()).unwrap_or_default(),
            )
        });
        syms.lookup(addr).function.as_deref() == Some(name)
    }

    /// Whether a record of image `image` (none for a CPU buffer) is kept.
    fn keeps(&mut self, image: Option<(i32, u32)>, r: &BtsRecord) -> bool {
        if !r.is_branch() {
            return true;
        }
        let ends = [r.from, r.to];
        let filter = self.filter;
        match (filter, image) {
            (Filter::Tid(_) | Filter::Pid(_), _) => true,
            (Filter::Kernel, _) => ends.iter().any(|&a| a >= KERNEL),
            (Filter::Module(m), Some(img)) => ends.iter().any(|&a| self.in_module(img, a, m)),
            (Filter::Function(f), Some(img)) => {
                ends.iter().any(|&a| a < KERNEL && self.in_function(img, a, f))
            }
            (_, None) => false,
        }
    }
}

/// Whether a module's `path` is `name`, or ends in `/name`. An empty name
/// names nothing (an anonymous mapping has an empty path).
fn is_named(path: &str, name: &str) -> bool {
    !name.is_empty() && path.strip_suffix(name).is_some_and(|rest| rest.is_empty() || rest.ends_with('/'))
}

/// An error if `filter` names a module, thread or process that the trace
/// (its `modules`, and `threads` as (pid, tid)) does not hold: keeping
/// nothing of it would be a mistyped name's silent answer.
fn absent(filter: &Filter, modules: &[&Module], threads: &BTreeSet<(i32, i32)>) -> Option<Error> {
    let list = |known: BTreeSet<String>| known.into_iter().collect();
    let (what, known) = match filter {
        Filter::Module(m) => {
            if modules.iter().any(|x| is_named(&x.map.path, m)) {
                return None;
            }
            let names =
                modules.iter().filter_map(|x| x.map.path.rsplit('/').next()).filter(|n| !n.is_empty());
            (format!("module `{m}`"), list(names.map(String::from).collect()))
        }
        Filter::Tid(t) if !threads.iter().any(|&(_, tid)| tid == *t) => {
            (format!("buffer of thread {t}"), list(threads.iter().map(|(_, tid)| tid.to_string()).collect()))
        }
        Filter::Pid(p) if !threads.iter().any(|&(pid, _)| pid == *p) => {
            let pids = threads.iter().map(|(pid, _)| pid.to_string());
            (format!("thread buffer of process {p}"), list(pids.collect()))
        }
        _ => return None,
    };
    Some(Error::NotInTrace { what, known })
}

fn image_of(kind: &StreamKind) -> Option<(i32, u32)> {
    match *kind {
        StreamKind::Thread { pid, generation, .. } => Some((pid, generation)),
        StreamKind::Cpu { .. } => None,
    }
}

/// Writes the records of `input` that `filter` keeps to `output` (a new
/// file). Returns the branches kept. A module, thread or process the
/// trace does not hold is an error ([`Error::NotInTrace`]), and no file
/// is written.
pub fn filter(input: &Path, output: &Path, filter: &Filter) -> Result<u64> {
    let mut chooser = Chooser { filter, modules: HashMap::new(), symbols: HashMap::new() };
    // Pass 1: how many records of each buffer are kept.
    let mut counts = Vec::new();
    let mut threads = BTreeSet::new();
    let mut r = open(input)?;
    let mut recs = Vec::with_capacity(CHUNK);
    while let Some(s) = r.next_section()? {
        match s {
            Section::Modules(mods) => {
                // A module is known from here: a name not there is told at
                // once, not after reading every record.
                if matches!(filter, Filter::Module(_)) {
                    if let Some(e) = absent(filter, &mods.iter().collect::<Vec<_>>(), &threads) {
                        return Err(e);
                    }
                }
                for m in mods {
                    chooser.modules.entry((m.pid, m.generation)).or_default().push(m);
                }
            }
            Section::Stream(h) => {
                if let StreamKind::Thread { pid, tid, .. } = h.kind {
                    threads.insert((pid, tid));
                }
                let (keep, image) = (chooser.keeps_stream(&h.kind), image_of(&h.kind));
                let mut n = 0u64;
                while r.records(&mut recs, CHUNK)? > 0 {
                    if keep {
                        n += recs.iter().filter(|x| chooser.keeps(image, x)).count() as u64;
                    }
                    recs.clear();
                }
                counts.push(keep.then_some(n));
            }
            _ => {}
        }
    }
    let modules: Vec<&Module> = chooser.modules.values().flatten().collect();
    if let Some(e) = absent(filter, &modules, &threads) {
        return Err(e);
    }
    // Pass 2: write them. A whole buffer is decoded from record to
    // record; records picked by their ends each stand alone.
    let whole = matches!(filter, Filter::Tid(_) | Filter::Pid(_));
    let mut r = open(input)?;
    let (mut out, mut meta, mut index, mut kept_branches) = (None, None, 0, 0u64);
    let mut threads_kept = BTreeSet::new();
    let missing = |what: &str| Error::Corrupt(format!("{what} before the modules"));
    while let Some(s) = r.next_section()? {
        match s {
            Section::Meta(m) => meta = Some(m),
            Section::Modules(mods) => {
                let meta =
                    meta.take().ok_or_else(|| Error::Corrupt("no metadata before the modules".into()))?;
                let mods: Vec<Module> = match filter {
                    Filter::Pid(p) => mods.into_iter().filter(|m| m.pid == *p).collect(),
                    _ => mods,
                };
                out = Some(NewTrace::create(output, &meta, &mods)?);
            }
            Section::Stream(mut h) => {
                let out = out.as_mut().ok_or_else(|| missing("a stream"))?;
                let count = counts.get(index).copied().flatten();
                index += 1;
                let Some(count) = count else { continue };
                let image = image_of(&h.kind);
                if let StreamKind::Thread { pid, generation, tid, .. } = h.kind {
                    threads_kept.insert((pid, generation, tid));
                }
                h.count = count;
                if !whole {
                    // Picked records do not end where the thread stood.
                    if let StreamKind::Thread { last_pc, .. } = &mut h.kind {
                        *last_pc = None;
                    }
                }
                out.begin_stream(&h)?;
                let mut kept: Vec<BtsRecord> = Vec::with_capacity(CHUNK);
                while r.records(&mut recs, CHUNK)? > 0 {
                    kept.extend(recs.iter().filter(|x| chooser.keeps(image, x)));
                    recs.clear();
                    kept_branches += kept.iter().filter(|x| x.is_branch()).count() as u64;
                    if whole {
                        out.records(&kept)?;
                    } else {
                        out.picked(&kept)?;
                    }
                    kept.clear();
                }
            }
            Section::Code(c) => out.as_mut().ok_or_else(|| missing("code"))?.code(&c)?,
            Section::State(st) => {
                let out = out.as_mut().ok_or_else(|| missing("a thread state"))?;
                if whole && threads_kept.contains(&(st.pid, st.generation, st.tid)) {
                    out.state(&st)?;
                }
            }
        }
    }
    out.ok_or_else(|| Error::Corrupt("no modules section".into()))?.finish()?;
    Ok(kept_branches)
}
