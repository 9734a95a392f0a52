//! The pod conditions the kubelet reports with every status it writes, as Kubernetes v1.33
//! does (kubernetes `pkg/kubelet/kubelet_pods.go`, `generateAPIPodStatus`):
//! `PodReadyToStartContainers`, `Initialized`, `Ready`, `ContainersReady`, then `PodScheduled`
//! (always `True` from the kubelet), after the conditions the kubelet does not own (such as
//! `DisruptionTarget`), which it keeps as the API server has them (`mergePodStatus` in
//! `pkg/kubelet/status/status_manager.go`). The owned types are `PodConditionsByKubelet`
//! (`pkg/kubelet/types/pod_status.go`).
//!
//! - Status, reason and message come from `pkg/kubelet/status/generate.go`:
//!   `GeneratePodInitializedCondition`, `GenerateContainersReadyCondition`,
//!   `GeneratePodReadyCondition` (which also checks `spec.readinessGates`) and
//!   `GeneratePodReadyToStartContainersCondition` (`True` once the pod's sandbox exists; the
//!   `PodReadyToStartContainersCondition` gate is beta and on since v1.29,
//!   `pkg/features/kube_features.go`). Names are listed as Go prints a `[]string`: `[a b]`.
//! - `lastTransitionTime` changes only when a condition's status does
//!   (`updateLastTransitionTime` in `status_manager.go`); `lastProbeTime` is `null`, as the
//!   API server writes an unset `metav1.Time`.
//! - A container's `ready` is the prober's (`UpdatePodStatus` in
//!   `pkg/kubelet/prober/prober_manager.go`): a container is ready while it runs (the stand-in
//!   runs no readiness probes), an init container once it exited with 0.
//!
//! Not modelled: restartable init containers (sidecars; the stand-in's kubelet runs every init
//! container to its end), `observedGeneration` (alpha and off in v1.33).

use serde_json::{Value, json};

/// The condition types the kubelet owns, in the order it writes them.
const BY_KUBELET: [&str; 5] = [
    "PodReadyToStartContainers",
    "Initialized",
    "Ready",
    "ContainersReady",
    "PodScheduled",
];

/// A condition as `generate.go` builds it: type, status, reason, message.
struct Condition {
    type_: &'static str,
    status: &'static str,
    reason: Option<&'static str>,
    message: Option<String>,
}

impl Condition {
    fn new(type_: &'static str, status: &'static str) -> Condition {
        Condition {
            type_,
            status,
            reason: None,
            message: None,
        }
    }

    fn because(mut self, reason: &'static str, message: Option<String>) -> Condition {
        self.reason = Some(reason);
        self.message = message.filter(|m| !m.is_empty());
        self
    }
}

/// Sets the prober's `ready` on the pod's container statuses and writes the kubelet's
/// conditions into `pod.status.conditions`; `sandbox_ready` says whether the pod's sandbox
/// exists, `now` is the time of this status.
pub(super) fn generate(pod: &mut Value, sandbox_ready: bool, now: &str) {
    set_readiness(pod);
    let old: Vec<Value> = pod["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let phase = pod["status"]["phase"]
        .as_str()
        .unwrap_or("Pending")
        .to_owned();
    let mut conditions: Vec<Value> = old
        .iter()
        .filter(|c| !BY_KUBELET.contains(&c["type"].as_str().unwrap_or_default()))
        .cloned()
        .collect();
    let containers_ready = containers_ready(pod, &phase);
    let ready = ready(pod, &conditions, &containers_ready);
    let generated = [
        Condition::new(
            "PodReadyToStartContainers",
            if sandbox_ready { "True" } else { "False" },
        ),
        initialized(pod, &phase),
        ready,
        containers_ready,
        Condition::new("PodScheduled", "True"),
    ];
    for condition in generated {
        let before = old
            .iter()
            .find(|c| c["type"].as_str() == Some(condition.type_));
        let since = match before {
            Some(c) if c["status"].as_str() == Some(condition.status) => {
                c["lastTransitionTime"].clone()
            }
            _ => json!(now),
        };
        let mut value = json!({
            "type": condition.type_, "status": condition.status,
            "lastProbeTime": null, "lastTransitionTime": since,
        });
        if let Some(reason) = condition.reason {
            value["reason"] = json!(reason);
        }
        if let Some(message) = condition.message {
            value["message"] = json!(message);
        }
        conditions.push(value);
    }
    pod["status"]["conditions"] = json!(conditions);
}

/// The prober's readiness: containers while running, init containers once exited with 0.
fn set_readiness(pod: &mut Value) {
    if let Some(statuses) = pod["status"]["containerStatuses"].as_array_mut() {
        for status in statuses {
            status["ready"] = json!(status["state"].get("running").is_some());
        }
    }
    if let Some(statuses) = pod["status"]["initContainerStatuses"].as_array_mut() {
        for status in statuses {
            status["ready"] = json!(status["state"]["terminated"]["exitCode"].as_i64() == Some(0));
        }
    }
}

/// The names of the containers in `spec.<field>`.
fn names<'a>(pod: &'a Value, field: &str) -> Vec<&'a str> {
    pod["spec"][field]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect()
}

