//! The EKS Fargate model: how big a pod's micro-VM is, what it costs, and what Fargate
//! refuses to run. Pure: everything is computed from a Pod and prices.

use std::fmt;

use k8s_openapi::api::core::v1::{Container, Pod};
use podrunner_config::{FargateConfig, Quantity};

/// Fargate adds this much memory for kubelet, kube-proxy and containerd.
pub const OVERHEAD_MIB: u64 = 256;
/// Ephemeral storage every pod gets.
pub const DEFAULT_STORAGE_GIB: u64 = 20;
/// The most ephemeral storage a pod can have.
pub const MAX_STORAGE_GIB: u64 = 175;
pub use podrunner_config::fargate::MINIMUM_BILLED_SECONDS;

/// The valid vCPU/memory combinations: vCPU in thousandths, memory in GiB (min, max, step).
const TABLE: &[(u32, u32, u32, u32)] = &[
    (250, 0, 2, 0),
    (500, 1, 4, 1),
    (1000, 2, 8, 1),
    (2000, 4, 16, 1),
    (4000, 8, 30, 1),
    (8000, 16, 60, 4),
    (16000, 32, 120, 8),
];

/// A Fargate size: vCPU and memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FargateSize {
    /// vCPU (0.25 to 16).
    pub vcpu: f64,
    /// Memory in GB as Fargate counts them (GiB).
    pub memory_gb: f64,
}

impl fmt::Display for FargateSize {
    /// As `CapacityProvisioned` writes it: `2vCPU 9GB`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}vCPU {}GB", self.vcpu, self.memory_gb)
    }
}

/// Every valid size, smallest first.
pub fn sizes() -> Vec<FargateSize> {
    let mut out = Vec::new();
    for &(millis, min, max, step) in TABLE {
        let vcpu = f64::from(millis) / 1000.0;
        if millis == 250 {
            for memory_gb in [0.5, 1.0, 2.0] {
                out.push(FargateSize { vcpu, memory_gb });
            }
            continue;
        }
        let mut gb = min;
        while gb <= max {
            out.push(FargateSize {
                vcpu,
                memory_gb: f64::from(gb),
            });
            gb += step;
        }
    }
    out
}

/// Why a pod has no Fargate size.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SizeError {
    /// More than the largest size.
    #[error(
        "the pod needs {vcpu} vCPU and {memory_gb:.2} GB (with Fargate's 256 MiB), more than Fargate's largest size, 16 vCPU / 120 GB"
    )]
    TooLarge {
        /// vCPU needed.
        vcpu: f64,
        /// GB needed.
        memory_gb: f64,
    },
    /// More ephemeral storage than Fargate gives.
    #[error("the pod requests {0} GiB of ephemeral storage; Fargate gives at most 175 GiB")]
    TooMuchStorage(u64),
}

/// A pod's Fargate size, with what it asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct PodSizing {
    /// The size Fargate will provision.
    pub size: FargateSize,
    /// vCPU the pod requests (max of init containers vs sum of containers).
    pub requested_vcpu: f64,
    /// Memory the pod requests, in GiB, before the 256 MiB.
    pub requested_memory_gb: f64,
    /// Ephemeral storage in GiB (20 unless requested above).
    pub storage_gb: u64,
}

fn request(container: &Container, resource: &str) -> Quantity {
    container
        .resources
        .as_ref()
        .and_then(|r| {
            r.requests
                .as_ref()
                .and_then(|q| q.get(resource))
                .or_else(|| r.limits.as_ref().and_then(|q| q.get(resource)))
        })
        .and_then(|q| q.0.parse().ok())
        .unwrap_or_else(Quantity::zero)
}

/// Sums regular containers, takes the max of init containers, and the larger of the two.
fn pod_request(pod: &Pod, resource: &str) -> Quantity {
    let Some(spec) = &pod.spec else {
        return Quantity::zero();
    };
    let sum = spec
        .containers
        .iter()
        .map(|c| request(c, resource))
        .fold(Quantity::zero(), |a, b| a.checked_add(&b).unwrap_or(a));
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| request(c, resource))
        .fold(Quantity::zero(), Quantity::max);
    sum.max(init)
}

