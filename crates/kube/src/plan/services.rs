//! The service containers of a job pod, as gitlab-runner's Kubernetes executor makes them
//! (`executors/kubernetes/kubernetes.go`: `prepareOptions`, `getServiceName`, `buildContainer`;
//! `executors/kubernetes/host_aliases.go`; `common/build.go`: `expandContainerOptions`,
//! `GetServiceVariables`), with container names that never collide.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Container, EnvVar, HostAlias};
use podrunner_agent::variables::Variable;
use podrunner_config::kubernetes::{ContainerRole, KubernetesConfig};
use podrunner_gitlab::payload::JobResponse;

use super::{
    JobVariables, PlanError, allowed, expand_like_runner, names, resources, security_context, users,
};

/// Names of the pod's own containers, which no service may take.
const RESERVED: [&str; 2] = ["build", "podrunner-init"];

/// A service to add, from the config or the job, its image and aliases expanded.
struct ServiceSpec {
    image: String,
    alias: String,
    entrypoint: Vec<String>,
    command: Vec<String>,
    /// The service's own variables (`raw` ones are not expanded).
    variables: Vec<Variable>,
    /// Services with ports come from the Web IDE and give no host alias (`host_aliases.go`).
    has_ports: bool,
    /// The user the job asks the service to run as (`kubernetes.user`, [`users`]).
    user: String,
}

/// The service containers and the host alias that points their names at the pod.
pub(super) struct Services {
    /// One container per service, the runner's first, then the job's.
    pub containers: Vec<Container>,
    /// `127.0.0.1` with every service's names, when there are any.
    pub host_alias: Option<HostAlias>,
}

/// Plans the services of a job.
pub(super) fn plan(
    config: &KubernetesConfig,
    job: &JobResponse,
    variables: &JobVariables,
    warnings: &mut Vec<String>,
) -> Result<Services, PlanError> {
    // The config's services and the job's, names and aliases expanded with the job's
    // variables (`GetExpandedServices` in `common/config.go`, `expandContainerOptions`).
    let job_users = job
        .services
        .iter()
        .map(|s| users::job_user(s, variables))
        .collect::<Result<Vec<_>, _>>()?;
    let specs = config
        .services
        .iter()
        .map(|s| ServiceSpec {
            image: variables.expand(&s.name),
            alias: variables.expand(s.alias.as_deref().unwrap_or_default()),
            entrypoint: s.entrypoint.clone(),
            command: s.command.clone(),
            variables: s
                .environment
                .iter()
                .filter_map(|e| e.split_once('='))
                .map(|(k, v)| Variable {
                    raw: false,
                    public: false,
                    ..Variable::runner(k, v)
                })
                .collect(),
            has_ports: false,
            user: String::new(),
        })
        .chain(
            job.services
                .iter()
                .zip(job_users)
                .map(|(s, user)| ServiceSpec {
                    image: variables.expand(&s.name),
                    alias: variables.expand(&s.alias),
                    entrypoint: s.entrypoint.clone(),
                    command: s.command.clone(),
                    variables: s.variables.iter().map(Variable::from_payload).collect(),
                    has_ports: !s.ports.is_empty(),
                    user,
                }),
        )
        .filter(|s| !s.image.is_empty());

    let mut used: BTreeSet<String> = RESERVED.iter().map(|n| (*n).to_owned()).collect();
    let mut next_index = 0;
    let mut hostnames: Vec<String> = Vec::new();
    let mut containers = Vec::new();
    for spec in specs {
        if !allowed(&config.allowed_services, &spec.image) {
            return Err(PlanError::ServiceNotAllowed(spec.image));
        }
        let aliases: Vec<&str> = spec
            .alias
            .split([' ', ','])
            .filter(|a| !a.is_empty())
            .collect();
        if !spec.has_ports {
            // Derived names that are not DNS names are dropped; explicit ones are refused.
            hostnames.extend(
                names::derived_aliases(&spec.image)
                    .into_iter()
                    .filter(|a| names::dns1123_subdomain(a).is_ok()),
            );
            for alias in &aliases {
                PlanError::check(
                    format!("the alias of service {:?}", spec.image),
                    alias,
                    "host alias",
                    names::dns1123_subdomain,
                )?;
                hostnames.push((*alias).to_owned());
            }
        }
        let name = container_name(&aliases, &mut used, &mut next_index);
        let env = env(variables, &spec)?;
        let own = config.service_container_security_context.as_ref();
        let mut security = security_context(config, own);
        users::apply(config, &mut security, own, &spec.user, &name, warnings);
        containers.push(Container {
            name,
            image: Some(spec.image),
            command: (!spec.entrypoint.is_empty()).then_some(spec.entrypoint),
            args: (!spec.command.is_empty()).then_some(spec.command),
            env: (!env.is_empty()).then_some(env),
            resources: resources(config, ContainerRole::Service, variables, warnings)?,
            security_context: Some(security),
            ..Default::default()
        });
    }
    let mut seen = BTreeSet::new();
    hostnames.retain(|h| seen.insert(h.clone()));
    Ok(Services {
        containers,
        host_alias: (!hostnames.is_empty()).then(|| HostAlias {
            ip: "127.0.0.1".into(),
            hostnames: Some(hostnames),
        }),
    })
}

