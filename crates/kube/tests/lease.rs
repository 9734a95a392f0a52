//! Manager Leases against the Kubernetes stand-in's API server: who takes an expired Lease.

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use podrunner_kube::lease::{LeaseSettings, OwnLeases, Taken, lease_name, take};
use podrunner_testkit::KubernetesStandIn;
use tokio_util::sync::CancellationToken;

async fn client(kube: &KubernetesStandIn, dir: &std::path::Path) -> kube::Client {
    let path = kube.write_kubeconfig(dir);
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    kube::Client::try_from(config).unwrap()
}

/// Two managers that read the same expired Lease both try to take it: exactly one wins, the
/// other is told it lost (409), and the Lease names the winner. A manager restarted in the
/// same pod (same system ID) takes its own Lease back instead of failing on AlreadyExists.
#[tokio::test]
async fn exactly_one_of_two_takers_wins() {
    let kube = KubernetesStandIn::start(1, 1.0).await;
    let dir = tempfile::tempdir().unwrap();
    let client = client(&kube, dir.path()).await;
    let settings = LeaseSettings {
        duration: std::time::Duration::from_secs(30),
    };
    let dead = OwnLeases::new(
        client.clone(),
        "s_00000000dead".into(),
        settings,
        CancellationToken::new(),
    );
    assert!(dead.ensure("jobs").await);
    let api: Api<Lease> = Api::namespaced(client.clone(), "jobs");
    let read = api.get(&lease_name("s_00000000dead")).await.unwrap();
    let (first, second) = tokio::join!(
        take(&api, &read, "s_0000000000b1"),
        take(&api, &read, "s_0000000000c1")
    );
    let outcomes = [first.unwrap(), second.unwrap()];
    let won: Vec<&Taken> = outcomes
        .iter()
        .filter(|t| matches!(t, Taken::Won(_)))
        .collect();
    assert_eq!(won.len(), 1, "{outcomes:?}");
    let Taken::Won(lease) = won[0] else {
        unreachable!()
    };
    let holder = lease
        .spec
        .as_ref()
        .unwrap()
        .holder_identity
        .clone()
        .unwrap();
    let stored = api.get(&lease_name("s_00000000dead")).await.unwrap();
    assert_eq!(stored.spec.unwrap().holder_identity.unwrap(), holder);
    assert_eq!(
        lease.spec.as_ref().unwrap().lease_transitions,
        Some(1),
        "a take is a transition"
    );

    // The same system ID again (a container restart): its Lease is taken back.
    let again = OwnLeases::new(
        client.clone(),
        "s_00000000dead".into(),
        settings,
        CancellationToken::new(),
    );
    assert!(again.ensure("jobs").await);
    let stored = api.get(&lease_name("s_00000000dead")).await.unwrap();
    assert_eq!(
        stored.spec.unwrap().holder_identity.as_deref(),
        Some("s_00000000dead")
    );
    // A clean exit deletes it.
    again.release().await;
    assert!(kube.leases().is_empty(), "{:?}", kube.leases());
}
