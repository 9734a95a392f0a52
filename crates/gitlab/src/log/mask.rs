//! Streaming masking that is correct across arbitrary write boundaries: masked variable
//! values, sensitive URL parameters, and the text after known token prefixes.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, Input, MatchKind};

/// What replaces a masked value.
pub const MASKED: &[u8] = b"[MASKED]";

/// URL query parameters whose values are masked: exactly gitlab-runner's `tokenParamKeys`
/// (`common/buildlogger/internal/urlsanitizer/urlsanitizer.go`).
pub const SENSITIVE_URL_PARAMS: &[&str] = &[
    "private_token",
    "authenticity_token",
    "rss_token",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
];

/// Token prefixes masked with `FF_MASK_ALL_DEFAULT_TOKENS` (`glpat-` is masked always).
pub const DEFAULT_TOKEN_PREFIXES: &[&str] = &[
    "glpat-",
    "gloas-",
    "gldt-",
    "glrt-",
    "glcbt-",
    "glrtr-",
    "glptt-",
    "glft-",
    "glimt-",
    "glagent-",
    "glsoat-",
    "glffct-",
    "_gitlab_session=",
    "gltok-",
];

/// At most this many token prefixes are used, as in gitlab-runner.
pub const MAX_TOKEN_PREFIXES: usize = 15;

/// The token prefixes gitlab-runner masks with, from the payload's
/// `features.token_mask_prefixes` and its defaults (`common/buildlogger/build_logger.go`):
/// each trimmed, sorted by length then bytes, duplicates and empty ones dropped
/// (`common/buildlogger/internal/unique.go`), and the 15 shortest kept
/// (`internal/tokensanitizer/token_masker.go`, `New`).
pub fn select_token_prefixes<I, S>(prefixes: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut prefixes: Vec<String> = prefixes
        .into_iter()
        .map(|p| p.as_ref().trim().to_owned())
        .collect();
    prefixes.sort_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
    prefixes.dedup();
    prefixes.retain(|p| !p.is_empty());
    prefixes.truncate(MAX_TOKEN_PREFIXES);
    prefixes
}

/// Replaces every occurrence of any phrase with `[MASKED]`, longest phrase first at the
/// leftmost position, holding back only the bytes that could still begin a phrase.
#[derive(Debug, Clone)]
pub struct PhraseMasker {
    automaton: Option<AhoCorasick>,
    hold_back: usize,
    pending: Vec<u8>,
}

impl PhraseMasker {
    /// A masker for `phrases` (empty ones and duplicates are ignored).
    pub fn new<I, P>(phrases: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: AsRef<[u8]>,
    {
        let mut phrases: Vec<Vec<u8>> = phrases
            .into_iter()
            .map(|p| p.as_ref().to_vec())
            .filter(|p| !p.is_empty())
            .collect();
        phrases.sort();
        phrases.dedup();
        let hold_back = phrases.iter().map(Vec::len).max().unwrap_or(1) - 1;
        let automaton = (!phrases.is_empty()).then(|| {
            AhoCorasickBuilder::new()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&phrases)
                .expect("phrases are plain bytes of bounded size")
        });
        PhraseMasker {
            automaton,
            hold_back,
            pending: Vec::new(),
        }
    }

    /// Masks `input`, appending what is safe to emit to `out`.
    pub fn write(&mut self, input: &[u8], out: &mut Vec<u8>) {
        if self.automaton.is_none() {
            out.extend_from_slice(input);
            return;
        }
        self.pending.extend_from_slice(input);
        self.process(out, false);
    }

    /// Emits everything held back.
    pub fn flush(&mut self, out: &mut Vec<u8>) {
        self.process(out, true);
    }

    fn process(&mut self, out: &mut Vec<u8>, last: bool) {
        let Some(automaton) = &self.automaton else {
            return;
        };
        let buffer = std::mem::take(&mut self.pending);
        // Any match starting before `cut` has all the bytes it could need after it.
        let cut = if last {
            buffer.len()
        } else {
            buffer.len().saturating_sub(self.hold_back)
        };
        let mut emitted = 0;
        for found in automaton.find_iter(&buffer) {
            if found.start() >= cut {
                break;
            }
            out.extend_from_slice(&buffer[emitted..found.start()]);
            out.extend_from_slice(MASKED);
            emitted = found.end();
        }
        let keep_from = cut.max(emitted);
        out.extend_from_slice(&buffer[emitted..keep_from]);
        self.pending = buffer;
        self.pending.drain(..keep_from);
    }
}