/// The first explicit alias that is a DNS-1123 label and not taken (`getServiceName`), else
/// the next free `svc-N`. Unlike gitlab-runner, the pod's own containers and the generated
/// names count as taken, so an alias `build` or `svc-0` never gives two containers one name.
fn container_name(aliases: &[&str], used: &mut BTreeSet<String>, next_index: &mut usize) -> String {
    let name = aliases
        .iter()
        .find(|a| names::dns1123_label(a).is_ok() && !used.contains(**a))
        .map(|a| (*a).to_owned())
        .unwrap_or_else(|| {
            loop {
                let name = format!("svc-{next_index}");
                *next_index += 1;
                if !used.contains(&name) {
                    break name;
                }
            }
        });
    used.insert(name.clone());
    name
}

/// A service's environment as `GetServiceVariables` gives it: the job's public variables as
/// the job sees them, then the service's own, expanded against the job's and the service's;
/// later ones of a name win in the first one's place (`buildVariables` in `util.go`), `$`
/// escaped from Kubernetes' `$(VAR)` expansion.
///
/// Not like gitlab-runner: a file-type variable's value is the path of its file inside the
/// build container, which a service cannot read, so file variables are left out; and the
/// runner's own "internal" variables (`CI_PROJECT_DIR`...) are the agent's, known only inside
/// the build container, so services do not get them.
fn env(variables: &JobVariables, spec: &ServiceSpec) -> Result<Vec<EnvVar>, PlanError> {
    let mut source = variables.0.clone();
    for own in &spec.variables {
        source.push(Variable {
            raw: true,
            ..own.clone()
        });
    }
    let job = variables
        .0
        .effective()
        .into_iter()
        .filter(|v| v.public && !v.file)
        .map(|v| (v.key.clone(), v.value.clone()));
    let own = spec.variables.iter().map(|v| {
        let value = if v.raw {
            v.value.clone()
        } else {
            expand_like_runner(&source, &v.value)
        };
        (v.key.clone(), value)
    });
    let mut env: Vec<EnvVar> = Vec::new();
    for (name, value) in job.chain(own) {
        PlanError::check(
            format!("the variables of service {:?}", spec.image),
            &name,
            "environment variable name",
            names::env_var_name,
        )?;
        let var = EnvVar {
            value: Some(value.replace('$', "$$")),
            name,
            value_from: None,
        };
        match env.iter_mut().find(|e| e.name == var.name) {
            Some(slot) => *slot = var,
            None => env.push(var),
        }
    }
    Ok(env)
}
