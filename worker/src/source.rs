//! Where the worker's config text comes from: a file, or a key of a ConfigMap in the pod's
//! namespace, watched through the API so an edit is seen within moments.
//!
//! A mounted ConfigMap is refreshed by the kubelet only every minute or so; a watch
//! restricted to the one name (all the worker's Role allows) sees an edit at once, and the
//! worker's poll loop picks it up at its next tick.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::task::JoinHandle;

/// The largest config read, in bytes: the API server's own limit on a ConfigMap.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// How long the first read waits for the ConfigMap's first listing.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the config is read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A YAML file, re-read at every poll.
    File(PathBuf),
    /// A key of a ConfigMap in the worker's namespace, watched by name.
    ConfigMap {
        /// The ConfigMap's name.
        name: String,
        /// The data key holding the YAML.
        key: String,
    },
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => write!(f, "file {}", path.display()),
            Self::ConfigMap { name, key } => write!(f, "configmap {name} key {key}"),
        }
    }
}

/// Why the config text could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("reading config file {path}")]
    File {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The text is larger than [`MAX_CONFIG_BYTES`].
    #[error("config is {size} bytes, above the limit of {MAX_CONFIG_BYTES}")]
    TooLarge {
        /// The size found.
        size: u64,
    },
    /// A ConfigMap source needs the pod's namespace and API access.
    #[error("configmap {name}: the worker reads ConfigMaps only in a pod (POD_NAMESPACE unset)")]
    NotInPod {
        /// The ConfigMap's name.
        name: String,
    },
    /// The first listing did not arrive in time (API unreachable, or the Role denies it).
    #[error("configmap {namespace}/{name} could not be listed within {timeout:?}")]
    NotSynced {
        /// The worker's namespace.
        namespace: String,
        /// The ConfigMap's name.
        name: String,
        /// How long the worker waited.
        timeout: Duration,
    },
    /// The ConfigMap does not exist in the worker's namespace.
    #[error("configmap {namespace}/{name} not found")]
    Missing {
        /// The worker's namespace.
        namespace: String,
        /// The ConfigMap's name.
        name: String,
    },
    /// The ConfigMap has no such key, or its value is not UTF-8.
    #[error("configmap {namespace}/{name} has no UTF-8 key {key}")]
    MissingKey {
        /// The worker's namespace.
        namespace: String,
        /// The ConfigMap's name.
        name: String,
        /// The missing key.
        key: String,
    },
}

/// Reads the current config text from its [`Source`].
pub struct Reader {
    inner: Inner,
}

enum Inner {
    File(PathBuf),
    ConfigMap {
        store: Store<ConfigMap>,
        namespace: String,
        name: String,
        key: String,
        /// The watch feeding `store`; stopped when the reader is dropped.
        watch: JoinHandle<()>,
    },
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            Inner::File(path) => f.debug_tuple("Reader::File").field(path).finish(),
            Inner::ConfigMap {
                namespace, name, ..
            } => f
                .debug_struct("Reader::ConfigMap")
                .field("namespace", namespace)
                .field("name", name)
                .finish_non_exhaustive(),
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        if let Inner::ConfigMap { watch, .. } = &self.inner {
            watch.abort();
        }
    }
}

impl Reader {
    /// Reads the file at `path`; nothing is opened before the first [`Reader::read`].
    pub fn file(path: PathBuf) -> Self {
        Self {
            inner: Inner::File(path),
        }
    }

    /// Opens `source`. A ConfigMap is read in `namespace` through `client`; its watch
    /// starts here and the call waits up to `timeout` for its first listing.
    ///
    /// # Errors
    /// [`Error::NotInPod`] for a ConfigMap without a client and namespace, and
    /// [`Error::NotSynced`] when the first listing does not arrive in time. A missing
    /// ConfigMap or key is reported by [`Reader::read`].
    pub async fn open(
        source: &Source,
        cluster: Option<(kube::Client, String)>,
        timeout: Duration,
    ) -> Result<Self, Error> {
        let (name, key) = match source {
            Source::File(path) => return Ok(Self::file(path.clone())),
            Source::ConfigMap { name, key } => (name.clone(), key.clone()),
        };
        let Some((client, namespace)) = cluster else {
            return Err(Error::NotInPod { name });
        };
        let (store, watch) = crate::secret::watch_by_name::<ConfigMap>(client, &namespace, &name);
        let reader = Self {
            inner: Inner::ConfigMap {
                store: store.clone(),
                namespace: namespace.clone(),
                name: name.clone(),
                key,
                watch,
            },
        };
        match tokio::time::timeout(timeout, store.wait_until_ready()).await {
            Ok(Ok(())) => Ok(reader),
            _ => Err(Error::NotSynced {
                namespace,
                name,
                timeout,
            }),
        }
    }

