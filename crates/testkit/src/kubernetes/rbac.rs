//! Authentication and RBAC authorisation, as the API server's filter chain does them before a
//! request reaches its handler.
//!
//! - Authentication: a bearer token names the user. The stand-in's admin token
//!   (`stand-in-token`, the one [`super::KubernetesStandIn::write_kubeconfig`] writes) is a
//!   member of `system:masters`, like the cluster creator on EKS; tokens made by
//!   [`super::KubernetesStandIn::service_account_token`] are ServiceAccounts, with the user
//!   name and groups of `staging/src/k8s.io/apiserver/pkg/authentication/serviceaccount/util.go`
//!   (`system:serviceaccount:<ns>:<name>`, groups `system:serviceaccounts`,
//!   `system:serviceaccounts:<ns>`, plus `system:authenticated`). An unknown token is answered
//!   401 `Unauthorized` (`staging/src/k8s.io/apiserver/pkg/endpoints/filters/authentication.go`).
//! - Request attributes: verb, resource, subresource, namespace and name as
//!   `staging/src/k8s.io/apiserver/pkg/endpoints/request/requestinfo.go` derives them (GET of a
//!   collection is `list`, or `watch` with `watch=true`; GET of an object `get`; POST `create`;
//!   PUT `update`; PATCH `patch`; DELETE `delete`, of a collection `deletecollection`).
//! - Authorisation: `system:masters` is allowed everything
//!   (`pkg/kubeapiserver/authorizer/config.go`, the privileged-groups authorizer); otherwise
//!   the rules of the ClusterRoles bound by ClusterRoleBindings apply everywhere, and those of
//!   the Roles or ClusterRoles bound by a RoleBinding apply in its namespace
//!   (`pkg/registry/rbac/validation/rule.go` `VisitRulesFor`, `appliesTo`; rule matching from
//!   `pkg/apis/rbac/v1/evaluation_helpers.go`: `*` wildcards, `resource/subresource`,
//!   `*/subresource`, `resourceNames`). `/version`, `/healthz`, `/livez` and `/readyz` are open
//!   to all (the bootstrap `system:public-info-viewer` ClusterRole,
//!   `plugin/pkg/auth/authorizer/rbac/bootstrappolicy/policy.go`), and the discovery paths
//!   (`/api`, `/apis`, `/openapi` and below) to authenticated users (`system:discovery`, same
//!   file). ClusterRole aggregation is
//!   not modelled.
//! - Denial: 403 with the `Status` of `staging/src/k8s.io/apiserver/pkg/endpoints/handlers/responsewriters/errors.go`
//!   (`Forbidden`, `forbiddenMessage`) wrapped by `apierrors.NewForbidden`
//!   (`staging/src/k8s.io/apimachinery/pkg/api/errors/errors.go`).
//!
//! Authorisation is on only once a Role or ClusterRole is loaded: until then every request is
//! allowed (the `AlwaysAllow` mode), so tests that do not care about RBAC are unaffected.

use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::Shared;

/// The admin token of the stand-in's own kubeconfig: a `system:masters` member.
pub(super) const ADMIN_TOKEN: &str = "stand-in-token";

/// One rule of a Role or ClusterRole.
#[derive(Clone, Debug, Default)]
struct Rule {
    api_groups: Vec<String>,
    resources: Vec<String>,
    resource_names: Vec<String>,
    verbs: Vec<String>,
}

/// A subject of a binding.
#[derive(Clone, Debug)]
enum Subject {
    User(String),
    Group(String),
    ServiceAccount { namespace: String, name: String },
}

/// A RoleBinding (with its namespace) or a ClusterRoleBinding (namespace `None`).
#[derive(Clone, Debug)]
struct Binding {
    namespace: Option<String>,
    role_kind: String,
    role_name: String,
    subjects: Vec<Subject>,
}

/// Who a request comes from.
#[derive(Clone, Debug)]
struct UserInfo {
    name: String,
    groups: Vec<String>,
}