/// The status of container `name` among the init and regular container statuses.
fn status_of<'a>(pod: &'a Value, name: &str) -> Option<&'a Value> {
    ["initContainerStatuses", "containerStatuses"]
        .iter()
        .filter_map(|field| pod["status"][field].as_array())
        .flatten()
        .find(|s| s["name"].as_str() == Some(name))
}

/// Whether the kubelet has reported no container status at all (Go's nil slice).
fn no_statuses(pod: &Value) -> bool {
    ["initContainerStatuses", "containerStatuses"]
        .iter()
        .all(|field| pod["status"][field].as_array().is_none_or(Vec::is_empty))
}

/// Go's `%s` of a `[]string`.
fn go_list(names: &[&str]) -> String {
    format!("[{}]", names.join(" "))
}

/// `GeneratePodInitializedCondition`.
fn initialized(pod: &Value, phase: &str) -> Condition {
    let init = names(pod, "initContainers");
    if no_statuses(pod) && !init.is_empty() {
        return Condition::new("Initialized", "False").because("UnknownContainerStatuses", None);
    }
    let mut unknown = Vec::new();
    let mut incomplete = Vec::new();
    for name in init {
        match status_of(pod, name) {
            None => unknown.push(name),
            Some(status) if status["ready"] != json!(true) => incomplete.push(name),
            Some(_) => {}
        }
    }
    if phase == "Succeeded" && unknown.is_empty() {
        return Condition::new("Initialized", "True").because("PodCompleted", None);
    }
    // `HasAnyRegularContainerStarted` (`pkg/kubelet/container/helpers.go`).
    let regular_started = names(pod, "containers").into_iter().any(|name| {
        status_of(pod, name).is_some_and(|s| {
            s["state"].get("running").is_some() || s["state"].get("terminated").is_some()
        })
    });
    if regular_started {
        return Condition::new("Initialized", "True");
    }
    let mut messages = Vec::new();
    if !unknown.is_empty() {
        messages.push(format!(
            "containers with unknown status: {}",
            go_list(&unknown)
        ));
    }
    if !incomplete.is_empty() {
        messages.push(format!(
            "containers with incomplete status: {}",
            go_list(&incomplete)
        ));
    }
    if messages.is_empty() {
        return Condition::new("Initialized", "True");
    }
    Condition::new("Initialized", "False")
        .because("ContainersNotInitialized", Some(messages.join(", ")))
}

/// `GenerateContainersReadyCondition`.
fn containers_ready(pod: &Value, phase: &str) -> Condition {
    if no_statuses(pod) {
        return Condition::new("ContainersReady", "False")
            .because("UnknownContainerStatuses", None);
    }
    let mut unknown = Vec::new();
    let mut unready = Vec::new();
    for name in names(pod, "containers") {
        match status_of(pod, name) {
            None => unknown.push(name),
            Some(status) if status["ready"] != json!(true) => unready.push(name),
            Some(_) => {}
        }
    }
    if phase == "Succeeded" && unknown.is_empty() {
        return Condition::new("ContainersReady", "False").because("PodCompleted", None);
    }
    if phase == "Failed" {
        return Condition::new("ContainersReady", "False").because("PodFailed", None);
    }
    let mut messages = Vec::new();
    if !unknown.is_empty() {
        messages.push(format!(
            "containers with unknown status: {}",
            go_list(&unknown)
        ));
    }
    if !unready.is_empty() {
        messages.push(format!(
            "containers with unready status: {}",
            go_list(&unready)
        ));
    }
    if messages.is_empty() {
        return Condition::new("ContainersReady", "True");
    }
    Condition::new("ContainersReady", "False")
        .because("ContainersNotReady", Some(messages.join(", ")))
}

