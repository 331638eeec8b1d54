//! `bts`: record the branches a process takes and tell how it got where it is.
//!
//! The CLI: one file per subcommand in `cmd/`; what they share (the
//! command line, exit codes, choosing and driving a recorder, saving
//! traces and reports, loading them) beside it. The work itself is in the
//! libraries: `ptrace-shim` and `bts-reader` record, `analysis` tells.

mod args;
mod ci;
mod cmd;
mod exit;
mod index;
mod load;
mod out;
mod record;
mod save;
mod streamed;
mod vg;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Command::Run { rec, follow_fork, no_aslr, daemon: Some(socket), command } => {
            cmd::via_daemon::run(&rec, follow_fork, no_aslr, &socket, &command)
        }
        Command::Run { rec, follow_fork, no_aslr, daemon: None, command } => {
            cmd::run::run(&rec, follow_fork, no_aslr, command)
        }
        Command::Ci(args) => cmd::ci::run(&args),
        Command::Attach { rec, daemon: Some(socket), pid } => cmd::via_daemon::attach(&rec, pid, &socket),
        Command::Attach { rec, daemon: None, pid } => cmd::attach::run(&rec, pid),
        Command::Daemon { socket, io_timeout_ms } => cmd::daemon::run(socket, io_timeout_ms),
        Command::Ctl { socket, what, json } => cmd::daemon::ctl(socket, what, json),
        Command::Info { file, json } => cmd::info::run(&file, json),
        Command::Split { file, by, output } => cmd::cut::split(&file, by, &output),
        Command::Filter { file, module, function, tid, pid, kernel, output } => {
            use bts_reader::filter::Filter;
            let what = match (module, function, tid, pid, kernel) {
                (Some(m), ..) => Filter::Module(m),
                (_, Some(f), ..) => Filter::Function(f),
                (_, _, Some(t), ..) => Filter::Tid(t),
                (_, _, _, Some(p), _) => Filter::Pid(p),
                (.., true) => Filter::Kernel,
                _ => {
                    crate::errln!(
                        "bts: filter: say what to keep: --module, --function, --tid, --pid or --kernel"
                    );
                    return std::process::ExitCode::from(2);
                }
            };
            cmd::cut::filter(&file, &what, &output)
        }
        Command::Merge { files, output } => cmd::cut::merge(&files, &output),
        Command::Cut { file, first, last, range, time, output } => {
            let how = match (first, last, range, time) {
                (Some(n), ..) => bts_reader::cut::Cut::First(n),
                (_, Some(n), ..) => bts_reader::cut::Cut::Last(n),
                (_, _, Some((a, b)), _) => bts_reader::cut::Cut::Range(a, b),
                (.., Some((a, b))) => bts_reader::cut::Cut::Time(a, b),
                _ => {
                    crate::errln!(
                        "bts: cut: say which branches to keep: --first N, --last N, --range A..B or --time T1..T2"
                    );
                    return std::process::ExitCode::from(2);
                }
            };
            cmd::cut::run(&file, how, &output)
        }
        Command::LastBranch { out, thread, cpu, file } => cmd::last_branch::run(&out, thread, cpu, &file),
        Command::Demo { backend, json } => cmd::demo::run(backend, json),
        Command::DemoCrash => cmd::demo::crash(),
        Command::Doctor { json } => cmd::doctor::run(json),
        Command::Gdbserver { stdio: _, listen, target } => {
            let transport = match &listen {
                Some(l) => cmd::gdbserver::Transport::Listen(l),
                None => cmd::gdbserver::Transport::Stdio,
            };
            cmd::gdbserver::run(&target, transport)
        }
        Command::Gdb { gdb, gdb_args, target } => cmd::gdb::run(&target, &gdb, &gdb_args),
        Command::Gdbinit => cmd::gdb::gdbinit(),
        Command::History {
            file,
            range,
            insns: _,
            calls,
            thread,
            json,
            kernel,
            source,
            raw,
            no_fn,
            intel,
            lines,
            insn_range,
            indent,
        } => cmd::history::run(&cmd::history::HistoryArgs {
            file,
            calls,
            range,
            thread,
            json,
            kernel,
            insn: analysis::history::InsnOpts { source, raw, no_fn, intel },
            call: analysis::history::CallOpts { lines, insn_range, indent },
        }),
        Command::Export { file, format, thread, output } => {
            cmd::export::run(&file, format, thread, output.as_deref())
        }
    }
}
