//! The deployment artifacts: the plain manifests in `deploy/` and the Helm chart in
//! `charts/dbcollector/`, checked against the generated CRD, as YAML, and on a real API
//! server (the operator's RBAC included).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use dbcollector_crds::{annotations, DatabaseCollector};
use dbcollector_operator::render::{self, names};
use dbcollector_tests::{client_from_kubeconfig, ControlPlane};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, Role};
use k8s_openapi::serde::Deserialize as _;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use tokio::sync::OnceCell;

/// The workspace root.
const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// Where the chart lives, from the root.
const CHART: &str = "charts/dbcollector";

/// The operator's namespace and ServiceAccount in `deploy/`.
const OPERATOR_NAMESPACE: &str = "dbcollector-system";
const OPERATOR_ACCOUNT: &str = "dbcollector-operator";

/// Where the example goes in the API server tests.
const EXAMPLE_NAMESPACE: &str = "example";

fn path(relative: &str) -> PathBuf {
    Path::new(ROOT).join(relative)
}

fn read(relative: &str) -> String {
    fs::read_to_string(path(relative)).unwrap_or_else(|e| panic!("reading {relative}: {e}"))
}

/// Every document of a YAML stream, empty ones (a trailing `---`) left out.
fn documents(text: &str, what: &str) -> Vec<serde_json::Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|document| {
            serde_json::Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{what} is not valid YAML: {e}"))
        })
        .filter(|document| !document.is_null())
        .collect()
}

/// The document of `kind` in a manifest file, converted to its Kubernetes type.
fn object<T: k8s_openapi::serde::de::DeserializeOwned>(relative: &str, kind: &str) -> T {
    let document = documents(&read(relative), relative)
        .into_iter()
        .find(|document| document["kind"] == kind)
        .unwrap_or_else(|| panic!("{relative} has no {kind}"));
    serde_json::from_value(document).unwrap_or_else(|e| panic!("{kind} of {relative}: {e}"))
}

/// The files under `dir` (relative to the root), recursively, as root-relative paths.
fn files_under(dir: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![path(dir)];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap().path();
            if entry.is_dir() {
                pending.push(entry);
            } else {
                let relative = entry.strip_prefix(ROOT).unwrap();
                found.push(relative.to_string_lossy().into_owned());
            }
        }
    }
    found.sort();
    found
}

#[test]
fn deploy_and_the_chart_carry_the_generated_crd_byte_for_byte() {
    let generated = dbcollector_crds::crd_yaml().unwrap();
    let copies = [
        "deploy/01-crd.yaml".to_owned(),
        format!("{CHART}/crds/dbcollector.dev_databasecollectors.yaml"),
    ];
    for copy in &copies {
        assert!(
            read(copy) == generated,
            "{copy} differs from the CRD generated from crds/src; regenerate it with\n  \
             {}\nand copy that file to {}",
            dbcollector_crds::REGENERATE,
            copies.join(" and ")
        );
    }
}

#[test]
fn every_plain_yaml_file_of_deploy_and_the_chart_parses() {
    let mut parsed = Vec::new();
    let mut templated = Vec::new();
    for file in files_under("deploy").into_iter().chain(files_under(CHART)) {
        if !(file.ends_with(".yaml") || file.ends_with(".yml")) {
            continue;
        }
        let text = read(&file);
        // Go templates are YAML only once helm renders them, which CI cannot do.
        if file.contains("/templates/") && text.contains("{{") {
            templated.push(file);
            continue;
        }
        let docs = documents(&text, &file);
        assert!(!docs.is_empty(), "{file} holds no YAML document");

        // A manifest for kubectl names what it is.
        if file.starts_with("deploy/") || file.contains("/crds/") {
            for doc in &docs {
                for key in ["apiVersion", "kind"] {
                    assert!(doc[key].is_string(), "a document of {file} has no {key}");
                }
                assert!(
                    doc["metadata"]["name"].is_string(),
                    "a document of {file} has no metadata.name"
                );
            }
        }
        parsed.push(file);
    }

    for expected in [
        "deploy/00-namespace.yaml",
        "deploy/02-rbac.yaml",
        "deploy/03-operator.yaml",
        "deploy/examples/databasecollector.yaml",
        "charts/dbcollector/Chart.yaml",
        "charts/dbcollector/values.yaml",
        "charts/dbcollector/files/operator-rules.yaml",
    ] {
        assert!(
            parsed.iter().any(|f| f == expected),
            "{expected}: {parsed:?}"
        );
    }
    assert!(
        templated.iter().any(|f| f.ends_with("/deployment.yaml")),
        "{templated:?}"
    );
}

