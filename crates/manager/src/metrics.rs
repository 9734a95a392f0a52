//! The manager's metrics in Prometheus text format, with gitlab-runner's core names, and the
//! health and readiness state. Updated only by [`crate::Event::emit`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Mutex, OnceLock};

/// Counters and gauges of this process.
#[derive(Debug, Default)]
pub struct Metrics {
    pub(crate) concurrent: AtomicI64,
    pub(crate) ready: AtomicBool,
    pub(crate) system_id: Mutex<String>,
    pub(crate) limits: Mutex<BTreeMap<String, i64>>,
    pub(crate) jobs_running: Mutex<BTreeMap<String, i64>>,
    pub(crate) jobs_total: Mutex<BTreeMap<String, u64>>,
    pub(crate) failed_total: Mutex<BTreeMap<(String, String), u64>>,
    pub(crate) api_statuses: Mutex<BTreeMap<(String, String, String), u64>>,
    pub(crate) fargate: Mutex<FargateTotals>,
    pub(crate) kubernetes_retries: Mutex<BTreeMap<String, u64>>,
    pub(crate) sweep_errors: Mutex<BTreeMap<String, u64>>,
}

/// What the jobs that ran on Fargate used, summed.
#[derive(Debug, Default)]
pub(crate) struct FargateTotals {
    pub(crate) jobs: u64,
    pub(crate) seconds: f64,
    pub(crate) usd: f64,
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::default)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Escapes a label value.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// Whether the job loop has started.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let system_id = escape(&lock(&self.system_id));
        let mut out = String::new();
        out.push_str("# HELP gitlab_runner_version_info The version of the runner (podrunner reports the gitlab-runner version it speaks).\n# TYPE gitlab_runner_version_info gauge\n");
        out.push_str(&format!(
            "gitlab_runner_version_info{{name=\"podrunner\",version=\"{}\",revision=\"podrunner-{}\",os=\"{}\",architecture=\"{}\"}} 1\n",
            podrunner_gitlab::client::COMPATIBLE_RUNNER_VERSION,
            env!("CARGO_PKG_VERSION"),
            std::env::consts::OS,
            podrunner_gitlab::api::go_arch(std::env::consts::ARCH)
        ));
        out.push_str("# HELP gitlab_runner_concurrent The concurrent setting.\n# TYPE gitlab_runner_concurrent gauge\n");
        out.push_str(&format!(
            "gitlab_runner_concurrent {}\n",
            self.concurrent.load(Ordering::Relaxed)
        ));
        out.push_str("# HELP gitlab_runner_limit The limit setting of each runner.\n# TYPE gitlab_runner_limit gauge\n");
        for (runner, limit) in lock(&self.limits).iter() {
            out.push_str(&format!(
                "gitlab_runner_limit{{runner=\"{}\",system_id=\"{system_id}\"}} {limit}\n",
                escape(runner)
            ));
        }
        out.push_str(
            "# HELP gitlab_runner_jobs Jobs running now.\n# TYPE gitlab_runner_jobs gauge\n",
        );
        for (runner, running) in lock(&self.jobs_running).iter() {
            out.push_str(&format!("gitlab_runner_jobs{{runner=\"{}\",system_id=\"{system_id}\",state=\"running\"}} {running}\n", escape(runner)));
        }
        out.push_str("# HELP gitlab_runner_jobs_total Jobs started.\n# TYPE gitlab_runner_jobs_total counter\n");
        for (runner, total) in lock(&self.jobs_total).iter() {
            out.push_str(&format!(
                "gitlab_runner_jobs_total{{runner=\"{}\",system_id=\"{system_id}\"}} {total}\n",
                escape(runner)
            ));
        }
        out.push_str("# HELP gitlab_runner_failed_jobs_total Jobs that failed, by failure reason.\n# TYPE gitlab_runner_failed_jobs_total counter\n");
        for ((runner, reason), total) in lock(&self.failed_total).iter() {
            out.push_str(&format!("gitlab_runner_failed_jobs_total{{runner=\"{}\",system_id=\"{system_id}\",failure_reason=\"{}\"}} {total}\n", escape(runner), escape(reason)));
        }
        out.push_str("# HELP gitlab_runner_api_request_statuses_total Answers of GitLab's API, by endpoint and status.\n# TYPE gitlab_runner_api_request_statuses_total counter\n");
        for ((runner, endpoint, status), total) in lock(&self.api_statuses).iter() {
            out.push_str(&format!(
                "gitlab_runner_api_request_statuses_total{{runner=\"{}\",system_id=\"{system_id}\",endpoint=\"{}\",status=\"{}\"}} {total}\n",
                escape(runner),
                escape(endpoint),
                escape(status)
            ));
        }
        let fargate = lock(&self.fargate);
        out.push_str("# HELP podrunner_fargate_jobs_total Jobs whose pod ran on Fargate.\n# TYPE podrunner_fargate_jobs_total counter\n");
        out.push_str(&format!(
            "podrunner_fargate_jobs_total{{system_id=\"{system_id}\"}} {}\n",
            fargate.jobs
        ));
        out.push_str("# HELP podrunner_fargate_pod_seconds_total Seconds jobs' Fargate pods ran, from scheduling to deletion.\n# TYPE podrunner_fargate_pod_seconds_total counter\n");
        out.push_str(&format!(
            "podrunner_fargate_pod_seconds_total{{system_id=\"{system_id}\"}} {:.3}\n",
            fargate.seconds
        ));
        out.push_str("# HELP podrunner_fargate_cost_usd_total What jobs' Fargate pods cost, in US dollars at the configured prices.\n# TYPE podrunner_fargate_cost_usd_total counter\n");
        out.push_str(&format!(
            "podrunner_fargate_cost_usd_total{{system_id=\"{system_id}\"}} {:.6}\n",
            fargate.usd
        ));
        drop(fargate);
        out.push_str("# HELP podrunner_kubernetes_api_retries_total Kubernetes API calls retried, by call.\n# TYPE podrunner_kubernetes_api_retries_total counter\n");
        for (call, total) in lock(&self.kubernetes_retries).iter() {
            out.push_str(&format!(
                "podrunner_kubernetes_api_retries_total{{system_id=\"{system_id}\",call=\"{}\"}} {total}\n",
                escape(call)
            ));
        }
        out.push_str("# HELP podrunner_kubernetes_sweep_errors_total Failed calls of the sweep of stray pods and Secrets, by call.\n# TYPE podrunner_kubernetes_sweep_errors_total counter\n");
        for (call, total) in lock(&self.sweep_errors).iter() {
            out.push_str(&format!(
                "podrunner_kubernetes_sweep_errors_total{{system_id=\"{system_id}\",call=\"{}\"}} {total}\n",
                escape(call)
            ));
        }
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

    #[test]
    fn fargate_costs_and_kubernetes_retries_are_counted() {
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
            error: "secrets is forbidden".into(),
        }
        .count();
        let text = metrics().render();
        for line in [
            "podrunner_fargate_jobs_total{system_id=\"\"} 2\n",
            "podrunner_fargate_pod_seconds_total{system_id=\"\"} 120.500\n",
            "podrunner_fargate_cost_usd_total{system_id=\"\"} 0.005000\n",
            "podrunner_kubernetes_api_retries_total{system_id=\"\",call=\"create Pod\"} 1\n",
            "podrunner_kubernetes_sweep_errors_total{system_id=\"\",call=\"list Secrets\"} 1\n",
            "# TYPE podrunner_fargate_cost_usd_total counter\n",
        ] {
            assert!(text.contains(line), "{line:?} is not in:\n{text}");
        }
    }
}
