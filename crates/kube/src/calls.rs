//! Kubernetes API calls with gitlab-runner's retry rules and a client-side rate limit.
//!
//! A call is retried only when its error text names a network failure gitlab-runner retries
//! on (or a key of `retry_limits`), at most `retry_limit` tries (or that key's value), with a
//! back-off from 500 ms doubling up to `retry_backoff_max`. Every call first takes a token
//! from one bucket per executor, so a burst of jobs cannot flood the API server, and at most
//! [`CALLS_IN_FLIGHT`] of an executor's calls are under way at once.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use podrunner_config::KubernetesConfig;
use podrunner_manager::Event;
use tokio::sync::{Mutex, Semaphore, SemaphorePermit};
use tokio::time::Instant;

/// Error texts gitlab-runner retries Kubernetes API calls on (Go's wording), followed by the
/// wording of the same failures in Rust's I/O, hyper and rustls errors.
pub const RETRIED_ERRORS: &[&str] = &[
    "error dialing backend",
    "TLS handshake timeout",
    "read: connection timed out",
    "connect: connection timed out",
    "Timeout occurred",
    "etcdserver: request timed out",
    "http2: client connection lost",
    "connection refused",
    "tls: internal error",
    "unexpected EOF",
    "connection reset by peer",
    "software caused connection abort",
    "broken pipe",
    // Rust's wording.
    "connection closed before message completed",
    "connection reset",
    "timed out",
    "unexpected end of file",
];

/// The first back-off between tries.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// Requests per second the bucket refills with.
pub const CALLS_PER_SECOND: f64 = 50.0;

/// Calls the bucket allows at once after a quiet spell.
pub const CALLS_BURST: f64 = 100.0;

/// An executor's calls under way at once. Each holds an HTTP/1.1 connection of the client's
/// pool, and the pool keeps an idle connection (with its read and write buffers, some 30 KB)
/// for 90 s: without a bound, a hundred jobs starting together left some fifty connections
/// behind (dhat, docs/benchmarks.md, scale). Sixteen calls of a few milliseconds each still
/// pass far more than [`CALLS_PER_SECOND`]. Lease renewals do not queue here.
pub const CALLS_IN_FLIGHT: usize = 16;

/// How often and how patiently a runner's calls are retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    limit: u32,
    backoff_max: Duration,
    per_error: Vec<(String, u32)>,
}

impl RetryPolicy {
    /// The policy of a `[runners.kubernetes]` section.
    pub fn from_config(config: &KubernetesConfig) -> Self {
        RetryPolicy {
            limit: config.retry_limit.max(1) as u32,
            backoff_max: Duration::from_millis(config.retry_backoff_max_ms()),
            per_error: config
                .retry_limits
                .iter()
                .map(|(text, tries)| (text.clone(), (*tries).max(1) as u32))
                .collect(),
        }
    }

    /// How many tries a call failing with `error` gets in all (1: no retry).
    pub fn tries_for(&self, error: &str) -> u32 {
        let lower = error.to_lowercase();
        if let Some((_, tries)) = self
            .per_error
            .iter()
            .find(|(text, _)| lower.contains(&text.to_lowercase()))
        {
            return *tries;
        }
        if RETRIED_ERRORS
            .iter()
            .any(|text| lower.contains(&text.to_lowercase()))
        {
            self.limit
        } else {
            1
        }
    }

    /// The pause after failed try number `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let doubled = FIRST_BACKOFF.saturating_mul(1 << attempt.saturating_sub(1).min(16));
        doubled.min(self.backoff_max.max(FIRST_BACKOFF))
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::from_config(&KubernetesConfig::default())
    }
}

/// A token bucket shared by all of an executor's calls, and the bound on those under way.
#[derive(Debug)]
pub struct RateLimit {
    per_second: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
    in_flight: Semaphore,
}

impl RateLimit {
    /// A bucket that refills with `per_second` tokens and holds at most `burst`.
    pub fn new(per_second: f64, burst: f64) -> Self {
        RateLimit {
            per_second,
            burst,
            state: Mutex::new((burst, Instant::now())),
            in_flight: Semaphore::new(CALLS_IN_FLIGHT),
        }
    }

    /// Waits until fewer than [`CALLS_IN_FLIGHT`] calls are under way; the call holds the
    /// permit while it runs.
    async fn under_way(&self) -> SemaphorePermit<'_> {
        self.in_flight
            .acquire()
            .await
            .expect("the semaphore is never closed")
    }

    /// Waits for a token.
    pub async fn acquire(&self) {
        let wait = {
            let mut state = self.state.lock().await;
            let (tokens, last) = &mut *state;
            let now = Instant::now();
            *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.per_second)
                .min(self.burst);
            *last = now;
            *tokens -= 1.0;
            // A negative balance is the caller's place in the queue.
            (*tokens < 0.0).then(|| Duration::from_secs_f64(-*tokens / self.per_second))
        };
        if let Some(wait) = wait {
            tokio::time::sleep(wait).await;
        }
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit::new(CALLS_PER_SECOND, CALLS_BURST)
    }
}

/// One runner's way of calling the API: its retry policy and the executor's shared bucket.
#[derive(Debug, Clone)]
pub struct ApiCalls {
    limit: Arc<RateLimit>,
    policy: RetryPolicy,
}

impl ApiCalls {
    /// Calls under `limit` with `policy`.
    pub fn new(limit: Arc<RateLimit>, policy: RetryPolicy) -> Self {
        ApiCalls { limit, policy }
    }

