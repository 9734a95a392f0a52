//! The one place that decides, for every key the model reads, whether podrunner honours it or
//! reads it without effect — and, for the latter, what to do instead. Only keys a file really
//! sets are reported: a default is not a setting.
//!
//! Keys are written as their table path with array indexes dropped (`runners.kubernetes.cpu_request`,
//! `runners.kubernetes.volumes.host_path.name`), in the file's own spelling (`runners.tls-ca-file`,
//! `runners.cache.s3.BucketName`). A segment may hold `*` for a family of keys
//! (`runners.kubernetes.helper_cpu_*`). An entry also covers the keys below it; below an ignored
//! entry everything is ignored, else the deepest entry decides.

use std::fmt;

use serde::Serialize;

use crate::diagnostics::{KeyPath, Location, Segment, SourceText, SpanIndex};
use crate::validate::Mode;

mod table;
#[cfg(test)]
mod tests;

pub use table::SETTINGS;

/// What podrunner does with a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Treatment {
    /// The product uses it. `by` is the code that reads it, as written in the product's source
    /// outside crates/config (whitespace aside); a test checks it is there.
    Honoured {
        /// The accessor or field expression that reads the key.
        by: &'static str,
    },
    /// Read so that the file loads, without effect.
    Ignored {
        /// What to do instead.
        advice: &'static str,
    },
}

/// One entry of [`SETTINGS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// The key or key family, e.g. `runners.kubernetes.pod_spec`.
    pub key: &'static str,
    /// What podrunner does with it.
    pub treatment: Treatment,
}

impl Setting {
    /// The advice, when the key is ignored.
    pub fn advice(&self) -> Option<&'static str> {
        match self.treatment {
            Treatment::Ignored { advice } => Some(advice),
            Treatment::Honoured { .. } => None,
        }
    }
}

/// A key the file sets that podrunner reads but does not honour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IgnoredSetting {
    /// Where the key is written.
    pub location: Option<Location>,
    /// The key as written, e.g. `runners[0].kubernetes.pod_spec`.
    pub path: KeyPath,
    /// The entry of [`SETTINGS`] that covers it.
    pub key: &'static str,
    /// What to do instead.
    pub advice: &'static str,
}

impl fmt::Display for IgnoredSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(location) = &self.location {
            write!(f, "{location}: ")?;
        }
        write!(f, "{} — {}", self.path, self.advice)
    }
}

/// The heading under which ignored settings are listed.
pub const HEADING: &str = "read but not honoured by podrunner";

/// The entry of [`SETTINGS`] that decides a key, given as its segments without indexes, with
/// how many leading segments that entry's key has.
pub(crate) fn resolve<S: AsRef<str>>(segments: &[S]) -> Option<(usize, &'static Setting)> {
    let mut deepest = None;
    for len in 1..=segments.len() {
        if let Some(setting) = entry_at(&segments[..len]) {
            if setting.advice().is_some() {
                return Some((len, setting));
            }
            deepest = Some((len, setting));
        }
    }
    deepest
}

/// The entry whose key is exactly `segments`: a literal key before a family.
fn entry_at<S: AsRef<str>>(segments: &[S]) -> Option<&'static Setting> {
    let mut family = None;
    for setting in SETTINGS {
        match key_matches(setting.key, segments) {
            Some(true) => return Some(setting),
            Some(false) if family.is_none() => family = Some(setting),
            _ => {}
        }
    }
    family
}

/// Whether `key` matches `segments`: `Some(true)` literally, `Some(false)` through a `*`.
pub(crate) fn key_matches<S: AsRef<str>>(key: &str, segments: &[S]) -> Option<bool> {
    let parts: Vec<&str> = key.split('.').collect();
    if parts.len() != segments.len() {
        return None;
    }
    let mut literal = true;
    for (part, segment) in parts.iter().zip(segments) {
        let segment = segment.as_ref();
        if part == &segment {
            continue;
        }
        let (head, tail) = part.split_once('*')?;
        if segment.len() < head.len() + tail.len()
            || !segment.starts_with(head)
            || !segment.ends_with(tail)
        {
            return None;
        }
        literal = false;
    }
    Some(literal)
}

