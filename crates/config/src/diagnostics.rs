//! Errors and warnings that point at `file:line:column` and name the key path.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;

use serde::Serialize;
use toml::de::{DeTable, DeValue};

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    /// A table key.
    Key(String),
    /// An array index.
    Index(usize),
}

/// Where a value sits in the configuration, e.g. `runners[0].kubernetes.cpu_request`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct KeyPath(Vec<Segment>);

impl KeyPath {
    /// The document root.
    pub fn root() -> Self {
        KeyPath(Vec::new())
    }

    /// This path extended by a key.
    pub fn key(&self, key: impl Into<String>) -> Self {
        let mut segments = self.0.clone();
        segments.push(Segment::Key(key.into()));
        KeyPath(segments)
    }

    /// This path extended by an index.
    pub fn index(&self, index: usize) -> Self {
        let mut segments = self.0.clone();
        segments.push(Segment::Index(index));
        KeyPath(segments)
    }

    /// The segments.
    pub fn segments(&self) -> &[Segment] {
        &self.0
    }

    /// The path without its last segment.
    pub fn parent(&self) -> KeyPath {
        let mut segments = self.0.clone();
        segments.pop();
        KeyPath(segments)
    }

    /// The last key, if the path ends in one.
    pub fn last_key(&self) -> Option<&str> {
        match self.0.last() {
            Some(Segment::Key(k)) => Some(k),
            _ => None,
        }
    }

    /// The path with every index written `[]`, e.g. `runners[].kubernetes`: the shape that
    /// says which table a key belongs to.
    pub fn shape(&self) -> String {
        let mut out = String::new();
        for segment in &self.0 {
            match segment {
                Segment::Key(k) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(k);
                }
                Segment::Index(_) => out.push_str("[]"),
            }
        }
        out
    }

    /// Whether this is the root.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }
}

fn is_bare_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for segment in &self.0 {
            match segment {
                Segment::Key(k) => {
                    if !first {
                        f.write_str(".")?;
                    }
                    if is_bare_key(k) {
                        f.write_str(k)?;
                    } else {
                        write!(f, "{k:?}")?;
                    }
                }
                Segment::Index(i) => write!(f, "[{i}]")?,
            }
            first = false;
        }
        Ok(())
    }
}

impl Serialize for KeyPath {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A place in a file: 1-based line and column (in characters).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    /// The file's name as the user gave it.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The configuration cannot be used.
    Error,
    /// The configuration works, but probably not as meant.
    Warning,
}

