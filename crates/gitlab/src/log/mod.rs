//! The log pipeline of a job, applied to every stream in gitlab-runner's order: masked
//! phrases → URL parameters and token prefixes → timestamps → UTF-8 repair, output limit,
//! checksum and storage.

mod mask;
mod sections;
mod sink;
mod timestamp;

use std::sync::{Arc, Mutex, MutexGuard};

pub use mask::{
    DEFAULT_TOKEN_PREFIXES, MASKED, MAX_TOKEN_PREFIXES, PhraseMasker, SENSITIVE_URL_PARAMS,
    TriggerMasker, select_token_prefixes,
};
pub use sections::*;
pub use sink::{TraceSink, TraceStore, limit_message};
pub use timestamp::{
    Clock, MAX_LINE_BYTES, Stream, SystemClock, Timestamper, format_rfc3339_micros,
};

/// Unsent trace bytes above this size live on disk.
pub const DEFAULT_SPILL_THRESHOLD: usize = 1024 * 1024;

/// How a job's log is processed.
#[derive(Clone)]
pub struct LogSettings {
    /// Values to replace with `[MASKED]` (masked variables, after expansion).
    pub masked_phrases: Vec<String>,
    /// Token prefixes whose tokens are masked (`glpat-` and, with
    /// `FF_MASK_ALL_DEFAULT_TOKENS`, the defaults, then the payload's own).
    pub token_prefixes: Vec<String>,
    /// Prefix lines with timestamps (`FF_TIMESTAMPS`).
    pub timestamps: bool,
    /// `output_limit` in bytes.
    pub output_limit_bytes: usize,
    /// Where stored bytes move to disk.
    pub spill_threshold: usize,
    /// The clock for timestamps.
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for LogSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogSettings")
            .field("masked_phrases", &self.masked_phrases.len())
            .field("token_prefixes", &self.token_prefixes)
            .field("timestamps", &self.timestamps)
            .field("output_limit_bytes", &self.output_limit_bytes)
            .finish_non_exhaustive()
    }
}

impl LogSettings {
    /// gitlab-runner's token prefixes: `extra` (the payload's `features.token_mask_prefixes`)
    /// with `glpat-` and, when `mask_all_default_tokens`, the other defaults, chosen by
    /// [`mask::select_token_prefixes`].
    pub fn token_prefixes(mask_all_default_tokens: bool, extra: &[String]) -> Vec<String> {
        let defaults: &[&str] = if mask_all_default_tokens {
            DEFAULT_TOKEN_PREFIXES
        } else {
            &["glpat-"]
        };
        mask::select_token_prefixes(
            extra
                .iter()
                .map(String::as_str)
                .chain(defaults.iter().copied()),
        )
    }
}

/// One job's trace: any number of stream writers feeding one sink.
#[derive(Debug, Clone)]
pub struct Trace {
    sink: Arc<Mutex<TraceSink>>,
    phrases: PhraseMasker,
    triggers: TriggerMasker,
    timestamps: bool,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for dyn Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
}

impl Trace {
    /// A trace with these settings.
    pub fn new(settings: &LogSettings) -> Self {
        Trace {
            sink: Arc::new(Mutex::new(TraceSink::new(
                settings.output_limit_bytes,
                settings.spill_threshold,
            ))),
            phrases: PhraseMasker::new(&settings.masked_phrases),
            triggers: TriggerMasker::new(&settings.token_prefixes),
            timestamps: settings.timestamps,
            clock: settings.clock.clone(),
        }
    }

    /// A writer for one stream; each stream has its own masking and line state.
    pub fn writer(&self, stream: Stream) -> TraceWriter {
        TraceWriter {
            sink: self.sink.clone(),
            phrases: self.phrases.clone(),
            triggers: self.triggers.clone(),
            timestamper: self
                .timestamps
                .then(|| Timestamper::new(stream, self.clock.clone())),
            masked: Vec::new(),
            sanitized: Vec::new(),
            stamped: Vec::new(),
        }
    }

