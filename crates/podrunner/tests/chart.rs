//! The Helm chart rendered with helm-python-sdk (Helm's Go SDK; no helm binary here):
//! default, seed and full-options values, every manifest checked with
//! `kubernetes-validate --strict`, the RBAC rules, and the rendered configuration checked by
//! `podrunner config check`. `scripts/test` installs the tools and sets the variables.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn render(values: &str, namespace: &str) -> serde_json::Map<String, Value> {
    let python = std::env::var("PODRUNNER_CHART_PYTHON").expect(
        "PODRUNNER_CHART_PYTHON is not set: scripts/test installs helm-python-sdk and sets it",
    );
    let output = Command::new(python)
        .args([
            "chart/tests/helm.py",
            "render",
            "chart/podrunner",
            values,
            namespace,
        ])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "rendering with {values} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice::<Value>(&output.stdout)
        .unwrap()
        .as_object()
        .unwrap()
        .clone()
}

/// Every YAML document of the rendered templates, parsed.
fn documents(rendered: &serde_json::Map<String, Value>) -> Vec<(String, serde_yaml_ng::Value)> {
    let mut out = Vec::new();
    for (path, text) in rendered {
        if path.ends_with("NOTES.txt") {
            continue;
        }
        for document in serde_yaml_ng::Deserializer::from_str(text.as_str().unwrap()) {
            let value: serde_yaml_ng::Value =
                serde::Deserialize::deserialize(document).unwrap_or_else(|e| panic!("{path}: {e}"));
            if !value.is_null() {
                out.push((path.clone(), value));
            }
        }
    }
    out
}

fn kind(document: &serde_yaml_ng::Value) -> &str {
    document["kind"].as_str().unwrap_or("")
}

fn validate(documents: &[(String, serde_yaml_ng::Value)], dir: &Path) {
    let validator =
        std::env::var("KUBERNETES_VALIDATE").unwrap_or_else(|_| "kubernetes-validate".to_owned());
    let mut files = Vec::new();
    for (i, (_, document)) in documents.iter().enumerate() {
        // Prometheus Operator resources are CRDs, outside the Kubernetes schemas.
        if document["apiVersion"]
            .as_str()
            .is_some_and(|a| a.starts_with("monitoring.coreos.com/"))
        {
            continue;
        }
        let file = dir.join(format!("{i}-{}.yaml", kind(document)));
        std::fs::write(&file, serde_yaml_ng::to_string(document).unwrap()).unwrap();
        files.push(file);
    }
    let output = Command::new(&validator)
        .arg("--strict")
        .args(&files)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {validator}: {e}"));
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn find<'a>(
    documents: &'a [(String, serde_yaml_ng::Value)],
    wanted: &str,
) -> &'a serde_yaml_ng::Value {
    &documents
        .iter()
        .find(|(_, d)| kind(d) == wanted)
        .unwrap_or_else(|| panic!("no {wanted}"))
        .1
}

fn check_rbac(documents: &[(String, serde_yaml_ng::Value)], job_namespace: &str) {
    let role = find(documents, "Role");
    assert_eq!(
        role["metadata"]["namespace"].as_str(),
        Some(job_namespace),
        "the Role lives in the job namespace"
    );
    assert!(
        !documents
            .iter()
            .any(|(_, d)| kind(d).starts_with("Cluster")),
        "nothing cluster-wide unless asked"
    );
    for rule in role["rules"].as_sequence().unwrap() {
        for field in ["apiGroups", "resources", "verbs"] {
            for item in rule[field].as_sequence().unwrap() {
                assert_ne!(item.as_str(), Some("*"), "no wildcard in {field}: {rule:?}");
            }
        }
    }
    // Exactly the executor's requests (see crates/kube/src/executor.rs).
    let rules: Vec<(String, Vec<String>)> = role["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| {
            let strings = |v: &serde_yaml_ng::Value| -> Vec<String> {
                v.as_sequence()
                    .unwrap()
                    .iter()
                    .map(|s| s.as_str().unwrap().to_owned())
                    .collect()
            };
            (strings(&r["resources"]).join(","), strings(&r["verbs"]))
        })
        .collect();
    assert_eq!(
        rules,
        [
            (
                "pods".to_owned(),
                vec![
                    "create".to_owned(),
                    "list".into(),
                    "watch".into(),
                    "patch".into(),
                    "delete".into()
                ]
            ),
            (
                "secrets".to_owned(),
                vec![
                    "create".to_owned(),
                    "get".into(),
                    "list".into(),
                    "patch".into(),
                    "delete".into()
                ]
            ),
            ("events".to_owned(), vec!["list".to_owned(), "watch".into()]),
            (
                "leases".to_owned(),
                vec![
                    "get".to_owned(),
                    "create".into(),
                    "update".into(),
                    "list".into(),
                    "delete".into()
                ]
            ),
        ]
    );
    let leases = &role["rules"].as_sequence().unwrap()[3];
    assert_eq!(
        leases["apiGroups"][0].as_str(),
        Some("coordination.k8s.io"),
        "{leases:?}"
    );
}