/// The loaded RBAC objects and the tokens the stand-in issued.
#[derive(Default)]
pub(super) struct Rbac {
    /// Roles by (namespace, name).
    roles: Vec<(String, String, Vec<Rule>)>,
    /// ClusterRoles by name.
    cluster_roles: Vec<(String, Vec<Rule>)>,
    bindings: Vec<Binding>,
    /// ServiceAccount tokens: (token, namespace, name).
    tokens: Vec<(String, String, String)>,
    log: Vec<Authorization>,
}

/// One authorisation decision, kept while RBAC is on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorization {
    /// The user name (`system:serviceaccount:ns:name` for a ServiceAccount).
    pub user: String,
    /// The request's verb (`list`, `watch`, `get`, `create`, ...).
    pub verb: String,
    /// The resource, `resource/subresource` for a subresource.
    pub resource: String,
    /// The namespace, empty for a cluster-scoped or all-namespaces request.
    pub namespace: String,
    /// Whether it was allowed.
    pub allowed: bool,
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn rules(object: &Value) -> Vec<Rule> {
    object["rules"]
        .as_array()
        .map(|rules| {
            rules
                .iter()
                .map(|r| Rule {
                    api_groups: strings(&r["apiGroups"]),
                    resources: strings(&r["resources"]),
                    resource_names: strings(&r["resourceNames"]),
                    verbs: strings(&r["verbs"]),
                })
                .collect()
        })
        .unwrap_or_default()
}

impl Rbac {
    /// Whether authorisation is on.
    fn enforcing(&self) -> bool {
        !self.roles.is_empty() || !self.cluster_roles.is_empty()
    }