    /// The sink, for the uploader and the final update.
    pub fn sink(&self) -> MutexGuard<'_, TraceSink> {
        self.sink
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A handle to the sink shared with writers.
    pub fn shared_sink(&self) -> Arc<Mutex<TraceSink>> {
        self.sink.clone()
    }
}

/// Writes one stream into the trace.
#[derive(Debug)]
pub struct TraceWriter {
    sink: Arc<Mutex<TraceSink>>,
    phrases: PhraseMasker,
    triggers: TriggerMasker,
    timestamper: Option<Timestamper>,
    masked: Vec<u8>,
    sanitized: Vec<u8>,
    stamped: Vec<u8>,
}

impl TraceWriter {
    /// Feeds bytes; some may be held back until it is certain they hide no secret.
    pub fn write_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.phrases.write(bytes, &mut self.masked);
        self.pass_on(false)
    }

    /// Emits every held-back byte (at the end of a stream or a section).
    pub fn flush_all(&mut self) -> std::io::Result<()> {
        self.phrases.flush(&mut self.masked);
        self.pass_on(true)
    }

    fn pass_on(&mut self, flush: bool) -> std::io::Result<()> {
        self.triggers.write(&self.masked, &mut self.sanitized);
        self.masked.clear();
        if flush {
            self.triggers.flush(&mut self.sanitized);
        }
        let out = match &mut self.timestamper {
            Some(stamper) => {
                stamper.write(&self.sanitized, &mut self.stamped);
                self.sanitized.clear();
                &mut self.stamped
            }
            None => &mut self.sanitized,
        };
        if out.is_empty() {
            return Ok(());
        }
        let result = self
            .sink
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .write(out);
        out.clear();
        result
    }
}

impl std::io::Write for TraceWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_bytes(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.flush_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> LogSettings {
        LogSettings {
            masked_phrases: vec!["s3cr3t-value".into()],
            token_prefixes: LogSettings::token_prefixes(true, &["custom-".into()]),
            timestamps: true,
            output_limit_bytes: 1 << 20,
            spill_threshold: DEFAULT_SPILL_THRESHOLD,
            clock: Arc::new(timestamp::tests::FixedClock),
        }
    }

    #[test]
    fn streams_are_masked_then_timestamped() {
        let trace = Trace::new(&settings());
        let mut job = trace.writer(Stream::JOB);
        let mut runner = trace.writer(Stream::RUNNER);
        runner.write_bytes(b"Running with podrunner\n").unwrap();
        runner.flush_all().unwrap();
        job.write_bytes(b"echo s3cr3t-").unwrap();
        job.write_bytes(b"value glrt-abc custom-xyz https://x/?private_token=t0k\n")
            .unwrap();
        job.flush_all().unwrap();
        let text = String::from_utf8(trace.sink().store().read(0, 10_000).unwrap()).unwrap();
        assert_eq!(
            text,
            "2026-08-22T10:00:00.123456Z 00O Running with podrunner\n\
             2026-08-22T10:00:00.123456Z 01O echo [MASKED] glrt-[MASKED] custom-[MASKED] https://x/?private_token=[MASKED]\n"
        );
        assert_eq!(trace.sink().bytesize(), text.len() as u64);
    }

    #[test]
    fn at_most_fifteen_token_prefixes() {
        let extra: Vec<String> = (0..20).map(|i| format!("extra{i}-")).collect();
        let trace = Trace::new(&LogSettings {
            token_prefixes: LogSettings::token_prefixes(true, &extra),
            timestamps: false,
            ..settings()
        });
        let mut w = trace.writer(Stream::JOB);
        w.write_bytes(b"extra0-a extra5-b\n").unwrap();
        w.flush_all().unwrap();
        // Sorted by length then bytes, the 15 shortest are 3 five-byte and 7 six-byte
        // defaults, then extra0- to extra4- (before glffct- and glsoat-): extra5 is not
        // masked.
        assert_eq!(
            trace.sink().store().read(0, 100).unwrap(),
            b"extra0-[MASKED] extra5-b\n"
        );
    }
}
