//! The children of a DatabaseCollector, rendered from its spec as pure functions.
//!
//! Every child carries the standard `app.kubernetes.io/*` labels and a controller owner
//! reference to the collector, so the garbage collector deletes it with the collector.
//! What changes often (targets, pipeline settings) lives in the ConfigMap only: the pod
//! template references the ConfigMap by name and carries no hash of it, no replica count
//! and no shard data, so a target added or an autoscaler step never rolls the pods.
//! The worker watches the ConfigMap through the API rather than mounting it: the kubelet
//! refreshes a mounted ConfigMap only every minute or so, a watch within moments.

pub mod config;

use std::collections::BTreeMap;

use dbcollector_crds::annotations::{
    self, worker_selector, APP_NAME, COMPONENT_LABEL, MANAGED_BY_LABEL, MANAGER, NAME_LABEL,
    WORKER_COMPONENT,
};
use dbcollector_crds::spec::{Autoscaling, DatabaseCollectorSpec, ImagePullPolicy};
use dbcollector_crds::DatabaseCollector;
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec, StatefulSetUpdateStrategy};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecurityContext, Service, ServiceAccount, ServicePort,
    ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

/// Key of the worker config in the ConfigMap.
pub const CONFIG_KEY: &str = "config.yaml";

/// Port of the worker's `/metrics`, `/healthz` and `/readyz`.
pub const HTTP_PORT: i32 = 9187;

/// Name of the worker container.
pub const CONTAINER: &str = "worker";

/// The user and group the worker runs as (the distroless `nonroot` user).
const NONROOT: i64 = 65_532;

/// Why the children could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The collector lacks a name, namespace or uid (it was not read from the API).
    #[error("the DatabaseCollector has no {0}; it must come from the API server")]
    MissingMetadata(&'static str),
    /// The worker config did not render.
    #[error("rendering the worker config")]
    Config(#[from] config::Error),
}

/// Names of the children of the collector named `collector`.
pub mod names {
    /// The StatefulSet; also the headless Service, the PodDisruptionBudget and the
    /// HorizontalPodAutoscaler.
    pub fn stateful_set(collector: &str) -> String {
        collector.to_owned()
    }

    /// The ConfigMap holding the worker config.
    pub fn config_map(collector: &str) -> String {
        format!("{collector}-config")
    }

    /// The workers' ServiceAccount, Role and RoleBinding.
    pub fn worker_account(collector: &str) -> String {
        format!("{collector}-worker")
    }

    /// The worker pod of ordinal `ordinal`; also the name of its Lease.
    pub fn pod(collector: &str, ordinal: u32) -> String {
        format!("{collector}-{ordinal}")
    }

    /// The ordinal of a worker pod of `collector` from its name, if it is one.
    pub fn ordinal(collector: &str, pod: &str) -> Option<u32> {
        let digits = pod.strip_prefix(collector)?.strip_prefix('-')?;
        let canonical = !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && (digits == "0" || !digits.starts_with('0'));
        canonical.then(|| digits.parse().ok()).flatten()
    }
}

/// Every child of a collector, as it should be.
#[derive(Clone, Debug)]
pub struct Children {
    /// The workers' identity.
    pub service_account: ServiceAccount,
    /// What the workers may read and write.
    pub role: Role,
    /// Grants [`Self::role`] to [`Self::service_account`].
    pub role_binding: RoleBinding,
    /// The worker config.
    pub config_map: ConfigMap,
    /// The headless Service of the StatefulSet.
    pub service: Service,
    /// One Lease per worker pod, through which the worker reports.
    pub leases: Vec<Lease>,
    /// The workers.
    pub stateful_set: StatefulSet,
    /// At most one worker down at a time for voluntary disruptions.
    pub pod_disruption_budget: PodDisruptionBudget,
    /// Present when `spec.autoscaling` is set.
    pub autoscaler: Option<HorizontalPodAutoscaler>,
}

/// A Secret the spec references, and where.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SecretUse {
    /// The field holding the reference, e.g. `spec.databases[0].passwordSecretRef`.
    pub field: String,
    /// The data key read, when the reference names one (`tls.crt` and `tls.key` for a
    /// client certificate are listed as two uses).
    pub key: String,
}

