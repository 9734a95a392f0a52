//! The manager's metrics, with gitlab-runner's names and labels (`commands/builds_helper.go`,
//! `network/`, `helpers/prometheus/` in gitlab-runner) and podrunner's own, on a `prometheus`
//! registry in the text format Prometheus scrapes; and the health and readiness state.
//! Updated only through [`crate::Event::emit`].

use std::sync::atomic::AtomicBool;
use std::sync::{Mutex, OnceLock};

use prometheus::{
    Counter, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// gitlab-runner's buckets of `gitlab_runner_job_duration_seconds`.
const JOB_DURATION_BUCKETS: [f64; 10] = [
    30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 10800.0, 18000.0, 36000.0,
];
/// Buckets of the queue and pod-start histograms: seconds to an hour. gitlab-runner's queue
/// buckets were not found upstream; these are podrunner's.
const WAIT_BUCKETS: [f64; 12] = [
    1.0, 3.0, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 120.0, 300.0, 600.0, 3600.0,
];

/// The metrics of this process.
pub struct Metrics {
    registry: Registry,
    pub(crate) ready: AtomicBool,
    pub(crate) system_id: Mutex<String>,
    pub(crate) concurrent: IntGauge,
    pub(crate) limit: IntGaugeVec,
    pub(crate) jobs_running: IntGaugeVec,
    pub(crate) jobs_total: IntCounterVec,
    pub(crate) failed_jobs: IntCounterVec,
    pub(crate) job_duration: HistogramVec,
    pub(crate) queue_duration: HistogramVec,
    pub(crate) request_concurrency: IntGaugeVec,
    pub(crate) errors: IntCounterVec,
    pub(crate) api_statuses: IntCounterVec,
    pub(crate) pod_start: HistogramVec,
    pub(crate) fargate_jobs: IntCounter,
    pub(crate) fargate_seconds: Counter,
    pub(crate) fargate_usd: Counter,
    pub(crate) kubernetes_retries: IntCounterVec,
    pub(crate) sweep_errors: IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry
        .register(Box::new(c.clone()))
        .expect("metric names are distinct constants");
    c
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        let r = &registry;
        let runner = ["runner", "system_id"];
        let int_gauges = |name: &str, help: &str, labels: &[&str]| {
            register(
                r,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid"),
            )
        };
        let int_counters = |name: &str, help: &str, labels: &[&str]| {
            register(
                r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid"),
            )
        };
        let histograms = |name: &str, help: &str, labels: &[&str], buckets: &[f64]| {
            register(
                r,
                HistogramVec::new(
                    HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                    labels,
                )
                .expect("valid"),
            )
        };
        let version = int_gauges(
            "gitlab_runner_version_info",
            "A metric with a constant '1' value labeled by different build stats fields (podrunner reports the gitlab-runner version it speaks).",
            &["name", "version", "revision", "os", "architecture"],
        );
        version
            .with_label_values(&[
                "podrunner",
                podrunner_gitlab::client::COMPATIBLE_RUNNER_VERSION,
                &format!("podrunner-{}", env!("CARGO_PKG_VERSION")),
                std::env::consts::OS,
                podrunner_gitlab::api::go_arch(std::env::consts::ARCH),
            ])
            .set(1);
        #[cfg(target_os = "linux")]
        let _ = registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        Metrics {
            ready: AtomicBool::new(false),
            system_id: Mutex::new(String::new()),
            concurrent: register(
                r,
                IntGauge::new(
                    "gitlab_runner_concurrent",
                    "The current value of concurrent setting",
                )
                .expect("valid"),
            ),
            limit: int_gauges(
                "gitlab_runner_limit",
                "The current value of limit setting",
                &runner,
            ),
            jobs_running: int_gauges(
                "gitlab_runner_jobs",
                "The current number of running builds.",
                &["runner", "system_id", "state"],
            ),
            jobs_total: int_counters(
                "gitlab_runner_jobs_total",
                "Total number of handled jobs",
                &runner,
            ),
            failed_jobs: int_counters(
                "gitlab_runner_failed_jobs_total",
                "Total number of failed jobs",
                &["runner", "system_id", "failure_reason"],
            ),
            job_duration: histograms(
                "gitlab_runner_job_duration_seconds",
                "Histogram of job durations",
                &runner,
                &JOB_DURATION_BUCKETS,
            ),
            queue_duration: histograms(
                "gitlab_runner_job_queue_duration_seconds",
                "A histogram representing job queue duration.",
                &runner,
                &WAIT_BUCKETS,
            ),
            request_concurrency: int_gauges(
                "gitlab_runner_request_concurrency",
                "The current number of concurrent requests for a new job",
                &runner,
            ),
            errors: int_counters(
                "gitlab_runner_errors_total",
                "The number of caught errors.",
                &["level"],
            ),
            api_statuses: int_counters(
                "gitlab_runner_api_request_statuses_total",
                "The total number of api requests, partitioned by runner, system_id, endpoint and status.",
                &["runner", "system_id", "endpoint", "status"],
            ),
            pod_start: histograms(
                "podrunner_job_pod_start_seconds",
                "Seconds from a job pod's creation to its build container running, by compute (fargate or ec2).",
                &["compute"],
                &WAIT_BUCKETS,
            ),
            fargate_jobs: register(
                r,
                IntCounter::new(
                    "podrunner_fargate_jobs_total",
                    "Jobs whose pod ran on Fargate.",
                )
                .expect("valid"),
            ),
            fargate_seconds: register(
                r,
                Counter::new(
                    "podrunner_fargate_pod_seconds_total",
                    "Seconds of jobs' Fargate pods, as each job's log bills them (from the pod's provisioning when its agent left no report).",
                )
                .expect("valid"),
            ),
            fargate_usd: register(
                r,
                Counter::new(
                    "podrunner_fargate_cost_usd_total",
                    "What jobs' Fargate pods cost, in US dollars at the configured prices: the cost each job's log says.",
                )
                .expect("valid"),
            ),
            kubernetes_retries: int_counters(
                "podrunner_kubernetes_api_retries_total",
                "Kubernetes API calls retried, by call.",
                &["call"],
            ),
            sweep_errors: int_counters(
                "podrunner_kubernetes_sweep_errors_total",
                "Failed calls of the sweep of stray pods and Secrets, by call.",
                &["call"],
            ),
            registry,
        }
    }

    /// `[runner, system_id]` label values.
    pub(crate) fn runner(&self, runner: &str) -> [String; 2] {
        [
            runner.to_owned(),
            self.system_id
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        ]
    }

    /// `[runner, system_id, "running"]` label values of `gitlab_runner_jobs`.
    pub(crate) fn running(&self, runner: &str) -> [String; 3] {
        let [runner, system_id] = self.runner(runner);
        [runner, system_id, "running".to_owned()]
    }

    /// Whether the job loop has started.
    pub fn is_ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&self.registry.gather(), &mut out)
            .expect("text encoding into a String does not fail");
        out
    }
}

