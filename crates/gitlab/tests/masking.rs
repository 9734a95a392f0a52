//! Masking against a plain reference implementation, whatever the write boundaries.

use std::sync::Arc;

use podrunner_gitlab::log::{LogSettings, SENSITIVE_URL_PARAMS, Stream, SystemClock, Trace};
use proptest::prelude::*;

const MASKED: &[u8] = b"[MASKED]";

/// Reference phrase masking: scan left to right; where phrases start, replace the longest.
fn reference_phrases(text: &[u8], phrases: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < text.len() {
        let longest = phrases
            .iter()
            .filter(|p| !p.is_empty() && text[i..].starts_with(p))
            .map(Vec::len)
            .max();
        match longest {
            Some(len) => {
                out.extend_from_slice(MASKED);
                i += len;
            }
            None => {
                out.push(text[i]);
                i += 1;
            }
        }
    }
    out
}

fn url_value_byte(b: u8) -> bool {
    !matches!(
        b,
        b'&' | b'#' | b'"' | b'\'' | b'<' | b'>' | b'(' | b')' | b'[' | b']' | b'{' | b'}' | b'`'
    ) && !b.is_ascii_whitespace()
}

fn token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'=')
}

/// Reference trigger masking: at each position outside a run, the longest trigger that
/// matches there (URL parameters in any case, token prefixes exactly) starts a run whose
/// bytes become one `[MASKED]`.
fn reference_triggers(text: &[u8], prefixes: &[&str]) -> Vec<u8> {
    let mut triggers: Vec<(Vec<u8>, bool)> = Vec::new(); // (pattern, is_url)
    for param in SENSITIVE_URL_PARAMS {
        triggers.push((format!("?{param}=").into_bytes(), true));
        triggers.push((format!("&{param}=").into_bytes(), true));
    }
    for prefix in prefixes {
        triggers.push((prefix.as_bytes().to_vec(), false));
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < text.len() {
        let candidate = triggers
            .iter()
            .filter(|(p, is_url)| {
                text.len() - i >= p.len()
                    && if *is_url {
                        text[i..i + p.len()].eq_ignore_ascii_case(p)
                    } else {
                        text[i..].starts_with(p)
                    }
            })
            .max_by_key(|(p, _)| p.len());
        match candidate {
            Some((pattern, is_url)) => {
                out.extend_from_slice(&text[i..i + pattern.len()]);
                i += pattern.len();
                let accepts: fn(u8) -> bool = if *is_url { url_value_byte } else { token_byte };
                let start = i;
                while i < text.len() && accepts(text[i]) {
                    i += 1;
                }
                if i > start {
                    out.extend_from_slice(MASKED);
                }
            }
            None => {
                out.push(text[i]);
                i += 1;
            }
        }
    }
    out
}

fn pipeline(chunks: &[Vec<u8>], phrases: &[Vec<u8>], prefixes: &[&str]) -> Vec<u8> {
    let trace = Trace::new(&LogSettings {
        masked_phrases: phrases
            .iter()
            .map(|p| String::from_utf8(p.clone()).unwrap())
            .collect(),
        token_prefixes: prefixes.iter().map(|s| s.to_string()).collect(),
        timestamps: false,
        output_limit_bytes: usize::MAX,
        spill_threshold: 1 << 20,
        clock: Arc::new(SystemClock),
    });
    let mut writer = trace.writer(Stream::JOB);
    for chunk in chunks {
        writer.write_bytes(chunk).unwrap();
    }
    writer.flush_all().unwrap();
    let sink = trace.sink();
    sink.store().read(0, usize::MAX).unwrap()
}

/// Text from a small alphabet with phrases and triggers mixed in, so matches, near-misses
/// and overlaps are common.
fn text_strategy() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        4 => prop::collection::vec(prop::sample::select(b"abcs3-=& ?\n".to_vec()), 1..6),
        1 => Just(b"secret".to_vec()),
        1 => Just(b"s3cr3t".to_vec()),
        1 => Just(b"glpat-".to_vec()),
        1 => Just(b"GLPAT-".to_vec()),
        1 => Just(b"?private_token=".to_vec()),
        1 => Just(b"&X-Amz-Signature=".to_vec()),
        1 => Just(b"tok-".to_vec()),
    ];
    prop::collection::vec(piece, 0..40).prop_map(|pieces| pieces.concat())
}

fn phrases_strategy() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(
        prop_oneof![
            Just(b"secret".to_vec()),
            Just(b"secrets3".to_vec()),
            Just(b"cr3t".to_vec()),
            prop::collection::vec(prop::sample::select(b"abcs3".to_vec()), 1..8),
        ],
        0..6,
    )
}

