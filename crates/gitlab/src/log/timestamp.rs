//! GitLab's timestamped log lines (`FF_TIMESTAMPS`): every line starts with
//! `YYYY-MM-DDTHH:MM:SS.ffffffZ <stream><O|E><' '|'+'>`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Lines longer than this are split; the rest continues on a line marked `+`.
pub const MAX_LINE_BYTES: usize = 8 * 1024;

/// A source of wall-clock time, injectable for tests.
pub trait Clock: Send + Sync {
    /// Now.
    fn now(&self) -> SystemTime;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// Which log stream a writer feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stream {
    /// `00` runner messages, `01` job output, `0f` and up service logs.
    pub number: u8,
    /// Standard error rather than standard output.
    pub stderr: bool,
}

impl Stream {
    /// The runner's own messages.
    pub const RUNNER: Stream = Stream {
        number: 0,
        stderr: false,
    };
    /// The job's output.
    pub const JOB: Stream = Stream {
        number: 1,
        stderr: false,
    };
}

/// Adds the timestamp prefix to every line.
pub struct Timestamper {
    stream: Stream,
    clock: Arc<dyn Clock>,
    at_line_start: bool,
    continuation: bool,
    line_len: usize,
    /// `YYYY-MM-DDTHH:MM:SS.` of `cached_second`, so most lines format only microseconds.
    cached_second: Option<u64>,
    cached_text: [u8; 20],
}

impl std::fmt::Debug for Timestamper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timestamper")
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

impl Timestamper {
    /// A timestamper for `stream`.
    pub fn new(stream: Stream, clock: Arc<dyn Clock>) -> Self {
        Timestamper {
            stream,
            clock,
            at_line_start: true,
            continuation: false,
            line_len: 0,
            cached_second: None,
            cached_text: [0; 20],
        }
    }

    /// Prefixes the lines of `input`, appending to `out`.
    pub fn write(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() {
            if self.at_line_start {
                self.prefix(out);
                self.at_line_start = false;
            }
            let room = MAX_LINE_BYTES - self.line_len;
            let window = &input[..room.min(input.len())];
            match memchr::memchr(b'\n', window) {
                Some(newline) => {
                    out.extend_from_slice(&input[..=newline]);
                    input = &input[newline + 1..];
                    self.at_line_start = true;
                    self.continuation = false;
                    self.line_len = 0;
                }
                None if input.len() < room => {
                    out.extend_from_slice(input);
                    self.line_len += input.len();
                    input = &[];
                }
                None => {
                    out.extend_from_slice(window);
                    out.push(b'\n');
                    input = &input[room..];
                    self.at_line_start = true;
                    self.continuation = true;
                    self.line_len = 0;
                }
            }
        }
    }

    fn prefix(&mut self, out: &mut Vec<u8>) {
        let since_epoch = self
            .clock
            .now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let second = since_epoch.as_secs();
        if self.cached_second != Some(second) {
            let mut text = Vec::with_capacity(27);
            format_rfc3339_micros(
                UNIX_EPOCH + std::time::Duration::from_secs(second),
                &mut text,
            );
            self.cached_text.copy_from_slice(&text[..20]);
            self.cached_second = Some(second);
        }
        out.extend_from_slice(&self.cached_text);
        let mut micros = since_epoch.subsec_micros();
        let mut digits = [b'0'; 6];
        for digit in digits.iter_mut().rev() {
            *digit = b'0' + (micros % 10) as u8;
            micros /= 10;
        }
        out.extend_from_slice(&digits);
        out.extend_from_slice(b"Z ");
        const HEX: &[u8; 16] = b"0123456789abcdef";
        out.push(HEX[usize::from(self.stream.number >> 4)]);
        out.push(HEX[usize::from(self.stream.number & 0xf)]);
        out.push(if self.stream.stderr { b'E' } else { b'O' });
        out.push(if self.continuation { b'+' } else { b' ' });
    }
}

/// Writes `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC).
pub fn format_rfc3339_micros(time: SystemTime, out: &mut Vec<u8>) {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs() as i64;
    let micros = since_epoch.subsec_micros();
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    let text = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    out.extend_from_slice(text.as_bytes());
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::Duration;

    /// A clock stopped at 2026-08-22T10:00:00.123456Z.
    pub struct FixedClock;

    impl Clock for FixedClock {
        fn now(&self) -> SystemTime {
            UNIX_EPOCH + Duration::from_micros(1_787_392_800_123_456)
        }
    }

    #[test]
    fn formats_utc_with_microseconds() {
        let mut out = Vec::new();
        format_rfc3339_micros(UNIX_EPOCH, &mut out);
        assert_eq!(out, b"1970-01-01T00:00:00.000000Z");
        out.clear();
        format_rfc3339_micros(FixedClock.now(), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2026-08-22T10:00:00.123456Z"
        );
        out = Vec::new();
        format_rfc3339_micros(UNIX_EPOCH + Duration::from_secs(951_782_400), &mut out); // leap day
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2000-02-29T00:00:00.000000Z"
        );
    }

    #[test]
    fn prefixes_each_line_across_writes() {
        let mut stamper = Timestamper::new(Stream::JOB, Arc::new(FixedClock));
        let mut out = Vec::new();
        stamper.write(b"$ make", &mut out);
        stamper.write(b" test\nok\n", &mut out);
        stamper.write(b"err", &mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "2026-08-22T10:00:00.123456Z 01O $ make test\n2026-08-22T10:00:00.123456Z 01O ok\n2026-08-22T10:00:00.123456Z 01O err"
        );
        let mut out = Vec::new();
        Timestamper::new(
            Stream {
                number: 0x0f,
                stderr: true,
            },
            Arc::new(FixedClock),
        )
        .write(b"x\n", &mut out);
        assert!(out.ends_with(b" 0fE x\n"));
    }

    #[test]
    fn splits_long_lines_with_continuation_marker() {
        let mut stamper = Timestamper::new(Stream::JOB, Arc::new(FixedClock));
        let mut out = Vec::new();
        let long = vec![b'a'; MAX_LINE_BYTES + 10];
        stamper.write(&long, &mut out);
        stamper.write(b"\nnext\n", &mut out);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].ends_with(&"a".repeat(MAX_LINE_BYTES)) && lines[0].contains(" 01O "));
        assert!(lines[1].ends_with(" 01O+aaaaaaaaaa"), "{}", lines[1]);
        assert!(lines[2].ends_with(" 01O next"));
    }
}
