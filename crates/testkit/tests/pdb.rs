//! The stand-in's `policy/v1` PodDisruptionBudgets and the Eviction API's respect of them,
//! over HTTP as a client would use them.

use std::time::Duration;

use podrunner_testkit::{Image, KubernetesStandIn};
use serde_json::{Value, json};

const NS: &str = "gitlab-runner";

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = http.request(method, url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// A budget selects its pod: an eviction of the running pod is refused with the 429 of
/// `eviction.go`; the pod is untouched. Get and list answer it; deleting the pod takes the
/// budget it owns with it; an eviction of a pod no budget selects is 201; a second create of
/// the budget's name is 409; a budget with both minAvailable and maxUnavailable is 422.
#[tokio::test(flavor = "multi_thread")]
async fn a_budget_refuses_an_eviction_and_goes_with_its_owner_pod() {
    let kube = KubernetesStandIn::start(2, 4.0).await;
    kube.map_image("debian:12", Image::HostRoot);
    let http = reqwest::Client::new();
    let core = format!("{}/api/v1/namespaces/{NS}", kube.url());
    let policy = format!(
        "{}/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets",
        kube.url()
    );
    let pod = |name: &str| {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "labels": {"job.runner.gitlab.com/pod": name}},
               "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                        "containers": [{"name": "build", "image": "debian:12",
                                        "command": ["/bin/sleep", "30"]}]}})
    };
    let mut uids = Vec::new();
    for name in ["guarded", "free"] {
        let (code, created) = call(
            &http,
            reqwest::Method::POST,
            format!("{core}/pods"),
            Some(pod(name)),
        )
        .await;
        assert_eq!(code, 201, "{created}");
        uids.push(created["metadata"]["uid"].clone());
    }
    for name in ["guarded", "free"] {
        for _ in 0..400 {
            let (_, p) = call(
                &http,
                reqwest::Method::GET,
                format!("{core}/pods/{name}"),
                None,
            )
            .await;
            if p["status"]["phase"] == "Running" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let budget = json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "guarded-pdb", "ownerReferences": [{"apiVersion": "v1",
            "kind": "Pod", "name": "guarded", "uid": uids[0]}]},
        "spec": {"minAvailable": 1,
                 "selector": {"matchLabels": {"job.runner.gitlab.com/pod": "guarded"}}}});
    let (code, stored) = call(
        &http,
        reqwest::Method::POST,
        policy.clone(),
        Some(budget.clone()),
    )
    .await;
    assert_eq!(code, 201, "{stored}");
    let (code, again) = call(&http, reqwest::Method::POST, policy.clone(), Some(budget)).await;
    assert_eq!(
        (code, again["reason"].as_str()),
        (409, Some("AlreadyExists")),
        "{again}"
    );
    let both = json!({"metadata": {"name": "both"},
        "spec": {"minAvailable": 1, "maxUnavailable": 0, "selector": {}}});
    let (code, _) = call(&http, reqwest::Method::POST, policy.clone(), Some(both)).await;
    assert_eq!(code, 422);
    let (code, got) = call(
        &http,
        reqwest::Method::GET,
        format!("{policy}/guarded-pdb"),
        None,
    )
    .await;
    assert_eq!(
        (code, got["spec"]["minAvailable"].as_i64()),
        (200, Some(1)),
        "{got}"
    );
    let (code, list) = call(&http, reqwest::Method::GET, policy.clone(), None).await;
    assert_eq!(
        (code, list["items"].as_array().map(Vec::len)),
        (200, Some(1)),
        "{list}"
    );

    let eviction = |name: &str| {
        json!({"apiVersion": "policy/v1", "kind": "Eviction",
               "metadata": {"name": name, "namespace": NS}})
    };
    let (code, refused) = call(
        &http,
        reqwest::Method::POST,
        format!("{core}/pods/guarded/eviction"),
        Some(eviction("guarded")),
    )
    .await;
    assert_eq!(code, 429, "{refused}");
    assert_eq!(
        refused,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": "Cannot evict pod as it would violate the pod's disruption budget.",
               "reason": "TooManyRequests", "code": 429,
               "details": {"causes": [{"reason": "DisruptionBudget",
                   "message": "The disruption budget guarded-pdb needs 1 healthy pods and has 1 currently"}]}})
    );
    let (_, still) = call(
        &http,
        reqwest::Method::GET,
        format!("{core}/pods/guarded"),
        None,
    )
    .await;
    assert!(still["metadata"]["deletionTimestamp"].is_null(), "{still}");
    let (code, _) = call(
        &http,
        reqwest::Method::POST,
        format!("{core}/pods/free/eviction"),
        Some(eviction("free")),
    )
    .await;
    assert_eq!(code, 201);

    let (code, _) = call(
        &http,
        reqwest::Method::DELETE,
        format!("{core}/pods/guarded"),
        Some(json!({"gracePeriodSeconds": 0})),
    )
    .await;
    assert_eq!(code, 200);
    for _ in 0..400 {
        if kube.disruption_budgets().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        kube.disruption_budgets().is_empty(),
        "{:#?}",
        kube.disruption_budgets()
    );
    let (code, _) = call(
        &http,
        reqwest::Method::GET,
        format!("{policy}/guarded-pdb"),
        None,
    )
    .await;
    assert_eq!(code, 404);
}
