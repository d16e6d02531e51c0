//! Hand-written schema pieces the derive cannot produce.

use schemars::{json_schema, Schema, SchemaGenerator};

/// An object whose inner fields the API server keeps without checking them (used for `podTemplate`,
/// whose full schema would make the CRD larger than the API server allows in an annotation).
pub fn preserve_unknown_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "nullable": true,
        "x-kubernetes-preserve-unknown-fields": true,
        "description": "A pod template merged into every worker pod (labels, annotations, node selector, tolerations, extra env, sidecars...). The worker container is the one named `worker`."
    })
}

/// `spec.job.params`: strings or integers, the integers bounded to 32 bits so that every value the API
/// server accepts can be read back (a larger number would make the whole StreamJob unreadable to the
/// operator and its watch). `minimum`/`maximum` apply to numbers only, `maxLength` to strings only.
pub fn job_params(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "additionalProperties": {
            "x-kubernetes-int-or-string": true,
            "minimum": i32::MIN,
            "maximum": i32::MAX,
            "maxLength": 4096
        }
    })
}