/// The smallest size with at least `vcpu` and `memory_gb`.
pub fn round_up(vcpu: f64, memory_gb: f64) -> Result<FargateSize, SizeError> {
    sizes()
        .into_iter()
        .find(|s| s.vcpu + 1e-9 >= vcpu && s.memory_gb + 1e-9 >= memory_gb)
        .ok_or(SizeError::TooLarge { vcpu, memory_gb })
}

/// The size Fargate provisions for `pod`.
pub fn size_of(pod: &Pod) -> Result<PodSizing, SizeError> {
    let vcpu = pod_request(pod, "cpu").as_f64();
    let memory_gb = pod_request(pod, "memory").as_f64() / f64::from(1u32 << 30);
    let storage = pod_request(pod, "ephemeral-storage").as_f64() / f64::from(1u32 << 30);
    let storage_gb = (storage.ceil() as u64).max(DEFAULT_STORAGE_GIB);
    if storage_gb > MAX_STORAGE_GIB {
        return Err(SizeError::TooMuchStorage(storage_gb));
    }
    let size = round_up(vcpu, memory_gb + OVERHEAD_MIB as f64 / 1024.0)?;
    Ok(PodSizing {
        size,
        requested_vcpu: vcpu,
        requested_memory_gb: memory_gb,
        storage_gb,
    })
}

/// Parses `CapacityProvisioned` (`0.25vCPU 0.5GB`).
pub fn parse_capacity_provisioned(value: &str) -> Option<FargateSize> {
    let (cpu, memory) = value.trim().split_once(' ')?;
    let vcpu = cpu.strip_suffix("vCPU")?.parse().ok()?;
    let memory_gb = memory.trim().strip_suffix("GB")?.parse().ok()?;
    Some(FargateSize { vcpu, memory_gb })
}

/// Prices of a size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    /// USD per hour.
    pub usd_per_hour: f64,
}

impl Price {
    /// The price of `size` with `storage_gb` of ephemeral storage.
    pub fn of(size: FargateSize, storage_gb: u64, prices: &FargateConfig) -> Price {
        let extra_storage = storage_gb.saturating_sub(DEFAULT_STORAGE_GIB) as f64;
        Price {
            usd_per_hour: size.vcpu * prices.usd_per_vcpu_hour
                + size.memory_gb * prices.usd_per_gb_hour
                + extra_storage * prices.usd_per_extra_storage_gb_hour,
        }
    }

    /// USD per minute.
    pub fn usd_per_minute(&self) -> f64 {
        self.usd_per_hour / 60.0
    }

    /// The cost of running for `seconds`: per second, rounded up, at least one minute.
    pub fn cost(&self, seconds: f64) -> f64 {
        podrunner_config::fargate::billed_cost(self.usd_per_hour, seconds)
    }
}

/// The size and price of a pod Fargate provisioned as `capacity` (its `CapacityProvisioned`
/// annotation) at the runner's prices: the one place a job pod's price is decided. The
/// prelude's line, the agent's cost line (it gets this value in
/// [`podrunner_agent::FARGATE_PRICE_ANNOTATION`]) and the manager's cost metric all come
/// from it, and every cost from [`podrunner_agent::FargateBilling::cost`]. `None` when
/// `capacity` is not a size.
pub fn provisioned_billing(
    capacity: &str,
    prices: Option<&FargateConfig>,
) -> Option<podrunner_agent::FargateBilling> {
    let size = parse_capacity_provisioned(capacity)?;
    let default = FargateConfig::default();
    let price = Price::of(size, DEFAULT_STORAGE_GIB, prices.unwrap_or(&default));
    Some(podrunner_agent::FargateBilling {
        capacity: capacity.trim().to_owned(),
        usd_per_hour: price.usd_per_hour,
    })
}

