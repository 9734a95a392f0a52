//! Turns trace bytes into terminal output: section markers become headers with durations,
//! colours are kept on a terminal and stripped elsewhere, partial lines wait for their end.

use std::io::Write;

pub(crate) struct Renderer<W: Write> {
    out: W,
    color: bool,
    pending: Vec<u8>,
    open_sections: Vec<(String, u64)>,
}

impl<W: Write> Renderer<W> {
    pub(crate) fn new(out: W, color: bool) -> Self {
        Renderer {
            out,
            color,
            pending: Vec::new(),
            open_sections: Vec::new(),
        }
    }

    /// Trace bytes as they arrive.
    pub(crate) fn trace(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        while let Some(newline) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=newline).collect();
            let text = String::from_utf8_lossy(&line).into_owned();
            self.line(&text);
        }
        let _ = self.out.flush();
    }

    /// A message of exec itself.
    pub(crate) fn message(&mut self, text: &str) {
        self.finish();
        let text = if self.color {
            text.to_owned()
        } else {
            strip_ansi(text)
        };
        let _ = self.out.write_all(text.as_bytes());
        let _ = self.out.flush();
    }

    /// Whatever is left of the trace.
    pub(crate) fn finish(&mut self) {
        if !self.pending.is_empty() {
            let rest = String::from_utf8_lossy(&std::mem::take(&mut self.pending)).into_owned();
            self.line(&format!("{rest}\n"));
        }
        self.open_sections.clear();
        let _ = self.out.flush();
    }

    fn line(&mut self, line: &str) {
        let mut rest = line;
        let mut output = String::new();
        loop {
            let next = ["section_start:", "section_end:"]
                .iter()
                .filter_map(|m| rest.find(m).map(|i| (i, *m)))
                .min();
            let Some((at, marker)) = next else {
                output.push_str(rest);
                break;
            };
            output.push_str(&rest[..at]);
            let after = &rest[at + marker.len()..];
            let end = after.find("\r\x1b[0K").unwrap_or(after.len());
            let (timestamp, name) = after[..end].split_once(':').unwrap_or(("0", &after[..end]));
            let timestamp: u64 = timestamp.parse().unwrap_or(0);
            let name = name.split('[').next().unwrap_or(name).to_owned();
            if marker == "section_start:" {
                self.open_sections.push((name, timestamp));
            } else if let Some(index) = self.open_sections.iter().rposition(|(n, _)| *n == name) {
                let (_, started) = self.open_sections.remove(index);
                let took = timestamp.saturating_sub(started);
                let (dim, reset) = if self.color {
                    ("\x1b[2m", "\x1b[0m")
                } else {
                    ("", "")
                };
                if !output.is_empty() && !output.ends_with('\n') {
                    output.push('\n');
                }
                output.push_str(&format!("{dim}  ({name} took {took}s){reset}\n"));
            }
            rest = &after[(end + "\r\x1b[0K".len()).min(after.len())..];
        }
        if output.trim_end_matches('\n').is_empty() && line.contains("section_") {
            let _ = self
                .out
                .write_all(output.trim_start_matches('\n').as_bytes());
            return;
        }
        let output = if self.color {
            output
        } else {
            strip_ansi(&output)
        };
        let _ = self.out.write_all(output.as_bytes());
    }
}

/// Removes ANSI escape sequences (`ESC [ ... letter`).
pub(crate) fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else if c != '\r' {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_become_headers_with_durations() {
        let mut buffer = Vec::new();
        {
            let mut r = Renderer::new(&mut buffer, false);
            r.trace(b"section_start:100:step_script\r\x1b[0K\x1b[36;1mExecuting \"step_script\"\x1b[0;m\n\x1b[32;1m$ echo hi\x1b[0;m\nhi\npart");
            r.trace(b"ial\nsection_end:103:step_script\r\x1b[0Ksection_start:103:after_script\r\x1b[0K\x1b[36;1mRunning after_script\x1b[0;m\n");
            r.finish();
        }
        assert_eq!(
            String::from_utf8(buffer).unwrap(),
            "Executing \"step_script\"\n$ echo hi\nhi\npartial\n  (step_script took 3s)\nRunning after_script\n"
        );
        assert_eq!(strip_ansi("\x1b[31;1mERROR\x1b[0;m x\r"), "ERROR x");
    }
}
