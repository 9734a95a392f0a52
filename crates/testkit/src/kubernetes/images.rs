//! The nodes' image stores and the kubelet's pull decision.
//!
//! Behaviour, from `kubernetes/kubernetes`:
//! - API defaulting (`pkg/apis/core/v1/defaults.go`, `SetDefaults_Container`): a container
//!   without `imagePullPolicy` gets `Always` when its image's tag is `latest`, else
//!   `IfNotPresent`. The tag is `parsers.ParseImageName`'s (`pkg/util/parsers/parsers.go`):
//!   `latest` when the reference names neither a tag nor a digest, so `alpine` and
//!   `alpine:latest` default to `Always`, `alpine:3.20` and `alpine@sha256:…` to
//!   `IfNotPresent`.
//! - The kubelet's image manager (`pkg/kubelet/images/image_manager.go`, `EnsureImageExists`
//!   and `shouldPullImage`): `Always` pulls; `IfNotPresent` pulls only when the node's store
//!   lacks the image, else reports the Normal event `Pulled` "Container image "…" already
//!   present on machine"; `Never` with the image absent fails with `ErrImageNeverPull`
//!   ("Container image "…" is not present with pull policy of Never", a Warning event of
//!   that reason) and never pulls. A pull that fails is `ErrImagePull` with the Warning
//!   event `Failed` "Failed to pull image "…": …"; a pull that succeeds leaves the image in
//!   the node's store, where later pods on that node find it. The stand-in's `Pulled` message
//!   after a pull leaves out upstream's durations ("in 1.2s (1.2s including waiting)").
//! - The kubelet does not back off an `ErrImageNeverPull`: nothing is pulled, so the
//!   container's waiting reason stays `ErrImageNeverPull` (only `ErrImagePull` becomes
//!   `ImagePullBackOff`, `pkg/kubelet/images/types.go` lists the reasons).
//!
//! A Fargate pod runs on a node of its own that is started for it and has no image store
//! from earlier pods: the EKS user guide (`doc_source/fargate.md`) says each Fargate pod
//! runs in its own isolation boundary, and the ECS developer guide's "Container image pull
//! behavior" (`awsdocs/amazon-ecs-developer-guide`, `doc_source/pull-behavior.md`) says
//! "Fargate does not cache images", so the whole image is pulled for every task. The EKS
//! user guide says nothing more specific about EKS Fargate's image cache; the stand-in
//! takes the ECS statement for both. Images cached "on the nodes" are on the EC2 nodes only.

use std::collections::HashMap;

use super::Image;

/// A container's effective image pull policy (`imagePullPolicy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PullPolicy {
    /// `Always`.
    Always,
    /// `IfNotPresent`.
    IfNotPresent,
    /// `Never`.
    Never,
}

impl PullPolicy {
    /// The policy a container runs with: its `imagePullPolicy`, else the API server's
    /// default for its image. `None` for a spelling the API would refuse.
    pub(crate) fn effective(spec: Option<&str>, image: &str) -> Option<Self> {
        match spec {
            None | Some("") => Some(default_pull_policy(image)),
            Some("Always") => Some(PullPolicy::Always),
            Some("IfNotPresent") => Some(PullPolicy::IfNotPresent),
            Some("Never") => Some(PullPolicy::Never),
            Some(_) => None,
        }
    }

    /// The Kubernetes spelling.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// The tag of an image reference as `parsers.ParseImageName` reads it: `latest` when it
/// names neither a tag nor a digest, `None` when it names only a digest.
pub(crate) fn image_tag(image: &str) -> Option<&str> {
    let (name, digest) = match image.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (image, None),
    };
    // A tag follows the last ':' after the last '/' (a ':' before it is a registry port).
    let last = name.rsplit('/').next().unwrap_or(name);
    match (last.split_once(':'), digest) {
        (Some((_, tag)), _) => Some(tag),
        (None, Some(_)) => None,
        (None, None) => Some("latest"),
    }
}

