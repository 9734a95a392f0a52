//! Fargate capacity shortages, injectable.
//!
//! The EKS user guide (`awsdocs/amazon-eks-user-guide`) does not say how a Fargate capacity
//! shortage shows on a pod. The message is the one AWS documents for Fargate's RunTask
//! ("Capacity is unavailable at this time. Please try again later or in a different
//! availability zone", AWS re:Post knowledge center `ecs-fargate-runtask-capacity`); the
//! stand-in reports it the way EKS's Fargate scheduler reports what keeps a pod from
//! scheduling: a `Warning FailedScheduling` event from `fargate-scheduler` (fargate.md §1.1),
//! the pod staying `Pending` while the shortage lasts, then scheduled as usual. Both the event
//! form and the wait are the stand-in's reading, not documented behaviour.

use std::time::Duration;

use serde_json::Value;
use tokio::sync::Notify;

use super::Shared;

/// The documented Fargate capacity message.
pub const CAPACITY_UNAVAILABLE: &str = "Capacity is unavailable at this time. Please try again later or in a different availability zone";

/// Waits while a capacity shortage is injected, reporting it once on the pod; `false` when
/// the pod went away meanwhile.
pub(super) async fn wait_for_capacity(
    shared: &Shared,
    (namespace, name, uid): (&str, &str, &str),
    stored: &Value,
    stop: &Notify,
) -> bool {
    let mut reported = false;
    loop {
        let shortage = shared.lock().fargate_capacity_shortage.clone();
        let Some(message) = shortage else {
            return true;
        };
        if super::pod_gone_or_deleting(shared, namespace, name, uid) {
            return false;
        }
        if !reported {
            reported = true;
            super::event(
                shared,
                namespace,
                stored,
                "Warning",
                "FailedScheduling",
                &message,
                "fargate-scheduler",
            );
        }
        tokio::select! {
            () = stop.notified() => {}
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

impl super::KubernetesStandIn {
    /// Starts (with the message, e.g. [`CAPACITY_UNAVAILABLE`]) or ends (`None`) a Fargate
    /// capacity shortage: Fargate pods wait `Pending` meanwhile.
    pub fn set_fargate_capacity_shortage(&self, message: Option<&str>) {
        self.shared.lock().fargate_capacity_shortage = message.map(str::to_owned);
    }
}