/// Every Secret the spec references, by name, with the fields that reference it.
pub fn secret_refs(spec: &DatabaseCollectorSpec) -> BTreeMap<String, Vec<SecretUse>> {
    let mut refs: BTreeMap<String, Vec<SecretUse>> = BTreeMap::new();
    let mut add = |name: &str, field: String, key: &str| {
        refs.entry(name.to_owned()).or_default().push(SecretUse {
            field,
            key: key.to_owned(),
        });
    };
    for (i, t) in spec.databases.iter().enumerate() {
        if let Some(r) = &t.password_secret_ref {
            add(
                &r.name,
                format!("spec.databases[{i}].passwordSecretRef"),
                &r.key,
            );
        }
        if let Some(tls) = &t.tls {
            if let Some(r) = &tls.ca_secret_ref {
                add(
                    &r.name,
                    format!("spec.databases[{i}].tls.caSecretRef"),
                    &r.key,
                );
            }
            if let Some(r) = &tls.cert_secret_ref {
                let field = format!("spec.databases[{i}].tls.certSecretRef");
                add(&r.name, field.clone(), "tls.crt");
                add(&r.name, field, "tls.key");
            }
        }
    }
    for (i, h) in spec.exporter.headers.iter().enumerate() {
        let r = &h.secret_key_ref;
        add(
            &r.name,
            format!("spec.exporter.headers[{i}].secretKeyRef"),
            &r.key,
        );
    }
    if let Some(tls) = &spec.exporter.tls {
        let r = &tls.ca_secret_ref;
        add(&r.name, "spec.exporter.tls.caSecretRef".to_owned(), &r.key);
        if let Some(r) = &tls.cert_secret_ref {
            let field = "spec.exporter.tls.certSecretRef".to_owned();
            add(&r.name, field.clone(), "tls.crt");
            add(&r.name, field, "tls.key");
        }
    }
    refs
}

/// The labels of every child of `collector` (the worker selector plus managed-by).
pub fn labels(collector: &str) -> BTreeMap<String, String> {
    let mut labels = worker_selector(collector);
    labels.insert(MANAGED_BY_LABEL.to_owned(), MANAGER.to_owned());
    labels
}

/// The label selector, in `kubectl get -l` syntax, of every child of every collector.
pub fn managed_selector() -> String {
    format!("{NAME_LABEL}={APP_NAME},{MANAGED_BY_LABEL}={MANAGER}")
}

/// The label selector of the worker pods of every collector.
pub fn worker_pods_selector() -> String {
    format!("{NAME_LABEL}={APP_NAME},{COMPONENT_LABEL}={WORKER_COMPONENT}")
}

/// Renders every child of `dc`; `default_image` is the worker image used when the spec
/// names none (the operator's own version).
///
/// # Errors
/// [`Error::MissingMetadata`] when `dc` was not read from the API server, and
/// [`Error::Config`] if the worker config fails to serialize.
pub fn children(dc: &DatabaseCollector, default_image: &str) -> Result<Children, Error> {
    children_sized(dc, default_image, dc.spec.replicas)
}

/// The children of `dc` with a StatefulSet of `workers` pods: more than `spec.replicas`
/// while the slots of the pods beyond it are being moved to the others.
///
/// # Errors
/// As [`children`].
pub fn children_sized(
    dc: &DatabaseCollector,
    default_image: &str,
    workers: i32,
) -> Result<Children, Error> {
    let mut r = Renderer::new(dc)?;
    r.workers = workers.max(dc.spec.replicas);
    let source = format!("{}/{}", r.namespace, r.name);
    let worker_config = config::render(&dc.spec, &source)?;
    let replicas = u32::try_from(r.workers.max(1)).unwrap_or(1);
    Ok(Children {
        service_account: r.service_account(),
        role: r.role(replicas),
        role_binding: r.role_binding(),
        config_map: r.config_map(worker_config.yaml),
        service: r.service(),
        leases: (0..replicas).map(|i| r.lease(i)).collect(),
        stateful_set: r.stateful_set(default_image),
        pod_disruption_budget: r.pod_disruption_budget(),
        autoscaler: dc.spec.autoscaling.as_ref().map(|a| r.autoscaler(a)),
    })
}

