//! Builds the Valgrind tool (`valgrind/*.c`) the way Valgrind builds
//! its own tools: statically, from the headers and libraries Debian's
//! `valgrind` package ships, text at 0x58000000. Without them the build still
//! succeeds and the backend reports itself unavailable.

use std::path::{Path, PathBuf};
use std::process::Command;

const LIB_DIRS: &[&str] =
    &["/usr/lib/x86_64-linux-gnu/valgrind", "/usr/lib/valgrind", "/usr/libexec/valgrind"];
const INCLUDE: &str = "/usr/include/valgrind";
/// The tool's sources, in `valgrind/` (with `bts.h`, what they share).
const SOURCES: &[&str] = &["bts_main.c", "ring.c", "instrument.c", "trace_file.c"];

fn main() {
    println!("cargo:rustc-check-cfg=cfg(bts_valgrind_tool)");
    for file in SOURCES.iter().chain(&["bts.h"]) {
        println!("cargo:rerun-if-changed=valgrind/{file}");
    }
    println!("cargo:rerun-if-changed=build.rs");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    match build(&out) {
        Ok(()) => println!("cargo:rustc-cfg=bts_valgrind_tool"),
        Err(why) => println!("cargo:warning=the Valgrind backend is not built: {why}"),
    }
}

fn build(out: &Path) -> Result<(), String> {
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() != Ok("x86_64")
        || std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux")
    {
        return Err("only x86-64 Linux".into());
    }
    if !Path::new(INCLUDE).join("pub_tool_tooliface.h").exists() {
        return Err(format!("no Valgrind tool headers in {INCLUDE} (install Debian's valgrind)"));
    }
    let lib = LIB_DIRS
        .iter()
        .map(Path::new)
        .find(|d| d.join("libcoregrind-amd64-linux.a").exists())
        .ok_or("no libcoregrind-amd64-linux.a (install Debian's valgrind)")?;
    let tool = out.join("bts-amd64-linux");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let run = |cmd: &mut Command| -> Result<(), String> {
        let o = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
        if o.status.success() {
            Ok(())
        } else {
            Err(format!("{cmd:?} failed: {}", String::from_utf8_lossy(&o.stderr)))
        }
    };
    let mut objs = Vec::new();
    for file in SOURCES {
        let obj = out.join(file.replace(".c", ".o"));
        run(Command::new(&cc)
            .args([
                "-c",
                "-O2",
                "-g",
                "-fno-strict-aliasing",
                "-fno-builtin",
                "-fno-stack-protector",
                "-fno-pie",
            ])
            .args(["-DVGA_amd64=1", "-DVGO_linux=1", "-DVGP_amd64_linux=1", "-DVGPV_amd64_linux_vanilla=1"])
            .arg(format!("-I{INCLUDE}"))
            .arg("-Ivalgrind")
            .arg("-o")
            .arg(&obj)
            .arg(format!("valgrind/{file}")))?;
        objs.push(obj);
    }
    run(Command::new(&cc)
        .args(["-static", "-nodefaultlibs", "-nostartfiles", "-u", "_start", "-no-pie", "-s"])
        .args(["-Wl,--build-id=none", "-Wl,-Ttext-segment=0x58000000"])
        .arg("-o")
        .arg(&tool)
        .args(&objs)
        .arg(lib.join("libcoregrind-amd64-linux.a"))
        .arg(lib.join("libvex-amd64-linux.a"))
        .arg(lib.join("libgcc-sup-amd64-linux.a"))
        .arg("-lgcc"))?;
    Ok(())
}