/// What a job's Fargate pod cost, for the manager's metric: the cost the agent's `report`
/// carries (the one the job's log says, from `billing`), or, when it has none (the agent
/// died, or was not handed the price), `billing` over the pod's `pod_seconds` so far.
pub fn job_cost(
    billing: &podrunner_agent::FargateBilling,
    report: Option<&podrunner_agent::TerminationReport>,
    pod_seconds: f64,
) -> podrunner_agent::FargateCost {
    report
        .and_then(|r| r.fargate.clone())
        .unwrap_or_else(|| billing.cost(pod_seconds))
}

/// What Fargate refuses in `pod`, each naming the container and field.
pub fn unsupported(pod: &Pod) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(spec) = &pod.spec else {
        return problems;
    };
    if spec.host_network == Some(true) {
        problems.push(
            "spec.hostNetwork is true: Fargate pods cannot use the node's network".to_owned(),
        );
    }
    if spec.host_pid == Some(true) || spec.host_ipc == Some(true) {
        problems.push(
            "spec.hostPID/hostIPC is true: Fargate pods cannot share the node's namespaces"
                .to_owned(),
        );
    }
    for volume in spec.volumes.iter().flatten() {
        if volume.host_path.is_some() {
            problems.push(format!(
                "volume {}: hostPath volumes are not supported on Fargate",
                volume.name
            ));
        }
        if volume.aws_elastic_block_store.is_some() {
            problems.push(format!(
                "volume {}: EBS volumes are not supported on Fargate",
                volume.name
            ));
        }
    }
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter());
    for container in containers {
        let name = &container.name;
        if let Some(security) = &container.security_context {
            if security.privileged == Some(true) {
                problems.push(format!("container {name}: securityContext.privileged is true; Fargate runs no privileged containers (docker-in-docker cannot work: build images with kaniko or buildah, or route the job to EC2 nodes with other labels)"));
            }
            if security.allow_privilege_escalation == Some(true) {
                problems.push(format!("container {name}: securityContext.allowPrivilegeEscalation is true; Fargate refuses it"));
            }
            if let Some(added) = security
                .capabilities
                .as_ref()
                .and_then(|c| c.add.as_ref())
                .filter(|a| !a.is_empty())
            {
                problems.push(format!("container {name}: securityContext.capabilities.add {added:?}; Fargate refuses added capabilities (dropping is fine)"));
            }
        }
        for port in container.ports.iter().flatten() {
            if port.host_port.is_some() || port.host_ip.is_some() {
                problems.push(format!(
                    "container {name}: port {} uses hostPort/hostIP; Fargate refuses them",
                    port.container_port
                ));
            }
        }
        let gpus = container
            .resources
            .as_ref()
            .into_iter()
            .flat_map(|r| r.requests.iter().flatten().chain(r.limits.iter().flatten()))
            .map(|(k, _)| k.as_str())
            .find(|k| k.contains("gpu") || k.contains("neuron"));
        if let Some(gpu) = gpus {
            problems.push(format!(
                "container {name}: resources ask for {gpu}; Fargate has no GPUs or Inferentia"
            ));
        }
    }
    problems
}

/// When something other than the build container pushes the pod into a bigger size: which
/// size the build container alone would get, and why the pod does not.
pub fn tier_warning(pod: &Pod, sizing: &PodSizing) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let build = spec.containers.iter().find(|c| c.name == "build")?;
    let alone_vcpu = request(build, "cpu").as_f64();
    let alone_memory = request(build, "memory").as_f64() / f64::from(1u32 << 30);
    let without_overhead = round_up(alone_vcpu, alone_memory).ok()?;
    let with_overhead = round_up(alone_vcpu, alone_memory + OVERHEAD_MIB as f64 / 1024.0).ok()?;
    if with_overhead != sizing.size && spec.containers.len() > 1 {
        return Some(format!(
            "services push the pod from {with_overhead} (the build container alone) to {}: lower the service requests to stay at {with_overhead}",
            sizing.size
        ));
    }
    if without_overhead != with_overhead && with_overhead == sizing.size {
        let fits = without_overhead.memory_gb * 1024.0 - OVERHEAD_MIB as f64;
        return Some(format!(
            "Fargate's 256 MiB overhead pushes the pod from {without_overhead} to {with_overhead}: a memory request of {fits:.0}Mi or less keeps it at {without_overhead}"
        ));
    }
    None
}