    /// Loads one `rbac.authorization.k8s.io/v1` object; an object of another kind is refused.
    pub(super) fn load(&mut self, object: &Value) -> Result<(), String> {
        let kind = object["kind"].as_str().unwrap_or_default();
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_owned();
        match kind {
            "Role" => self.roles.push((namespace, name, rules(object))),
            "ClusterRole" => self.cluster_roles.push((name, rules(object))),
            "RoleBinding" | "ClusterRoleBinding" => {
                let binding_namespace = (kind == "RoleBinding").then(|| namespace.clone());
                let subjects = object["subjects"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| {
                        let name = s["name"].as_str()?.to_owned();
                        match s["kind"].as_str()? {
                            "User" => Some(Subject::User(name)),
                            "Group" => Some(Subject::Group(name)),
                            // rule.go appliesTo: an empty namespace means the binding's.
                            "ServiceAccount" => Some(Subject::ServiceAccount {
                                namespace: s["namespace"]
                                    .as_str()
                                    .filter(|n| !n.is_empty())
                                    .map(str::to_owned)
                                    .or_else(|| binding_namespace.clone())
                                    .unwrap_or_default(),
                                name,
                            }),
                            _ => None,
                        }
                    })
                    .collect();
                self.bindings.push(Binding {
                    namespace: binding_namespace,
                    role_kind: object["roleRef"]["kind"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    role_name: object["roleRef"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    subjects,
                });
            }
            other => return Err(format!("not an RBAC object: kind {other:?}")),
        }
        Ok(())
    }

    /// A bearer token for ServiceAccount `namespace/name`.
    pub(super) fn issue_token(&mut self, namespace: &str, name: &str) -> String {
        let token = format!("stand-in-sa-{}-{namespace}-{name}", self.tokens.len());
        self.tokens
            .push((token.clone(), namespace.to_owned(), name.to_owned()));
        token
    }

    /// The user a bearer token stands for; `None` for an unknown token. No token is
    /// `system:anonymous`.
    fn authenticate(&self, token: Option<&str>) -> Option<UserInfo> {
        match token {
            None => Some(UserInfo {
                name: "system:anonymous".into(),
                groups: vec!["system:unauthenticated".into()],
            }),
            Some(ADMIN_TOKEN) => Some(UserInfo {
                name: "kubernetes-admin".into(),
                groups: vec!["system:masters".into(), "system:authenticated".into()],
            }),
            Some(token) => {
                let (_, namespace, name) = self.tokens.iter().find(|(t, _, _)| t == token)?;
                Some(UserInfo {
                    name: format!("system:serviceaccount:{namespace}:{name}"),
                    groups: vec![
                        "system:serviceaccounts".into(),
                        format!("system:serviceaccounts:{namespace}"),
                        "system:authenticated".into(),
                    ],
                })
            }
        }
    }

    fn applies_to(&self, subject: &Subject, user: &UserInfo) -> bool {
        match subject {
            Subject::User(name) => *name == user.name,
            Subject::Group(group) => user.groups.contains(group),
            Subject::ServiceAccount { namespace, name } => {
                user.name == format!("system:serviceaccount:{namespace}:{name}")
            }
        }
    }

    fn role_rules(&self, binding: &Binding) -> &[Rule] {
        match (binding.role_kind.as_str(), &binding.namespace) {
            ("ClusterRole", _) => self
                .cluster_roles
                .iter()
                .find(|(n, _)| *n == binding.role_name)
                .map(|(_, r)| r.as_slice())
                .unwrap_or_default(),
            ("Role", Some(namespace)) => self
                .roles
                .iter()
                .find(|(ns, n, _)| ns == namespace && *n == binding.role_name)
                .map(|(_, _, r)| r.as_slice())
                .unwrap_or_default(),
            _ => &[],
        }
    }

    fn allows(&self, user: &UserInfo, request: &Attributes) -> bool {
        if user.groups.iter().any(|g| g == "system:masters") {
            return true;
        }
        let Some(resource) = &request.resource else {
            let path = request.path.as_str();
            // system:public-info-viewer, and system:discovery for authenticated users.
            let discovery = ["/api", "/apis", "/openapi"]
                .iter()
                .any(|prefix| path == *prefix || path.starts_with(&format!("{prefix}/")));
            return matches!(
                path,
                "/version" | "/version/" | "/healthz" | "/livez" | "/readyz"
            ) || (discovery && user.groups.iter().any(|g| g == "system:authenticated"));
        };
        self.bindings
            .iter()
            .filter(|b| {
                b.namespace
                    .as_ref()
                    .is_none_or(|ns| *ns == request.namespace)
            })
            .filter(|b| b.subjects.iter().any(|s| self.applies_to(s, user)))
            .flat_map(|b| self.role_rules(b))
            .any(|rule| rule_allows(rule, request, resource))
    }
}

/// `evaluation_helpers.go` `RuleAllows`.
fn rule_allows(rule: &Rule, request: &Attributes, resource: &Resource) -> bool {
    let any = |list: &[String], wanted: &str| list.iter().any(|v| v == "*" || v == wanted);
    let combined = match &resource.subresource {
        Some(sub) => format!("{}/{sub}", resource.resource),
        None => resource.resource.clone(),
    };
    let resource_matches = rule.resources.iter().any(|r| {
        r == "*"
            || *r == combined
            || resource
                .subresource
                .as_ref()
                .is_some_and(|sub| *r == format!("*/{sub}"))
    });
    any(&rule.verbs, &request.verb)
        && any(&rule.api_groups, &resource.group)
        && resource_matches
        && (rule.resource_names.is_empty()
            || resource
                .name
                .as_ref()
                .is_some_and(|n| rule.resource_names.contains(n)))
}

/// The resource part of a request's attributes.
#[derive(Debug)]
struct Resource {
    group: String,
    resource: String,
    subresource: Option<String>,
    name: Option<String>,
}

/// What the authorizer looks at (`requestinfo.go`), for the paths the stand-in serves.
#[derive(Debug)]
struct Attributes {
    verb: String,
    namespace: String,
    resource: Option<Resource>,
    path: String,
}

fn attributes(method: &Method, path: &str, query: Option<&str>) -> Attributes {
    let watch = query.is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", "v1", rest @ ..] if !rest.is_empty() => (String::new(), rest),
        ["apis", group, _version, rest @ ..] if !rest.is_empty() => ((*group).to_owned(), rest),
        _ => {
            let verb = match *method {
                Method::GET | Method::HEAD => "get",
                Method::POST => "post",
                Method::PUT => "put",
                Method::PATCH => "patch",
                Method::DELETE => "delete",
                _ => "",
            };
            return Attributes {
                verb: verb.into(),
                namespace: String::new(),
                resource: None,
                path: path.to_owned(),
            };
        }
    };
    // `namespaces/{ns}/...` sets the namespace; `namespaces/{ns}` alone is the namespace object.
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => ((*ns).to_owned(), rest),
        ["namespaces", ns] => ((*ns).to_owned(), rest),
        _ => (String::new(), rest),
    };
    let resource = rest[0].to_owned();
    let name = rest.get(1).map(|n| (*n).to_owned());
    let subresource = rest.get(2).map(|s| (*s).to_owned());
    let verb = match (method.clone(), name.is_some()) {
        (Method::GET | Method::HEAD, false) if watch => "watch",
        (Method::GET | Method::HEAD, false) => "list",
        (Method::GET | Method::HEAD, true) => "get",
        (Method::POST, _) => "create",
        (Method::PUT, _) => "update",
        (Method::PATCH, _) => "patch",
        (Method::DELETE, false) => "deletecollection",
        (Method::DELETE, true) => "delete",
        _ => "",
    };
    Attributes {
        verb: verb.into(),
        namespace,
        resource: Some(Resource {
            group,
            resource,
            subresource,
            name,
        }),
        path: path.to_owned(),
    }
}