/// The API server's default `imagePullPolicy` for `image` (`SetDefaults_Container`).
pub(crate) fn default_pull_policy(image: &str) -> PullPolicy {
    if image_tag(image) == Some("latest") {
        PullPolicy::Always
    } else {
        PullPolicy::IfNotPresent
    }
}

/// Fills in the default `imagePullPolicy` of every container and init container of a pod
/// being created, as the API server's defaulting does.
pub(crate) fn default_pod_pull_policies(pod: &mut serde_json::Value) {
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        let Some(containers) = pod["spec"][list].as_array_mut() else {
            continue;
        };
        for container in containers {
            let unset = container["imagePullPolicy"]
                .as_str()
                .is_none_or(str::is_empty);
            if unset {
                let image = container["image"].as_str().unwrap_or_default();
                container["imagePullPolicy"] = default_pull_policy(image).as_str().into();
            }
        }
    }
}

impl super::KubernetesStandIn {
    /// Puts `name`, holding `image`, in the image store of every EC2 node (as if pre-pulled):
    /// `IfNotPresent` and `Never` containers there use it whatever the registry (the
    /// [`Image`] map of [`Self::map_image`]) says; Fargate nodes never have it.
    pub fn cache_image_on_nodes(&self, name: &str, image: Image) {
        self.shared
            .lock()
            .node_images
            .cache_on_ec2_nodes(name, image);
    }
}

/// The node a container is to start on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Node<'a> {
    /// An EC2 node of the pool, by name: its image store outlives pods.
    Ec2(&'a str),
    /// A Fargate node: started for this pod, with an empty image store.
    Fargate,
}

/// An event the kubelet writes about the image (type, reason, message).
pub(crate) type ImageEvent = (&'static str, &'static str, String);

/// Why the kubelet cannot start a container's image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PullFailure {
    /// The container's waiting reason: `ErrImagePull` or `ErrImageNeverPull`.
    pub(crate) reason: &'static str,
    /// The waiting message.
    pub(crate) message: String,
    /// The events written.
    pub(crate) events: Vec<ImageEvent>,
}

/// An image the kubelet has on the node for a container.
#[derive(Clone, Debug)]
pub(crate) struct Ensured {
    /// What the image holds.
    pub(crate) image: Image,
    /// The events written.
    pub(crate) events: Vec<ImageEvent>,
}

/// The image stores of the stand-in's nodes.
#[derive(Default)]
pub(crate) struct NodeImages {
    /// Images every EC2 node has (pre-pulled, or pulled by earlier pods), by name.
    on_every_ec2_node: HashMap<String, Image>,
    /// Images the kubelet pulled on one EC2 node, by (node, image).
    pulled: HashMap<(String, String), Image>,
}

impl NodeImages {
    /// Puts `name` holding `image` in the store of every EC2 node.
    pub(crate) fn cache_on_ec2_nodes(&mut self, name: &str, image: Image) {
        self.on_every_ec2_node.insert(name.to_owned(), image);
    }

    /// What `node`'s store holds under `name`.
    pub(crate) fn present(&self, node: Node<'_>, name: &str) -> Option<&Image> {
        match node {
            Node::Fargate => None,
            Node::Ec2(node) => self
                .pulled
                .get(&(node.to_owned(), name.to_owned()))
                .or_else(|| self.on_every_ec2_node.get(name)),
        }
    }