/// Splits `text` at the given cut points.
fn split(text: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (text.len() + 1)).collect();
    points.sort_unstable();
    let mut chunks = Vec::new();
    let mut last = 0;
    for p in points.into_iter().chain([text.len()]) {
        chunks.push(text[last..p].to_vec());
        last = p;
    }
    chunks
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn streaming_equals_the_reference(text in text_strategy(), phrases in phrases_strategy(), cuts in prop::collection::vec(any::<usize>(), 0..12)) {
        let prefixes = ["glpat-", "tok-"];
        let expected = reference_triggers(&reference_phrases(&text, &phrases), &prefixes);
        let actual = pipeline(&split(&text, &cuts), &phrases, &prefixes);
        prop_assert_eq!(String::from_utf8_lossy(&actual), String::from_utf8_lossy(&expected));
    }

    #[test]
    fn no_masked_value_is_ever_emitted(text in text_strategy(), phrases in phrases_strategy(), cuts in prop::collection::vec(any::<usize>(), 0..12)) {
        let output = pipeline(&split(&text, &cuts), &phrases, &["glpat-"]);
        for phrase in phrases.iter().filter(|p| !p.is_empty()) {
            prop_assert!(!output.windows(phrase.len()).any(|w| w == phrase.as_slice()), "{:?} leaked in {:?}", String::from_utf8_lossy(phrase), String::from_utf8_lossy(&output));
        }
    }

    #[test]
    fn byte_at_a_time_equals_one_write(text in text_strategy(), phrases in phrases_strategy()) {
        let whole = pipeline(std::slice::from_ref(&text), &phrases, &["glpat-"]);
        let bytes: Vec<Vec<u8>> = text.iter().map(|b| vec![*b]).collect();
        prop_assert_eq!(pipeline(&bytes, &phrases, &["glpat-"]), whole);
    }
}

/// Two prefixes from GitLab with every default: gitlab-runner sorts the 16 by length and
/// keeps the 15 shortest, so both payload prefixes mask and the longest default
/// (`_gitlab_session=`) does not. Mutation checked: keeping the first 15 in arrival order
/// (the defaults first) leaves `tok-` tokens visible and masks the session cookie.
#[test]
fn two_prefixes_from_gitlab_are_chosen_as_gitlab_runner_chooses() {
    let from_gitlab = vec![
        " tok- ".to_owned(),
        "customer-".to_owned(),
        "tok-".to_owned(),
    ];
    let prefixes = LogSettings::token_prefixes(true, &from_gitlab);
    assert_eq!(prefixes.len(), 15);
    assert_eq!(&prefixes[..4], &["tok-", "gldt-", "glft-", "glrt-"]);
    assert!(prefixes.contains(&"customer-".to_owned()));
    assert!(!prefixes.contains(&"_gitlab_session=".to_owned()));
    let trace = Trace::new(&LogSettings {
        masked_phrases: Vec::new(),
        token_prefixes: prefixes,
        timestamps: false,
        output_limit_bytes: 1 << 20,
        spill_threshold: 1 << 20,
        clock: Arc::new(SystemClock),
    });
    let mut w = trace.writer(Stream::JOB);
    w.write_bytes(b"a tok-abc1 customer-x9 glpat-p _gitlab_session=cookie\n")
        .unwrap();
    w.flush_all().unwrap();
    assert_eq!(
        trace.sink().store().read(0, 1000).unwrap(),
        b"a tok-[MASKED] customer-[MASKED] glpat-[MASKED] _gitlab_session=cookie\n"
    );
    // Without FF_MASK_ALL_DEFAULT_TOKENS: glpat- and GitLab's own, shortest first.
    assert_eq!(
        LogSettings::token_prefixes(false, &from_gitlab),
        ["tok-", "glpat-", "customer-"]
    );
}

/// Exactly gitlab-runner's six URL parameters (`urlsanitizer.go`, `tokenParamKeys`).
#[test]
fn url_parameters_are_gitlab_runners_six() {
    assert_eq!(
        SENSITIVE_URL_PARAMS,
        [
            "private_token",
            "authenticity_token",
            "rss_token",
            "x-amz-signature",
            "x-amz-credential",
            "x-amz-security-token"
        ]
    );
    let trace = Trace::new(&LogSettings {
        masked_phrases: Vec::new(),
        token_prefixes: Vec::new(),
        timestamps: false,
        output_limit_bytes: 1 << 20,
        spill_threshold: 1 << 20,
        clock: Arc::new(SystemClock),
    });
    let mut w = trace.writer(Stream::JOB);
    w.write_bytes(b"GET /o?X-Amz-Credential=AKIA/x&sig=keep&X-Goog-Signature=keep\n")
        .unwrap();
    w.flush_all().unwrap();
    assert_eq!(
        trace.sink().store().read(0, 1000).unwrap(),
        b"GET /o?X-Amz-Credential=[MASKED]&sig=keep&X-Goog-Signature=keep\n"
    );
}
