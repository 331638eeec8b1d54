//! Writing documents a piece at a time: a writer that keeps its first
//! error, and serde_json's pretty form placed inside a larger document.

use std::io::Write;

/// A writer that keeps the first error and then writes nothing more.
pub(crate) struct Out<'w> {
    out: &'w mut dyn Write,
    failed: Option<std::io::Error>,
}

impl<'w> Out<'w> {
    /// Writes to `out`.
    pub(crate) fn new(out: &'w mut dyn Write) -> Self {
        Out { out, failed: None }
    }

    /// Writes `s`; false once writing failed.
    pub(crate) fn put(&mut self, s: &str) -> bool {
        if self.failed.is_none() {
            if let Err(e) = self.out.write_all(s.as_bytes()) {
                self.failed = Some(e);
            }
        }
        self.failed.is_none()
    }

    /// Writing failed.
    pub(crate) fn failed(&self) -> bool {
        self.failed.is_some()
    }

    /// Flushes; the first error writing met.
    pub(crate) fn finish(&mut self) -> std::io::Result<()> {
        match self.failed.take() {
            Some(e) => Err(e),
            None => self.out.flush(),
        }
    }
}

/// `v` pretty-printed as serde_json does, every line indented by `indent`
/// spaces after the first.
pub(crate) fn pretty_at(v: &serde_json::Value, indent: usize) -> String {
    let text = serde_json::to_string_pretty(v).expect("a Value serializes");
    let pad = " ".repeat(indent);
    text.replace('\n', &format!("\n{pad}"))
}