#[test]
fn rbac_of_deploy_and_the_chart_is_the_operators_own_and_chart_defaults_match() {
    let rules = |relative: &str| -> Vec<PolicyRule> {
        serde_yaml_ng::from_str(&read(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
    };
    let cluster_rules = |relative: &str| {
        object::<ClusterRole>(relative, "ClusterRole")
            .rules
            .unwrap()
    };
    let role_rules = |relative: &str| object::<Role>(relative, "Role").rules.unwrap();

    // operator/rbac.yaml is the operator's own account of the requests it makes.
    let operator = cluster_rules("operator/rbac.yaml");
    let election = role_rules("operator/rbac.yaml");
    assert!(
        cluster_rules("deploy/02-rbac.yaml") == operator,
        "the ClusterRole of deploy/02-rbac.yaml differs from operator/rbac.yaml"
    );
    assert!(
        role_rules("deploy/02-rbac.yaml") == election,
        "the Role of deploy/02-rbac.yaml differs from operator/rbac.yaml"
    );
    assert!(
        rules(&format!("{CHART}/files/operator-rules.yaml")) == operator,
        "{CHART}/files/operator-rules.yaml differs from operator/rbac.yaml"
    );
    assert!(
        rules(&format!("{CHART}/files/leader-election-rules.yaml")) == election,
        "{CHART}/files/leader-election-rules.yaml differs from operator/rbac.yaml"
    );

    let values = &documents(&read(&format!("{CHART}/values.yaml")), "values.yaml")[0];
    let deployment: Deployment = object("deploy/03-operator.yaml", "Deployment");
    let container = &deployment.spec.unwrap().template.spec.unwrap().containers[0];
    assert_eq!(
        values["resources"],
        serde_json::to_value(container.resources.as_ref().unwrap()).unwrap(),
        "the chart's default resources differ from deploy/03-operator.yaml"
    );
}

#[test]
fn images_and_the_chart_follow_the_workspace_version() {
    let version = env!("CARGO_PKG_VERSION");
    let chart = &documents(&read(&format!("{CHART}/Chart.yaml")), "Chart.yaml")[0];
    assert_eq!(chart["appVersion"], version);
    assert_eq!(chart["version"], version);

    let deployment: Deployment = object("deploy/03-operator.yaml", "Deployment");
    let container = deployment.spec.unwrap().template.spec.unwrap().containers[0].clone();
    let image = container.image.unwrap();
    assert!(image.ends_with(&format!(":{version}")), "{image}");

    // The worker image the manifest names is the operator's own default, so that the
    // plain manifests and a bare operator agree.
    let worker_image = container
        .env
        .unwrap_or_default()
        .into_iter()
        .find(|var| var.name == "DBCOLLECTOR_WORKER_IMAGE")
        .and_then(|var| var.value);
    assert_eq!(
        worker_image.as_deref(),
        Some(dbcollector_operator::DEFAULT_IMAGE)
    );
    let values = &documents(&read(&format!("{CHART}/values.yaml")), "values.yaml")[0];
    let repository = values["workerImage"]["repository"].as_str().unwrap();
    assert_eq!(
        format!("{repository}:{version}"),
        dbcollector_operator::DEFAULT_IMAGE
    );
}

#[test]
fn operator_deployment_runs_restricted_with_probes_and_resources() {
    let deployment: Deployment = object("deploy/03-operator.yaml", "Deployment");
    let account: ServiceAccount = object("deploy/02-rbac.yaml", "ServiceAccount");
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.service_account_name, account.metadata.name);

    // The "restricted" Pod Security profile, which the operator's namespace enforces.
    let pod_security = pod.security_context.unwrap();
    assert_eq!(pod_security.run_as_non_root, Some(true));
    assert_eq!(
        pod_security.seccomp_profile.map(|p| p.type_).as_deref(),
        Some("RuntimeDefault")
    );
    let [container] = &pod.containers[..] else {
        panic!("one container expected: {:?}", pod.containers);
    };
    let security = container.security_context.clone().unwrap();
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(
        security.capabilities.and_then(|c| c.drop),
        Some(vec!["ALL".to_owned()])
    );

    // Probes on the operator's health endpoints, on the port it serves them on.
    let port = container.ports.as_ref().unwrap()[0].clone();
    assert_eq!(
        (port.name.as_deref(), port.container_port),
        (Some("http"), 8080)
    );
    let probe_path = |probe: &Option<k8s_openapi::api::core::v1::Probe>| {
        probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|g| g.path.clone())
    };
    assert_eq!(
        probe_path(&container.liveness_probe).as_deref(),
        Some("/healthz")
    );
    assert_eq!(
        probe_path(&container.readiness_probe).as_deref(),
        Some("/readyz")
    );

    let resources = container.resources.clone().unwrap();
    for key in ["cpu", "memory"] {
        assert!(
            resources.requests.as_ref().unwrap().contains_key(key),
            "request {key}"
        );
        assert!(
            resources.limits.as_ref().unwrap().contains_key(key),
            "limit {key}"
        );
    }
}