    /// The config text as it is now, without a leading byte order mark.
    ///
    /// # Errors
    /// When the file or the ConfigMap key is missing or the text is above
    /// [`MAX_CONFIG_BYTES`].
    pub fn read(&self) -> Result<String, Error> {
        let text = match &self.inner {
            Inner::File(path) => read_file(path)?,
            Inner::ConfigMap {
                store,
                namespace,
                name,
                key,
                ..
            } => {
                let map = store
                    .get(&ObjectRef::new(name).within(namespace))
                    .ok_or_else(|| Error::Missing {
                        namespace: namespace.clone(),
                        name: name.clone(),
                    })?;
                value(&map, key).ok_or_else(|| Error::MissingKey {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    key: key.clone(),
                })?
            }
        };
        check_size(text.len() as u64)?;
        // Editors on some systems start UTF-8 files with a BOM, which YAML does not expect.
        Ok(match text.strip_prefix('\u{feff}') {
            Some(rest) => rest.to_owned(),
            None => text,
        })
    }
}

/// The file's text; its size is checked before it is read.
fn read_file(path: &std::path::Path) -> Result<String, Error> {
    let error = |source| Error::File {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(error)?;
    check_size(meta.len())?;
    std::fs::read_to_string(path).map_err(error)
}

fn check_size(size: u64) -> Result<(), Error> {
    if size > MAX_CONFIG_BYTES {
        return Err(Error::TooLarge { size });
    }
    Ok(())
}

/// A key's text from `data`, else from `binaryData` when it is UTF-8.
fn value(map: &ConfigMap, key: &str) -> Option<String> {
    if let Some(text) = map.data.as_ref().and_then(|d| d.get(key)) {
        return Some(text.clone());
    }
    let bytes = map.binary_data.as_ref().and_then(|d| d.get(key))?;
    String::from_utf8(bytes.0.clone()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_read_without_its_byte_order_mark() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker.yaml");
        std::fs::write(&path, "\u{feff}version: 1\n").unwrap();
        assert_eq!(Reader::file(path).read().unwrap(), "version: 1\n");
    }

    #[test]
    fn a_file_above_the_size_limit_is_refused_before_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker.yaml");
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(MAX_CONFIG_BYTES + 1).unwrap();
        let err = Reader::file(path).read().unwrap_err();
        assert!(
            matches!(err, Error::TooLarge { size } if size == MAX_CONFIG_BYTES + 1),
            "{err:?}"
        );
    }

    #[test]
    fn a_missing_file_is_named_in_the_error() {
        let err = Reader::file("/nonexistent/worker.yaml".into())
            .read()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "reading config file /nonexistent/worker.yaml"
        );
    }

    #[tokio::test]
    async fn a_config_map_source_outside_a_pod_is_refused() {
        let source = Source::ConfigMap {
            name: "dbc-config".into(),
            key: "config.yaml".into(),
        };
        let err = Reader::open(&source, None, SYNC_TIMEOUT).await.unwrap_err();
        assert!(matches!(err, Error::NotInPod { ref name } if name == "dbc-config"));
    }

    #[test]
    fn a_key_is_read_from_data_then_from_utf8_binary_data() {
        let binary = k8s_openapi::ByteString(b"version: 1".to_vec());
        let mut map = ConfigMap {
            binary_data: Some([("config.yaml".to_owned(), binary)].into()),
            ..ConfigMap::default()
        };
        assert_eq!(value(&map, "config.yaml").as_deref(), Some("version: 1"));
        map.data = Some([("config.yaml".to_owned(), "version: 2".to_owned())].into());
        assert_eq!(value(&map, "config.yaml").as_deref(), Some("version: 2"));
        assert_eq!(value(&map, "other.yaml"), None);
    }
}