/// What `podrunner plan` says about a pod on Fargate.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Prediction {
    /// The declared profile that takes the pod; `None` when Fargate is assumed.
    pub profile: Option<String>,
    /// vCPU the pod requests.
    pub requested_vcpu: f64,
    /// Memory the pod requests, GB.
    pub requested_memory_gb: f64,
    /// The provisioned vCPU.
    pub vcpu: f64,
    /// The provisioned memory, GB.
    pub memory_gb: f64,
    /// Ephemeral storage, GB.
    pub storage_gb: u64,
    /// USD per hour.
    pub usd_per_hour: f64,
    /// USD per minute.
    pub usd_per_minute: f64,
    /// Paid for but not requested: vCPU.
    pub waste_vcpu: f64,
    /// Paid for but not requested: GB (the 256 MiB overhead included).
    pub waste_memory_gb: f64,
    /// What Fargate would refuse, or why the pod fits no size.
    pub problems: Vec<String>,
    /// Requests that push the pod into a bigger size.
    pub warnings: Vec<String>,
}

/// With declared Fargate profiles, the warning for a pod none of them selects: EKS schedules
/// it like any pod (to EC2 nodes, if the cluster has any), and on a cluster without nodes it
/// stays Pending (`awsdocs/amazon-eks-user-guide` `fargate.adoc`: selection happens at
/// scheduling time, and a pod no profile matches may stay Pending). `None` without declared
/// profiles, or when one selects the pod.
pub fn unmatched_profile_warning(pod: &Pod, config: Option<&FargateConfig>) -> Option<String> {
    let config = config.filter(|c| !c.profiles.is_empty())?;
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    if config.profile_for(&namespace, &labels).is_some() {
        return None;
    }
    let names: Vec<&str> = config.profiles.iter().map(|p| p.name.as_str()).collect();
    Some(format!(
        "no declared Fargate profile ({}) selects this pod (namespace {namespace:?}): it runs on EC2 nodes if the cluster has any, else it stays Pending until poll_timeout; check the profiles' namespace and labels against pod_labels",
        names.join(", ")
    ))
}

