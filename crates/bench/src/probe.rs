//! What the benchmarks read of the manager process (`/proc`) and of the stand-in's pods while
//! jobs load it: shared by the `kubernetes` and `scale` benchmarks.

use std::time::{Duration, Instant};

use podrunner_testkit::KubernetesStandIn;

/// `VmRSS` and `VmHWM` of `pid`, in KiB.
pub fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// User plus system CPU seconds of `pid` (`/proc/<pid>/stat` fields 14 and 15, in USER_HZ
/// ticks, which Linux fixes at 100 per second for this file).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces: count from after its closing parenthesis.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // After ")": field 3 is index 0, so utime (14) is 11 and stime (15) is 12.
    (tick(11) + tick(12)) as f64 / 100.0
}

/// Threads of `pid`.
pub fn threads(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Pods in phase Running.
pub fn running(kube: &KubernetesStandIn) -> usize {
    kube.objects("Pod")
        .iter()
        .filter(|p| p["status"]["phase"] == "Running")
        .count()
}

/// What [`load`] saw.
pub struct Load {
    /// Seconds until `target` pods ran, if they did within the limit.
    pub seconds: Option<f64>,
    /// The most pods seen running at once.
    pub running_max: usize,
    /// The manager's highest RSS (KiB) seen meanwhile.
    pub rss_max_kib: u64,
}

/// Samples (every 250 ms) the running pods and the RSS of manager `pid` until `target` pods
/// run and at least `at_least` passed, or `limit` passed.
pub async fn load(
    kube: &KubernetesStandIn,
    pid: u32,
    target: usize,
    at_least: Duration,
    limit: Duration,
) -> Load {
    let start = Instant::now();
    let mut seen = Load {
        seconds: None,
        running_max: 0,
        rss_max_kib: 0,
    };
    while start.elapsed() < limit {
        seen.rss_max_kib = seen.rss_max_kib.max(memory_kib(pid).0);
        let running = running(kube);
        seen.running_max = seen.running_max.max(running);
        if running >= target && seen.seconds.is_none() {
            seen.seconds = Some(start.elapsed().as_secs_f64());
        }
        if seen.seconds.is_some() && start.elapsed() >= at_least {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    seen
}