#[test]
fn default_values_render_valid_manifests() {
    let dir = tempfile::tempdir().unwrap();
    let documents = documents(&render("-", "gitlab"));
    validate(&documents, dir.path());
    check_rbac(&documents, "gitlab");
    let deployment = find(&documents, "Deployment");
    let pod = &deployment["spec"]["template"];
    assert_eq!(
        pod["metadata"]["annotations"]["eks.amazonaws.com/compute-type"].as_str(),
        Some("ec2"),
        "the runner stays off Fargate by default"
    );
    assert!(pod["metadata"]["labels"]["use-fargate"].is_null());
    let container = &pod["spec"]["containers"][0];
    assert_eq!(
        container["lifecycle"]["preStop"]["exec"]["command"][1].as_str(),
        Some("drain")
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    assert_eq!(
        container["securityContext"]["readOnlyRootFilesystem"].as_bool(),
        Some(true)
    );
    assert_eq!(
        pod["spec"]["terminationGracePeriodSeconds"].as_i64(),
        Some(3600)
    );
    let init_image = container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"].as_str() == Some("PODRUNNER_INIT_IMAGE"))
        .expect("the job pods' init image is passed to the manager");
    assert_eq!(
        init_image["value"].as_str(),
        container["image"].as_str(),
        "job pods install the agent from the runner's own image"
    );
    assert!(
        !documents.iter().any(|(_, d)| kind(d) == "Secret"),
        "no token, no Secret"
    );
    // No system ID per release: each pod derives its own from its UID (see
    // `replicas_are_distinct_managers_with_lease_rbac_and_a_disruption_budget`).
    let env = container["env"].as_sequence().unwrap();
    assert!(
        !env.iter()
            .any(|e| e["name"].as_str() == Some("PODRUNNER_SYSTEM_ID")),
        "{env:?}"
    );
}

#[test]
fn the_seed_values_configure_fargate_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let documents = documents(&render("examples/seed-values.yaml", "gitlab-runner"));
    validate(&documents, dir.path());
    check_rbac(&documents, "gitlab-runner");
    let values = find(&documents, "ConfigMap")["data"]["values.yaml"]
        .as_str()
        .unwrap()
        .to_owned();
    let file = dir.path().join("values.yaml");
    std::fs::write(&file, values).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_podrunner"))
        .args([
            "config",
            "check",
            "--values",
            file.to_str().unwrap(),
            "--release-namespace",
            "gitlab-runner",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let k = &report["runners"][0]["kubernetes"];
    assert_eq!(k["namespace"], "gitlab-runner");
    assert_eq!(k["resources"][0]["requests"]["cpu"], "2");
    assert_eq!(k["resources"][0]["requests"]["memory"], "8Gi");
    assert_eq!(k["pod_labels"]["use-fargate"], "true");
    assert_eq!(k["poll_timeout_secs"], 600);
    assert_eq!(
        report["listen_address"], ":9252",
        "the probes' endpoints are always served"
    );
}

#[test]
fn every_option_renders_valid_manifests() {
    let dir = tempfile::tempdir().unwrap();
    let rendered = render("chart/tests/full-values.yaml", "platform");
    let documents = documents(&rendered);
    validate(&documents, dir.path());
    check_rbac(&documents, "ci-jobs");
    assert_eq!(
        find(&documents, "Secret")["data"]["runner-token"].as_str(),
        Some("Z2xydC1jaGFydC10ZXN0LXRva2Vu")
    );
    let kinds: Vec<&str> = documents.iter().map(|(_, d)| kind(d)).collect();
    for wanted in [
        "PodMonitor",
        "ServiceMonitor",
        "Service",
        "ServiceAccount",
        "RoleBinding",
    ] {
        assert!(kinds.contains(&wanted), "{wanted} missing from {kinds:?}");
    }
    let sa = find(&documents, "ServiceAccount");
    assert_eq!(
        sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].as_str(),
        Some("arn:aws:iam::123456789012:role/podrunner")
    );
    let values = find(&documents, "ConfigMap")["data"]["values.yaml"]
        .as_str()
        .unwrap();
    assert!(
        values.contains("tls-ca-file = \"/etc/podrunner/certs/gitlab.crt\"")
            && values.contains("release = \"ci-runner\""),
        "{values}"
    );
    let file = dir.path().join("values.yaml");
    std::fs::write(&file, values).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_podrunner"))
        .args(["config", "check", "--values", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("concurrent 25"),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );

    // With cluster-wide access, a ClusterRole instead.
    let cluster = dir.path().join("cluster.yaml");
    std::fs::write(&cluster, "rbac:\n  clusterWideAccess: true\n").unwrap();
    let documents = self::documents(&render(cluster.to_str().unwrap(), "gitlab"));
    assert!(
        documents.iter().any(|(_, d)| kind(d) == "ClusterRole")
            && documents
                .iter()
                .any(|(_, d)| kind(d) == "ClusterRoleBinding")
    );
}

#[test]
fn the_chart_lints_clean_and_refuses_bad_values() {
    let python =
        std::env::var("PODRUNNER_CHART_PYTHON").expect("PODRUNNER_CHART_PYTHON is not set");
    for values in [
        "-",
        "examples/seed-values.yaml",
        "chart/tests/full-values.yaml",
    ] {
        let output = Command::new(&python)
            .args([
                "chart/tests/helm.py",
                "lint",
                "chart/podrunner",
                values,
                "gitlab-runner",
            ])
            .current_dir(root())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(
            report["errors"],
            serde_json::json!([]),
            "{values}: {report}"
        );
        let serious: Vec<&Value> = report["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["severity"].as_i64().unwrap_or(0) >= 2)
            .collect();
        assert!(serious.is_empty(), "{values}: {serious:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "concurrent: 0\nlogLevel: loud\n").unwrap();
    let output = Command::new(&python)
        .args([
            "chart/tests/helm.py",
            "render",
            "chart/podrunner",
            bad.to_str().unwrap(),
            "gitlab",
        ])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        !output.status.success(),
        "values.schema.json refuses concurrent 0 and an unknown log level"
    );
}

/// The official GitLab Runner chart's values: honoured where podrunner can (pull policy and
/// secrets in its spelling, the deprecated IRSA annotations, envVars, hostAliases, probe
/// timings, extraObjects, deployment labels), named with advice in NOTES.txt where it cannot,
/// and unknown values named too.
#[test]
fn the_official_charts_values_are_honoured_or_reported() {
    let dir = tempfile::tempdir().unwrap();
    let rendered = render("chart/tests/official-values.yaml", "gitlab");
    let documents = documents(&rendered);
    validate(&documents, dir.path());
    let deployment = find(&documents, "Deployment");
    assert_eq!(
        deployment["metadata"]["labels"]["team"].as_str(),
        Some("ci")
    );
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["imagePullSecrets"][0]["name"].as_str(), Some("regcred"));
    assert_eq!(pod["hostAliases"][0]["ip"].as_str(), Some("10.1.2.3"));
    let container = &pod["containers"][0];
    assert_eq!(container["imagePullPolicy"].as_str(), Some("Always"));
    assert!(
        container["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|e| e["name"].as_str() == Some("RUNNER_X") && e["value"].as_str() == Some("1")),
        "envVars reach the container"
    );
    // runners.cache.secretName: the static keys reach the manager only, as the official
    // chart's entrypoint exports them (CACHE_S3_ACCESS_KEY from the key accesskey, ...).
    for (name, key) in [
        ("CACHE_S3_ACCESS_KEY", "accesskey"),
        ("CACHE_S3_SECRET_KEY", "secretkey"),
        ("CACHE_GCS_ACCESS_ID", "gcs-access-id"),
        ("CACHE_GCS_PRIVATE_KEY", "gcs-private-key"),
        ("CACHE_AZURE_ACCOUNT_NAME", "azure-account-name"),
        ("CACHE_AZURE_ACCOUNT_KEY", "azure-account-key"),
    ] {
        assert!(
            container["env"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|e| e["name"].as_str() == Some(name)
                    && e["valueFrom"]["secretKeyRef"]["name"].as_str() == Some("s3access")
                    && e["valueFrom"]["secretKeyRef"]["key"].as_str() == Some(key)),
            "{name} from runners.cache.secretName"
        );
    }
    // The GCS key file of the same Secret, at the path GOOGLE_APPLICATION_CREDENTIALS names.
    assert!(
        container["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(
                |e| e["name"].as_str() == Some("GOOGLE_APPLICATION_CREDENTIALS")
                    && e["value"].as_str()
                        == Some("/etc/podrunner-cache/gcs-application-credentials-file")
            ),
        "GOOGLE_APPLICATION_CREDENTIALS names the mounted key file"
    );
    assert!(
        pod["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|v| v["name"].as_str() == Some("cache-secret")
                && v["secret"]["secretName"].as_str() == Some("s3access")
                && v["secret"]["optional"].as_bool() == Some(true)),
        "the cache Secret is mounted, optionally"
    );
    let liveness = &container["livenessProbe"];
    assert_eq!(liveness["initialDelaySeconds"].as_i64(), Some(5));
    assert_eq!(liveness["httpGet"]["path"].as_str(), Some("/healthz"));
    assert!(liveness["exec"].is_null(), "the image has no shell to exec");
    assert_eq!(
        find(&documents, "ServiceAccount")["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
            .as_str(),
        Some("arn:aws:iam::1:role/x"),
        "rbac.serviceAccountAnnotations (IRSA) is honoured"
    );
    assert!(
        documents
            .iter()
            .any(|(_, d)| kind(d) == "ConfigMap" && d["metadata"]["name"] == "ci-runner-extra"),
        "extraObjects rendered with tpl"
    );

    let dashboard = documents
        .iter()
        .find(|(_, d)| {
            kind(d) == "ConfigMap" && d["metadata"]["labels"]["grafana_dashboard"] == "1"
        })
        .map(|(_, d)| d["data"]["podrunner.json"].as_str().unwrap().to_owned())
        .expect("the Grafana dashboard ConfigMap");
    let dashboard: Value = serde_json::from_str(&dashboard).unwrap();
    assert!(dashboard["panels"].as_array().unwrap().len() >= 5);

    let notes = rendered["podrunner/templates/NOTES.txt"].as_str().unwrap();
    for line in [
        "IGNORED: unregisterRunners: ",
        "IGNORED: sessionServer: ",
        "IGNORED: livenessProbe.exec: ",
        "IGNORED: runners.tags: ",
        "UNKNOWN: someTypo: ",
    ] {
        assert!(
            notes.contains(line),
            "{line:?} missing from NOTES.txt:\n{notes}"
        );
    }
    for honoured in [
        "imagePullPolicy",
        "envVars",
        "hostAliases",
        "extraObjects",
        "replicas",
    ] {
        assert!(!notes.contains(&format!(": {honoured}: ")), "{notes}");
    }
    // `config check --values` says the same of the values file, with locations.
    let output = Command::new(env!("CARGO_BIN_EXE_podrunner"))
        .args([
            "config",
            "check",
            "--values",
            "chart/tests/official-values.yaml",
        ])
        .current_dir(root())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    for line in [
        "official-values.yaml:8:1: unregisterRunners: is not honoured by podrunner: ",
        "sessionServer: is not honoured by podrunner: ",
        "someTypo: is not a value of podrunner's chart nor of the official GitLab Runner chart",
        "runners.tags: is not honoured by podrunner: ",
        "livenessProbe.exec: is not honoured by podrunner: ",
    ] {
        assert!(
            said.contains(line),
            "{line:?} missing from config check:\n{said}"
        );
    }
    assert_eq!(output.status.code(), Some(0), "{said}");

    let seed = render("examples/seed-values.yaml", "gitlab-runner");
    let seed_notes = seed["podrunner/templates/NOTES.txt"].as_str().unwrap();
    assert!(
        !seed_notes.contains("IGNORED") && !seed_notes.contains("UNKNOWN"),
        "{seed_notes}"
    );
}

/// Renders `values` (YAML text) in namespace `gitlab`; the error text when Helm refuses them.
fn render_text(values: &str) -> Result<serde_json::Map<String, Value>, String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("values.yaml");
    std::fs::write(&file, values).unwrap();
    let python =
        std::env::var("PODRUNNER_CHART_PYTHON").expect("PODRUNNER_CHART_PYTHON is not set");
    let output = Command::new(&python)
        .args([
            "chart/tests/helm.py",
            "render",
            "chart/podrunner",
            file.to_str().unwrap(),
            "gitlab",
        ])
        .current_dir(root())
        .output()
        .unwrap();
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    Ok(serde_json::from_slice::<Value>(&output.stdout)
        .unwrap()
        .as_object()
        .unwrap()
        .clone())
}

/// `replicas: 3`: each replica's system ID comes from its own pod's UID (the downward API,
/// so it differs per pod and no value shared by the replicas names it), the Role lets each
/// manager keep and take Leases and has no wildcard, the rollout starts the new manager before
/// the old one drains, a PodDisruptionBudget lets one manager go at a time, and the zones
/// option adds a podAntiAffinity over `topology.kubernetes.io/zone`. A shared system ID in
/// extraEnv is refused.
#[test]
fn replicas_are_distinct_managers_with_lease_rbac_and_a_disruption_budget() {
    let dir = tempfile::tempdir().unwrap();
    let rendered = render_text("replicas: 3\nzoneAntiAffinity: preferred\naffinity:\n  nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: {nodeSelectorTerms: [{matchExpressions: [{key: kubernetes.io/os, operator: In, values: [linux]}]}]}}\n").unwrap();
    let documents = documents(&rendered);
    validate(&documents, dir.path());
    check_rbac(&documents, "gitlab");
    let deployment = find(&documents, "Deployment");
    assert_eq!(deployment["spec"]["replicas"].as_i64(), Some(3));
    let strategy = &deployment["spec"]["strategy"];
    assert_eq!(strategy["type"].as_str(), Some("RollingUpdate"));
    assert_eq!(
        strategy["rollingUpdate"]["maxUnavailable"].as_i64(),
        Some(0)
    );
    assert_eq!(strategy["rollingUpdate"]["maxSurge"].as_i64(), Some(1));
    let pod = &deployment["spec"]["template"]["spec"];
    let env = pod["containers"][0]["env"].as_sequence().unwrap();
    let uid = env
        .iter()
        .find(|e| e["name"].as_str() == Some("PODRUNNER_POD_UID"))
        .expect("the pod's UID is passed to the manager");
    assert_eq!(
        uid["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        Some("metadata.uid")
    );
    assert!(uid["value"].is_null(), "{uid:?}");
    assert!(
        !env.iter()
            .any(|e| e["name"].as_str() == Some("PODRUNNER_SYSTEM_ID")),
        "one system ID for every replica: {env:?}"
    );
    // The manager reads it, and distinct UIDs make distinct system IDs (its rule).
    let help = Command::new(env!("CARGO_BIN_EXE_podrunner"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("PODRUNNER_POD_UID"));
    let a = podrunner_gitlab::system_id::from_pod_uid("6f1c0e52-0000-4000-8000-00000000000a");
    let b = podrunner_gitlab::system_id::from_pod_uid("6f1c0e52-0000-4000-8000-00000000000b");
    assert_ne!(a, b);
    assert!(podrunner_gitlab::system_id::is_valid(&a), "{a}");
    let affinity = &pod["affinity"];
    assert!(
        affinity["nodeAffinity"].is_mapping(),
        "the user's affinity is kept"
    );
    let term = &affinity["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(
        term["podAffinityTerm"]["topologyKey"].as_str(),
        Some("topology.kubernetes.io/zone")
    );
    assert_eq!(
        term["podAffinityTerm"]["labelSelector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    let budget = find(&documents, "PodDisruptionBudget");
    assert_eq!(budget["spec"]["maxUnavailable"].as_i64(), Some(1));
    assert_eq!(
        budget["spec"]["selector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    let notes = rendered["podrunner/templates/NOTES.txt"].as_str().unwrap();
    assert!(
        !notes.contains("replicas") && !notes.contains("zoneAntiAffinity"),
        "{notes}"
    );

    // One replica: no budget (it would block every node drain).
    let one = self::documents(&render_text("replicas: 1\n").unwrap());
    assert!(!one.iter().any(|(_, d)| kind(d) == "PodDisruptionBudget"));
    let required =
        self::documents(&render_text("replicas: 2\nzoneAntiAffinity: required\n").unwrap());
    assert!(
        find(&required, "Deployment")["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            [0]["topologyKey"]
            == "topology.kubernetes.io/zone"
    );
    let refused =
        render_text("replicas: 2\nextraEnv:\n  PODRUNNER_SYSTEM_ID: s_0123456789ab\n").unwrap_err();
    assert!(
        refused.contains("extraEnv.PODRUNNER_SYSTEM_ID: every replica"),
        "{refused}"
    );
    let refused =
        render_text("zoneAntiAffinity: preferred\naffinity: {podAntiAffinity: {}}\n").unwrap_err();
    assert!(
        refused.contains("zoneAntiAffinity and affinity.podAntiAffinity"),
        "{refused}"
    );
    let user = self::documents(&render_text("strategy: {type: Recreate}\n").unwrap());
    assert_eq!(
        find(&user, "Deployment")["spec"]["strategy"]["type"].as_str(),
        Some("Recreate")
    );
}
