//! The DatabaseCollector API and the contract shared by the operator and the worker.
//!
//! - [`spec`] and [`status`]: the `DatabaseCollector` custom resource
//!   (`dbcollector.dev/v1alpha1`), derived with kube and schemars.
//! - [`cel`]: the schema's cross-field rules, as CEL and as their Rust mirror
//!   [`cel::validate`] for API servers that ignore CEL (before Kubernetes 1.25).
//! - [`shard`]: the slot hash of a target and the text form of slot ranges.
//! - [`balance`]: the rule that assigns slots to worker pods, balanced by target count.
//! - [`annotations`]: the annotation and label keys both sides read and write.
//!
//! The CRD manifest generated from these types is committed as
//! `crds/dbcollector.dev_databasecollectors.yaml`; a test fails when it drifts.

pub mod annotations;
pub mod balance;
pub mod cel;
mod schema;
pub mod shard;
pub mod spec;
pub mod status;

pub use spec::{DatabaseCollector, DatabaseCollectorSpec};
pub use status::DatabaseCollectorStatus;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use kube::CustomResourceExt;

/// The command that regenerates the committed CRD manifest, from the workspace root.
pub const REGENERATE: &str =
    "cargo run -p dbcollector-crds --bin crdgen > crds/dbcollector.dev_databasecollectors.yaml";

/// Why the CRD manifest could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The CRD did not serialize to YAML.
    #[error("serializing the CRD to YAML")]
    Yaml(#[source] serde_yaml_ng::Error),
}

/// The CustomResourceDefinition of `DatabaseCollector`, as installed.
///
/// Use this rather than `DatabaseCollector::crd()`, which it polishes for `kubectl
/// explain`: descriptions are reflowed (their line breaks come from the width of the
/// source's doc comments; paragraph breaks are kept), and `nullable` is dropped, because
/// API servers before 1.27 publish nullable fields without a type (`<>`) in the OpenAPI v2
/// document kubectl reads. Nothing is lost: these types never serialize a null, and a
/// merge patch's null removes a field rather than storing it.
pub fn crd() -> CustomResourceDefinition {
    let mut crd = DatabaseCollector::crd();
    for version in &mut crd.spec.versions {
        let schema = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut());
        if let Some(schema) = schema {
            polish(schema);
        }
    }
    crd
}

/// Reflows every description and drops every `nullable` in the schema tree.
fn polish(schema: &mut JSONSchemaProps) {
    if let Some(text) = &mut schema.description {
        *text = reflow(text);
    }
    schema.nullable = None;
    let children = schema
        .properties
        .iter_mut()
        .flat_map(|p| p.values_mut())
        .chain(schema.all_of.iter_mut().flatten())
        .chain(schema.any_of.iter_mut().flatten())
        .chain(schema.one_of.iter_mut().flatten())
        .chain(schema.not.as_deref_mut());
    for child in children {
        polish(child);
    }
    match &mut schema.items {
        Some(JSONSchemaPropsOrArray::Schema(item)) => polish(item),
        Some(JSONSchemaPropsOrArray::Schemas(items)) => {
            items.iter_mut().for_each(polish);
        }
        None => {}
    }
    if let Some(JSONSchemaPropsOrBool::Schema(values)) = &mut schema.additional_properties {
        polish(values);
    }
}

/// `text` with single line breaks turned into spaces; blank lines (paragraphs) kept.
fn reflow(text: &str) -> String {
    let paragraphs: Vec<String> = text
        .split("\n\n")
        .map(|p| p.lines().map(str::trim).collect::<Vec<_>>().join(" "))
        .collect();
    paragraphs.join("\n\n")
}

/// The CRD manifest as committed in `crds/`: a header comment, then the YAML document.
///
/// # Errors
/// [`Error::Yaml`] if serialization fails (it does not for this type).
pub fn crd_yaml() -> Result<String, Error> {
    let body = serde_yaml_ng::to_string(&crd()).map_err(Error::Yaml)?;
    Ok(format!(
        "# Generated from the Rust types in crds/src; do not edit. Regenerate with:\n\
         #   {REGENERATE}\n{body}"
    ))
}

#[cfg(test)]
mod tests;
