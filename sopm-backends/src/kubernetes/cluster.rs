//! The connection to the Kubernetes API: the client (given, or found by
//! `kube::Config::infer` on first use), and API errors turned into SOPM errors with a
//! message that says what was refused and why (a `403` names the missing right).

use kube::api::{DeleteParams, ListParams};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use sopm_core::{Error, Result};
use tokio::sync::OnceCell;

use super::settings::KubernetesSettings;

/// The API client of one executor, made on first use.
pub struct Cluster {
    given: Option<Client>,
    client: OnceCell<Client>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("given", &self.given.is_some())
            .field("connected", &self.client.initialized())
            .finish()
    }
}

impl Cluster {
    /// A cluster connection for `settings` (nothing is contacted yet).
    pub fn new(settings: &KubernetesSettings) -> Self {
        Cluster {
            given: settings.client.clone(),
            client: OnceCell::new(),
        }
    }

    /// The client: the one the settings gave, else one from `kube::Config::infer`
    /// (`KUBECONFIG` or `~/.kube/config`, else the pod's service account).
    pub async fn client(&self) -> Result<Client> {
        if let Some(c) = &self.given {
            return Ok(c.clone());
        }
        self.client
            .get_or_try_init(|| async {
                let config = kube::Config::infer().await.map_err(|e| {
                    Error::Unavailable(format!(
                        "no Kubernetes API configured (kubeconfig or in-cluster): {e}"
                    ))
                })?;
                Client::try_from(config).map_err(|e| {
                    Error::Unavailable(format!("cannot make a Kubernetes client: {e}"))
                })
            })
            .await
            .cloned()
    }
}

/// A SOPM error for a failed API call: `what` says which call (`create pod sopm-x`).
/// `403` names the right the executor's service account lacks; `409` is a conflict;
/// everything else (the API down, `5xx`, a `404` where the object must exist) is
/// `unavailable`.
pub fn api_error(e: kube::Error, what: &str, namespace: &str) -> Error {
    match e {
        kube::Error::Api(r) if r.code == 403 => Error::Unavailable(format!(
            "the Kubernetes API refused to {what} in namespace '{namespace}' (403 Forbidden: {}); \
             the service account of SOPM's workers needs the Role of deploy/kubernetes \
             (pods, pods/log and jobs in the functions namespace)",
            r.message
        )),
        kube::Error::Api(r) if r.code == 409 => Error::Conflict(format!(
            "cannot {what} in namespace '{namespace}': {} (409 {})",
            r.message, r.reason
        )),
        kube::Error::Api(r) => Error::Unavailable(format!(
            "the Kubernetes API failed to {what} in namespace '{namespace}': {} ({} {})",
            r.message, r.code, r.reason
        )),
        other => Error::Unavailable(format!(
            "cannot reach the Kubernetes API to {what} in namespace '{namespace}': {other}"
        )),
    }
}

/// Deletes `name` now; an object already gone (`404`) is fine.
pub async fn delete_now<K>(api: &Api<K>, name: &str, grace_secs: u32) -> Result<()>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let params = DeleteParams {
        grace_period_seconds: Some(grace_secs),
        propagation_policy: Some(kube::api::PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(r)) if r.code == 404 => Ok(()),
        Err(e) => Err(api_error(e, &format!("delete {name}"), "")),
    }
}

/// Deletes every object of `api` matching `labels` (this instance's leftovers): a list,
/// then one delete each (the executor's Role has no `deletecollection`). Returns how
/// many it deleted.
pub async fn sweep<K>(api: &Api<K>, labels: &str, namespace: &str) -> Result<usize>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let list = api
        .list(&ListParams::default().labels(labels))
        .await
        .map_err(|e| api_error(e, &format!("list objects labelled {labels}"), namespace))?;
    let mut deleted = 0;
    for obj in list.items {
        if let Some(name) = obj.meta().name.clone() {
            delete_now(api, &name, 0).await?;
            deleted += 1;
        }
    }
    Ok(deleted)
}
