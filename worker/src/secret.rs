//! Reads values that must not live in the config (passwords, header values) from files,
//! environment variables or Kubernetes Secrets, each time they are needed, so a rotated
//! secret takes effect at the next connect without a restart.
//!
//! Secrets are read through the API, not mounted (a mount would change the pod template
//! and roll the pods when a target is added). Each referenced Secret is watched by name
//! (the worker's Role grants it nothing else), so reads stay synchronous and cheap, and a
//! Secret created or rotated later is seen within moments.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use tokio::sync::Notify;

use crate::config::ValueSource;

/// The largest secret file read, in bytes.
const MAX_FILE_BYTES: u64 = 64 * 1024;

/// Why a secret could not be read. Never carries the value.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("reading secret file {path}")]
    File {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The environment variable is not set or not Unicode.
    #[error("environment variable {name} is not set")]
    Env {
        /// The variable's name.
        name: String,
    },
    /// A Secret is named but the worker does not run in a pod.
    #[error("secret {name}: the worker reads Secrets only when it runs in a pod")]
    NotInPod {
        /// The Secret's name.
        name: String,
    },
    /// The Secret does not exist (or is not readable) in the worker's namespace.
    #[error("secret {namespace}/{name} not found")]
    SecretMissing {
        /// The worker's namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
    },
    /// The Secret has no such key, or its value is not UTF-8.
    #[error("secret {namespace}/{name} has no UTF-8 key {key}")]
    SecretKey {
        /// The worker's namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
        /// The missing key.
        key: String,
    },
}

/// The Secrets of the worker's namespace that the config names, kept current by one
/// name-restricted watch each.
pub struct Cluster {
    client: kube::Client,
    namespace: String,
    stores: Mutex<HashMap<String, Store<Secret>>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

/// Makes Secrets of `namespace` readable through `client`; once per process.
pub fn install(client: kube::Client, namespace: String) -> &'static Cluster {
    CLUSTER.get_or_init(|| Cluster {
        client,
        namespace,
        stores: Mutex::new(HashMap::new()),
    })
}

/// The installed cluster access, when the worker runs in a pod.
pub fn cluster() -> Option<&'static Cluster> {
    CLUSTER.get()
}

/// Keeps a store of the one object `name` of kind `K` in `namespace` current: a watch
/// restricted to one name is all the worker's Role allows. The watch runs until the
/// returned task is aborted.
pub(crate) fn watch_by_name<K>(
    client: kube::Client,
    namespace: &str,
    name: &str,
) -> (Store<K>, tokio::task::JoinHandle<()>)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    watch_by_name_notifying(client, namespace, name, Arc::new(Notify::new()))
}

/// Like [`watch_by_name`]; `changed` is notified each time the store changes (the first
/// listing included), once the store shows the change.
pub(crate) fn watch_by_name_notifying<K>(
    client: kube::Client,
    namespace: &str,
    name: &str,
    changed: Arc<Notify>,
) -> (Store<K>, tokio::task::JoinHandle<()>)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, writer) = reflector::store::<K>();
    let api: Api<K> = Api::namespaced(client, namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let stream = reflector::reflector(writer, watcher(api, config)).default_backoff();
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    let task = tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
                // A (re)listing reaches the store only at `InitDone`.
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Ok(_) => changed.notify_one(),
                Err(error) => tracing::debug!(%error, kind, "watch interrupted; retrying"),
            }
        }
    });
    (reader, task)
}

impl Cluster {
    /// Starts watching `names` (those not watched yet) and waits up to `timeout` for
    /// their first listing, so the first connects find them.
    pub async fn watch(&self, names: impl IntoIterator<Item = String>, timeout: Duration) {
        let mut new = Vec::new();
        {
            let mut stores = self.stores.lock().unwrap_or_else(|e| e.into_inner());
            for name in names {
                if stores.contains_key(&name) {
                    continue;
                }
                let (reader, _watch) =
                    watch_by_name::<Secret>(self.client.clone(), &self.namespace, &name);
                new.push(reader.clone());
                stores.insert(name, reader);
            }
        }
        let synced = futures::future::join_all(new.iter().map(|r| r.wait_until_ready()));
        let _ = tokio::time::timeout(timeout, synced).await;
    }

    fn get(&self, name: &str, key: &str) -> Result<String, Error> {
        let missing = || Error::SecretMissing {
            namespace: self.namespace.clone(),
            name: name.to_owned(),
        };
        let secret = {
            let stores = self.stores.lock().unwrap_or_else(|e| e.into_inner());
            let store = stores.get(name).ok_or_else(missing)?;
            store
                .get(&ObjectRef::new(name).within(&self.namespace))
                .ok_or_else(missing)?
        };
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| b.0.clone());
        let from_string = || {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(key))
                .cloned()
        };
        bytes
            .and_then(|b| String::from_utf8(b).ok())
            .or_else(from_string)
            .ok_or_else(|| Error::SecretKey {
                namespace: self.namespace.clone(),
                name: name.to_owned(),
                key: key.to_owned(),
            })
    }
}

/// Reads the current value. A file's trailing newline (as `echo` and most editors write
/// it) is not part of the value.
///
/// # Errors
/// [`Error::File`] or [`Error::Env`] when the source is missing.
pub fn read(source: &ValueSource) -> Result<String, Error> {
    match source {
        ValueSource::File(path) => {
            let error = |source| Error::File {
                path: path.clone(),
                source,
            };
            // A FIFO or device would block the async runtime; a huge file is no secret.
            let meta = std::fs::metadata(path).map_err(error)?;
            if !meta.is_file() || meta.len() > MAX_FILE_BYTES {
                let why = "not a regular file of at most 64 KiB";
                return Err(error(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    why,
                )));
            }
            let mut value = std::fs::read_to_string(path).map_err(error)?;
            while value.ends_with('\n') || value.ends_with('\r') {
                value.pop();
            }
            Ok(value)
        }
        ValueSource::Env(name) => {
            std::env::var(name).map_err(|_| Error::Env { name: name.clone() })
        }
        ValueSource::Secret { name, key } => match cluster() {
            Some(cluster) => cluster.get(name, key),
            None => Err(Error::NotInPod { name: name.clone() }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_value_loses_its_trailing_newline_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "p@ss:w%rd#1;x=y?& \n").unwrap();
        assert_eq!(
            read(&ValueSource::File(path)).unwrap(),
            "p@ss:w%rd#1;x=y?& "
        );
    }

    #[test]
    fn anything_but_a_regular_file_is_refused_rather_than_read() {
        let dir = tempfile::tempdir().unwrap();
        let err = read(&ValueSource::File(dir.path().to_owned())).unwrap_err();
        let Error::File { source, .. } = err else {
            panic!("{err:?}")
        };
        assert_eq!(source.to_string(), "not a regular file of at most 64 KiB");
    }

    #[test]
    fn missing_sources_name_the_source_not_the_value() {
        let err = read(&ValueSource::Env("DBCOLLECTOR_TEST_UNSET_VAR".into())).unwrap_err();
        assert_eq!(
            err.to_string(),
            "environment variable DBCOLLECTOR_TEST_UNSET_VAR is not set"
        );
        let err = read(&ValueSource::File("/nonexistent/pw".into())).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/pw"));
    }
}