    /// The kubelet's `EnsureImageExists` for a container of image `name` with `policy` on
    /// `node`; `registry` is what pulling `name` gives (`None`: the registry has no such
    /// image). A successful pull on an EC2 node stays in its store.
    pub(crate) fn ensure(
        &mut self,
        node: Node<'_>,
        name: &str,
        policy: PullPolicy,
        registry: Option<&Image>,
    ) -> Result<Ensured, PullFailure> {
        let present = self.present(node, name).cloned();
        let pull = match policy {
            PullPolicy::Always => true,
            PullPolicy::IfNotPresent => present.is_none(),
            PullPolicy::Never => false,
        };
        if !pull {
            return match present {
                Some(image) => Ok(Ensured {
                    image,
                    events: vec![(
                        "Normal",
                        "Pulled",
                        format!("Container image \"{name}\" already present on machine"),
                    )],
                }),
                None => {
                    let message = format!(
                        "Container image \"{name}\" is not present with pull policy of Never"
                    );
                    Err(PullFailure {
                        reason: "ErrImageNeverPull",
                        events: vec![("Warning", "ErrImageNeverPull", message.clone())],
                        message,
                    })
                }
            };
        }
        let pulling = ("Normal", "Pulling", format!("Pulling image \"{name}\""));
        match registry {
            Some(Image::PullFails(message)) => Err(pull_failed(name, message.clone(), pulling)),
            None => Err(pull_failed(
                name,
                format!(
                    "failed to pull and unpack image \"{name}\": failed to resolve reference \"{name}\": not found"
                ),
                pulling,
            )),
            Some(image) => {
                if let Node::Ec2(node) = node {
                    self.pulled
                        .insert((node.to_owned(), name.to_owned()), image.clone());
                }
                Ok(Ensured {
                    image: image.clone(),
                    events: vec![
                        pulling,
                        (
                            "Normal",
                            "Pulled",
                            format!("Successfully pulled image \"{name}\""),
                        ),
                    ],
                })
            }
        }
    }
}

