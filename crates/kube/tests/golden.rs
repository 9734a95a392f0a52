//! Golden pod plans: each configuration's pod, compared with the file in `golden/`
//! (`UPDATE_GOLDEN=1` rewrites them), and every pod checked with `kubernetes-validate --strict`.

use std::collections::HashMap;
use std::path::PathBuf;

use podrunner_config::{SourceText, load_str};
use podrunner_gitlab::JobPayload;
use podrunner_kube::{PlanContext, plan};
use serde_json::{Value, json};

const HEAD: &str = "concurrent = 1\n[[runners]]\n  name = \"golden\"\n  executor = \"kubernetes\"\n  [runners.kubernetes]\n";

fn job() -> Value {
    json!({
        "id": 4242, "token": "glcbt-golden-token",
        "job_info": {"name": "build app", "stage": "build", "project_id": 77, "project_name": "My App", "project_full_path": "acme/tools/my-app", "namespace_id": 12, "root_namespace_id": 3},
        "git_info": {"repo_url": "https://gitlab.example.com/acme/tools/my-app.git", "ref": "main", "sha": "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678", "before_sha": "0000000000000000000000000000000000000000"},
        "runner_info": {"timeout": 1800},
        "variables": [{"key": "CI_PROJECT_NAME", "value": "my-app", "public": true}, {"key": "CI_JOB_URL", "value": "https://gitlab.example.com/acme/tools/my-app/-/jobs/4242", "public": true},
                      {"key": "SECRET_VALUE", "value": "must-not-appear", "masked": true}],
        "steps": [{"name": "script", "script": ["make"]}],
        "image": {"name": "golang:1.24"},
        "features": {"trace_sections": true}
    })
}

fn with_vars(mut job: Value, vars: &[(&str, &str)]) -> Value {
    for (k, v) in vars {
        job["variables"]
            .as_array_mut()
            .unwrap()
            .push(json!({"key": k, "value": v, "public": true}));
    }
    job
}