    /// Runs `f` under the rate limit, retrying as the policy says; `what` names it in the log.
    pub async fn run<T, F, Fut>(&self, what: &str, f: F) -> Result<T, kube::Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        // Boxed: a call's future (kube's request, the retries) lives only while it runs,
        // not in the future of every job that makes calls.
        Box::pin(call(&self.limit, &self.policy, what, f)).await
    }
}

/// The text of an error and every error under it, for matching retried failures.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// Runs `call` under the rate limit, retrying as `policy` says; `what` names it in the log.
pub async fn call<T, F, Fut>(
    limit: &RateLimit,
    policy: &RetryPolicy,
    what: &str,
    mut call: F,
) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    let mut attempt = 1;
    loop {
        limit.acquire().await;
        let permit = limit.under_way().await;
        let result = call().await;
        drop(permit);
        match result {
            Ok(value) => return Ok(value),
            Err(error) => {
                let text = match &error {
                    kube::Error::Api(status) => {
                        format!("{} ({}): {}", status.reason, status.code, status.message)
                    }
                    other => error_chain(other),
                };
                if attempt >= policy.tries_for(&text) {
                    return Err(error);
                }
                let pause = policy.backoff(attempt);
                Event::KubernetesRetry {
                    call: what.to_owned(),
                    attempt,
                    error: text,
                    retry_in: pause,
                }
                .emit();
                tokio::time::sleep(pause).await;
                attempt += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(toml_retry_limits: &[(&str, i64)], limit: i64, backoff_max: i64) -> RetryPolicy {
        RetryPolicy::from_config(&KubernetesConfig {
            retry_limit: limit,
            retry_backoff_max: backoff_max,
            retry_limits: toml_retry_limits
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
            ..Default::default()
        })
    }

    #[test]
    fn only_network_failures_and_configured_texts_are_retried() {
        let p = policy(&[("quota exceeded", 9)], 5, 2000);
        let cases = [
            (
                "client error (Connect): tcp connect error: Connection refused (os error 111)",
                5,
            ),
            (
                "error trying to connect: connection closed before message completed",
                5,
            ),
            ("HyperError: unexpected EOF", 5),
            ("etcdserver: request timed out", 5),
            (
                "ApiError: pods \"x\" is forbidden: exceeded quota exceeded",
                9,
            ),
            (
                "ApiError: pods \"x\" already exists: AlreadyExists (409)",
                1,
            ),
            ("ApiError: admission webhook denied the request (400)", 1),
        ];
        for (text, tries) in cases {
            assert_eq!(p.tries_for(text), tries, "{text}");
        }
    }

    #[test]
    fn backoff_doubles_from_half_a_second_up_to_the_maximum() {
        let p = policy(&[], 5, 2000);
        let pauses: Vec<u128> = (1..=5).map(|a| p.backoff(a).as_millis()).collect();
        assert_eq!(pauses, [500, 1000, 2000, 2000, 2000]);
        // retry_backoff_max below 500 means 500.
        assert_eq!(policy(&[], 5, 100).backoff(3).as_millis(), 500);
        // retry_limit 0 still tries once.
        assert_eq!(policy(&[], 0, 2000).tries_for("connection refused"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_bucket_lets_a_burst_through_then_paces_calls() {
        let limit = RateLimit::new(10.0, 5.0);
        let start = Instant::now();
        for _ in 0..5 {
            limit.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO, "the burst passes at once");
        for _ in 0..10 {
            limit.acquire().await;
        }
        let paced = start.elapsed().as_secs_f64();
        assert!((0.99..=1.01).contains(&paced), "{paced}");
    }

    #[tokio::test(start_paused = true)]
    async fn no_more_than_the_bound_of_calls_are_under_way_at_once() {
        let limit = RateLimit::new(1000.0, 1000.0);
        let p = policy(&[], 1, 2000);
        let (running, most) = (
            std::sync::atomic::AtomicUsize::new(0),
            std::sync::atomic::AtomicUsize::new(0),
        );
        let calls = (0..3 * CALLS_IN_FLIGHT).map(|_| {
            call(&limit, &p, "test", || async {
                use std::sync::atomic::Ordering::SeqCst;
                let now = running.fetch_add(1, SeqCst) + 1;
                most.fetch_max(now, SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
                running.fetch_sub(1, SeqCst);
                Ok::<(), kube::Error>(())
            })
        });
        let results = futures::future::join_all(calls).await;
        assert!(results.iter().all(Result::is_ok));
        assert_eq!(most.into_inner(), CALLS_IN_FLIGHT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_connection_is_retried_and_a_conflict_is_not() {
        let limit = RateLimit::default();
        let p = policy(&[], 3, 2000);
        let mut tries = 0;
        let result: Result<(), kube::Error> = call(&limit, &p, "test", || {
            tries += 1;
            async {
                Err(kube::Error::Service(Box::new(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    "connection refused",
                ))))
            }
        })
        .await;
        assert!(result.is_err());
        assert_eq!(tries, 3);

        let mut tries = 0;
        let result: Result<(), kube::Error> = call(&limit, &p, "test", || {
            tries += 1;
            async {
                Err(kube::Error::Api(
                    kube::core::Status::failure("pods \"x\" already exists", "AlreadyExists")
                        .with_code(409)
                        .boxed(),
                ))
            }
        })
        .await;
        assert!(result.is_err());
        assert_eq!(tries, 1);
    }
}