/// A finding about the configuration, with where it is and what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// Where in which file, when known.
    pub location: Option<Location>,
    /// The key path, when the finding is about a key.
    pub path: Option<KeyPath>,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl Diagnostic {
    /// An error.
    pub fn error(
        location: Option<Location>,
        path: Option<KeyPath>,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            severity: Severity::Error,
            location,
            path,
            message: message.into(),
        }
    }

    /// A warning.
    pub fn warning(
        location: Option<Location>,
        path: Option<KeyPath>,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            location,
            path,
            message: message.into(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(location) = &self.location {
            write!(f, "{location}: ")?;
        }
        if let Some(path) = self.path.as_ref().filter(|p| !p.is_root()) {
            write!(f, "{path}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// A text the configuration was read from, able to turn byte offsets into locations. The
/// text may be embedded in another file (the TOML of `runners.config` inside Helm values),
/// in which case locations point into the outer file where the lines can be traced.
#[derive(Debug, Clone)]
pub struct SourceText {
    name: String,
    text: String,
    line_starts: Vec<usize>,
    embedding: Option<Embedding>,
}

/// Where each line of an embedded text sits in its outer file.
#[derive(Debug, Clone)]
struct Embedding {
    outer_name: String,
    /// For each inner line: the outer line (1-based) and the column offset.
    lines: Vec<(usize, usize)>,
}

impl SourceText {
    /// A text read from the file `name`.
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Self {
        let text = text.into();
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        SourceText {
            name: name.into(),
            text,
            line_starts,
            embedding: None,
        }
    }

    /// A text embedded in `outer_text` of file `outer_name`. When every line of `text` can be
    /// found, in order and indented alike, as consecutive lines of the outer file (a YAML block
    /// scalar), locations point into the outer file; otherwise to `name`.
    pub fn embedded(
        name: impl Into<String>,
        text: impl Into<String>,
        outer_name: &str,
        outer_text: &str,
    ) -> Self {
        let mut source = SourceText::new(name, text);
        source.embedding = trace_embedding(&source.text, outer_text).map(|lines| Embedding {
            outer_name: outer_name.to_owned(),
            lines,
        });
        source
    }

    /// The name locations use when the text is not traced into an outer file.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The location of a byte offset.
    pub fn location(&self, offset: usize) -> Location {
        let offset = offset.min(self.text.len());
        let line_index = self.line_starts.partition_point(|&start| start <= offset) - 1;
        let line_start = self.line_starts[line_index];
        let column = self.text[line_start..offset].chars().count() + 1;
        match &self.embedding {
            Some(embedding) => {
                let (outer_line, indent) = embedding.lines[line_index];
                Location {
                    file: embedding.outer_name.clone(),
                    line: outer_line,
                    column: column + indent,
                }
            }
            None => Location {
                file: self.name.clone(),
                line: line_index + 1,
                column,
            },
        }
    }
}

/// Finds the outer lines holding `inner`'s lines: a run of consecutive outer lines that,
/// with one common indentation removed, equal the inner lines (blank lines may be empty).
fn trace_embedding(inner: &str, outer: &str) -> Option<Vec<(usize, usize)>> {
    let inner_lines: Vec<&str> = inner
        .strip_suffix('\n')
        .unwrap_or(inner)
        .split('\n')
        .collect();
    let outer_lines: Vec<&str> = outer.lines().collect();
    let first = inner_lines.iter().position(|l| !l.trim().is_empty())?;
    for (start, outer_line) in outer_lines.iter().enumerate() {
        let Some(indent_bytes) = outer_line.strip_suffix(inner_lines[first]).map(str::len) else {
            continue;
        };
        if indent_bytes == 0
            || !outer_line[..indent_bytes].bytes().all(|b| b == b' ')
            || start < first
        {
            continue;
        }
        let top = start - first;
        let fits = inner_lines.iter().enumerate().all(|(i, line)| {
            outer_lines.get(top + i).is_some_and(|outer_line| {
                if line.is_empty() {
                    outer_line.trim().is_empty()
                } else {
                    outer_line.len() >= indent_bytes
                        && &outer_line[indent_bytes..] == *line
                        && outer_line[..indent_bytes].trim().is_empty()
                }
            })
        });
        if fits {
            return Some(
                (0..inner_lines.len())
                    .map(|i| (top + i + 1, indent_bytes))
                    .collect(),
            );
        }
    }
    None
}

/// The spans of every key and value of a TOML document, by key path.
#[derive(Debug, Default)]
pub struct SpanIndex {
    spans: HashMap<KeyPath, KeySpans>,
}

/// Where a key and its value were written.
#[derive(Debug, Clone)]
pub struct KeySpans {
    /// The key (for array elements, the element).
    pub key: Range<usize>,
    /// The value.
    pub value: Range<usize>,
    /// Whether the value is something other than a table (a table holds settings only
    /// through its keys).
    pub holds_value: bool,
}

impl SpanIndex {
    /// Indexes a parsed document.
    pub fn build(document: &DeTable<'_>) -> Self {
        let mut index = SpanIndex::default();
        index.add_table(&KeyPath::root(), document);
        index
    }

    fn add_table(&mut self, path: &KeyPath, table: &DeTable<'_>) {
        for (key, value) in table.iter() {
            let child = path.key(key.get_ref().as_ref());
            self.spans.insert(
                child.clone(),
                KeySpans {
                    key: key.span(),
                    value: value.span(),
                    holds_value: !matches!(value.get_ref(), DeValue::Table(_)),
                },
            );
            self.add_value(&child, value.get_ref());
        }
    }

    fn add_value(&mut self, path: &KeyPath, value: &DeValue<'_>) {
        match value {
            DeValue::Table(table) => self.add_table(path, table),
            DeValue::Array(array) => {
                for (i, item) in array.iter().enumerate() {
                    let child = path.index(i);
                    self.spans.insert(
                        child.clone(),
                        KeySpans {
                            key: item.span(),
                            value: item.span(),
                            holds_value: !matches!(item.get_ref(), DeValue::Table(_)),
                        },
                    );
                    self.add_value(&child, item.get_ref());
                }
            }
            _ => {}
        }
    }

    /// The spans of `path`, or of its nearest written ancestor.
    pub fn nearest(&self, path: &KeyPath) -> Option<&KeySpans> {
        let mut current = path.clone();
        loop {
            if let Some(spans) = self.spans.get(&current) {
                return Some(spans);
            }
            if current.is_root() {
                return None;
            }
            current = current.parent();
        }
    }

    /// The spans of `path`, when it was written.
    pub fn get(&self, path: &KeyPath) -> Option<&KeySpans> {
        self.spans.get(path)
    }

    /// Every written key and array element, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&KeyPath, &KeySpans)> {
        self.spans.iter()
    }

    /// Whether `path` was written in the document.
    pub fn contains(&self, path: &KeyPath) -> bool {
        self.spans.contains_key(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_display_like_toml() {
        let path = KeyPath::root()
            .key("runners")
            .index(0)
            .key("kubernetes")
            .key("pod_labels")
            .key("eks.amazonaws.com/x");
        assert_eq!(
            path.to_string(),
            "runners[0].kubernetes.pod_labels.\"eks.amazonaws.com/x\""
        );
        assert_eq!(path.parent().shape(), "runners[].kubernetes.pod_labels");
    }

    #[test]
    fn locations_count_lines_and_characters() {
        let source = SourceText::new("c.toml", "a = 1\nbé = \"x\"\n");
        assert_eq!(source.location(0).to_string(), "c.toml:1:1");
        assert_eq!(source.location(6).to_string(), "c.toml:2:1");
        assert_eq!(source.location(12).to_string(), "c.toml:2:6");
    }

    #[test]
    fn embedded_text_points_into_the_outer_file() {
        let outer =
            "runners:\n  config: |\n    [[runners]]\n\n      [runners.kubernetes]\n        a = 1\n";
        let inner = "[[runners]]\n\n  [runners.kubernetes]\n    a = 1\n";
        let source =
            SourceText::embedded("values.yaml[runners.config]", inner, "values.yaml", outer);
        let offset = inner.find("a = 1").unwrap();
        assert_eq!(source.location(offset).to_string(), "values.yaml:6:9");
        let untraceable =
            SourceText::embedded("v[runners.config]", "x = 1\n", "values.yaml", outer);
        assert_eq!(untraceable.location(0).to_string(), "v[runners.config]:1:1");
    }
}
