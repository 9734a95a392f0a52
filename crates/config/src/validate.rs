//! Checks that go beyond types: contradictions, missing essentials, and settings that work
//! but probably not as meant.

mod cache;

use std::collections::BTreeSet;

use crate::diagnostics::{Diagnostic, KeyPath, Location, SourceText, SpanIndex};
use crate::enums::{Executor, TaintEffect};
use crate::fargate::FargateConfig;
use crate::feature_flags;
use crate::kubernetes::{ContainerRole, KubernetesConfig, ResourceKind};
use crate::model::{Config, RunnerConfig};

/// What kind of document is validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A whole `config.toml`.
    File,
    /// `runners.config` of Helm values merged with the chart's values; the chart supplies the
    /// global section, and checks it itself.
    Helm,
}

struct Checker<'a> {
    source: &'a SourceText,
    spans: &'a SpanIndex,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn location(&self, path: &KeyPath) -> Option<Location> {
        // Something missing from the whole file is reported at its start.
        Some(self.spans.nearest(path).map_or_else(
            || self.source.location(0),
            |s| self.source.location(s.value.start),
        ))
    }

    fn error(&mut self, path: &KeyPath, message: impl Into<String>) {
        let location = self.location(path);
        self.errors
            .push(Diagnostic::error(location, Some(path.clone()), message));
    }

    fn warn(&mut self, path: &KeyPath, message: impl Into<String>) {
        let location = self.location(path);
        self.warnings
            .push(Diagnostic::warning(location, Some(path.clone()), message));
    }
}