/// One control plane for the tests below, with `deploy/` applied as the guide says.
static APPLIED: OnceCell<ControlPlane> = OnceCell::const_new();

async fn applied() -> &'static ControlPlane {
    APPLIED
        .get_or_init(|| async {
            dbcollector_tests::init_tracing();
            let plane = ControlPlane::start().await.unwrap();

            // --validate=false: kubectl validates client-side against the OpenAPI
            // document of a server without server-side field validation (before 1.25;
            // v1.20 here), whose CRD type has no `x-kubernetes-validations` (added in
            // 1.23, on by default from 1.25), so it refuses the CRD as it is; the server
            // itself drops the CEL rules it does not know. Every kind in deploy/ is
            // served by v1.20 (it has no PodDisruptionBudget or autoscaler of its own):
            // nothing is left out.
            let deploy = path("deploy");
            plane
                .kubectl_ok([
                    "apply".as_ref(),
                    "--validate=false".as_ref(),
                    "-f".as_ref(),
                    deploy.as_os_str(),
                ])
                .await
                .unwrap();
            plane
                .kubectl_ok([
                    "wait",
                    "--for=condition=Established",
                    "--timeout=60s",
                    "crd/databasecollectors.dbcollector.dev",
                ])
                .await
                .unwrap();
            plane
        })
        .await
}

#[tokio::test]
async fn plain_manifests_and_the_example_apply_to_a_real_api_server() {
    let plane = applied().await;

    let deploy = path("deploy");
    let objects = plane
        .kubectl_ok([
            "get".as_ref(),
            "-o".as_ref(),
            "name".as_ref(),
            "-f".as_ref(),
            deploy.as_os_str(),
        ])
        .await
        .unwrap();
    let objects: BTreeSet<&str> = objects.lines().collect();
    for expected in [
        "namespace/dbcollector-system",
        "customresourcedefinition.apiextensions.k8s.io/databasecollectors.dbcollector.dev",
        "serviceaccount/dbcollector-operator",
        "clusterrole.rbac.authorization.k8s.io/dbcollector-operator",
        "clusterrolebinding.rbac.authorization.k8s.io/dbcollector-operator",
        "role.rbac.authorization.k8s.io/dbcollector-operator-leader-election",
        "rolebinding.rbac.authorization.k8s.io/dbcollector-operator-leader-election",
        "deployment.apps/dbcollector-operator",
    ] {
        assert!(
            objects.contains(expected),
            "{expected} missing: {objects:?}"
        );
    }

    // The example applies with kubectl's default validation, against the schema the
    // server publishes for the CRD.
    plane.create_namespace(EXAMPLE_NAMESPACE).await.unwrap();
    let examples = path("deploy/examples");
    plane
        .kubectl_ok([
            "apply".as_ref(),
            "-n".as_ref(),
            EXAMPLE_NAMESPACE.as_ref(),
            "-f".as_ref(),
            examples.as_os_str(),
        ])
        .await
        .unwrap();

    // The server filled in the schema's defaults, and `kubectl get dbc` shows the
    // printer columns.
    let shards_and_mode = plane
        .kubectl_ok([
            "get",
            "dbc/example",
            "-n",
            EXAMPLE_NAMESPACE,
            "-o",
            "jsonpath={.spec.shards} {.spec.databases[0].serverWide}",
        ])
        .await
        .unwrap();
    assert_eq!(shards_and_mode, "1024 auto");
    let table = plane
        .kubectl_ok(["get", "dbc", "-n", EXAMPLE_NAMESPACE])
        .await
        .unwrap();
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "READY", "REPLICAS", "TARGETS", "SHARDS", "AGE"]
    );
    let secret_key = plane
        .kubectl_ok([
            "get",
            "secret/dbcollector-credentials",
            "-n",
            EXAMPLE_NAMESPACE,
            "-o",
            "jsonpath={.data.orders-postgres}",
        ])
        .await
        .unwrap();
    assert!(!secret_key.is_empty());
}