/// Serves `/healthz`, `/readyz` and `/metrics` on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener) {
    use axum::routing::get;
    let router = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|| async {
                if metrics().is_ready() {
                    (axum::http::StatusCode::OK, "ready\n")
                } else {
                    (axum::http::StatusCode::SERVICE_UNAVAILABLE, "starting\n")
                }
            }),
        )
        .route(
            "/metrics",
            get(|| async {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    metrics().render(),
                )
            }),
        );
    let _ = axum::serve(listener, router).await;
}

/// `host:port` of gitlab-runner's `listen_address` (`:9252` means every interface).
pub fn bind_address(listen_address: &str) -> String {
    if listen_address.starts_with(':') {
        format!("0.0.0.0{listen_address}")
    } else {
        listen_address.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Event;
    use podrunner_gitlab::api::{FailureReason, JobState};

    #[test]
    fn events_move_their_metrics() {
        for (seconds, usd) in [(30.0, 0.002), (90.5, 0.003)] {
            Event::FargateCost {
                job_id: 1,
                capacity: "2vCPU 9GB".into(),
                seconds,
                usd_per_hour: 0.12,
                usd,
            }
            .count();
        }
        Event::KubernetesRetry {
            call: "create Pod".into(),
            attempt: 1,
            error: "connection refused".into(),
            retry_in: std::time::Duration::from_millis(500),
        }
        .count();
        Event::SweepFailed {
            namespace: "ci".into(),
            call: "list Secrets",
            error: "forbidden".into(),
        }
        .count();
        Event::JobStarted {
            runner: "abc".into(),
            job_id: 7,
            executor: "kubernetes",
            queued_seconds: Some(4.0),
        }
        .count();
        Event::JobFinished {
            runner: "abc".into(),
            failure_reason: Some(FailureReason::ScriptFailure),
            job_id: 7,
            state: crate::FinalState::Ended(JobState::Failed),
            delivered: true,
            duration: std::time::Duration::from_secs(45),
        }
        .count();
        // A job another manager took over is that manager's to count, not a failure here.
        Event::JobFinished {
            runner: "handed".into(),
            failure_reason: None,
            job_id: 8,
            state: crate::FinalState::HandedOver,
            delivered: false,
            duration: std::time::Duration::from_secs(5),
        }
        .count();
        Event::PodRunning {
            job_id: 7,
            namespace: "ci".into(),
            pod: "runner-7".into(),
            fargate: true,
            seconds: 50.0,
        }
        .count();
        let text = metrics().render();
        for line in [
            "podrunner_fargate_jobs_total 2\n",
            "podrunner_fargate_pod_seconds_total 120.5\n",
            "podrunner_fargate_cost_usd_total 0.005\n",
            "podrunner_kubernetes_api_retries_total{call=\"create Pod\"} 1\n",
            "# TYPE podrunner_fargate_cost_usd_total counter\n",
            "gitlab_runner_job_duration_seconds_bucket{runner=\"abc\",system_id=\"\",le=\"60\"} 1\n",
            "gitlab_runner_job_duration_seconds_bucket{runner=\"abc\",system_id=\"\",le=\"30\"} 0\n",
            "gitlab_runner_job_queue_duration_seconds_bucket{runner=\"abc\",system_id=\"\",le=\"5\"} 1\n",
            "gitlab_runner_failed_jobs_total{failure_reason=\"script_failure\",runner=\"abc\",system_id=\"\"} 1\n",
            "gitlab_runner_jobs{runner=\"abc\",state=\"running\",system_id=\"\"} 0\n",
            "podrunner_job_pod_start_seconds_bucket{compute=\"fargate\",le=\"60\"} 1\n",
            "podrunner_kubernetes_sweep_errors_total{call=\"list Secrets\"} 1\n",
        ] {
            assert!(text.contains(line), "{line:?} is not in:\n{text}");
        }
        assert!(
            !text
                .lines()
                .any(|l| l.starts_with("gitlab_runner_failed_jobs_total")
                    && l.contains("runner=\"handed\"")),
            "a handed-over job is not counted as failed: {text}"
        );
        assert!(
            text.lines()
                .find_map(|l| l.strip_prefix("gitlab_runner_errors_total{level=\"warning\"} "))
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| n >= 1),
            "the retry's warning is counted: {text}"
        );
    }

    /// Every metric the chart's Grafana dashboard queries is one this registry serves.
    #[test]
    fn the_dashboard_queries_served_metrics() {
        // A labelled family is served once it has a child: give each one.
        for event in [
            Event::ApiAnswer {
                runner: "d".into(),
                endpoint: "request_job",
                status: "204".into(),
            },
            Event::JobRequestStarted { runner: "d".into() },
            Event::JobStarted {
                runner: "d".into(),
                job_id: 1,
                executor: "shell",
                queued_seconds: Some(1.0),
            },
            Event::JobFinished {
                runner: "d".into(),
                failure_reason: None,
                job_id: 1,
                state: crate::FinalState::Ended(JobState::Failed),
                delivered: true,
                duration: std::time::Duration::from_secs(1),
            },
            Event::PodRunning {
                job_id: 1,
                namespace: "ci".into(),
                pod: "p".into(),
                fargate: false,
                seconds: 1.0,
            },
            Event::KubernetesRetry {
                call: "dashboard check".into(),
                attempt: 1,
                error: "x".into(),
                retry_in: std::time::Duration::ZERO,
            },
        ] {
            event.count();
        }
        let dashboard: serde_json::Value = serde_json::from_str(include_str!(
            "../../../chart/podrunner/dashboards/podrunner.json"
        ))
        .unwrap();
        let served: Vec<String> = metrics()
            .registry
            .gather()
            .iter()
            .map(|f| f.name().to_owned())
            .collect();
        let mut queried = 0;
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                    if !(word.starts_with("gitlab_runner_") || word.starts_with("podrunner_")) {
                        continue;
                    }
                    let family = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|suffix| word.strip_suffix(suffix))
                        .unwrap_or(word);
                    assert!(
                        served.iter().any(|s| s == family),
                        "the dashboard queries {word}, which is not served: {served:?}"
                    );
                    queried += 1;
                }
            }
        }
        assert!(queried >= 10, "{queried}");
    }
}
