//! Symbolization against binutils' addr2line, separate debug files found by
//! debuglink and build-id, and the vDSO.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;

use decode::symbols::Symbolizer;
use decode::Mapping;

fn build(name: &str, src: &str, flags: &[&str], dir: &Path) -> PathBuf {
    let out = dir.join(name);
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(src);
    let st = Command::new("cc").args(flags).arg("-o").arg(&out).arg(&src).status().unwrap();
    assert!(st.success());
    out
}

fn sh(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{cmd:?}: {}", text(&o.stderr));
    text(&o.stdout)
}

/// `nm` address and size of a function.
fn function_range(bin: &Path, name: &str) -> (u64, u64) {
    let nm = sh(Command::new("nm").args(["-S", "--defined-only"]).arg(bin));
    let line = nm.lines().find(|l| l.ends_with(&format!(" {name}"))).unwrap();
    let f: Vec<&str> = line.split_whitespace().collect();
    (u64::from_str_radix(f[0], 16).unwrap(), u64::from_str_radix(f[1], 16).unwrap())
}

#[test]
fn inlined_frames_match_addr2line() {
    let dir = scratch("sym_inline");
    let bin = build("inlined", "inlined.c", &["-g", "-O2", "-no-pie"], &dir);
    // Non-PIE: link addresses are run-time addresses.
    let syms = Symbolizer::new(vec![Mapping {
        path: bin.display().to_string(),
        start: 0x400000,
        end: 0x800000,
        offset: 0,
    }]);
    let (start, size) = function_range(&bin, "outer");
    let mut saw_inline = false;
    let mut checked = 0;
    for addr in start..start + size {
        let ours = syms.frames(addr);
        let theirs =
            sh(Command::new("addr2line").args(["-f", "-i", "-e"]).arg(&bin).arg(format!("{addr:#x}")));
        let lines: Vec<&str> = theirs.lines().collect();
        let pairs: Vec<(String, Option<u32>)> = lines
            .chunks(2)
            .map(|c| {
                let line = c[1].rsplit(':').next().and_then(|l| l.split_whitespace().next()?.parse().ok());
                (c[0].to_string(), line)
            })
            .collect();
        let mine: Vec<(String, Option<u32>)> = ours
            .iter()
            .map(|f| (f.function.clone().unwrap_or_else(|| "??".into()), f.line.filter(|&l| l != 0)))
            .collect();
        assert_eq!(mine, pairs, "at {addr:#x}");
        saw_inline |= mine.len() > 1 && mine[0].0 == "helper";
        checked += 1;
        // The innermost name and the symbol table agree on the outer function.
        assert_eq!(syms.lookup(addr).function.as_deref(), Some("outer"));
        assert_eq!(syms.lookup(addr).offset, addr - start);
    }
    assert!(checked > 10 && saw_inline, "helper was inlined into outer");
}

#[test]
fn stripped_binaries_use_their_debug_file_by_debuglink_and_by_build_id() {
    let dir = scratch("sym_debugfile");
    for how in ["debuglink", "build-id"] {
        let sub = dir.join(how);
        std::fs::create_dir_all(&sub).unwrap();
        let bin = build("prog", "null_call.c", &["-g", "-O0", "-Wl,--build-id"], &sub);
        let dbg = sub.join("prog.debug");
        sh(Command::new("objcopy").arg("--only-keep-debug").arg(&bin).arg(&dbg));
        sh(Command::new("strip").arg("--strip-all").arg(&bin));
        let mut env_dir = None;
        if how == "debuglink" {
            sh(Command::new("objcopy").arg(format!("--add-gnu-debuglink={}", dbg.display())).arg(&bin));
        } else {
            let id = decode::symbols::build_id(bin.to_str().unwrap()).expect("a build-id");
            let root = sub.join("debugroot");
            let d = root.join(".build-id").join(&id[..2]);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::rename(&dbg, d.join(format!("{}.debug", &id[2..]))).unwrap();
            env_dir = Some(root);
        }
        let mut cmd = Command::new(BTS);
        cmd.args(["run", "--json", "-n", "4", "--"]).arg(&bin).current_dir(&sub);
        if let Some(r) = &env_dir {
            cmd.env("BTS_DEBUG_DIR", r);
        }
        let out = output_within(&mut cmd, LIMIT);
        assert_eq!(out.status.code(), Some(139), "{}", text(&out.stderr));
        let r = json(&out);
        let last = crashed_thread(&r)["branches"].as_array().unwrap().last().unwrap().clone();
        assert!(last["from_sym"].as_str().unwrap().starts_with("c+"), "{how}: {last}");
        assert!(last["from_line"].as_str().unwrap().ends_with("null_call.c:11"), "{how}: {last}");
    }
}

