//! Namespaces in the Kubernetes stand-in, over its HTTP API: NamespaceLifecycle's 404 and 403,
//! deletion through `Terminating` (content deleted, then the namespace), and RBAC for the
//! cluster-scoped resource.

use std::time::Duration;

use podrunner_testkit::{Image, KubernetesStandIn};
use serde_json::{Value, json};

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    fn new(kube: &KubernetesStandIn, token: &str) -> Api {
        Api {
            http: reqwest::Client::new(),
            base: kube.url().to_owned(),
            token: token.to_owned(),
        }
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let code = response.status().as_u16();
        (code, response.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }

    async fn delete(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::DELETE, path, None).await
    }
}

fn sleeper(name: &str) -> Value {
    json!({"metadata": {"name": name},
           "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "main", "image": "debian:12",
                                    "command": ["/bin/sleep", "60"]}]}})
}

#[tokio::test(flavor = "multi_thread")]
async fn objects_need_an_existing_namespace_and_a_deleted_one_terminates_then_goes() {
    let kube = KubernetesStandIn::start(1, 4.0).await;
    kube.map_image("debian:12", Image::HostRoot);
    let api = Api::new(&kube, "stand-in-token");
    // Until a namespace is added, every namespace exists (NamespaceLifecycle off).
    let (code, _) = api
        .post(
            "/api/v1/namespaces/anything/secrets",
            json!({"metadata": {"name": "s"}}),
        )
        .await;
    assert_eq!(code, 201);

    kube.add_namespace("ci", &[]);
    let (code, status) = api
        .post(
            "/api/v1/namespaces/missing/secrets",
            json!({"metadata": {"name": "s"}}),
        )
        .await;
    assert_eq!(code, 404);
    assert_eq!(status["message"], "namespaces \"missing\" not found");
    assert_eq!(status["reason"], "NotFound");
    assert_eq!(status["details"]["kind"], "namespaces");
    let (code, _) = api.post("/api/v1/namespaces/ci/pods", sleeper("p")).await;
    assert_eq!(code, 201);

    // Created through the API: Active, finalized by kubernetes, labelled with its name.
    let (code, created) = api
        .post(
            "/api/v1/namespaces",
            json!({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": "ci-job-7", "labels": {"podrunner.io/job": "7"}}}),
        )
        .await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["status"]["phase"], "Active");
    assert_eq!(created["spec"]["finalizers"], json!(["kubernetes"]));
    assert_eq!(
        created["metadata"]["labels"]["kubernetes.io/metadata.name"],
        "ci-job-7"
    );
    let (code, status) = api
        .post(
            "/api/v1/namespaces",
            json!({"metadata": {"name": "ci-job-7"}}),
        )
        .await;
    assert_eq!(code, 409);
    assert_eq!(status["message"], "namespaces \"ci-job-7\" already exists");
    let (code, status) = api
        .post(
            "/api/v1/namespaces",
            json!({"metadata": {"name": "Bad_Name"}}),
        )
        .await;
    assert_eq!(code, 422, "{status}");
    let (code, list) = api
        .get("/api/v1/namespaces?labelSelector=podrunner.io%2Fjob%3D7")
        .await;
    assert_eq!(code, 200);
    assert_eq!(list["kind"], "NamespaceList");
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    for system in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert_eq!(
            api.get(&format!("/api/v1/namespaces/{system}")).await.0,
            200
        );
    }

    // A running pod in it; deleting the namespace makes it Terminating, refuses new content,
    // deletes the pod with its grace period, then the namespace goes.
    let (code, _) = api
        .post("/api/v1/namespaces/ci-job-7/pods", sleeper("job"))
        .await;
    assert_eq!(code, 201);
    for _ in 0..200 {
        let (_, pod) = api.get("/api/v1/namespaces/ci-job-7/pods/job").await;
        if pod["status"]["phase"] == "Running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, deleting) = api.delete("/api/v1/namespaces/ci-job-7").await;
    assert_eq!(code, 200);
    assert_eq!(deleting["status"]["phase"], "Terminating");
    assert!(!deleting["metadata"]["deletionTimestamp"].is_null());
    let (code, status) = api
        .post(
            "/api/v1/namespaces/ci-job-7/secrets",
            json!({"metadata": {"name": "late"}}),
        )
        .await;
    assert_eq!(code, 403);
    assert_eq!(
        status["message"],
        "secrets \"late\" is forbidden: unable to create new content in namespace ci-job-7 because it is being terminated"
    );
    assert_eq!(
        status["details"]["causes"][0]["reason"],
        "NamespaceTerminating"
    );
    let mut gone = false;
    for _ in 0..200 {
        if api.get("/api/v1/namespaces/ci-job-7").await.0 == 404 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "the namespace was never removed");
    assert!(kube.object("Pod", "ci-job-7", "job").is_none());
    assert_eq!(
        api.post("/api/v1/namespaces/ci-job-7/pods", sleeper("again"))
            .await
            .0,
        404
    );

    let (code, status) = api.delete("/api/v1/namespaces/default").await;
    assert_eq!(code, 403);
    assert_eq!(
        status["message"],
        "namespaces \"default\" is forbidden: this namespace may not be deleted"
    );
}

#[tokio::test]
async fn namespaces_are_cluster_scoped_for_rbac() {
    let kube = KubernetesStandIn::start(1, 4.0).await;
    kube.add_namespace("ci", &[]);
    for object in [
        json!({"kind": "Role", "metadata": {"name": "r", "namespace": "ci"},
               "rules": [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["create"]}]}),
        json!({"kind": "RoleBinding", "metadata": {"name": "r", "namespace": "ci"},
               "roleRef": {"kind": "Role", "name": "r"},
               "subjects": [{"kind": "ServiceAccount", "name": "runner", "namespace": "ci"}]}),
    ] {
        kube.load_rbac(&object).unwrap();
    }
    let api = Api::new(&kube, &kube.service_account_token("ci", "runner"));
    let (code, status) = api
        .post(
            "/api/v1/namespaces",
            json!({"metadata": {"name": "ci-job-1"}}),
        )
        .await;
    assert_eq!(code, 403, "a Role cannot grant a cluster-scoped create");
    assert_eq!(
        status["message"],
        "namespaces is forbidden: User \"system:serviceaccount:ci:runner\" cannot create resource \"namespaces\" in API group \"\" at the cluster scope"
    );
    for object in [
        json!({"kind": "ClusterRole", "metadata": {"name": "ns"},
               "rules": [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["create", "delete"]}]}),
        json!({"kind": "ClusterRoleBinding", "metadata": {"name": "ns"},
               "roleRef": {"kind": "ClusterRole", "name": "ns"},
               "subjects": [{"kind": "ServiceAccount", "name": "runner", "namespace": "ci"}]}),
    ] {
        kube.load_rbac(&object).unwrap();
    }
    let (code, _) = api
        .post(
            "/api/v1/namespaces",
            json!({"metadata": {"name": "ci-job-1"}}),
        )
        .await;
    assert_eq!(code, 201);
    let (code, status) = api.get("/api/v1/namespaces/ci-job-1").await;
    assert_eq!(code, 403);
    assert_eq!(
        status["message"],
        "namespaces \"ci-job-1\" is forbidden: User \"system:serviceaccount:ci:runner\" cannot get resource \"namespaces\" in API group \"\" in the namespace \"ci-job-1\""
    );
    assert_eq!(api.delete("/api/v1/namespaces/ci-job-1").await.0, 200);
}