/// Predicts placement and size: the declared profiles decide whether the pod goes to
/// Fargate; without profiles, `assume` says it does. `None`: the pod would not run there.
pub fn predict(pod: &Pod, config: Option<&FargateConfig>, assume: bool) -> Option<Prediction> {
    let defaults = FargateConfig::default();
    let prices = config.unwrap_or(&defaults);
    let metadata = &pod.metadata;
    let namespace = metadata.namespace.clone().unwrap_or_default();
    let labels = metadata.labels.clone().unwrap_or_default();
    let profile = match config.filter(|c| !c.profiles.is_empty()) {
        Some(config) => Some(config.profile_for(&namespace, &labels)?.name.clone()),
        None if assume => None,
        None => return None,
    };
    let mut problems = unsupported(pod);
    let (sizing, warnings) = match size_of(pod) {
        Ok(sizing) => {
            let warnings = tier_warning(pod, &sizing).into_iter().collect();
            (Some(sizing), warnings)
        }
        Err(error) => {
            problems.push(error.to_string());
            (None, Vec::new())
        }
    };
    let (size, requested_vcpu, requested_memory_gb, storage_gb) = match &sizing {
        Some(s) => (
            s.size,
            s.requested_vcpu,
            s.requested_memory_gb,
            s.storage_gb,
        ),
        None => (
            FargateSize {
                vcpu: 0.0,
                memory_gb: 0.0,
            },
            0.0,
            0.0,
            DEFAULT_STORAGE_GIB,
        ),
    };
    let price = Price::of(size, storage_gb, prices);
    Some(Prediction {
        profile,
        requested_vcpu,
        requested_memory_gb,
        vcpu: size.vcpu,
        memory_gb: size.memory_gb,
        storage_gb,
        usd_per_hour: price.usd_per_hour,
        usd_per_minute: price.usd_per_minute(),
        waste_vcpu: (size.vcpu - requested_vcpu).max(0.0),
        waste_memory_gb: (size.memory_gb - requested_memory_gb).max(0.0),
        problems,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_provisioned_billing_survives_the_annotation_and_prices_the_cost_once() {
        let prices = FargateConfig::default();
        let billing = provisioned_billing(" 2vCPU 9GB", Some(&prices)).unwrap();
        assert_eq!(billing.capacity, "2vCPU 9GB");
        let seed = Price::of(
            FargateSize {
                vcpu: 2.0,
                memory_gb: 9.0,
            },
            DEFAULT_STORAGE_GIB,
            &prices,
        );
        assert_eq!(billing.usd_per_hour, seed.usd_per_hour);
        // The agent reads the very price (not one printed to six digits and parsed back).
        let handed =
            podrunner_agent::FargateBilling::from_annotation(&billing.to_annotation()).unwrap();
        assert_eq!(handed, billing);
        assert_eq!(handed.cost(90.2).usd, seed.cost(90.2));
        assert_eq!(handed.cost(90.2).seconds, 91.0);
        assert_eq!(provisioned_billing("2 vCPU", None), None);

        // The metric counts the cost the job's log said, not the pod's own time.
        let said = handed.cost(75.0);
        let report = podrunner_agent::TerminationReport {
            final_update_delivered: true,
            state: podrunner_gitlab::api::JobState::Success,
            failure_reason: None,
            exit_code: None,
            trace_bytes_sent: 1,
            aborted: false,
            fargate: Some(said.clone()),
        };
        assert_eq!(job_cost(&handed, Some(&report), 130.0), said);
        // Without one, the pod's time at the same price.
        let unreported = podrunner_agent::TerminationReport {
            fargate: None,
            ..report
        };
        assert_eq!(
            job_cost(&handed, Some(&unreported), 130.0),
            handed.cost(130.0)
        );
        assert_eq!(job_cost(&handed, None, 130.0), handed.cost(130.0));
    }
    use k8s_openapi::api::core::v1::{PodSpec, ResourceRequirements};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity as Q;
    use std::collections::BTreeMap;

    fn container(name: &str, cpu: &str, memory: &str) -> Container {
        let mut requests = BTreeMap::new();
        if !cpu.is_empty() {
            requests.insert("cpu".to_owned(), Q(cpu.to_owned()));
        }
        if !memory.is_empty() {
            requests.insert("memory".to_owned(), Q(memory.to_owned()));
        }
        Container {
            name: name.to_owned(),
            resources: Some(ResourceRequirements {
                requests: Some(requests),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn pod(containers: Vec<Container>, init: Vec<Container>) -> Pod {
        Pod {
            spec: Some(PodSpec {
                containers,
                init_containers: Some(init),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn size(containers: Vec<Container>, init: Vec<Container>) -> FargateSize {
        size_of(&pod(containers, init)).unwrap().size
    }

    #[test]
    fn every_boundary_of_the_table() {
        let all = sizes();
        assert_eq!(all.len(), 3 + 4 + 7 + 13 + 23 + 12 + 12);
        // For each size: exactly its resources land on it; a hair more lands on the next one up.
        for (i, s) in all.iter().enumerate() {
            assert_eq!(round_up(s.vcpu, s.memory_gb).unwrap(), *s, "{s}");
            if let Some(next) = all.get(i + 1).filter(|n| n.vcpu == s.vcpu) {
                assert_eq!(round_up(s.vcpu, s.memory_gb + 0.001).unwrap(), *next, "{s}");
            }
        }
        assert_eq!(
            round_up(0.25, 2.5).unwrap(),
            FargateSize {
                vcpu: 0.5,
                memory_gb: 3.0
            },
            "memory moves to the next vCPU row"
        );
        assert_eq!(
            round_up(1.0, 8.01).unwrap(),
            FargateSize {
                vcpu: 2.0,
                memory_gb: 9.0
            }
        );
        assert_eq!(
            round_up(4.0, 30.5).unwrap(),
            FargateSize {
                vcpu: 8.0,
                memory_gb: 32.0
            },
            "8 vCPU goes in 4 GB steps"
        );
        assert_eq!(
            round_up(8.0, 61.0).unwrap(),
            FargateSize {
                vcpu: 16.0,
                memory_gb: 64.0
            },
            "16 vCPU goes in 8 GB steps"
        );
        assert_eq!(
            round_up(16.0, 120.0).unwrap(),
            FargateSize {
                vcpu: 16.0,
                memory_gb: 120.0
            }
        );
        assert!(matches!(
            round_up(16.0, 121.0),
            Err(SizeError::TooLarge { .. })
        ));
        assert!(matches!(
            round_up(17.0, 1.0),
            Err(SizeError::TooLarge { .. })
        ));
    }

    #[test]
    fn worked_examples() {
        // AWS: 1 vCPU + 8 GB becomes 8.25 GB with the overhead: 2 vCPU / 9 GB.
        assert_eq!(
            size(vec![container("build", "1", "8Gi")], vec![]),
            FargateSize {
                vcpu: 2.0,
                memory_gb: 9.0
            }
        );
        // Nothing requested: the smallest size.
        assert_eq!(
            size(vec![container("build", "", "")], vec![]),
            FargateSize {
                vcpu: 0.25,
                memory_gb: 0.5
            }
        );
        // Build 1 vCPU / 2 GiB + helper 0.25 vCPU / 256 MiB: 1.25 vCPU, 2.5 GB: 2 vCPU / 4 GB.
        assert_eq!(
            size(
                vec![
                    container("build", "1", "2Gi"),
                    container("helper", "250m", "256Mi")
                ],
                vec![]
            ),
            FargateSize {
                vcpu: 2.0,
                memory_gb: 4.0
            }
        );
        // Build alone at 1 vCPU / 1792 MiB fits 1 vCPU / 2 GB.
        assert_eq!(
            size(vec![container("build", "1", "1792Mi")], vec![]),
            FargateSize {
                vcpu: 1.0,
                memory_gb: 2.0
            }
        );
        // Init containers count as a max, not a sum.
        assert_eq!(
            size(
                vec![container("build", "1", "2Gi")],
                vec![container("init", "1", "2Gi")]
            ),
            size(vec![container("build", "1", "2Gi")], vec![])
        );
        assert_eq!(
            size(
                vec![container("build", "250m", "256Mi")],
                vec![container("init", "4", "1Gi")]
            ),
            FargateSize {
                vcpu: 4.0,
                memory_gb: 8.0
            }
        );
        // The seed deployment: 2 vCPU / 8 GiB becomes 2 vCPU / 9 GB.
        assert_eq!(
            size(vec![container("build", "2", "8Gi")], vec![]),
            FargateSize {
                vcpu: 2.0,
                memory_gb: 9.0
            }
        );
    }

    #[test]
    fn capacity_provisioned_and_prices() {
        assert_eq!(
            parse_capacity_provisioned("0.25vCPU 0.5GB"),
            Some(FargateSize {
                vcpu: 0.25,
                memory_gb: 0.5
            })
        );
        assert_eq!(
            parse_capacity_provisioned("2vCPU 9GB"),
            Some(FargateSize {
                vcpu: 2.0,
                memory_gb: 9.0
            })
        );
        assert_eq!(parse_capacity_provisioned("2 vCPU"), None);
        assert_eq!(
            FargateSize {
                vcpu: 2.0,
                memory_gb: 9.0
            }
            .to_string(),
            "2vCPU 9GB"
        );
        let prices = FargateConfig::default();
        let price = Price::of(
            FargateSize {
                vcpu: 2.0,
                memory_gb: 4.0,
            },
            20,
            &prices,
        );
        assert!(
            (price.usd_per_hour - 0.09874).abs() < 1e-9,
            "{}",
            price.usd_per_hour
        );
        let seed = Price::of(
            FargateSize {
                vcpu: 2.0,
                memory_gb: 9.0,
            },
            20,
            &prices,
        );
        assert!((seed.usd_per_hour - 0.120965).abs() < 1e-9);
        assert!(
            (seed.cost(10.0) - seed.cost(60.0)).abs() < 1e-12,
            "one-minute minimum"
        );
        assert!(
            (seed.cost(90.2) - seed.usd_per_hour * 91.0 / 3600.0).abs() < 1e-12,
            "rounded up to the second"
        );
        let storage = Price::of(
            FargateSize {
                vcpu: 0.25,
                memory_gb: 0.5,
            },
            120,
            &prices,
        );
        assert!(
            (storage.usd_per_hour - (0.25 * 0.04048 + 0.5 * 0.004445 + 100.0 * 0.000111)).abs()
                < 1e-12
        );
    }

    #[test]
    fn unsupported_features_name_container_and_field() {
        let mut privileged = container("build", "1", "1Gi");
        privileged.security_context = Some(k8s_openapi::api::core::v1::SecurityContext {
            privileged: Some(true),
            capabilities: Some(k8s_openapi::api::core::v1::Capabilities {
                add: Some(vec!["NET_ADMIN".into()]),
                drop: Some(vec!["NET_RAW".into()]),
            }),
            ..Default::default()
        });
        let mut p = pod(vec![privileged, container("svc-0", "", "")], vec![]);
        p.spec.as_mut().unwrap().volumes = Some(vec![k8s_openapi::api::core::v1::Volume {
            name: "docker".into(),
            host_path: Some(k8s_openapi::api::core::v1::HostPathVolumeSource {
                path: "/var/run/docker.sock".into(),
                type_: None,
            }),
            ..Default::default()
        }]);
        let problems = unsupported(&p);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("hostPath"));
        assert!(
            problems[1].starts_with("container build: securityContext.privileged is true")
                && problems[1].contains("kaniko or buildah")
        );
        assert!(problems[2].contains("capabilities.add [\"NET_ADMIN\"]"));
        assert!(
            unsupported(&pod(vec![container("build", "1", "1Gi")], vec![])).is_empty(),
            "dropping capabilities is fine"
        );
        assert!(matches!(
            size_of(&pod(
                vec![{
                    let mut c = container("build", "1", "1Gi");
                    c.resources
                        .as_mut()
                        .unwrap()
                        .requests
                        .as_mut()
                        .unwrap()
                        .insert("ephemeral-storage".into(), Q("200Gi".into()));
                    c
                }],
                vec![]
            )),
            Err(SizeError::TooMuchStorage(200))
        ));
    }

    #[test]
    fn tier_warnings() {
        let overhead = pod(vec![container("build", "1", "2Gi")], vec![]);
        let sizing = size_of(&overhead).unwrap();
        assert_eq!(
            sizing.size,
            FargateSize {
                vcpu: 1.0,
                memory_gb: 3.0
            }
        );
        assert_eq!(
            tier_warning(&overhead, &sizing).unwrap(),
            "Fargate's 256 MiB overhead pushes the pod from 1vCPU 2GB to 1vCPU 3GB: a memory request of 1792Mi or less keeps it at 1vCPU 2GB"
        );
        let services = pod(
            vec![container("build", "1", "1Gi"), container("db", "1", "1Gi")],
            vec![],
        );
        let sizing = size_of(&services).unwrap();
        assert!(tier_warning(&services, &sizing).unwrap().starts_with(
            "services push the pod from 1vCPU 2GB (the build container alone) to 2vCPU 4GB"
        ));
        let fine = pod(vec![container("build", "1", "1Gi")], vec![]);
        assert_eq!(tier_warning(&fine, &size_of(&fine).unwrap()), None);
    }
}
