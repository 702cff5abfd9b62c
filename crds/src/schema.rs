//! Hand-written schemas for fields whose derived schema would lack bounds.
//!
//! A derived `BTreeMap<String, String>` has no bound on its size or its values, and the
//! API server's CEL cost estimate (and etcd) need one.

use schemars::{json_schema, Schema, SchemaGenerator};

/// Most entries in a label or annotation map of the spec.
pub const MAX_MAP_ENTRIES: u32 = 64;

/// A map of label values: at most 64 entries, values of at most 63 characters (a label
/// value's limit).
pub fn label_map(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "maxProperties": MAX_MAP_ENTRIES,
        "additionalProperties": { "type": "string", "maxLength": 63 },
    })
}

/// A map of annotation values: at most 64 entries, values of at most 4096 characters.
pub fn annotation_map(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "maxProperties": MAX_MAP_ENTRIES,
        "additionalProperties": { "type": "string", "maxLength": 4096 },
    })
}