/// `GeneratePodReadyCondition`: `ContainersReady`'s status, reason and message until it is
/// `True`, then the readiness gates against the conditions the kubelet does not own.
fn ready(pod: &Value, conditions: &[Value], containers_ready: &Condition) -> Condition {
    if containers_ready.status != "True" {
        return Condition {
            type_: "Ready",
            status: containers_ready.status,
            reason: containers_ready.reason,
            message: containers_ready.message.clone(),
        };
    }
    let mut messages = Vec::new();
    for gate in pod["spec"]["readinessGates"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let gate = gate["conditionType"].as_str().unwrap_or_default();
        match conditions.iter().find(|c| c["type"].as_str() == Some(gate)) {
            None => messages.push(format!(
                "corresponding condition of pod readiness gate {gate:?} does not exist."
            )),
            Some(c) if c["status"].as_str() != Some("True") => messages.push(format!(
                "the status of pod readiness gate {gate:?} is not \"True\", but {}",
                c["status"].as_str().unwrap_or_default()
            )),
            Some(_) => {}
        }
    }
    if messages.is_empty() {
        return Condition::new("Ready", "True");
    }
    Condition::new("Ready", "False").because("ReadinessGatesNotReady", Some(messages.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The condition of `type_` as (status, reason, message).
    fn condition(pod: &Value, type_: &str) -> (String, String, String) {
        let c = pod["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == type_)
            .unwrap_or_else(|| panic!("no {type_} condition in {pod}"));
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        (text(&c["status"]), text(&c["reason"]), text(&c["message"]))
    }

    fn pod(init: &[&str], containers: &[&str]) -> Value {
        let list = |names: &[&str]| names.iter().map(|n| json!({"name": n})).collect::<Vec<_>>();
        json!({"spec": {"initContainers": list(init), "containers": list(containers)},
               "status": {"phase": "Pending"}})
    }

    fn state(name: &str, state: Value) -> Value {
        json!({"name": name, "ready": false, "state": state})
    }

    fn running(name: &str) -> Value {
        state(name, json!({"running": {}}))
    }

    fn waiting(name: &str) -> Value {
        state(name, json!({"waiting": {"reason": "PodInitializing"}}))
    }

    fn exited(name: &str, code: i64) -> Value {
        state(name, json!({"terminated": {"exitCode": code}}))
    }

    fn s(text: &str) -> String {
        text.to_owned()
    }

    #[test]
    fn before_any_status_the_containers_are_unknown() {
        let mut p = pod(&["init"], &["build"]);
        generate(&mut p, false, "t0");
        assert_eq!(
            condition(&p, "Initialized"),
            (s("False"), s("UnknownContainerStatuses"), s(""))
        );
        assert_eq!(
            condition(&p, "ContainersReady"),
            (s("False"), s("UnknownContainerStatuses"), s(""))
        );
        assert_eq!(
            condition(&p, "Ready"),
            (s("False"), s("UnknownContainerStatuses"), s(""))
        );
        assert_eq!(
            condition(&p, "PodReadyToStartContainers"),
            (s("False"), s(""), s(""))
        );
    }

    #[test]
    fn an_init_container_that_has_not_exited_holds_initialized_back() {
        let mut p = pod(&["init", "clone"], &["build", "helper"]);
        p["status"]["initContainerStatuses"] = json!([exited("init", 0), running("clone")]);
        p["status"]["containerStatuses"] = json!([waiting("build"), waiting("helper")]);
        generate(&mut p, true, "t0");
        assert_eq!(
            condition(&p, "Initialized"),
            (
                s("False"),
                s("ContainersNotInitialized"),
                s("containers with incomplete status: [clone]")
            )
        );
        assert_eq!(
            condition(&p, "ContainersReady"),
            (
                s("False"),
                s("ContainersNotReady"),
                s("containers with unready status: [build helper]")
            )
        );
        assert_eq!(
            p["status"]["initContainerStatuses"][0]["ready"],
            json!(true),
            "an init container that exited with 0 is ready"
        );
        assert_eq!(
            condition(&p, "PodReadyToStartContainers"),
            (s("True"), s(""), s(""))
        );
    }

    #[test]
    fn a_failed_init_container_is_incomplete() {
        let mut p = pod(&["init"], &["build"]);
        p["status"]["initContainerStatuses"] = json!([exited("init", 1)]);
        p["status"]["containerStatuses"] = json!([waiting("build")]);
        generate(&mut p, true, "t0");
        assert_eq!(
            condition(&p, "Initialized"),
            (
                s("False"),
                s("ContainersNotInitialized"),
                s("containers with incomplete status: [init]")
            )
        );
    }

    #[test]
    fn all_containers_running_make_the_pod_ready() {
        let mut p = pod(&["init"], &["build", "helper"]);
        p["status"]["phase"] = json!("Running");
        p["status"]["initContainerStatuses"] = json!([exited("init", 0)]);
        p["status"]["containerStatuses"] = json!([running("build"), running("helper")]);
        generate(&mut p, true, "t0");
        for type_ in [
            "PodReadyToStartContainers",
            "Initialized",
            "Ready",
            "ContainersReady",
            "PodScheduled",
        ] {
            assert_eq!(condition(&p, type_), (s("True"), s(""), s("")), "{type_}");
        }
        let types: Vec<&str> = p["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, BY_KUBELET, "the kubelet's order");
    }

    #[test]
    fn one_container_not_running_keeps_the_pod_unready() {
        let mut p = pod(&[], &["build", "helper"]);
        p["status"]["phase"] = json!("Running");
        p["status"]["containerStatuses"] = json!([running("build"), exited("helper", 0)]);
        generate(&mut p, true, "t0");
        assert_eq!(
            condition(&p, "Ready"),
            (
                s("False"),
                s("ContainersNotReady"),
                s("containers with unready status: [helper]")
            )
        );
        assert_eq!(
            condition(&p, "Initialized"),
            (s("True"), s(""), s("")),
            "a regular container started"
        );
    }

    #[test]
    fn a_container_without_status_is_unknown() {
        let mut p = pod(&[], &["build", "helper"]);
        p["status"]["containerStatuses"] = json!([running("build")]);
        generate(&mut p, true, "t0");
        assert_eq!(
            condition(&p, "ContainersReady"),
            (
                s("False"),
                s("ContainersNotReady"),
                s("containers with unknown status: [helper]")
            )
        );
    }

    #[test]
    fn a_finished_pod_says_how_it_ended() {
        let mut p = pod(&["init"], &["build"]);
        p["status"]["phase"] = json!("Succeeded");
        p["status"]["initContainerStatuses"] = json!([exited("init", 0)]);
        p["status"]["containerStatuses"] = json!([exited("build", 0)]);
        generate(&mut p, false, "t0");
        assert_eq!(
            condition(&p, "Initialized"),
            (s("True"), s("PodCompleted"), s(""))
        );
        assert_eq!(
            condition(&p, "Ready"),
            (s("False"), s("PodCompleted"), s(""))
        );
        p["status"]["phase"] = json!("Failed");
        generate(&mut p, false, "t1");
        assert_eq!(
            condition(&p, "ContainersReady"),
            (s("False"), s("PodFailed"), s(""))
        );
        assert_eq!(condition(&p, "Ready"), (s("False"), s("PodFailed"), s("")));
        assert_eq!(
            condition(&p, "Initialized"),
            (s("True"), s(""), s("")),
            "a failed pod whose container started was initialized"
        );
    }

    #[test]
    fn readiness_gates_hold_ready_back() {
        let mut p = pod(&[], &["build"]);
        p["spec"]["readinessGates"] = json!([{"conditionType": "example.com/lb"}]);
        p["status"]["phase"] = json!("Running");
        p["status"]["containerStatuses"] = json!([running("build")]);
        generate(&mut p, true, "t0");
        assert_eq!(
            condition(&p, "Ready"),
            (
                s("False"),
                s("ReadinessGatesNotReady"),
                s(
                    "corresponding condition of pod readiness gate \"example.com/lb\" does not exist."
                )
            )
        );
        assert_eq!(condition(&p, "ContainersReady").0, "True");
        let mut conditions = p["status"]["conditions"].as_array().unwrap().clone();
        conditions.push(json!({"type": "example.com/lb", "status": "False"}));
        p["status"]["conditions"] = json!(conditions);
        generate(&mut p, true, "t1");
        assert_eq!(
            condition(&p, "Ready").2,
            "the status of pod readiness gate \"example.com/lb\" is not \"True\", but False"
        );
        let mut conditions = p["status"]["conditions"].as_array().unwrap().clone();
        for c in &mut conditions {
            if c["type"] == "example.com/lb" {
                c["status"] = json!("True");
            }
        }
        p["status"]["conditions"] = json!(conditions);
        generate(&mut p, true, "t2");
        assert_eq!(condition(&p, "Ready").0, "True");
        assert_eq!(
            p["status"]["conditions"][0]["type"], "example.com/lb",
            "conditions the kubelet does not own come first, kept"
        );
    }

    #[test]
    fn the_transition_time_moves_only_with_the_status() {
        let mut p = pod(&[], &["build"]);
        p["status"]["conditions"] = json!([{"type": "PodScheduled", "status": "True", "lastTransitionTime": "t-scheduled"}]);
        p["status"]["containerStatuses"] = json!([waiting("build")]);
        generate(&mut p, true, "t0");
        let time = |p: &Value, type_: &str| {
            p["status"]["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == type_)
                .unwrap()["lastTransitionTime"]
                .clone()
        };
        assert_eq!(time(&p, "PodScheduled"), "t-scheduled");
        assert_eq!(time(&p, "Ready"), "t0");
        generate(&mut p, true, "t1");
        assert_eq!(time(&p, "Ready"), "t0", "still False");
        p["status"]["containerStatuses"] = json!([running("build")]);
        generate(&mut p, true, "t2");
        assert_eq!(time(&p, "Ready"), "t2", "now True");
        assert_eq!(time(&p, "PodReadyToStartContainers"), "t0");
    }
}
