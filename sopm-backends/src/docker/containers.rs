//! Removing a container, whatever state it is in: what the daemon's sweeps, the
//! reading of code out of an image and the launcher's sandboxes share.

use bollard::query_parameters::RemoveContainerOptions;
use bollard::Docker;

/// Removes a container, running or not; a container already gone is fine.
pub(crate) async fn remove_container(docker: &Docker, id: &str) {
    let r = docker
        .remove_container(
            id,
            Some(RemoveContainerOptions {
                force: true,
                v: true,
                ..Default::default()
            }),
        )
        .await;
    match r {
        Ok(())
        | Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => {}
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 409, ..
        }) => {} // removal already in progress
        Err(e) => tracing::warn!(container = %id, error = %e, "cannot remove a container"),
    }
}