/// Returns the errors and the warnings of a deserialized configuration.
pub(crate) fn validate(
    config: &Config,
    source: &SourceText,
    spans: &SpanIndex,
    mode: Mode,
) -> (Vec<Diagnostic>, Vec<Diagnostic>) {
    let mut c = Checker {
        source,
        spans,
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let root = KeyPath::root();
    if mode == Mode::File && config.concurrent < 1 {
        let path = root.key("concurrent");
        let what = if spans.contains(&path) {
            format!("is {}", config.concurrent)
        } else {
            "is missing".to_owned()
        };
        c.error(&path, format!("{what}; it must be at least 1 (gitlab-runner will not start either): add `concurrent = 4` at the top of the file"));
    }
    if let Some(address) = &config.listen_address {
        check_listen_address(&mut c, &root.key("listen_address"), address);
    }
    if config.runners.is_empty() {
        c.warnings.push(Diagnostic::warning(
            None,
            None,
            "there is no [[runners]] entry, so no job will ever be requested: run `podrunner register` or add one",
        ));
    }
    for (i, runner) in config.runners.iter().enumerate() {
        check_runner(&mut c, config, &root.key("runners").index(i), runner);
    }
    (c.errors, c.warnings)
}

fn check_listen_address(c: &mut Checker<'_>, path: &KeyPath, address: &str) {
    let valid = address
        .rsplit_once(':')
        .is_some_and(|(_, port)| port.parse::<u16>().is_ok());
    if !valid {
        c.error(
            path,
            format!("{address:?} is not host:port; write e.g. \":9252\" or \"0.0.0.0:9252\""),
        );
    }
}

fn check_runner(c: &mut Checker<'_>, config: &Config, path: &KeyPath, runner: &RunnerConfig) {
    match runner.executor {
        None => c.error(
            &path.key("executor"),
            "is missing; set executor = \"kubernetes\" (one pod per job) or executor = \"shell\"",
        ),
        Some(Executor::Shell) if runner.kubernetes.is_some() => c.warn(
            &path.key("kubernetes"),
            "is ignored: this runner uses the shell executor",
        ),
        Some(_) => {}
    }
    match runner.url.as_deref() {
        None | Some("") => c.warn(&path.key("url"), "is not set, so this runner cannot reach GitLab: set url (or gitlabUrl in Helm values)"),
        Some(url) if !(url.starts_with("https://") || url.starts_with("http://")) => {
            c.error(&path.key("url"), format!("{url:?} is not an http:// or https:// URL; write e.g. \"https://gitlab.example.com/\""))
        }
        Some(_) => {}
    }
    if runner.token.as_deref().unwrap_or("").is_empty() {
        c.warn(
            &path.key("token"),
            "is not set: run `podrunner register`, or give runnerToken in Helm values",
        );
    }
    if runner.tls_cert_file.is_some() != runner.tls_key_file.is_some() {
        c.error(
            &path.key(if runner.tls_cert_file.is_some() {
                "tls-cert-file"
            } else {
                "tls-key-file"
            }),
            "a client certificate needs both tls-cert-file and tls-key-file",
        );
    }
    if runner.limit < 0 {
        c.error(
            &path.key("limit"),
            format!(
                "is {}; use 0 for no limit, or a positive number of jobs",
                runner.limit
            ),
        );
    } else if runner.limit > 0 && config.concurrent > 0 && runner.limit > config.concurrent {
        c.warn(
            &path.key("limit"),
            format!(
                "{} can never be reached: concurrent is {} for all runners together",
                runner.limit, config.concurrent
            ),
        );
    }
    for (i, entry) in runner.environment.iter().enumerate() {
        if !entry.contains('=') || entry.starts_with('=') {
            c.error(
                &path.key("environment").index(i),
                format!("{entry:?} is not KEY=VALUE"),
            );
        }
    }
    for name in runner.feature_flags.keys() {
        if feature_flags::default_of(name).is_none() {
            let near = feature_flags::KNOWN
                .iter()
                .map(|(known, _)| (strsim::damerau_levenshtein(name, known), *known))
                .min();
            let hint = match near {
                Some((distance, known)) if distance <= 3 => format!("; did you mean {known:?}?"),
                _ => String::new(),
            };
            c.warn(
                &path.key("feature_flags").key(name.clone()),
                format!("is not a feature flag podrunner knows{hint}"),
            );
        }
    }
    let durations = [
        ("unhealthy_interval", Some(runner.unhealthy_interval)),
        ("prepare_timeout", runner.prepare_timeout),
        ("get_sources_timeout", runner.get_sources_timeout),
    ];
    for (key, duration) in durations {
        check_integer_duration(c, &path.key(key), duration);
    }
    check_integer_duration(
        c,
        &path.key("artifact").key("upload_timeout"),
        Some(runner.artifact.upload_timeout),
    );
    check_integer_duration(
        c,
        &path.key("artifact").key("response_header_timeout"),
        Some(runner.artifact.response_header_timeout),
    );
    if let Some(cache) = &runner.cache {
        cache::check_cache(c, &path.key("cache"), cache);
    }
    if let Some(kubernetes) = &runner.kubernetes {
        check_kubernetes(c, &path.key("kubernetes"), kubernetes);
        let flag = "FF_USE_ADVANCED_POD_SPEC_CONFIGURATION";
        let in_environment = runner.environment.iter().any(|e| {
            // Go's `strconv.ParseBool` spellings of true.
            e.split_once('=').is_some_and(|(k, v)| {
                k == flag && matches!(v, "1" | "t" | "T" | "TRUE" | "true" | "True")
            })
        });
        if !kubernetes.pod_spec.is_empty()
            && !runner
                .feature_flags
                .get(flag)
                .copied()
                .unwrap_or(in_environment)
        {
            c.warn(
                &path.key("kubernetes").key("pod_spec"),
                format!("applies only to jobs that turn {flag} on: set {flag} = true in [runners.feature_flags]"),
            );
        }
    } else if runner.executor == Some(Executor::Kubernetes) {
        c.warn(&path.key("kubernetes"), "is missing, so job pods go to namespace \"default\" with no resource requests: add [runners.kubernetes] with a namespace");
    }
}

fn check_integer_duration(
    c: &mut Checker<'_>,
    path: &KeyPath,
    duration: Option<crate::GoDuration>,
) {
    if let Some(d) = duration.filter(|d| d.was_integer() && d.get().as_millis() < 1000) {
        let n = d.get().as_nanos();
        c.warn(path, format!("{n} is read as {n} nanoseconds, as gitlab-runner does; write a duration such as \"{n}s\""));
    }
}

fn check_kubernetes(c: &mut Checker<'_>, path: &KeyPath, k: &KubernetesConfig) {
    if k.namespace.as_deref().unwrap_or("").is_empty() && !k.namespace_per_job {
        c.warn(
            &path.key("namespace"),
            "is not set, so job pods go to namespace \"default\": set namespace",
        );
    }
    let tls = [("cert_file", &k.cert_file), ("key_file", &k.key_file)];
    if tls.iter().any(|(_, v)| v.is_some())
        && (k.cert_file.is_none() || k.key_file.is_none() || k.ca_file.is_none())
    {
        let missing: Vec<&str> = [
            ("cert_file", &k.cert_file),
            ("key_file", &k.key_file),
            ("ca_file", &k.ca_file),
        ]
        .iter()
        .filter(|(_, v)| v.is_none())
        .map(|(name, _)| *name)
        .collect();
        c.error(path, format!("client certificate authentication needs cert_file, key_file and ca_file; missing: {}", missing.join(", ")));
    }
    for role in ContainerRole::ALL {
        for kind in ResourceKind::ALL {
            let Some(setting) = k.resource(role, kind) else {
                continue;
            };
            let key = |suffix: &str| format!("{}{}_{suffix}", role.key_prefix(), kind.key());
            for (name, value) in [
                (key("request"), &setting.request),
                (key("limit"), &setting.limit),
                (
                    key("request_overwrite_max_allowed"),
                    &setting.request_overwrite_max,
                ),
                (
                    key("limit_overwrite_max_allowed"),
                    &setting.limit_overwrite_max,
                ),
            ] {
                if value.as_ref().is_some_and(|q| q.nanos() < 0) {
                    c.error(
                        &path.key(name),
                        "is negative; resources must be zero or more",
                    );
                }
            }
            if let (Some(request), Some(limit)) = (&setting.request, &setting.limit)
                && request > limit
            {
                c.error(
                    &path.key(key("request")),
                    format!("{request} is above {} {limit}; Kubernetes refuses such a pod: lower the request or raise the limit", key("limit")),
                );
            }
            for (what, value, max) in [
                ("request", &setting.request, &setting.request_overwrite_max),
                ("limit", &setting.limit, &setting.limit_overwrite_max),
            ] {
                if let (Some(value), Some(max)) = (value, max)
                    && max < value
                {
                    c.warn(
                        &path.key(key(&format!("{what}_overwrite_max_allowed"))),
                        format!(
                            "{max} is below {} {value}, so jobs can only lower it",
                            key(what)
                        ),
                    );
                }
            }
        }
    }
    if k.poll_timeout > 0 && k.poll_interval > 0 && k.poll_timeout < k.poll_interval {
        c.warn(
            &path.key("poll_timeout"),
            format!(
                "{}s is shorter than poll_interval {}s",
                k.poll_timeout, k.poll_interval
            ),
        );
    }
    if k.retry_backoff_max < 500 && c.spans.contains(&path.key("retry_backoff_max")) {
        c.warn(
            &path.key("retry_backoff_max"),
            format!(
                "{} ms is raised to the minimum, 500 ms",
                k.retry_backoff_max
            ),
        );
    }
    for (key, value) in [
        (
            "pod_termination_grace_period_seconds",
            k.pod_termination_grace_period_seconds,
        ),
        (
            "cleanup_grace_period_seconds",
            k.cleanup_grace_period_seconds,
        ),
    ] {
        if value.is_some_and(|v| v < 0) {
            c.error(&path.key(key), "is negative; use 0 or more seconds");
        }
    }
    check_integer_duration(
        c,
        &path.key("cleanup_resources_timeout"),
        Some(k.cleanup_resources_timeout),
    );
    for (key, effect) in &k.node_tolerations {
        if effect.parse::<TaintEffect>().is_err() {
            c.error(&path.key("node_tolerations").key(key.clone()), format!("{effect:?} is not a taint effect; use \"NoSchedule\", \"PreferNoSchedule\", \"NoExecute\" or \"\" for all"));
        }
    }
    for (table, map) in [
        ("pod_labels", &k.pod_labels),
        ("pod_annotations", &k.pod_annotations),
        ("node_selector", &k.node_selector),
    ] {
        for key in map.keys() {
            if let Err(why) = check_qualified_name(key) {
                c.error(
                    &path.key(table).key(key.clone()),
                    format!("is not a valid Kubernetes key: {why}"),
                );
            }
        }
    }
    for key in k
        .pod_labels
        .keys()
        .filter(|key| key.contains("runner.gitlab.com/"))
    {
        c.warn(
            &path.key("pod_labels").key(key.clone()),
            "is one of the runner's own labels; the runner's value wins",
        );
    }
    check_volumes(c, &path.key("volumes"), k);
    for (i, service) in k.services.iter().enumerate() {
        if service.name.is_empty() {
            c.error(
                &path.key("services").index(i).key("name"),
                "is missing: name the service's image",
            );
        }
    }
    for (i, alias) in k.host_aliases.iter().enumerate() {
        if alias.ip.parse::<std::net::IpAddr>().is_err() {
            c.error(
                &path.key("host_aliases").index(i).key("ip"),
                format!("{:?} is not an IP address", alias.ip),
            );
        }
        if alias.hostnames.is_empty() {
            c.error(
                &path.key("host_aliases").index(i).key("hostnames"),
                "is empty: list at least one host name",
            );
        }
    }
    for (i, patch) in k.pod_spec.iter().enumerate() {
        if patch.patch.is_some() == patch.patch_path.is_some() {
            c.error(
                &path.key("pod_spec").index(i),
                "needs exactly one of patch and patch_path",
            );
        }
        if let Some(Err(e)) = patch
            .patch
            .as_deref()
            .map(serde_yaml_ng::from_str::<serde_yaml_ng::Value>)
        {
            c.error(
                &path.key("pod_spec").index(i).key("patch"),
                format!("is neither YAML nor JSON: {e}"),
            );
        }
    }
    if let Some(affinity) = &k.affinity {
        let weights = affinity
            .node_affinity
            .iter()
            .flat_map(|n| {
                n.preferred_during_scheduling_ignored_during_execution
                    .iter()
                    .map(|p| p.weight)
            })
            .chain(
                [&affinity.pod_affinity, &affinity.pod_anti_affinity]
                    .into_iter()
                    .flatten()
                    .flat_map(|p| {
                        p.preferred_during_scheduling_ignored_during_execution
                            .iter()
                            .map(|w| w.weight)
                    }),
            );
        for weight in weights {
            if !(1..=100).contains(&weight) {
                c.error(
                    &path.key("affinity"),
                    format!("a preference weight is {weight}; weights go from 1 to 100"),
                );
            }
        }
    }
    if let Some(fargate) = &k.fargate {
        check_fargate(c, &path.key("fargate"), fargate);
    }
}

fn check_volumes(c: &mut Checker<'_>, path: &KeyPath, k: &KubernetesConfig) {
    let v = &k.volumes;
    let entries = v
        .host_path
        .iter()
        .map(|x| ("host_path", &x.name, &x.mount_path))
        .chain(v.pvc.iter().map(|x| ("pvc", &x.name, &x.mount_path)))
        .chain(
            v.config_map
                .iter()
                .map(|x| ("config_map", &x.name, &x.mount_path)),
        )
        .chain(v.secret.iter().map(|x| ("secret", &x.name, &x.mount_path)))
        .chain(
            v.empty_dir
                .iter()
                .map(|x| ("empty_dir", &x.name, &x.mount_path)),
        )
        .chain(v.csi.iter().map(|x| ("csi", &x.name, &x.mount_path)))
        .chain(v.nfs.iter().map(|x| ("nfs", &x.name, &x.mount_path)));
    let mut counters = std::collections::HashMap::new();
    for (kind, name, mount_path) in entries {
        let index = counters.entry(kind).or_insert(0usize);
        let item = path.key(kind).index(*index);
        *index += 1;
        if name.is_empty() {
            c.error(&item.key("name"), "is missing: every volume needs a name");
        }
        if mount_path.is_empty() {
            c.error(
                &item.key("mount_path"),
                "is missing: say where the volume is mounted",
            );
        }
    }
    for (i, csi) in v.csi.iter().enumerate() {
        if csi.driver.is_empty() {
            c.error(
                &path.key("csi").index(i).key("driver"),
                "is missing: name the CSI driver",
            );
        }
    }
    for (i, nfs) in v.nfs.iter().enumerate() {
        if nfs.server.is_empty() || nfs.path.is_empty() {
            c.error(
                &path.key("nfs").index(i),
                "an NFS volume needs server and path",
            );
        }
    }
}

fn check_fargate(c: &mut Checker<'_>, path: &KeyPath, f: &FargateConfig) {
    for (key, price) in [
        ("usd_per_vcpu_hour", f.usd_per_vcpu_hour),
        ("usd_per_gb_hour", f.usd_per_gb_hour),
        (
            "usd_per_extra_storage_gb_hour",
            f.usd_per_extra_storage_gb_hour,
        ),
    ] {
        if !price.is_finite() || price < 0.0 {
            c.error(
                &path.key(key),
                format!("{price} is not a price; use a number of US dollars, 0 or more"),
            );
        }
    }
    let mut names = BTreeSet::new();
    for (i, profile) in f.profiles.iter().enumerate() {
        let item = path.key("profiles").index(i);
        if profile.name.is_empty() {
            c.error(
                &item.key("name"),
                "is missing: give the profile's name as EKS knows it",
            );
        } else if !names.insert(profile.name.as_str()) {
            c.error(
                &item.key("name"),
                format!(
                    "{:?} is declared twice; profile names are unique in a cluster",
                    profile.name
                ),
            );
        }
        if profile.selectors.is_empty() {
            c.error(
                &item.key("selectors"),
                "is empty: a Fargate profile has at least one selector",
            );
        } else if profile.selectors.len() > 5 {
            c.warn(
                &item.key("selectors"),
                format!(
                    "has {} selectors; EKS allows at most 5 per profile",
                    profile.selectors.len()
                ),
            );
        }
        for (j, selector) in profile.selectors.iter().enumerate() {
            let selector_path = item.key("selectors").index(j);
            if selector.namespace.as_str().is_empty() {
                c.error(&selector_path.key("namespace"), "is missing: every Fargate selector names a namespace (wildcards * and ? allowed)");
            }
            if selector.labels.len() > 5 {
                c.warn(
                    &selector_path.key("labels"),
                    format!(
                        "has {} labels; EKS allows at most 5 per selector",
                        selector.labels.len()
                    ),
                );
            }
        }
    }
}

/// Checks a Kubernetes label/annotation key: an optional DNS-subdomain prefix and `/`, then
/// a name of at most 63 characters of `[A-Za-z0-9._-]`, starting and ending alphanumeric.
pub(crate) fn check_qualified_name(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        let valid_prefix = !prefix.is_empty()
            && prefix.len() <= 253
            && prefix.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            });
        if !valid_prefix {
            return Err(format!(
                "the prefix {prefix:?} must be a lower-case DNS subdomain such as example.com"
            ));
        }
    }
    let alnum = |b: u8| b.is_ascii_alphanumeric();
    let bytes = name.as_bytes();
    if name.is_empty() || name.len() > 63 {
        return Err("the name must be 1 to 63 characters".to_owned());
    }
    if !bytes
        .iter()
        .all(|&b| alnum(b) || matches!(b, b'-' | b'_' | b'.'))
        || !alnum(bytes[0])
        || !alnum(bytes[bytes.len() - 1])
    {
        return Err("the name may hold letters, digits, '-', '_' and '.', and must start and end with a letter or digit".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualified_names() {
        for good in [
            "use-fargate",
            "app.kubernetes.io/name",
            "a",
            "eks.amazonaws.com/compute-type",
            "A_b.c",
        ] {
            assert!(check_qualified_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "has space",
            "Upper.Case/x",
            "/x",
            &"x".repeat(64),
            "a/b/c!",
        ] {
            assert!(check_qualified_name(bad).is_err(), "{bad}");
        }
    }
}