fn cases() -> Vec<(&'static str, String, Value)> {
    let seed = "  cpu_request = \"2\"\n  memory_request = \"8Gi\"\n  namespace = \"gitlab-runner\"\n  poll_timeout = 600\n  [runners.kubernetes.pod_labels]\n    use-fargate = \"true\"\n";
    vec![
        ("seed", seed.to_owned(), job()),
        ("minimal", "  namespace = \"ci\"\n".to_owned(), job()),
        ("default_image", "  namespace = \"ci\"\n  image = \"alpine:$ALPINE_VERSION\"\n".to_owned(), {
            let mut j = with_vars(job(), &[("ALPINE_VERSION", "3.20")]);
            j["image"] = json!({"name": ""});
            j
        }),
        ("resources", "  namespace = \"ci\"\n  cpu_request = \"500m\"\n  cpu_limit = \"1\"\n  memory_request = \"1Gi\"\n  memory_limit = \"2Gi\"\n  ephemeral_storage_request = \"5Gi\"\n  helper_cpu_request = \"100m\"\n  helper_memory_request = \"64Mi\"\n  service_cpu_request = \"250m\"\n  service_memory_limit = \"512Mi\"\n  pod_cpu_limit = \"2\"\n  pod_memory_limit = \"4Gi\"\n".to_owned(), job()),
        ("overwrites", "  namespace = \"ci\"\n  cpu_request = \"1\"\n  cpu_request_overwrite_max_allowed = \"4\"\n  memory_limit = \"1Gi\"\n  memory_limit_overwrite_max_allowed = \"8Gi\"\n  namespace_overwrite_allowed = \"^ci-.*\"\n  service_account_overwrite_allowed = \"^builder$\"\n".to_owned(),
            with_vars(job(), &[("KUBERNETES_CPU_REQUEST", "3"), ("KUBERNETES_MEMORY_LIMIT", "6Gi"), ("KUBERNETES_NAMESPACE_OVERWRITE", "ci-team"), ("KUBERNETES_SERVICE_ACCOUNT_OVERWRITE", "builder")])),
        ("services", "  namespace = \"ci\"\n  [[runners.kubernetes.services]]\n    name = \"redis:7\"\n  [[runners.kubernetes.services]]\n    name = \"registry.example.com/tools/cache:1\"\n    alias = \"cache\"\n".to_owned(), {
            let mut j = job();
            j["services"] = json!([{"name": "postgres:16", "alias": "db database", "variables": [{"key": "POSTGRES_PASSWORD", "value": "pa$$"}]}, {"name": "mysql:8", "entrypoint": ["docker-entrypoint.sh"], "command": ["mysqld"]}]);
            j
        }),
        ("pod_security_profiles", "  namespace = \"ci\"\n  [runners.kubernetes.pod_security_context]\n    run_as_non_root = true\n    run_as_user = 1000\n    [runners.kubernetes.pod_security_context.seccomp_profile]\n      type = \"RuntimeDefault\"\n    [runners.kubernetes.pod_security_context.app_armor_profile]\n      type = \"Localhost\"\n      localhost_profile = \"ci-jobs\"\n".to_owned(), job()),
        ("security", "  namespace = \"ci\"\n  privileged = false\n  allow_privilege_escalation = false\n  cap_add = [\"SYS_PTRACE\"]\n  cap_drop = [\"MKNOD\"]\n  [runners.kubernetes.pod_security_context]\n    run_as_user = 1000\n    run_as_group = 1000\n    fs_group = 2000\n    run_as_non_root = true\n  [runners.kubernetes.build_container_security_context]\n    read_only_root_filesystem = true\n    [runners.kubernetes.build_container_security_context.capabilities]\n      drop = [\"ALL\"]\n".to_owned(), job()),
        ("volumes", "  namespace = \"ci\"\n  [[runners.kubernetes.volumes.host_path]]\n    name = \"docker\"\n    mount_path = \"/var/run/docker.sock\"\n    read_only = true\n  [[runners.kubernetes.volumes.pvc]]\n    name = \"cache-$CI_PROJECT_NAME\"\n    mount_path = \"/cache\"\n  [[runners.kubernetes.volumes.config_map]]\n    name = \"settings\"\n    mount_path = \"/etc/settings\"\n    [runners.kubernetes.volumes.config_map.items]\n      \"app.json\" = \"app.json\"\n  [[runners.kubernetes.volumes.secret]]\n    name = \"creds\"\n    mount_path = \"/etc/creds\"\n    read_only = true\n  [[runners.kubernetes.volumes.empty_dir]]\n    name = \"scratch\"\n    mount_path = \"/scratch\"\n    medium = \"Memory\"\n    size_limit = \"1Gi\"\n  [[runners.kubernetes.volumes.csi]]\n    name = \"efs\"\n    mount_path = \"/efs\"\n    driver = \"efs.csi.aws.com\"\n  [[runners.kubernetes.volumes.nfs]]\n    name = \"shared\"\n    mount_path = \"/shared\"\n    server = \"10.0.0.1\"\n    path = \"/exports\"\n".to_owned(), job()),
        ("scheduling", "  namespace = \"ci\"\n  priority_class_name = \"ci\"\n  scheduler_name = \"custom-scheduler\"\n  runtime_class_name = \"gvisor\"\n  [runners.kubernetes.node_selector]\n    \"kubernetes.io/arch\" = \"amd64\"\n  [runners.kubernetes.node_tolerations]\n    \"ci=true\" = \"NoSchedule\"\n    \"spot\" = \"\"\n  [runners.kubernetes.affinity.node_affinity.required_during_scheduling_ignored_during_execution]\n    [[runners.kubernetes.affinity.node_affinity.required_during_scheduling_ignored_during_execution.node_selector_terms]]\n      [[runners.kubernetes.affinity.node_affinity.required_during_scheduling_ignored_during_execution.node_selector_terms.match_expressions]]\n        key = \"eks.amazonaws.com/capacityType\"\n        operator = \"In\"\n        values = [\"ON_DEMAND\"]\n".to_owned(), job()),
        ("dns_and_hosts", "  namespace = \"ci\"\n  dns_policy = \"none\"\n  [runners.kubernetes.dns_config]\n    nameservers = [\"1.1.1.1\"]\n    searches = [\"svc.cluster.local\"]\n    [[runners.kubernetes.dns_config.options]]\n      name = \"ndots\"\n      value = \"2\"\n  [[runners.kubernetes.host_aliases]]\n    ip = \"10.1.2.3\"\n    hostnames = [\"git.internal\"]\n".to_owned(), job()),
        ("lifecycle", "  namespace = \"ci\"\n  [runners.kubernetes.container_lifecycle.post_start.exec]\n    command = [\"touch\", \"/tmp/started\"]\n  [runners.kubernetes.container_lifecycle.pre_stop.http_get]\n    port = 8080\n    path = \"/stop\"\n".to_owned(), job()),
        ("pull_and_registry", "  namespace = \"ci\"\n  pull_policy = [\"if-not-present\", \"always\"]\n  image_pull_secrets = [\"corp-registry\"]\n".to_owned(), {
            let mut j = job();
            j["credentials"] = json!([{"type": "registry", "url": "registry.example.com", "username": "gitlab-ci-token", "password": "glcbt-golden-token"}]);
            j
        }),
        ("labels_annotations", "  namespace = \"ci\"\n  pod_labels_overwrite_allowed = \"^team=\"\n  pod_annotations_overwrite_allowed = \".*\"\n  [runners.kubernetes.pod_labels]\n    project = \"$CI_PROJECT_NAME\"\n    \"example.com/cost-center\" = \"cc 42!\"\n  [runners.kubernetes.pod_annotations]\n    \"karpenter.sh/do-not-disrupt\" = \"true\"\n    \"example.com/job\" = \"$CI_JOB_URL\"\n".to_owned(),
            with_vars(job(), &[("KUBERNETES_POD_LABELS_1", "team=platform"), ("KUBERNETES_POD_ANNOTATIONS_1", "example.com/owner=ops")])),
        ("service_account", "  namespace = \"ci\"\n  service_account = \"ci-jobs\"\n  automount_service_account_token = false\n  use_service_account_image_pull_secrets = true\n  image_pull_secrets = [\"ignored\"]\n".to_owned(), job()),
        // Expanded images, derived aliases that are not DNS names dropped, container names
        // that never collide, and the job's public variables in every service.
        ("services_expanded", "  namespace = \"ci\"\n  allowed_images = [\"registry.example.com/acme/*\"]\n  allowed_services = [\"bitnami/*\", \"postgres:*\", \"registry.example.com/acme/*\"]\n".to_owned(), {
            let mut j = with_vars(job(), &[("CI_REGISTRY_IMAGE", "registry.example.com/acme/my-app"), ("POSTGRES_PASSWORD", "fake-job-level-password"), ("REDIS_TAG", "7.2")]);
            j["image"] = json!({"name": "$CI_REGISTRY_IMAGE/builder:latest"});
            j["services"] = json!([
                {"name": "postgres:16", "alias": "svc-1"},
                {"name": "bitnami/redis:$REDIS_TAG"},
                {"name": "bitnami/redis:$REDIS_TAG", "alias": "build,podrunner-init,cache.local"},
                {"name": "${CI_REGISTRY_IMAGE}/helper:1", "alias": "helper", "variables": [{"key": "DSN", "value": "postgres://app:$POSTGRES_PASSWORD@svc-1"}, {"key": "LITERAL", "value": "$POSTGRES_PASSWORD", "raw": true}]}
            ]);
            j
        }),
        // The three patch types of gitlab-runner's docs, in order, on one pod.
        ("pod_spec_patches", concat!(
            "  namespace = \"ci\"\n  cpu_request = \"1\"\n",
            "  [[runners.kubernetes.pod_spec]]\n    name = \"hostname\"\n    patch = 'hostname: \"custom-pod-hostname\"'\n    patch_type = \"merge\"\n",
            "  [[runners.kubernetes.pod_spec]]\n    name = \"build resources and a sidecar\"\n    patch = '''\ncontainers:\n- name: build\n  resources:\n    requests:\n      memory: 2Gi\n  env:\n  - name: EXTRA\n    value: \"1\"\n- name: sidecar\n  image: envoyproxy/envoy:v1.31\nvolumes:\n- name: builds\n  emptyDir:\n    sizeLimit: 10Gi\n'''\n",
            "  [[runners.kubernetes.pod_spec]]\n    name = \"node\"\n    patch = '[{\"op\": \"add\", \"path\": \"/nodeSelector\", \"value\": {\"key1\": \"val1\"}}, {\"op\": \"add\", \"path\": \"/terminationGracePeriodSeconds\", \"value\": 60}]'\n    patch_type = \"json\"\n",
            " [runners.feature_flags]\n  FF_USE_ADVANCED_POD_SPEC_CONFIGURATION = true\n",
        ).to_owned(), job()),
        // The job's user and group where no security context sets them, within the lists.
        ("job_user", "  namespace = \"ci\"\n  allowed_users = [\"1000\", \"65534\"]\n  allowed_groups = [\"1001\"]\n".to_owned(), {
            let mut j = job();
            j["image"] = json!({"name": "golang:1.24", "executor_opts": {"kubernetes": {"user": "1000:1001"}}});
            j["services"] = json!([{"name": "redis:7", "executor_opts": {"kubernetes": {"user": 65534}}}]);
            j
        }),
        ("tolerations_overwrite", "  namespace = \"ci\"\n  node_tolerations_overwrite_allowed = \"^(ci|spot|eks)\"\n  [runners.kubernetes.node_tolerations]\n    \"ci=true\" = \"NoSchedule\"\n".to_owned(),
            with_vars(job(), &[("KUBERNETES_NODE_TOLERATIONS_1", "ci=true:NoExecute"), ("KUBERNETES_NODE_TOLERATIONS_2", "spot"), ("KUBERNETES_NODE_TOLERATIONS_3", "eks.amazonaws.com/compute-type=fargate:NoSchedule")])),
        ("namespace_per_job_no_deadline", "  namespace = \"ci\"\n  namespace_per_job = true\n  pod_termination_grace_period_seconds = 10\n [runners.feature_flags]\n  FF_USE_POD_ACTIVE_DEADLINE_SECONDS = false\n".to_owned(), job()),
    ]
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

#[test]
fn pod_plans_match_their_golden_files() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut mismatches = Vec::new();
    for (name, body, job) in cases() {
        let toml = if body.contains("[runners.feature_flags]") {
            let (kube, flags) = body.split_once(" [runners.feature_flags]").unwrap();
            format!(
                "concurrent = 1\n[[runners]]\n  name = \"golden\"\n  executor = \"kubernetes\"\n  [runners.feature_flags]{flags}  [runners.kubernetes]\n{kube}"
            )
        } else {
            format!("{HEAD}{body}")
        };
        let loaded = load_str(
            &SourceText::new(format!("{name}.toml"), toml),
            &HashMap::new(),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let payload = JobPayload::from_value(job).unwrap();
        let context = PlanContext {
            system_id: "s_0123456789ab",
            init_image: "podrunner:golden",
            runner_short_token: "abcd1234",
        };
        let planned = plan(&loaded.config.runners[0], &payload, &context)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let yaml = serde_yaml_ng::to_string(&planned.pod).unwrap();
        assert!(
            !yaml.contains("must-not-appear") && !yaml.contains("glcbt-golden-token"),
            "{name}: a secret reached the pod spec:\n{yaml}"
        );
        let path = golden_dir().join(format!("{name}.yaml"));
        if update {
            std::fs::write(&path, &yaml).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(yaml.as_str()) {
            mismatches.push(format!(
                "{name}: the plan differs from {} (UPDATE_GOLDEN=1 rewrites it):\n{yaml}",
                path.display()
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn every_golden_pod_passes_kubernetes_validate_strict() {
    let program =
        std::env::var("KUBERNETES_VALIDATE").unwrap_or_else(|_| "kubernetes-validate".to_owned());
    let files: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    assert!(
        files.len() >= 15,
        "expected at least 15 golden plans, found {}",
        files.len()
    );
    let output = std::process::Command::new(&program)
        .arg("--strict")
        .args(&files)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} ({e}): scripts/test installs it into target/ci-venv")
        });
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn refusals_name_the_setting() {
    let load = |body: &str| {
        load_str(
            &SourceText::new("c.toml", format!("{HEAD}{body}")),
            &HashMap::new(),
        )
        .unwrap()
        .config
        .runners[0]
            .clone()
    };
    let context = PlanContext {
        system_id: "s_0123456789ab",
        init_image: "podrunner:golden",
        runner_short_token: "abcd1234",
    };
    let runner = load(
        "  namespace = \"ci\"\n  cpu_request = \"1\"\n  cpu_request_overwrite_max_allowed = \"2\"\n  allowed_images = [\"alpine:*\"]\n",
    );
    let too_big = JobPayload::from_value(with_vars(
        json!({"id": 1, "image": {"name": "alpine:3"}, "variables": []}),
        &[("KUBERNETES_CPU_REQUEST", "3")],
    ))
    .unwrap();
    assert_eq!(
        plan(&runner, &too_big, &context).unwrap_err().to_string(),
        "KUBERNETES_CPU_REQUEST: 3 is above the allowed maximum 2"
    );
    let other_image =
        JobPayload::from_value(json!({"id": 1, "image": {"name": "ubuntu:24.04"}})).unwrap();
    assert!(
        plan(&runner, &other_image, &context)
            .unwrap_err()
            .to_string()
            .contains("not allowed by allowed_images")
    );
    let no_image = JobPayload::from_value(json!({"id": 1})).unwrap();
    assert!(
        plan(&load("  namespace = \"ci\"\n"), &no_image, &context)
            .unwrap_err()
            .to_string()
            .contains("no image specified")
    );
    let ns = JobPayload::from_value(with_vars(
        json!({"id": 1, "image": {"name": "alpine"}, "variables": []}),
        &[("KUBERNETES_NAMESPACE_OVERWRITE", "prod")],
    ))
    .unwrap();
    assert!(
        plan(
            &load("  namespace = \"ci\"\n  namespace_overwrite_allowed = \"^ci-\"\n"),
            &ns,
            &context
        )
        .unwrap_err()
        .to_string()
        .contains("does not match")
    );
    let ignored = plan(&load("  namespace = \"ci\"\n"), &ns, &context).unwrap();
    assert_eq!(ignored.namespace, "ci");
    assert!(
        ignored
            .warnings
            .iter()
            .any(|w| w.contains("KUBERNETES_NAMESPACE_OVERWRITE is ignored"))
    );
}
