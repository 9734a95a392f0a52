//! gitlab-runner's transparent retry layer under every API call: retry 408, 429, 500, 502,
//! 503, 504 and anything ≥ 512, up to 5 attempts, waiting for `RateLimit-ResetTime`, else
//! `Retry-After`, else an exponential back-off with jitter. Transport errors are not retried
//! here; callers decide.

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;

/// Attempts in total, the first included.
pub const MAX_ATTEMPTS: u32 = 5;

/// Whether a status is retried.
pub fn is_retryable(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504) || status >= 512
}

/// An exponential back-off with full jitter over the upper half.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// First wait.
    pub min: Duration,
    /// Longest wait.
    pub max: Duration,
}

impl Backoff {
    /// gitlab-runner's request back-off: 100 ms doubling to 60 s.
    pub const REQUESTS: Backoff = Backoff {
        min: Duration::from_millis(100),
        max: Duration::from_secs(60),
    };

    /// The wait before retry number `attempt` (0 for the first retry).
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self
            .min
            .saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
            .min(self.max);
        // Jitter in [base/2, base].
        let half = base / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}

/// How long the server asked to wait, if it did.
pub fn server_wait(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if let Some(reset) = headers
        .get("RateLimit-ResetTime")
        .and_then(|v| v.to_str().ok())
        && let Ok(at) = httpdate::parse_http_date(reset)
    {
        return Some(at.duration_since(now).unwrap_or_default());
    }
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retryable_statuses() {
        for status in [408, 429, 500, 502, 503, 504, 512, 599] {
            assert!(is_retryable(status), "{status}");
        }
        for status in [
            200, 201, 202, 204, 400, 401, 403, 404, 409, 412, 416, 501, 505, 511,
        ] {
            assert!(!is_retryable(status), "{status}");
        }
    }

    #[test]
    fn server_wait_prefers_rate_limit_reset_time() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut headers = HeaderMap::new();
        headers.insert("Retry-After", HeaderValue::from_static("7"));
        assert_eq!(server_wait(&headers, now), Some(Duration::from_secs(7)));
        let reset = httpdate::fmt_http_date(now + Duration::from_secs(3));
        headers.insert(
            "RateLimit-ResetTime",
            HeaderValue::from_str(&reset).unwrap(),
        );
        assert_eq!(server_wait(&headers, now), Some(Duration::from_secs(3)));
        assert_eq!(server_wait(&HeaderMap::new(), now), None);
    }

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        for attempt in 0..40 {
            let d = Backoff::REQUESTS.delay(attempt);
            let base = (Duration::from_millis(100) * 2u32.saturating_pow(attempt.min(20)))
                .min(Duration::from_secs(60));
            assert!(
                d >= base / 2 && d <= base,
                "attempt {attempt}: {d:?} vs {base:?}"
            );
        }
    }
}
