//! The manager's log: every [`crate::Event`] is a `tracing` event with structured fields
//! (`runner`, `job`, `pod`, `namespace`, …), written to standard error one line each in
//! gitlab-runner's three `log_format`s:
//!
//! - `runner` (the default): `message key=value …`, prefixed `WARNING: ` or `ERROR: ` when it
//!   is one: the message first, as a person reads it (and as gitlab-runner's own formatter
//!   writes it);
//! - `text`: logrus' text formatter, `time="…" level=info msg="…" key=value`;
//! - `json`: one JSON object a line with logrus' keys `level`, `msg`, `time` and every field
//!   at the top level, as CloudWatch, Fluent Bit and Loki parse gitlab-runner's JSON.
//!
//! `log_level` (`debug`, `info`, `warn`, `error`; `fatal` and `panic` log errors only) filters
//! podrunner's own events; other crates' events (kube, hyper) pass at `warn` and above only.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::SystemTime;

use podrunner_config::{LogFormat, LogLevel};
use tracing::field::{Field, Visit};
use tracing::{Level, Metadata, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;

/// Installs the process's log subscriber. A second call changes nothing (the first wins).
pub fn init(level: LogLevel, format: LogFormat) {
    let layer = LineLayer {
        format,
        max: max_level(level),
    };
    let _ = tracing_subscriber::registry().with(layer).try_init();
}

/// The most verbose level `log_level` lets through.
fn max_level(level: LogLevel) -> Level {
    match level {
        LogLevel::Debug => Level::DEBUG,
        LogLevel::Info => Level::INFO,
        LogLevel::Warn => Level::WARN,
        LogLevel::Error | LogLevel::Fatal | LogLevel::Panic => Level::ERROR,
    }
}

/// Writes each event as one line in the chosen format.
struct LineLayer {
    format: LogFormat,
    max: Level,
}

impl LineLayer {
    fn lets_through(&self, metadata: &Metadata<'_>) -> bool {
        let ours = metadata.target().starts_with("podrunner");
        let max = if ours {
            self.max
        } else {
            self.max.min(Level::WARN)
        };
        *metadata.level() <= max
    }
}

impl<S: Subscriber> Layer<S> for LineLayer {
    fn enabled(&self, metadata: &Metadata<'_>, _: Context<'_, S>) -> bool {
        self.lets_through(metadata)
    }

    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if !self.lets_through(event.metadata()) {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let line = render(self.format, *event.metadata().level(), &fields);
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

/// An event's message and its other fields, in the order they were given.
#[derive(Default)]
struct Fields {
    message: String,
    pairs: Vec<(&'static str, Value)>,
}

enum Value {
    Text(String),
    Number(String),
    Bool(bool),
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.pairs
                .push((field.name(), Value::Text(value.to_owned())));
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.pairs
            .push((field.name(), Value::Number(value.to_string())));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.pairs
            .push((field.name(), Value::Number(value.to_string())));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        let text = if value.is_finite() {
            value.to_string()
        } else {
            format!("\"{value}\"")
        };
        self.pairs.push((field.name(), Value::Number(text)));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.pairs.push((field.name(), Value::Bool(value)));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            self.pairs.push((field.name(), Value::Text(text)));
        }
    }
}

/// logrus' level names.
fn level_name(level: Level) -> &'static str {
    match level {
        Level::ERROR => "error",
        Level::WARN => "warning",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

fn now() -> String {
    let mut time = Vec::new();
    podrunner_gitlab::log::format_rfc3339_micros(SystemTime::now(), &mut time);
    String::from_utf8_lossy(&time).into_owned()
}

/// A value as logfmt writes it: bare when it has no space, quote or `=`, else quoted.
fn logfmt(out: &mut String, value: &Value) {
    match value {
        Value::Number(n) => out.push_str(n),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Text(t) => {
            if !t.is_empty() && !t.contains(|c: char| c.is_whitespace() || c == '"' || c == '=') {
                out.push_str(t);
            } else {
                let _ = write!(out, "{t:?}");
            }
        }
    }
}

fn render(format: LogFormat, level: Level, fields: &Fields) -> String {
    let mut out = String::new();
    match format {
        LogFormat::Runner => {
            if level != Level::INFO {
                let _ = write!(out, "{}: ", level_name(level).to_uppercase());
            }
            out.push_str(&fields.message);
            for (name, value) in &fields.pairs {
                let _ = write!(out, " {name}=");
                logfmt(&mut out, value);
            }
        }
        LogFormat::Text => {
            let _ = write!(
                out,
                "time={:?} level={} msg={:?}",
                now(),
                level_name(level),
                fields.message
            );
            for (name, value) in &fields.pairs {
                let _ = write!(out, " {name}=");
                logfmt(&mut out, value);
            }
        }
        LogFormat::Json => {
            let mut object = serde_json::Map::new();
            object.insert("level".into(), level_name(level).into());
            object.insert("msg".into(), fields.message.clone().into());
            object.insert("time".into(), now().into());
            for (name, value) in &fields.pairs {
                let value = match value {
                    Value::Text(t) => serde_json::Value::from(t.clone()),
                    Value::Bool(b) => serde_json::Value::from(*b),
                    Value::Number(n) => serde_json::from_str(n)
                        .unwrap_or_else(|_| serde_json::Value::from(n.clone())),
                };
                object.insert((*name).to_owned(), value);
            }
            out = serde_json::Value::Object(object).to_string();
        }
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> Fields {
        Fields {
            message: "Job finished".into(),
            pairs: vec![
                ("runner", Value::Text("abc123".into())),
                ("job", Value::Number("42".into())),
                ("error", Value::Text("connection refused".into())),
                ("delivered", Value::Bool(true)),
            ],
        }
    }

    #[test]
    fn the_three_formats() {
        let runner = render(LogFormat::Runner, Level::WARN, &fields());
        assert!(runner.starts_with("WARNING: Job finished "), "{runner}");
        assert!(
            runner.ends_with(" runner=abc123 job=42 error=\"connection refused\" delivered=true\n"),
            "{runner}"
        );
        let text = render(LogFormat::Text, Level::INFO, &fields());
        assert!(text.starts_with("time=\""), "{text}");
        assert!(text.contains(" level=info msg=\"Job finished\" runner=abc123 job=42"));
        let json: serde_json::Value =
            serde_json::from_str(render(LogFormat::Json, Level::ERROR, &fields()).trim()).unwrap();
        assert_eq!(json["level"], "error");
        assert_eq!(json["msg"], "Job finished");
        assert_eq!(json["job"], 42);
        assert_eq!(json["delivered"], true);
        assert_eq!(json["error"], "connection refused");
        assert!(json["time"].as_str().unwrap().ends_with('Z'));
    }
}
