//! What GitHub Actions shows: an `::error` workflow command per crash, at
//! the crash site's file and line (relative to the workspace), and a
//! Markdown summary appended to `$GITHUB_STEP_SUMMARY`.

use std::io::Write;
use std::path::Path;

use super::text::site_text;
use super::{CrashEntry, StepReport};

/// Escapes a workflow command's message (`%`, CR, LF).
fn escape_data(s: &str) -> String {
    s.replace('%', "%25").replace('\r', "%0D").replace('\n', "%0A")
}

/// Escapes a workflow command's property value (also `:` and `,`).
fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

/// `file` relative to `workspace` when inside it.
pub fn relative_to(file: &str, workspace: Option<&Path>) -> String {
    match workspace.and_then(|w| Path::new(file).strip_prefix(w).ok()) {
        Some(rel) if !rel.as_os_str().is_empty() => rel.display().to_string(),
        _ => file.to_string(),
    }
}

/// The `::error` line of one crash.
pub fn annotation(c: &CrashEntry, workspace: Option<&Path>) -> String {
    let r = &c.report;
    let title = format!("{} (pid {}) crashed: {}", c.program(), r.pid, c.what());
    let mut props = Vec::new();
    if let Some(f) = &c.site {
        if let (Some(file), Some(line)) = (&f.file, f.line) {
            props.push(format!("file={}", escape_property(&relative_to(file, workspace))));
            props.push(format!("line={line}"));
        }
    }
    props.push(format!("title={}", escape_property(&title)));
    let mut msg = format!("{} (pid {}) got {}", r.command.join(" "), r.pid, c.what());
    if let Some(s) = site_text(c) {
        msg += &format!("\nat {s}");
    }
    if let Some(p) = c.parents.first() {
        msg += &format!("\nstarted by {} (pid {})", p.command.join(" "), p.pid);
    }
    if let Some(t) = &r.trace_file {
        msg += &format!("\ntrace: {t} (bts last-branch, bts gdb)");
    }
    format!("::error {}::{}", props.join(","), escape_data(&msg))
}

/// A Markdown table cell: no pipes or newlines (GitHub's tables take
/// `\|` even inside a code span).
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// `s` as a Markdown code span: fenced by more backticks than it holds in
/// a row, padded when it starts or ends with one.
fn code(s: &str) -> String {
    let s = s.replace('\n', " ");
    let mut longest = 0;
    let mut run = 0;
    for c in s.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    let fence = "`".repeat(longest + 1);
    let pad = if s.starts_with('`') || s.ends_with('`') { " " } else { "" };
    format!("{fence}{pad}{s}{pad}{fence}")
}

/// Text for HTML: `&`, `<`, `>` escaped.
fn html(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The step summary: a table of crashes, then each crash's last branches.
pub fn summary(s: &StepReport, workspace: Option<&Path>) -> String {
    let mut out = format!("### bts ci: {}\n\n", code(&s.command.join(" ")));
    if s.crashes.is_empty() {
        out += &format!("No crash in {} processes ({} recorder).\n", s.processes, s.backend);
        return out;
    }
    out += &format!(
        "{} of {} processes crashed ({} recorder); traces in {}.\n\n",
        s.crashes.len(),
        s.processes,
        s.backend,
        code(&s.artifacts)
    );
    out += "| pid | process | signal | where | started by | trace |\n|---|---|---|---|---|---|\n";
    for c in &s.crashes {
        let r = &c.report;
        let site = match &c.site {
            Some(f) => {
                let func = f.function.clone().unwrap_or_else(|| f.addr.clone());
                match (&f.file, f.line) {
                    (Some(file), Some(line)) => {
                        format!("{} {}:{line}", code(&func), relative_to(file, workspace))
                    }
                    _ => code(&func),
                }
            }
            None => String::new(),
        };
        let parent = c.parents.first().map(|p| format!("{} ({})", code(&p.command.join(" ")), p.pid));
        out += &format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            r.pid,
            cell(&code(&r.command.join(" "))),
            cell(&c.what()),
            cell(&site),
            cell(&parent.unwrap_or_default()),
            r.trace_file.as_deref().map(|t| cell(&code(t))).unwrap_or_else(|| "not kept".into())
        );
    }
    for c in &s.crashes {
        let Some(t) = c.report.threads.iter().find(|t| t.crashed).or(c.report.threads.last()) else {
            continue;
        };
        out += &format!(
            "\n<details><summary>pid {} <code>{}</code>: last {} branches</summary>\n\n```text\n",
            c.report.pid,
            html(&c.program()),
            t.branches.len()
        );
        for b in &t.branches {
            let from = b.from_sym.clone().unwrap_or_else(|| b.from.clone());
            let to = b.to_sym.clone().unwrap_or_else(|| b.to.clone());
            let line = b.from_line.as_deref().map(|l| format!("  {l}")).unwrap_or_default();
            out += &format!("{:<11} {from} -> {to}{line}\n", b.kind);
        }
        out += "```\n\n</details>\n";
    }
    out
}

/// Appends the summary to the file GitHub names.
pub fn append_summary(path: &Path, text: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().append(true).create(true).open(path)?;
    f.write_all(text.as_bytes())?;
    f.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_as_github_reads() {
        assert_eq!(escape_data("50% done\nnext"), "50%25 done%0Anext");
        assert_eq!(escape_property("a:b,c"), "a%3Ab%2Cc");
        assert_eq!(relative_to("/w/src/a.c", Some(Path::new("/w"))), "src/a.c");
        assert_eq!(relative_to("/x/a.c", Some(Path::new("/w"))), "/x/a.c");
        assert_eq!(cell("a|b\nc"), "a\\|b c");
    }
}