/// A request to authorize: verb, API group, resource (`resource/subresource` allowed),
/// namespace (`None`: every namespace) and object name (`None`: any).
type Request<'a> = (&'a str, &'a str, &'a str, Option<&'a str>, Option<&'a str>);

/// Whether the client's user may make `request`: what `kubectl auth can-i` asks the
/// server, with a SelfSubjectAccessReview.
async fn can(client: &Client, request: Request<'_>) -> bool {
    let (verb, group, resource, namespace, name) = request;
    let (resource, subresource) = match resource.split_once('/') {
        Some((resource, subresource)) => (resource, Some(subresource)),
        None => (resource, None),
    };
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.to_owned()),
                group: Some(group.to_owned()),
                resource: Some(resource.to_owned()),
                subresource: subresource.map(str::to_owned),
                namespace: namespace.map(str::to_owned),
                name: name.map(str::to_owned),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    let review = Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .unwrap();
    review.status.is_some_and(|status| status.allowed)
}

/// The requests of `requests` that `client` may make (`allowed`) or may not.
async fn filter(client: &Client, requests: &[Request<'_>], allowed: bool) -> Vec<String> {
    let mut found = Vec::new();
    for &request in requests {
        if can(client, request).await == allowed {
            found.push(format!("{request:?}"));
        }
    }
    found
}

/// A client acting as ServiceAccount `namespace/name`, with a token of its own.
async fn account_client(plane: &ControlPlane, namespace: &str, name: &str) -> Client {
    let kubeconfig = plane
        .service_account_kubeconfig(namespace, name)
        .await
        .unwrap();
    client_from_kubeconfig(&kubeconfig).unwrap()
}

/// The kinds of a collector's children, (API group, resource): the operator reads them,
/// applies them (server-side apply: patch, and create for a new object) and watches
/// them.
const CHILDREN: &[(&str, &str)] = &[
    ("", "configmaps"),
    ("", "services"),
    ("", "serviceaccounts"),
    ("rbac.authorization.k8s.io", "roles"),
    ("rbac.authorization.k8s.io", "rolebindings"),
    ("apps", "statefulsets"),
    ("policy", "poddisruptionbudgets"),
    ("autoscaling", "horizontalpodautoscalers"),
    ("coordination.k8s.io", "leases"),
];

/// The verbs of the operator on each kind of [`CHILDREN`].
const CHILD_VERBS: &[&str] = &["get", "list", "watch", "create", "patch"];

/// The rest of what the operator does: (verb, API group, resource), in any namespace.
const OPERATOR_NEEDS: &[(&str, &str, &str)] = &[
    ("list", "dbcollector.dev", "databasecollectors"),
    ("watch", "dbcollector.dev", "databasecollectors"),
    ("update", "dbcollector.dev", "databasecollectors/status"),
    ("update", "dbcollector.dev", "databasecollectors/finalizers"),
    // Dropped while the collector lives (the garbage collector deletes the rest).
    ("delete", "autoscaling", "horizontalpodautoscalers"),
    ("delete", "coordination.k8s.io", "leases"),
    // The workers update their Leases: held for RBAC's escalation check.
    ("update", "coordination.k8s.io", "leases"),
    ("get", "", "pods"),
    ("list", "", "pods"),
    ("watch", "", "pods"),
    ("patch", "", "pods"),
    ("get", "", "secrets"),
    ("list", "", "secrets"),
    ("watch", "", "secrets"),
    ("create", "events.k8s.io", "events"),
    ("patch", "events.k8s.io", "events"),
];

/// What the operator never does, some of it tempting to grant by habit.
const OPERATOR_NEVER: &[(&str, &str, &str)] = &[
    ("*", "*", "*"),
    ("create", "", "namespaces"),
    ("delete", "", "namespaces"),
    ("get", "", "nodes"),
    ("update", "dbcollector.dev", "databasecollectors"),
    ("patch", "dbcollector.dev", "databasecollectors"),
    ("delete", "dbcollector.dev", "databasecollectors"),
    ("update", "dbcollector.dev", "databasecollectors/scale"),
    ("create", "", "pods"),
    ("delete", "", "pods"),
    ("update", "", "pods"),
    ("patch", "", "pods/status"),
    ("create", "", "pods/exec"),
    ("create", "", "secrets"),
    ("update", "", "secrets"),
    ("patch", "", "secrets"),
    ("delete", "", "secrets"),
    ("create", "", "serviceaccounts/token"),
    ("update", "", "configmaps"),
    ("delete", "", "configmaps"),
    ("delete", "apps", "statefulsets"),
    ("delete", "rbac.authorization.k8s.io", "roles"),
    ("create", "", "events"),
    ("patch", "apps", "deployments"),
    ("update", "apps", "statefulsets/scale"),
    ("create", "rbac.authorization.k8s.io", "clusterroles"),
    ("create", "rbac.authorization.k8s.io", "clusterrolebindings"),
    ("escalate", "rbac.authorization.k8s.io", "roles"),
    ("bind", "rbac.authorization.k8s.io", "roles"),
    ("impersonate", "", "serviceaccounts"),
    (
        "delete",
        "apiextensions.k8s.io",
        "customresourcedefinitions",
    ),
];

#[tokio::test]
async fn operator_account_may_do_what_the_operator_does_and_no_more() {
    let plane = applied().await;
    let client = account_client(plane, OPERATOR_NAMESPACE, OPERATOR_ACCOUNT).await;

    // In one namespace and in all of them: collectors live anywhere.
    let children = CHILDREN.iter().flat_map(|&(group, resource)| {
        CHILD_VERBS.iter().map(move |&verb| (verb, group, resource))
    });
    let needs: Vec<Request> = children
        .chain(OPERATOR_NEEDS.iter().copied())
        .flat_map(|(verb, group, resource)| {
            [Some("tenant-a"), None].map(|ns| (verb, group, resource, ns, None))
        })
        .collect();
    let refused = filter(&client, &needs, false).await;
    assert!(refused.is_empty(), "the operator may not: {refused:#?}");

    let never: Vec<Request> = OPERATOR_NEVER
        .iter()
        .map(|&(verb, group, resource)| (verb, group, resource, Some("tenant-a"), None))
        .collect();
    let granted = filter(&client, &never, true).await;
    assert!(granted.is_empty(), "the operator may: {granted:#?}");

    // Leader election, in the operator's namespace.
    let election: Vec<Request> = ["get", "create", "patch"]
        .map(|verb| {
            (
                verb,
                "coordination.k8s.io",
                "leases",
                Some(OPERATOR_NAMESPACE),
                None,
            )
        })
        .to_vec();
    let refused = filter(&client, &election, false).await;
    assert!(refused.is_empty(), "the operator may not: {refused:#?}");
}

/// Server-side applies `object` with `client`, as the operator does (one field manager).
async fn apply_as<K>(client: &Client, object: &K) -> Result<K, kube::Error>
where
    K: kube::Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + k8s_openapi::serde::Serialize
        + k8s_openapi::serde::de::DeserializeOwned,
{
    let namespace = object.namespace().unwrap();
    let params = PatchParams::apply(annotations::MANAGER);
    Api::<K>::namespaced(client.clone(), &namespace)
        .patch(&object.name_any(), &params, &Patch::Apply(object))
        .await
}

#[tokio::test]
async fn operator_account_may_apply_every_child_and_the_workers_get_only_their_role() {
    let plane = applied().await;
    let namespace = "tenant-b";
    plane.create_namespace(namespace).await.unwrap();
    let examples = path("deploy/examples");
    plane
        .kubectl_ok([
            "apply".as_ref(),
            "-n".as_ref(),
            namespace.as_ref(),
            "-f".as_ref(),
            examples.as_os_str(),
        ])
        .await
        .unwrap();
    let collector = Api::<DatabaseCollector>::namespaced(plane.client(), namespace)
        .get("example")
        .await
        .unwrap();
    let children = render::children(&collector, dbcollector_operator::DEFAULT_IMAGE).unwrap();

    // Every child the operator renders, applied as the operator: PATCH, plus "create"
    // since none exists yet. The workers' Role passes RBAC's escalation check only if
    // the operator holds all of it. Left out: the PodDisruptionBudget (policy/v1) and
    // the HorizontalPodAutoscaler (autoscaling/v2, and the example has none), which
    // v1.20 does not serve; their verbs are checked by the review test above.
    let operator = account_client(plane, OPERATOR_NAMESPACE, OPERATOR_ACCOUNT).await;
    apply_as(&operator, &children.service_account)
        .await
        .unwrap();
    apply_as(&operator, &children.role).await.unwrap();
    apply_as(&operator, &children.role_binding).await.unwrap();
    apply_as(&operator, &children.config_map).await.unwrap();
    apply_as(&operator, &children.service).await.unwrap();
    for lease in &children.leases {
        apply_as(&operator, lease).await.unwrap();
    }
    apply_as(&operator, &children.stateful_set).await.unwrap();

    // The escalation check is live: one verb more than the operator holds is refused.
    let mut greedy = children.role.clone();
    greedy.metadata.name = Some("greedy-worker".to_owned());
    greedy.rules.as_mut().unwrap()[0]
        .verbs
        .push("delete".to_owned());
    let refused = apply_as(&operator, &greedy).await.unwrap_err();
    assert!(
        matches!(&refused, kube::Error::Api(status) if status.code == 403),
        "{refused}"
    );

    // The workers, with their own token: their pods, config, Leases and Secret, by name.
    let account = names::worker_account("example");
    let worker = account_client(plane, namespace, &account).await;
    let (pod, config) = (names::pod("example", 0), names::config_map("example"));
    let ns = Some(namespace);
    let allowed: Vec<Request> = vec![
        ("get", "", "pods", ns, Some(&pod)),
        ("watch", "", "pods", ns, Some("example-1")),
        ("get", "", "configmaps", ns, Some(&config)),
        ("watch", "", "configmaps", ns, Some(&config)),
        ("get", "coordination.k8s.io", "leases", ns, Some(&pod)),
        (
            "update",
            "coordination.k8s.io",
            "leases",
            ns,
            Some("example-1"),
        ),
        ("get", "", "secrets", ns, Some("dbcollector-credentials")),
    ];
    let refused = filter(&worker, &allowed, false).await;
    assert!(refused.is_empty(), "the workers may not: {refused:#?}");
    let denied: Vec<Request> = vec![
        ("get", "", "pods", ns, Some("example-2")),
        ("list", "", "pods", ns, None),
        ("patch", "", "pods", ns, Some(&pod)),
        ("update", "", "configmaps", ns, Some(&config)),
        ("create", "coordination.k8s.io", "leases", ns, None),
        ("delete", "coordination.k8s.io", "leases", ns, Some(&pod)),
        ("get", "", "secrets", ns, Some("other")),
        ("list", "", "secrets", ns, None),
        (
            "get",
            "",
            "secrets",
            Some("tenant-a"),
            Some("dbcollector-credentials"),
        ),
    ];
    let granted = filter(&worker, &denied, true).await;
    assert!(granted.is_empty(), "the workers may: {granted:#?}");
}