/// What a masked run after a trigger is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunKind {
    /// A URL parameter value: up to the next `&`, `#`, quote, bracket or white space.
    UrlValue,
    /// A token: `A-Z a-z 0-9 - . _ =`.
    Token,
}

impl RunKind {
    fn accepts(self, byte: u8) -> bool {
        match self {
            RunKind::UrlValue => {
                !matches!(
                    byte,
                    b'&' | b'#'
                        | b'"'
                        | b'\''
                        | b'<'
                        | b'>'
                        | b'('
                        | b')'
                        | b'['
                        | b']'
                        | b'{'
                        | b'}'
                        | b'`'
                ) && !byte.is_ascii_whitespace()
            }
            RunKind::Token => {
                byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'=')
            }
        }
    }
}

/// Masks the value after a trigger: `?private_token=` / `&X-Amz-Signature=` (any case) and
/// token prefixes such as `glpat-` (exact case). The trigger itself stays visible. Where
/// triggers overlap, the leftmost wins, then the longest.
#[derive(Debug, Clone)]
pub struct TriggerMasker {
    /// URL parameter triggers, case-insensitive; all start with `?` or `&`, which keeps the
    /// automaton's prefilter fast.
    url: AhoCorasick,
    /// Token prefixes, exact case.
    tokens: Option<TokenSearch>,
    hold_back: usize,
    pending: Vec<u8>,
    run: Option<RunKind>,
    run_masked: bool,
}

/// `?param=` and `&param=` of every sensitive URL parameter.
fn url_patterns() -> Vec<String> {
    SENSITIVE_URL_PARAMS
        .iter()
        .flat_map(|p| [format!("?{p}="), format!("&{p}=")])
        .collect()
}

impl TriggerMasker {
    /// A masker for the sensitive URL parameters and the given token prefixes (chosen by
    /// [`select_token_prefixes`]).
    pub fn new<I, S>(token_prefixes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        // One automaton for every masker (about 90 KB as a DFA; a clone shares it).
        static URL_TRIGGERS: std::sync::LazyLock<AhoCorasick> = std::sync::LazyLock::new(|| {
            AhoCorasickBuilder::new()
                .match_kind(MatchKind::LeftmostLongest)
                .ascii_case_insensitive(true)
                .build(url_patterns())
                .expect("URL triggers are short ASCII")
        });
        let prefixes = select_token_prefixes(token_prefixes);
        let hold_back = url_patterns()
            .iter()
            .chain(&prefixes)
            .map(String::len)
            .max()
            .unwrap_or(1)
            - 1;
        let url = URL_TRIGGERS.clone();
        let tokens = (!prefixes.is_empty()).then(|| TokenSearch::new(&prefixes));
        TriggerMasker {
            url,
            tokens,
            hold_back,
            pending: Vec::new(),
            run: None,
            run_masked: false,
        }
    }

    /// Masks `input`, appending what is safe to emit to `out`.
    pub fn write(&mut self, input: &[u8], out: &mut Vec<u8>) {
        self.pending.extend_from_slice(input);
        self.process(out, false);
    }

    /// Emits everything held back and ends any run.
    pub fn flush(&mut self, out: &mut Vec<u8>) {
        self.process(out, true);
        self.run = None;
    }

    fn process(&mut self, out: &mut Vec<u8>, last: bool) {
        let buffer = std::mem::take(&mut self.pending);
        let len = buffer.len();
        let cut = if last {
            len
        } else {
            len.saturating_sub(self.hold_back)
        };
        // The next match of each automaton at or after `i`, found once and reused.
        let mut next_url: Option<Option<aho_corasick::Match>> = None;
        let mut next_token: Option<Option<aho_corasick::Match>> = None;
        let mut i = 0;
        loop {
            if let Some(kind) = self.run {
                while i < len && kind.accepts(buffer[i]) {
                    if !self.run_masked {
                        out.extend_from_slice(MASKED);
                        self.run_masked = true;
                    }
                    i += 1;
                }
                if i == len {
                    break; // the run may go on in the next write
                }
                self.run = None;
            }
            let url = refresh(&mut next_url, i, |from| {
                self.url.find(Input::new(&buffer).span(from..len))
            });
            let token = match &self.tokens {
                Some(tokens) => refresh(&mut next_token, i, |from| tokens.find(&buffer, from)),
                None => None,
            };
            let chosen = match (url, token) {
                (Some(u), Some(t)) => Some(
                    if (t.start(), std::cmp::Reverse(t.len()))
                        < (u.start(), std::cmp::Reverse(u.len()))
                    {
                        (t, RunKind::Token)
                    } else {
                        (u, RunKind::UrlValue)
                    },
                ),
                (Some(u), None) => Some((u, RunKind::UrlValue)),
                (None, Some(t)) => Some((t, RunKind::Token)),
                (None, None) => None,
            };
            match chosen {
                Some((found, kind)) if found.start() < cut => {
                    out.extend_from_slice(&buffer[i..found.end()]);
                    i = found.end();
                    self.run = Some(kind);
                    self.run_masked = false;
                }
                _ => {
                    let emit_to = cut.max(i);
                    out.extend_from_slice(&buffer[i..emit_to]);
                    i = emit_to;
                    break;
                }
            }
        }
        self.pending = buffer;
        self.pending.drain(..i);
    }
}