/// The 403 `Status` of `responsewriters.Forbidden`.
fn forbidden(user: &UserInfo, request: &Attributes) -> Response {
    let (message, details) = match &request.resource {
        None => (
            format!(
                "forbidden: User {:?} cannot {} path {:?}",
                user.name, request.verb, request.path
            ),
            json!({}),
        ),
        Some(resource) => {
            let combined = match &resource.subresource {
                Some(sub) => format!("{}/{sub}", resource.resource),
                None => resource.resource.clone(),
            };
            let why = if request.namespace.is_empty() {
                format!(
                    "User {:?} cannot {} resource {combined:?} in API group {:?} at the cluster scope",
                    user.name, request.verb, resource.group
                )
            } else {
                format!(
                    "User {:?} cannot {} resource {combined:?} in API group {:?} in the namespace {:?}",
                    user.name, request.verb, resource.group, request.namespace
                )
            };
            // GroupResource.String(): `resource` for the core group, else `resource.group`.
            let qualified = if resource.group.is_empty() {
                resource.resource.clone()
            } else {
                format!("{}.{}", resource.resource, resource.group)
            };
            let message = match &resource.name {
                Some(name) => format!("{qualified} {name:?} is forbidden: {why}"),
                None => format!("{qualified} is forbidden: {why}"),
            };
            let mut details = json!({"kind": resource.resource});
            if !resource.group.is_empty() {
                details["group"] = json!(resource.group);
            }
            if let Some(name) = &resource.name {
                details["name"] = json!(name);
            }
            (message, details)
        }
    };
    (
        StatusCode::FORBIDDEN,
        axum::Json(json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": "Forbidden", "details": details, "code": 403,
        })),
    )
        .into_response()
}

/// The authentication and authorisation filters, in front of every handler.
pub(super) async fn filter(
    State(shared): State<Shared>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let token = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned());
    let decision = {
        let mut inner = shared.lock();
        let rbac = &mut inner.rbac;
        if !rbac.enforcing() {
            None
        } else {
            match rbac.authenticate(token.as_deref()) {
                None => Some(Err(super::status(
                    StatusCode::UNAUTHORIZED,
                    "Unauthorized",
                    "Unauthorized",
                ))),
                Some(user) => {
                    let attributes = attributes(
                        request.method(),
                        request.uri().path(),
                        request.uri().query(),
                    );
                    let allowed = rbac.allows(&user, &attributes);
                    rbac.log.push(Authorization {
                        user: user.name.clone(),
                        verb: attributes.verb.clone(),
                        resource: attributes
                            .resource
                            .as_ref()
                            .map(|r| match &r.subresource {
                                Some(sub) => format!("{}/{sub}", r.resource),
                                None => r.resource.clone(),
                            })
                            .unwrap_or_else(|| attributes.path.clone()),
                        namespace: attributes.namespace.clone(),
                        allowed,
                    });
                    Some(if allowed {
                        Ok(())
                    } else {
                        Err(forbidden(&user, &attributes))
                    })
                }
            }
        }
    };
    match decision {
        Some(Err(denied)) => denied,
        _ => next.run(request).await,
    }
}

