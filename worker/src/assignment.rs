//! Which of the config's targets this worker collects: every one (standalone), or in a
//! fleet those whose shard slot the assignment annotations of the worker's own pod grant.
//!
//! The operator writes the assignment on the pod ([`ShardAssignment`]); the worker
//! watches its pod by name and applies an assignment only when its epoch is above the
//! applied one. A lower epoch is a stale write and is ignored, an equal one changes
//! nothing, and malformed annotations keep the applied assignment. Before the first
//! assignment a pod-mode worker collects nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use dbcollector_crds::annotations::{
    self, ShardAssignment, ASSIGNMENT_EPOCH, SHARD_RANGES, SHARD_SPACE,
};
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

/// How the worker learns which targets are its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Every target of the config: a standalone worker.
    All,
    /// The targets granted by the assignment annotations of the pod `name` (in the
    /// worker's namespace); the worker reports to the Lease of the same name.
    Pod {
        /// The pod's name (`POD_NAME` from the downward API).
        name: String,
    },
}

/// Why pod mode cannot start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The downward-API variables naming the pod are unset or empty.
    #[error(
        "--assignment=pod needs the environment variable(s) {names} \
         (the pod's own, from the downward API)"
    )]
    MissingEnv {
        /// The missing variables, comma-separated.
        names: String,
    },
}

impl Mode {
    /// Pod mode for the pod named `name` in `namespace`, as `POD_NAME` and
    /// `POD_NAMESPACE` give them.
    ///
    /// # Errors
    /// [`Error::MissingEnv`] naming each of the two that is unset or empty.
    pub fn pod(name: Option<String>, namespace: Option<&str>) -> Result<Self, Error> {
        let name = name.filter(|n| !n.is_empty());
        let mut missing = Vec::new();
        if name.is_none() {
            missing.push("POD_NAME");
        }
        if namespace.is_none_or(str::is_empty) {
            missing.push("POD_NAMESPACE");
        }
        match name {
            Some(name) if missing.is_empty() => Ok(Self::Pod { name }),
            _ => Err(Error::MissingEnv {
                names: missing.join(", "),
            }),
        }
    }
}

/// The targets collected now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every target of the config.
    All,
    /// Those in the applied assignment's slots; `None` before the first assignment, when
    /// nothing is collected.
    Shard(Option<ShardAssignment>),
}

impl Scope {
    /// The scope a worker in `mode` starts with.
    pub fn initial(mode: &Mode) -> Self {
        match mode {
            Mode::All => Self::All,
            Mode::Pod { .. } => Self::Shard(None),
        }
    }

    /// Whether the target named `target` is collected.
    pub fn owns(&self, target: &str) -> bool {
        match self {
            Self::All => true,
            Self::Shard(None) => false,
            Self::Shard(Some(assignment)) => assignment.owns(target),
        }
    }
}

/// What the annotations read from the pod call for.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// A newer assignment: apply it.
    Apply(ShardAssignment),
    /// Nothing new: no annotations, or the applied epoch again.
    Keep,
    /// An epoch below the applied one (a stale write).
    Stale {
        /// The epoch read.
        epoch: u64,
    },
    /// Malformed or partial annotations.
    Malformed(annotations::Error),
}

/// Decides what the assignment read from the pod means next to the applied one.
fn step(
    applied: Option<&ShardAssignment>,
    read: Result<Option<ShardAssignment>, annotations::Error>,
) -> Step {
    match (read, applied) {
        (Err(error), _) => Step::Malformed(error),
        (Ok(None), _) => Step::Keep,
        (Ok(Some(new)), None) => Step::Apply(new),
        (Ok(Some(new)), Some(old)) if new.epoch > old.epoch => Step::Apply(new),
        (Ok(Some(new)), Some(old)) if new.epoch < old.epoch => Step::Stale { epoch: new.epoch },
        (Ok(Some(_)), Some(_)) => Step::Keep,
    }
}

/// The raw values of the three assignment annotations, to warn once per bad value.
type RawAssignment = [Option<String>; 3];

fn raw(annotations: &BTreeMap<String, String>) -> RawAssignment {
    [SHARD_RANGES, SHARD_SPACE, ASSIGNMENT_EPOCH].map(|key| annotations.get(key).cloned())
}

/// The worker's own pod, watched by name for its assignment annotations.
pub struct PodWatch {
    store: Store<Pod>,
    namespace: String,
    name: String,
    /// Notified when the watched pod changes.
    changed: Arc<Notify>,
    watch: JoinHandle<()>,
    /// The assignment in force.
    applied: Option<ShardAssignment>,
    /// The malformed annotations last warned about.
    warned: Option<RawAssignment>,
}