/// The keys a loaded file sets that podrunner does not honour, in file order. With Helm
/// values only the first `[[runners]]` entry counts: the chart ignores the rest, and the
/// global section of `runners.config` (the loader says so).
pub(crate) fn ignored_settings(
    source: &SourceText,
    spans: &SpanIndex,
    mode: Mode,
) -> Vec<IgnoredSetting> {
    let mut found: Vec<(usize, IgnoredSetting)> = Vec::new();
    for (path, key_spans) in spans.iter() {
        if !key_spans.holds_value {
            continue;
        }
        if mode == Mode::Helm {
            match path.segments() {
                [Segment::Key(k), Segment::Index(0), ..] if k == "runners" => {}
                _ => continue,
            }
        }
        // Shape segments, each with the path up to its key (indexes after it left out).
        let mut segments: Vec<&str> = Vec::new();
        let mut prefixes: Vec<KeyPath> = Vec::new();
        let mut current = KeyPath::root();
        for segment in path.segments() {
            match segment {
                Segment::Key(k) => {
                    current = current.key(k.clone());
                    segments.push(k);
                    prefixes.push(current.clone());
                }
                Segment::Index(i) => current = current.index(*i),
            }
        }
        let Some((len, setting)) = resolve(&segments) else {
            continue;
        };
        let Some(advice) = setting.advice() else {
            continue;
        };
        let reported = prefixes[len - 1].clone();
        if found.iter().any(|(_, f)| f.path == reported) {
            continue;
        }
        // A key is shown where it is written; a table (or array of tables) written as a
        // `[header]` at its header.
        let text = source.text();
        let header = |offset: usize| {
            let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
            text[offset..].starts_with('[') && text[line_start..offset].trim().is_empty()
        };
        let start = spans.get(&reported).map(|s| {
            let first = spans.get(&reported.index(0)).map(|item| item.value.start);
            if header(s.value.start) {
                s.value.start
            } else if let Some(item) = first.filter(|o| header(*o)) {
                item
            } else {
                s.key.start
            }
        });
        found.push((
            start.unwrap_or(usize::MAX),
            IgnoredSetting {
                location: start.map(|offset| source.location(offset)),
                path: reported,
                key: setting.key,
                advice,
            },
        ));
    }
    found.sort_by_key(|(offset, _)| *offset);
    found.into_iter().map(|(_, f)| f).collect()
}

/// Every key the model reads, as `SETTINGS` writes keys: the fields of every table the loader
/// knows, down to the tables it has no field list for, and each known feature flag.
#[cfg(test)]
pub(crate) fn model_keys() -> Vec<String> {
    fn walk(shape: &str, key: &str, out: &mut Vec<String>) {
        let Some(fields) = crate::load::known_fields(shape) else {
            return;
        };
        for field in fields {
            let child_shape = if shape.is_empty() {
                (*field).to_owned()
            } else {
                format!("{shape}.{field}")
            };
            let child_key = if key.is_empty() {
                (*field).to_owned()
            } else {
                format!("{key}.{field}")
            };
            let array = format!("{child_shape}[]");
            if crate::load::known_fields(&array).is_some() {
                walk(&array, &child_key, out);
            } else if crate::load::known_fields(&child_shape).is_some() {
                walk(&child_shape, &child_key, out);
            } else if child_shape == "runners[].feature_flags" {
                out.extend(
                    crate::feature_flags::KNOWN
                        .iter()
                        .map(|(flag, _)| format!("{child_key}.{flag}")),
                );
            } else {
                out.push(child_key);
            }
        }
    }
    let mut out = Vec::new();
    walk("", "", &mut out);
    out
}