impl Rbac {
    /// The decisions taken so far.
    pub(super) fn log(&self) -> Vec<Authorization> {
        self.log.clone()
    }
}

impl super::KubernetesStandIn {
    /// Loads a Role, ClusterRole, RoleBinding or ClusterRoleBinding (as JSON, e.g. a rendered
    /// chart manifest). The first Role or ClusterRole turns authorisation on.
    pub fn load_rbac(&self, object: &Value) -> Result<(), String> {
        self.shared.lock().rbac.load(object)
    }

    /// Issues a bearer token for ServiceAccount `namespace/name` (like a TokenRequest).
    pub fn service_account_token(&self, namespace: &str, name: &str) -> String {
        self.shared.lock().rbac.issue_token(namespace, name)
    }

    /// Writes a kubeconfig that authenticates with `token` into `dir`.
    pub fn write_kubeconfig_with_token(
        &self,
        dir: &std::path::Path,
        token: &str,
    ) -> std::path::PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: stand-in\n  cluster:\n    server: {}\nusers:\n- name: stand-in\n  user:\n    token: {token}\ncontexts:\n- name: stand-in\n  context:\n    cluster: stand-in\n    user: stand-in\ncurrent-context: stand-in\n",
            self.url
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    /// Every authorisation decision since RBAC was turned on, in order.
    pub fn authorizations(&self) -> Vec<Authorization> {
        self.shared.lock().rbac.log()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> UserInfo {
        UserInfo {
            name: name.into(),
            groups: vec!["system:authenticated".into()],
        }
    }

    #[test]
    fn request_attributes_follow_requestinfo() {
        let a = attributes(
            &Method::GET,
            "/api/v1/namespaces/ns/pods",
            Some("watch=true"),
        );
        assert_eq!(a.verb, "watch");
        let a = attributes(&Method::GET, "/api/v1/namespaces/ns/pods/p/log", None);
        assert_eq!(a.verb, "get");
        let r = a.resource.unwrap();
        assert_eq!(
            (r.resource.as_str(), r.subresource.as_deref()),
            ("pods", Some("log"))
        );
        let a = attributes(&Method::DELETE, "/api/v1/namespaces/ns/secrets", None);
        assert_eq!(a.verb, "deletecollection");
        let a = attributes(&Method::GET, "/api/v1/pods", None);
        assert_eq!((a.verb.as_str(), a.namespace.as_str()), ("list", ""));
    }

    #[test]
    fn role_bindings_scope_rules_to_their_namespace() {
        let mut rbac = Rbac::default();
        for object in [
            json!({"kind": "Role", "metadata": {"name": "r", "namespace": "jobs"},
                   "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]}),
            json!({"kind": "RoleBinding", "metadata": {"name": "b", "namespace": "jobs"},
                   "roleRef": {"kind": "Role", "name": "r"},
                   "subjects": [{"kind": "ServiceAccount", "name": "sa", "namespace": "ci"}]}),
        ] {
            rbac.load(&object).unwrap();
        }
        let sa = user("system:serviceaccount:ci:sa");
        let list =
            |ns: &str| attributes(&Method::GET, &format!("/api/v1/namespaces/{ns}/pods"), None);
        assert!(rbac.allows(&sa, &list("jobs")));
        assert!(!rbac.allows(&sa, &list("other")));
        assert!(!rbac.allows(&user("system:serviceaccount:ci:other"), &list("jobs")));
        let secrets = attributes(&Method::GET, "/api/v1/namespaces/jobs/secrets", None);
        assert!(!rbac.allows(&sa, &secrets));
        let log = attributes(&Method::GET, "/api/v1/namespaces/jobs/pods/p/log", None);
        assert!(!rbac.allows(&sa, &log), "pods does not grant pods/log");
    }
}
