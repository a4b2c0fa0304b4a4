//! Reading a pod's status: whether it is still starting, running at an address, unable to
//! start (an image that cannot be pulled, say), or ended, and how.

use k8s_openapi::api::core::v1::{ContainerStateTerminated, Pod};

use crate::sandbox::Death;

/// Container waiting reasons that mean the pod will not start by itself.
const CANNOT_START: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// Where a pod is in its life.
#[derive(Debug, Clone, PartialEq)]
pub enum Stage {
    /// Scheduled or not, its container not running yet.
    Starting,
    /// Its container runs, at this address.
    Running(String),
    /// It will not start: why.
    CannotStart(String),
    /// It ended: how.
    Ended(Death),
}

/// The terminated state of the pod's container, if it ended.
pub fn terminated(pod: &Pod) -> Option<&ContainerStateTerminated> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find_map(|c| c.state.as_ref()?.terminated.as_ref())
}

/// Where `pod` is in its life.
pub fn stage(pod: &Pod) -> Stage {
    let Some(status) = &pod.status else {
        return Stage::Starting;
    };
    let phase = status.phase.as_deref().unwrap_or("Pending");
    if matches!(phase, "Succeeded" | "Failed") || terminated(pod).is_some() {
        return Stage::Ended(death(pod));
    }
    let waiting = status
        .container_statuses
        .iter()
        .flatten()
        .find_map(|c| c.state.as_ref()?.waiting.as_ref());
    if let Some(w) = waiting {
        let reason = w.reason.as_deref().unwrap_or("");
        if CANNOT_START.contains(&reason) {
            return Stage::CannotStart(format!(
                "{reason}: {}",
                w.message.as_deref().unwrap_or("no message")
            ));
        }
    }
    match (phase, status.pod_ip.as_deref()) {
        ("Running", Some(ip)) if !ip.is_empty() => Stage::Running(ip.to_string()),
        _ => Stage::Starting,
    }
}

/// How an ended pod ended: killed for memory (`OOMKilled`), stopped at its deadline, or
/// its exit code and reason.
pub fn death(pod: &Pod) -> Death {
    if let Some(t) = terminated(pod) {
        let reason = t.reason.as_deref().unwrap_or("");
        if reason == "OOMKilled" {
            return Death::OutOfMemory;
        }
        return Death::Exited(format!("exit code {} ({reason})", t.exit_code));
    }
    match pod.status.as_ref().and_then(|s| s.reason.as_deref()) {
        Some("DeadlineExceeded") => {
            Death::Exited("the pod reached its activeDeadlineSeconds".into())
        }
        Some(other) => Death::Exited(format!("pod status {other}")),
        None => Death::Exited("the pod ended".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "status": status})).unwrap()
    }

    #[test]
    fn stages_follow_the_status() {
        assert_eq!(stage(&pod(json!({"phase": "Pending"}))), Stage::Starting);
        assert_eq!(
            stage(&pod(json!({"phase": "Running", "podIP": "10.1.2.3"}))),
            Stage::Running("10.1.2.3".into())
        );
        let pulling = pod(json!({"phase": "Pending", "containerStatuses": [{
            "name": "runner", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ErrImagePull", "message": "not found"}}}]}));
        assert_eq!(
            stage(&pulling),
            Stage::CannotStart("ErrImagePull: not found".into())
        );
        let oom = pod(json!({"phase": "Failed", "containerStatuses": [{
            "name": "runner", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}));
        assert_eq!(stage(&oom), Stage::Ended(Death::OutOfMemory));
        let deadline = pod(json!({"phase": "Failed", "reason": "DeadlineExceeded"}));
        assert!(
            matches!(stage(&deadline), Stage::Ended(Death::Exited(m)) if m.contains("activeDeadlineSeconds"))
        );
    }
}