#[test]
fn the_vdso_is_symbolized_from_the_trace() {
    let dir = scratch("sym_vdso");
    let bin = fixture("vdso");
    // Valgrind hides the vDSO: a ptrace recorder sees it.
    let out = bts(&dir, &["run", "--backend", "fast", "--json", "-n", "100000", "--", bin.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(139), "{}", text(&out.stderr));
    let r = json(&out);
    let br = crashed_thread(&r)["branches"].as_array().unwrap().clone();
    let into_vdso = br
        .iter()
        .filter(|b| b["to_sym"].as_str().is_some_and(|s| s.contains("clock_gettime")))
        .filter(|b| b["to_sym"].as_str().is_some_and(|s| s.starts_with("__vdso")))
        .count();
    assert!(into_vdso >= 3, "three clock reads through the vDSO");
}

#[test]
fn a_crash_inside_inlined_code_names_the_function_it_was_inlined_into() {
    let dir = scratch("sym_inline_crash");
    let bin = fixture("inline_crash");
    for backend in ["fast", "valgrind"] {
        let out = bts(&dir, &["run", "--backend", backend, "--json", "--", bin.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(139), "{}", text(&out.stderr));
        let r = json(&out);
        let cur = crashed_thread(&r)["last_instructions"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(cur["current"], true);
        assert!(cur["line"].as_str().unwrap().ends_with("inline_crash.c:4"), "{backend}: {cur}");
        let outer = cur["inlined_into"][0].as_str().unwrap();
        assert!(outer.starts_with("outer (inline_crash.c:5"), "{backend}: {outer}");
    }
}

/// A symbolizer over a non-PIE binary (link addresses are run-time ones).
fn non_pie(bin: &Path) -> Symbolizer {
    Symbolizer::new(vec![Mapping {
        path: bin.display().to_string(),
        start: 0x400000,
        end: 0x800000,
        offset: 0,
    }])
}

/// The defined functions `nm ARGS` lists: (address, name).
fn nm_functions(bin: &Path, args: &[&str]) -> Vec<(u64, String)> {
    sh(Command::new("nm").args(args).arg("--defined-only").arg(bin))
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3 && matches!(f[1], "T" | "t")).then(|| (u64::from_str_radix(f[0], 16).ok(), f[2]))
        })
        .filter_map(|(a, n)| Some((a?, n.split('@').next()?.to_string())))
        .collect()
}

#[test]
fn a_stripped_binary_is_named_from_its_dynamic_symbols_as_nm_d_names_them() {
    let dir = scratch("sym_dynsym");
    let bin = build("prog", "null_call.c", &["-O0", "-no-pie", "-rdynamic"], &dir);
    sh(Command::new("strip").arg("--strip-all").arg(&bin));
    let exported = nm_functions(&bin, &["-D"]);
    for want in ["main", "a", "b", "c"] {
        assert!(exported.iter().any(|(_, n)| n == want), "nm -D lists {want}: {exported:?}");
    }
    let syms = non_pie(&bin);
    for (addr, name) in &exported {
        let s = syms.lookup(*addr);
        assert_eq!((s.function.as_deref(), s.offset), (Some(name.as_str()), 0), "at {addr:#x}");
        assert_eq!(syms.lookup(addr + 1).name_offset(), format!("{name}+0x1"));
    }
}

#[test]
fn minidebuginfo_names_what_dynsym_does_not() {
    let dir = scratch("sym_minidebug");
    let full = build("full", "null_call.c", &["-g", "-O0", "-no-pie"], &dir);
    let functions = nm_functions(&full, &[]);
    // As distributions make it: the symbol table alone, xz-compressed, in
    // .gnu_debugdata of the stripped binary.
    let mini = dir.join("mini");
    sh(Command::new("objcopy").arg("--strip-debug").arg(&full).arg(&mini));
    sh(Command::new("xz").arg("-f").arg(&mini));
    let plain = dir.join("plain");
    sh(Command::new("strip").arg("--strip-all").arg("-o").arg(&plain).arg(&full));
    let with = dir.join("with");
    sh(Command::new("objcopy")
        .arg(format!("--add-section=.gnu_debugdata={}.xz", mini.display()))
        .arg(&plain)
        .arg(&with));
    // A corrupt one is ignored, as if it were not there.
    let junk = dir.join("junk.xz");
    std::fs::write(&junk, b"\xfd7zXZ\0 not really xz").unwrap();
    let bad = dir.join("bad");
    sh(Command::new("objcopy")
        .arg(format!("--add-section=.gnu_debugdata={}", junk.display()))
        .arg(&plain)
        .arg(&bad));

    let (with, plain, bad) = (non_pie(&with), non_pie(&plain), non_pie(&bad));
    for name in ["a", "b", "c", "main"] {
        let (addr, _) = functions.iter().find(|(_, n)| n == name).unwrap();
        assert_eq!(with.lookup(addr + 3).name_offset(), format!("{name}+0x3"));
        assert_ne!(plain.lookup(addr + 3).function.as_deref(), Some(name), "no symbols without it");
        assert_ne!(bad.lookup(addr + 3).function.as_deref(), Some(name));
    }
}
