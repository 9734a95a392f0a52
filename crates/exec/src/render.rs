//! Turns trace bytes into terminal output: section markers become headers with durations,
//! colours are kept on a terminal and stripped elsewhere, partial lines wait for their end.
//! Each job has its own line state, so jobs running at the same time never splice into each
//! other's lines; when more than one job can run at once every line names its job.

use std::io::Write;
use std::sync::Mutex;

/// The terminal (or whatever stdout is), shared by the jobs of a run.
pub(crate) struct Output {
    out: Mutex<Box<dyn Write + Send>>,
    color: bool,
    prefix: bool,
}

impl Output {
    /// `prefix`: put `[job] ` before each line of a job's output.
    pub(crate) fn new(out: Box<dyn Write + Send>, color: bool, prefix: bool) -> Self {
        Output {
            out: Mutex::new(out),
            color,
            prefix,
        }
    }

    /// Keeps colours.
    pub(crate) fn color(&self) -> bool {
        self.color
    }

    /// A message of exec itself (whole lines).
    pub(crate) fn message(&self, text: &str) {
        let text = if self.color {
            text.to_owned()
        } else {
            strip_ansi(text)
        };
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }

    /// Rendered lines of one job.
    pub(crate) fn job(&self, name: &str, lines: &str) {
        if lines.is_empty() {
            return;
        }
        let mut text = String::with_capacity(lines.len());
        if self.prefix {
            for line in lines.split_inclusive('\n') {
                text.push('[');
                text.push_str(name);
                text.push_str("] ");
                text.push_str(line);
            }
        } else {
            text.push_str(lines);
        }
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }
}

/// The line state of one job's trace.
#[derive(Default)]
pub(crate) struct Renderer {
    color: bool,
    pending: Vec<u8>,
    open_sections: Vec<(String, u64)>,
}

impl Renderer {
    pub(crate) fn new(color: bool) -> Self {
        Renderer {
            color,
            ..Renderer::default()
        }
    }

    /// Trace bytes as they arrive; returns the lines they complete.
    pub(crate) fn trace(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        while let Some(newline) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=newline).collect();
            let text = String::from_utf8_lossy(&line).into_owned();
            self.line(&text, &mut out);
        }
        out
    }

    /// Whatever is left of the trace, as a whole line.
    pub(crate) fn finish(&mut self) -> String {
        let mut out = String::new();
        if !self.pending.is_empty() {
            let rest = String::from_utf8_lossy(&std::mem::take(&mut self.pending)).into_owned();
            self.line(&format!("{rest}\n"), &mut out);
        }
        self.open_sections.clear();
        out
    }

    fn line(&mut self, line: &str, out: &mut String) {
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
            out.push_str(output.trim_start_matches('\n'));
            return;
        }
        let output = if self.color {
            output
        } else {
            strip_ansi(&output)
        };
        out.push_str(&output);
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
        let mut buffer = String::new();
        {
            let mut r = Renderer::new(false);
            buffer += &r.trace(b"section_start:100:step_script\r\x1b[0K\x1b[36;1mExecuting \"step_script\"\x1b[0;m\n\x1b[32;1m$ echo hi\x1b[0;m\nhi\npart");
            buffer += &r.trace(b"ial\nsection_end:103:step_script\r\x1b[0Ksection_start:103:after_script\r\x1b[0K\x1b[36;1mRunning after_script\x1b[0;m\n");
            buffer += &r.finish();
        }
        assert_eq!(
            buffer,
            "Executing \"step_script\"\n$ echo hi\nhi\npartial\n  (step_script took 3s)\nRunning after_script\n"
        );
        assert_eq!(strip_ansi("\x1b[31;1mERROR\x1b[0;m x\r"), "ERROR x");
    }

    #[derive(Clone, Default)]
    struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Two jobs' traces arriving a byte at a time, alternately, with exec's own messages in
    /// between: every line comes out whole, once, with its job's name.
    #[test]
    fn lines_of_jobs_running_together_never_splice() {
        let shared = Shared::default();
        let output = Output::new(Box::new(shared.clone()), false, true);
        let (mut a, mut b) = (Renderer::new(false), Renderer::new(false));
        let line_a = format!("$ echo {}\n{}\n", "x".repeat(50), "oe".repeat(200));
        let line_b = format!("{}\nlast without newline", "OE".repeat(300));
        let (bytes_a, bytes_b) = (line_a.as_bytes(), line_b.as_bytes());
        for i in 0..bytes_a.len().max(bytes_b.len()) {
            if let Some(byte) = bytes_a.get(i) {
                output.job("a", &a.trace(&[*byte]));
            }
            if i % 97 == 0 {
                output.message("Job c passed in 0.1s\n");
            }
            if let Some(byte) = bytes_b.get(i) {
                output.job("b", &b.trace(&[*byte]));
            }
        }
        output.job("a", &a.finish());
        output.job("b", &b.finish());
        let text = String::from_utf8(shared.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let want_a = [
            format!("[a] $ echo {}", "x".repeat(50)),
            format!("[a] {}", "oe".repeat(200)),
        ];
        let want_b = [
            format!("[b] {}", "OE".repeat(300)),
            "[b] last without newline".to_owned(),
        ];
        for want in want_a.iter().chain(&want_b) {
            assert_eq!(
                lines.iter().filter(|l| **l == want.as_str()).count(),
                1,
                "{want:?} in {text}"
            );
        }
        assert!(
            lines
                .iter()
                .all(|l| l.starts_with("[a] ") || l.starts_with("[b] ") || l.starts_with("Job c")),
            "{text}"
        );
    }
}