impl std::fmt::Debug for PodWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodWatch")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("applied", &self.applied)
            .finish_non_exhaustive()
    }
}

impl Drop for PodWatch {
    fn drop(&mut self) {
        self.watch.abort();
    }
}

impl PodWatch {
    /// Starts watching pod `namespace/name`; the first listing arrives in the background
    /// and is announced through [`PodWatch::changed`].
    pub fn start(client: kube::Client, namespace: &str, name: &str) -> Self {
        let changed = Arc::new(Notify::new());
        let (store, watch) =
            crate::secret::watch_by_name_notifying::<Pod>(client, namespace, name, changed.clone());
        Self {
            store,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            changed,
            watch,
            applied: None,
            warned: None,
        }
    }

    /// Notified when the pod changed since the last [`PodWatch::take_newer`]; a change that
    /// comes before anyone waits is kept for the next wait.
    pub fn changed(&self) -> Arc<Notify> {
        self.changed.clone()
    }

    /// The pod's name, which is also the name of its Lease.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A newer assignment than the applied one, if the pod carries one; it counts as
    /// applied from here on. Stale and malformed annotations are logged and yield `None`.
    pub fn take_newer(&mut self) -> Option<ShardAssignment> {
        let pod = self
            .store
            .get(&ObjectRef::new(&self.name).within(&self.namespace))?;
        let empty = BTreeMap::new();
        let annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
        match step(
            self.applied.as_ref(),
            ShardAssignment::from_annotations(annotations),
        ) {
            Step::Apply(new) => {
                self.warned = None;
                self.applied = Some(new.clone());
                Some(new)
            }
            Step::Keep => None,
            Step::Stale { epoch } => {
                let applied = self.applied.as_ref().map(|a| a.epoch);
                debug!(epoch, applied, "assignment with a lower epoch ignored");
                None
            }
            Step::Malformed(error) => {
                let raw = raw(annotations);
                if self.warned.as_ref() != Some(&raw) {
                    let error: &dyn std::error::Error = &error;
                    warn!(
                        pod = %self.name,
                        error,
                        "malformed assignment annotations; the applied assignment stays"
                    );
                    self.warned = Some(raw);
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(ranges: &str, space: u32, epoch: u64) -> ShardAssignment {
        ShardAssignment {
            ranges: ranges.parse().unwrap(),
            space,
            epoch,
        }
    }

    #[test]
    fn only_a_higher_epoch_is_applied() {
        let applied = assignment("0-7", 16, 5);
        let newer = assignment("8-15", 16, 6);
        assert_eq!(
            step(Some(&applied), Ok(Some(newer.clone()))),
            Step::Apply(newer)
        );
        let older = assignment("8-15", 16, 4);
        assert_eq!(
            step(Some(&applied), Ok(Some(older))),
            Step::Stale { epoch: 4 }
        );
        let same = assignment("8-15", 16, 5);
        assert_eq!(step(Some(&applied), Ok(Some(same))), Step::Keep);
    }

    #[test]
    fn the_first_assignment_is_applied_whatever_its_epoch() {
        let first = assignment("none", 16, 0);
        assert_eq!(step(None, Ok(Some(first.clone()))), Step::Apply(first));
        assert_eq!(step(None, Ok(None)), Step::Keep);
    }

    #[test]
    fn malformed_annotations_change_nothing() {
        let applied = assignment("0-7", 16, 5);
        let error = annotations::Error::Missing { key: SHARD_SPACE };
        assert_eq!(
            step(Some(&applied), Err(error.clone())),
            Step::Malformed(error)
        );
    }

    #[test]
    fn a_pod_mode_worker_collects_nothing_before_its_first_assignment() {
        let mode = Mode::Pod {
            name: "orders-0".into(),
        };
        assert!(!Scope::initial(&mode).owns("db1"));
        assert!(Scope::initial(&Mode::All).owns("db1"));
        // "db2" is in slot 716 of 1024 (see the golden values in the crds crate).
        let scope = Scope::Shard(Some(assignment("700-720", 1024, 1)));
        assert!(scope.owns("db2"));
        assert!(!scope.owns("db1"));
    }

    #[test]
    fn pod_mode_names_each_missing_downward_api_variable() {
        let err = Mode::pod(None, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--assignment=pod needs the environment variable(s) POD_NAME, POD_NAMESPACE \
             (the pod's own, from the downward API)"
        );
        let err = Mode::pod(Some("orders-0".into()), Some("")).unwrap_err();
        assert_eq!(
            err,
            Error::MissingEnv {
                names: "POD_NAMESPACE".into()
            }
        );
        assert_eq!(
            Mode::pod(Some("orders-0".into()), Some("monitoring")),
            Ok(Mode::Pod {
                name: "orders-0".into()
            })
        );
    }
}