/// Renders the children of one collector.
struct Renderer<'a> {
    dc: &'a DatabaseCollector,
    spec: &'a DatabaseCollectorSpec,
    name: String,
    namespace: String,
    owner: OwnerReference,
    /// The StatefulSet's replica count.
    workers: i32,
}

impl<'a> Renderer<'a> {
    fn new(dc: &'a DatabaseCollector) -> Result<Self, Error> {
        let namespace = dc.namespace().ok_or(Error::MissingMetadata("namespace"))?;
        if dc.meta().name.is_none() {
            return Err(Error::MissingMetadata("name"));
        }
        let owner = dc
            .controller_owner_ref(&())
            .ok_or(Error::MissingMetadata("uid"))?;
        Ok(Self {
            dc,
            spec: &dc.spec,
            name: dc.name_any(),
            namespace,
            owner,
            workers: dc.spec.replicas,
        })
    }

    /// Metadata of a child named `name`: namespace, labels, owner reference.
    fn meta(&self, name: String) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(labels(&self.name)),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }

    fn selector(&self) -> LabelSelector {
        LabelSelector {
            match_labels: Some(worker_selector(&self.name)),
            ..LabelSelector::default()
        }
    }

    fn pod_names(&self, replicas: u32) -> Vec<String> {
        (0..replicas).map(|i| names::pod(&self.name, i)).collect()
    }

    fn service_account(&self) -> ServiceAccount {
        ServiceAccount {
            metadata: self.meta(names::worker_account(&self.name)),
            // The worker reads its pod, its config and Secrets through the API.
            automount_service_account_token: Some(true),
            ..ServiceAccount::default()
        }
    }

    /// Only what the workers need, by resource name. RBAC can narrow list and watch by
    /// name only for requests with a `metadata.name` field selector, which is how a
    /// worker watches its own pod. Pod patch is not granted: it cannot be narrowed to
    /// annotations, and the assignment annotations are the operator's alone.
    fn role(&self, replicas: u32) -> Role {
        let pods = self.pod_names(replicas);
        let rule = |group: &str, resource: &str, names: Vec<String>, verbs: &[&str]| PolicyRule {
            api_groups: Some(vec![group.to_owned()]),
            resources: Some(vec![resource.to_owned()]),
            resource_names: Some(names),
            verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
            ..PolicyRule::default()
        };
        let mut rules = vec![
            rule("", "pods", pods.clone(), &["get", "list", "watch"]),
            rule(
                "",
                "configmaps",
                vec![names::config_map(&self.name)],
                &["get", "list", "watch"],
            ),
            rule("coordination.k8s.io", "leases", pods, &["get", "update"]),
        ];
        // An empty resourceNames list would grant every Secret of the namespace.
        let secrets: Vec<String> = secret_refs(self.spec).into_keys().collect();
        if !secrets.is_empty() {
            rules.push(rule("", "secrets", secrets, &["get"]));
        }
        Role {
            metadata: self.meta(names::worker_account(&self.name)),
            rules: Some(rules),
        }
    }

    fn role_binding(&self) -> RoleBinding {
        let account = names::worker_account(&self.name);
        RoleBinding {
            metadata: self.meta(account.clone()),
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".to_owned(),
                kind: "Role".to_owned(),
                name: account.clone(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".to_owned(),
                name: account,
                namespace: Some(self.namespace.clone()),
                ..Subject::default()
            }]),
        }
    }

    fn config_map(&self, yaml: String) -> ConfigMap {
        ConfigMap {
            metadata: self.meta(names::config_map(&self.name)),
            data: Some(BTreeMap::from([(CONFIG_KEY.to_owned(), yaml)])),
            ..ConfigMap::default()
        }
    }

    /// Headless: it gives each worker pod a stable DNS name and lets Prometheus discover
    /// the workers' `/metrics`.
    fn service(&self) -> Service {
        Service {
            metadata: self.meta(names::stateful_set(&self.name)),
            spec: Some(ServiceSpec {
                cluster_ip: Some("None".to_owned()),
                selector: Some(worker_selector(&self.name)),
                ports: Some(vec![ServicePort {
                    name: Some("http".to_owned()),
                    port: HTTP_PORT,
                    target_port: Some(IntOrString::String("http".to_owned())),
                    protocol: Some("TCP".to_owned()),
                    ..ServicePort::default()
                }]),
                // Scraping a worker's own metrics must not wait for its readiness.
                publish_not_ready_addresses: Some(true),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }
    }

    /// Metadata only: the worker owns the spec (holder, renew time, its reports).
    fn lease(&self, ordinal: u32) -> Lease {
        Lease {
            metadata: self.meta(names::pod(&self.name, ordinal)),
            spec: None,
        }
    }

    fn stateful_set(&self, default_image: &str) -> StatefulSet {
        let mut meta = self.meta(names::stateful_set(&self.name));
        // The shard space the running assignment was cut from: a later spec with another
        // `shards` is refused by comparing with it (CEL does that only from 1.25 on).
        meta.annotations = Some(BTreeMap::from([(
            annotations::SHARD_SPACE.to_owned(),
            self.spec.shards.to_string(),
        )]));
        StatefulSet {
            metadata: meta,
            spec: Some(StatefulSetSpec {
                replicas: Some(self.workers),
                service_name: Some(names::stateful_set(&self.name)),
                // Workers are independent: no reason to start or stop them one by one.
                pod_management_policy: Some("Parallel".to_owned()),
                selector: self.selector(),
                template: self.pod_template(default_image),
                update_strategy: Some(StatefulSetUpdateStrategy {
                    type_: Some("RollingUpdate".to_owned()),
                    ..StatefulSetUpdateStrategy::default()
                }),
                ..StatefulSetSpec::default()
            }),
            ..StatefulSet::default()
        }
    }

    fn pod_template(&self, default_image: &str) -> PodTemplateSpec {
        // The user's extra labels first, so that the operator's win on a clash.
        let mut pod_labels: BTreeMap<String, String> = self
            .spec
            .pod_labels
            .iter()
            .filter(|(k, _)| !reserved(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        pod_labels.extend(labels(&self.name));
        let pod_annotations: BTreeMap<String, String> = self
            .spec
            .pod_annotations
            .iter()
            .filter(|(k, _)| !k.starts_with("dbcollector.dev/"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(pod_labels),
                annotations: (!pod_annotations.is_empty()).then_some(pod_annotations),
                ..ObjectMeta::default()
            }),
            spec: Some(PodSpec {
                service_account_name: Some(names::worker_account(&self.name)),
                containers: vec![self.container(default_image)],
                volumes: Some(vec![Volume {
                    name: "tmp".to_owned(),
                    empty_dir: Some(EmptyDirVolumeSource::default()),
                    ..Volume::default()
                }]),
                security_context: Some(PodSecurityContext {
                    run_as_non_root: Some(true),
                    run_as_user: Some(NONROOT),
                    run_as_group: Some(NONROOT),
                    fs_group: Some(NONROOT),
                    seccomp_profile: Some(runtime_default()),
                    ..PodSecurityContext::default()
                }),
                node_selector: (!self.spec.node_selector.is_empty())
                    .then(|| self.spec.node_selector.clone()),
                tolerations: (!self.spec.tolerations.is_empty())
                    .then(|| self.spec.tolerations.clone()),
                affinity: self.spec.affinity.clone(),
                ..PodSpec::default()
            }),
        }
    }

    fn container(&self, default_image: &str) -> Container {
        let value_env = |name: &str, value: String| EnvVar {
            name: name.to_owned(),
            value: Some(value),
            ..EnvVar::default()
        };
        let field_env = |name: &str, path: &str| EnvVar {
            name: name.to_owned(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: path.to_owned(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        };
        let probe = |path: &str, failures: i32| Probe {
            http_get: Some(HTTPGetAction {
                path: Some(path.to_owned()),
                port: IntOrString::String("http".to_owned()),
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(10),
            timeout_seconds: Some(2),
            failure_threshold: Some(failures),
            ..Probe::default()
        };
        Container {
            name: CONTAINER.to_owned(),
            image: Some(
                self.spec
                    .image
                    .clone()
                    .unwrap_or_else(|| default_image.to_owned()),
            ),
            // The image's entrypoint is the worker; it collects only its pod's assignment.
            args: Some(vec!["--assignment=pod".to_owned()]),
            image_pull_policy: self.spec.image_pull_policy.map(|p| {
                match p {
                    ImagePullPolicy::Always => "Always",
                    ImagePullPolicy::IfNotPresent => "IfNotPresent",
                    ImagePullPolicy::Never => "Never",
                }
                .to_owned()
            }),
            env: Some(vec![
                // Read from the pod's namespace (POD_NAMESPACE) through a watch on this one
                // name, which the Role allows.
                value_env("DBCOLLECTOR_CONFIG_MAP", names::config_map(&self.name)),
                value_env("DBCOLLECTOR_CONFIG_KEY", CONFIG_KEY.to_owned()),
                field_env("POD_NAME", "metadata.name"),
                field_env("POD_NAMESPACE", "metadata.namespace"),
            ]),
            ports: Some(vec![ContainerPort {
                name: Some("http".to_owned()),
                container_port: HTTP_PORT,
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            }]),
            readiness_probe: Some(probe("/readyz", 3)),
            liveness_probe: Some(probe("/healthz", 6)),
            resources: Some(
                self.spec
                    .resources
                    .clone()
                    .unwrap_or_else(default_resources),
            ),
            security_context: Some(SecurityContext {
                allow_privilege_escalation: Some(false),
                read_only_root_filesystem: Some(true),
                run_as_non_root: Some(true),
                capabilities: Some(Capabilities {
                    drop: Some(vec!["ALL".to_owned()]),
                    ..Capabilities::default()
                }),
                seccomp_profile: Some(runtime_default()),
                ..SecurityContext::default()
            }),
            volume_mounts: Some(vec![VolumeMount {
                name: "tmp".to_owned(),
                mount_path: "/tmp".to_owned(),
                ..VolumeMount::default()
            }]),
            ..Container::default()
        }
    }

    fn pod_disruption_budget(&self) -> PodDisruptionBudget {
        PodDisruptionBudget {
            metadata: self.meta(names::stateful_set(&self.name)),
            spec: Some(PodDisruptionBudgetSpec {
                max_unavailable: Some(IntOrString::Int(1)),
                selector: Some(self.selector()),
                ..PodDisruptionBudgetSpec::default()
            }),
            ..PodDisruptionBudget::default()
        }
    }

    /// Targets the collector's own scale subresource, so that the operator alone sets
    /// the StatefulSet's replicas.
    fn autoscaler(&self, a: &Autoscaling) -> HorizontalPodAutoscaler {
        let utilization = |resource: &str, percent: i32| MetricSpec {
            type_: "Resource".to_owned(),
            resource: Some(ResourceMetricSource {
                name: resource.to_owned(),
                target: MetricTarget {
                    type_: "Utilization".to_owned(),
                    average_utilization: Some(percent),
                    ..MetricTarget::default()
                },
            }),
            ..MetricSpec::default()
        };
        let mut metrics = Vec::new();
        if let Some(cpu) = a.target_cpu_utilization_percentage {
            metrics.push(utilization("cpu", cpu));
        }
        if let Some(memory) = a.target_memory_utilization_percentage {
            metrics.push(utilization("memory", memory));
        }
        if metrics.is_empty() {
            // The autoscaler's own default, written out so the object says what it does.
            metrics.push(utilization("cpu", 80));
        }
        HorizontalPodAutoscaler {
            metadata: self.meta(names::stateful_set(&self.name)),
            spec: Some(HorizontalPodAutoscalerSpec {
                scale_target_ref: CrossVersionObjectReference {
                    api_version: Some(DatabaseCollector::api_version(&()).into_owned()),
                    kind: DatabaseCollector::kind(&()).into_owned(),
                    name: self.dc.name_any(),
                },
                min_replicas: Some(a.min_replicas),
                max_replicas: a.max_replicas,
                metrics: Some(metrics),
                behavior: a.behavior.clone(),
            }),
            ..HorizontalPodAutoscaler::default()
        }
    }
}

/// Labels the user may not set on worker pods.
fn reserved(key: &str) -> bool {
    key.starts_with("app.kubernetes.io/") || key.starts_with("dbcollector.dev/")
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".to_owned(),
        ..SeccompProfile::default()
    }
}

/// Requests when the spec sets none: utilization-based autoscaling needs them, and a
/// worker at rest fits well within them.
fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity("100m".to_owned())),
            ("memory".to_owned(), Quantity("128Mi".to_owned())),
        ])),
        ..ResourceRequirements::default()
    }
}

#[cfg(test)]
mod tests;