fn pull_failed(name: &str, message: String, pulling: ImageEvent) -> PullFailure {
    PullFailure {
        reason: "ErrImagePull",
        events: vec![
            pulling,
            (
                "Warning",
                "Failed",
                format!("Failed to pull image \"{name}\": {message}"),
            ),
        ],
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> Image {
        Image::HostRoot
    }

    fn fails() -> Image {
        Image::PullFails("registry unreachable".into())
    }

    #[test]
    fn defaulting_follows_the_tag() {
        for (image, policy) in [
            ("alpine", PullPolicy::Always),
            ("alpine:latest", PullPolicy::Always),
            ("registry.example.com:5000/team/alpine", PullPolicy::Always),
            (
                "registry.example.com:5000/team/alpine:3.20",
                PullPolicy::IfNotPresent,
            ),
            ("alpine:3.20", PullPolicy::IfNotPresent),
            ("alpine@sha256:0123456789abcdef", PullPolicy::IfNotPresent),
            ("alpine:latest@sha256:0123456789abcdef", PullPolicy::Always),
        ] {
            assert_eq!(default_pull_policy(image), policy, "{image}");
        }
        assert_eq!(
            PullPolicy::effective(None, "alpine:3"),
            Some(PullPolicy::IfNotPresent)
        );
        assert_eq!(
            PullPolicy::effective(Some("Never"), "alpine"),
            Some(PullPolicy::Never)
        );
        assert_eq!(PullPolicy::effective(Some("always"), "alpine"), None);
    }

    #[test]
    fn the_pod_gets_its_defaults_and_keeps_its_own() {
        let mut pod = serde_json::json!({"spec": {
            "initContainers": [{"name": "init", "image": "helper:1"}],
            "containers": [
                {"name": "build", "image": "ruby"},
                {"name": "svc", "image": "redis:7", "imagePullPolicy": "Never"},
            ],
        }});
        default_pod_pull_policies(&mut pod);
        assert_eq!(
            pod["spec"]["initContainers"][0]["imagePullPolicy"],
            "IfNotPresent"
        );
        assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(pod["spec"]["containers"][1]["imagePullPolicy"], "Never");
    }

    #[test]
    fn always_pulls_even_when_the_node_has_the_image() {
        let mut nodes = NodeImages::default();
        nodes.cache_on_ec2_nodes("ruby:3", root());
        let node = Node::Ec2("ip-10-0-0-10.ec2.internal");
        let failure = nodes
            .ensure(node, "ruby:3", PullPolicy::Always, Some(&fails()))
            .unwrap_err();
        assert_eq!(failure.reason, "ErrImagePull");
        assert_eq!(failure.message, "registry unreachable");
        assert_eq!(
            failure.events[1],
            (
                "Warning",
                "Failed",
                "Failed to pull image \"ruby:3\": registry unreachable".to_owned()
            )
        );
    }

    #[test]
    fn if_not_present_uses_the_cache_and_pulls_only_when_absent() {
        let mut nodes = NodeImages::default();
        nodes.cache_on_ec2_nodes("ruby:3", root());
        let node = Node::Ec2("ip-10-0-0-10.ec2.internal");
        let ensured = nodes
            .ensure(node, "ruby:3", PullPolicy::IfNotPresent, Some(&fails()))
            .unwrap();
        assert!(matches!(ensured.image, Image::HostRoot));
        assert_eq!(
            ensured.events,
            vec![(
                "Normal",
                "Pulled",
                "Container image \"ruby:3\" already present on machine".to_owned()
            )]
        );
        // Absent: it pulls, and the registry's failure is the container's.
        let failure = nodes
            .ensure(node, "go:1", PullPolicy::IfNotPresent, None)
            .unwrap_err();
        assert_eq!(failure.reason, "ErrImagePull");
        assert!(failure.message.contains("not found"), "{}", failure.message);
    }

    #[test]
    fn never_fails_without_pulling_when_absent() {
        let mut nodes = NodeImages::default();
        let node = Node::Ec2("ip-10-0-0-10.ec2.internal");
        let failure = nodes
            .ensure(node, "ruby:3", PullPolicy::Never, Some(&root()))
            .unwrap_err();
        assert_eq!(failure.reason, "ErrImageNeverPull");
        assert_eq!(
            failure.message,
            "Container image \"ruby:3\" is not present with pull policy of Never"
        );
        assert_eq!(failure.events.len(), 1, "nothing is pulled");
        nodes.cache_on_ec2_nodes("ruby:3", root());
        assert!(
            nodes
                .ensure(node, "ruby:3", PullPolicy::Never, None)
                .is_ok()
        );
    }

    #[test]
    fn a_pull_stays_on_its_node_only() {
        let mut nodes = NodeImages::default();
        let first = Node::Ec2("ip-10-0-0-10.ec2.internal");
        let second = Node::Ec2("ip-10-0-0-11.ec2.internal");
        nodes
            .ensure(first, "ruby:3", PullPolicy::Always, Some(&root()))
            .unwrap();
        assert!(nodes.present(first, "ruby:3").is_some());
        assert!(nodes.present(second, "ruby:3").is_none());
        assert!(
            nodes
                .ensure(first, "ruby:3", PullPolicy::Never, None)
                .is_ok()
        );
    }

    #[test]
    fn fargate_nodes_have_no_cache() {
        let mut nodes = NodeImages::default();
        nodes.cache_on_ec2_nodes("ruby:3", root());
        let failure = nodes
            .ensure(
                Node::Fargate,
                "ruby:3",
                PullPolicy::IfNotPresent,
                Some(&fails()),
            )
            .unwrap_err();
        assert_eq!(failure.reason, "ErrImagePull");
        nodes
            .ensure(Node::Fargate, "go:1", PullPolicy::Always, Some(&root()))
            .unwrap();
        assert!(nodes.present(Node::Fargate, "go:1").is_none());
    }

    #[test]
    fn tags_as_parse_image_name_reads_them() {
        assert_eq!(image_tag("alpine"), Some("latest"));
        assert_eq!(image_tag("localhost:5000/alpine"), Some("latest"));
        assert_eq!(image_tag("localhost:5000/alpine:edge"), Some("edge"));
        assert_eq!(image_tag("alpine@sha256:abc"), None);
    }
}