/// Finds token prefixes. Every prefix ends in `-` or `=`, bytes common in logs, so a
/// rare-byte prefilter verifies too often; Teddy fingerprints the leading bytes instead.
#[derive(Debug, Clone)]
enum TokenSearch {
    Packed(aho_corasick::packed::Searcher),
    Automaton(AhoCorasick),
}

impl TokenSearch {
    fn new(prefixes: &[String]) -> Self {
        let packed = aho_corasick::packed::Config::new()
            .match_kind(aho_corasick::packed::MatchKind::LeftmostLongest)
            .builder()
            .extend(prefixes)
            .build();
        match packed {
            Some(searcher) => TokenSearch::Packed(searcher),
            None => TokenSearch::Automaton(
                AhoCorasickBuilder::new()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(prefixes)
                    .expect("token prefixes are short"),
            ),
        }
    }

    fn find(&self, haystack: &[u8], from: usize) -> Option<aho_corasick::Match> {
        match self {
            TokenSearch::Packed(searcher) => {
                searcher.find_in(haystack, aho_corasick::Span::from(from..haystack.len()))
            }
            TokenSearch::Automaton(automaton) => {
                automaton.find(Input::new(haystack).span(from..haystack.len()))
            }
        }
    }
}

/// The cached next match if it still starts at or after `from`, else a fresh search.
fn refresh(
    cache: &mut Option<Option<aho_corasick::Match>>,
    from: usize,
    search: impl FnOnce(usize) -> Option<aho_corasick::Match>,
) -> Option<aho_corasick::Match> {
    match cache {
        Some(None) => None,
        Some(Some(m)) if m.start() >= from => Some(*m),
        _ => {
            let found = search(from);
            *cache = Some(found);
            found
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phrases(input: &[&[u8]], phrases_list: &[&str]) -> String {
        let mut masker = PhraseMasker::new(phrases_list);
        let mut out = Vec::new();
        for chunk in input {
            masker.write(chunk, &mut out);
        }
        masker.flush(&mut out);
        String::from_utf8(out).unwrap()
    }

    fn triggers(input: &[&[u8]]) -> String {
        let mut masker = TriggerMasker::new(DEFAULT_TOKEN_PREFIXES.iter().chain(&["glpat-"]));
        let mut out = Vec::new();
        for chunk in input {
            masker.write(chunk, &mut out);
        }
        masker.flush(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn masks_phrases_split_across_writes() {
        assert_eq!(
            phrases(&[b"the secret", b"value is here"], &["secretvalue"]),
            "the [MASKED] is here"
        );
        assert_eq!(
            phrases(&[b"s", b"e", b"c", b"r", b"e", b"t", b"!"], &["secret"]),
            "[MASKED]!"
        );
        assert_eq!(
            phrases(&[b"abcdef abc"], &["abc", "abcdef"]),
            "[MASKED] [MASKED]"
        );
        assert_eq!(phrases(&[b"no phrases"], &[]), "no phrases");
        assert_eq!(phrases(&[b"secre"], &["secret"]), "secre");
    }

    #[test]
    fn masks_url_parameters_and_tokens() {
        assert_eq!(
            triggers(&[b"GET /x?private_token=abc123&page=2"]),
            "GET /x?private_token=[MASKED]&page=2"
        );
        assert_eq!(
            triggers(&[b"https://s3/x?X-Amz-Signature=f00", b"ba4 done"]),
            "https://s3/x?X-Amz-Signature=[MASKED] done"
        );
        assert_eq!(
            triggers(&[b"token glpat-", b"abcDEF_123.x=y rest"]),
            "token glpat-[MASKED] rest"
        );
        assert_eq!(triggers(&[b"gl", b"rt-secret\n"]), "glrt-[MASKED]\n");
        assert_eq!(
            triggers(&[b"GLPAT-abc is not a token"]),
            "GLPAT-abc is not a token"
        );
        assert_eq!(triggers(&[b"glpat- alone"]), "glpat- alone");
        assert_eq!(triggers(&[b"plain text"]), "plain text");
    }
}
