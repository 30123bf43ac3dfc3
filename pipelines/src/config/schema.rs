//! The JSON Schema of pipeline files, generated from the types that read them: editors
//! complete and check a pipeline as it is written (with a TOML language server such as
//! taplo: `#:schema ./ocellus.schema.json` at the top of the file, or a schema association).
//! `ocellus schema` prints it; `configs/ocellus.schema.json` is kept equal to it by a test.
//!
//! An `[[actor]]` or `[[sink]]` is one of its kinds: the keys every kind shares, plus the
//! kind's own, and nothing else.

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{Map, Value, json};

use super::{CommonEntry, RuntimeEntry, actor_kinds, sink_kinds};
use ocellus_io::kinds::SourceEntry;
use ocellus_runtime::kind::ErasedKind;

/// Keys of a generated root schema that are not part of the object itself.
const ROOT_ONLY: [&str; 3] = ["$defs", "$schema", "title"];

/// The object schema of `T`, inline (its references point into `generator`'s definitions).
fn object_of<T: JsonSchema>(generator: &mut SchemaGenerator) -> Map<String, Value> {
    let mut schema = generator.root_schema_for::<T>().to_value();
    strip(&mut schema);
    schema.as_object().cloned().unwrap_or_default()
}

fn strip(schema: &mut Value) {
    if let Some(object) = schema.as_object_mut() {
        for key in ROOT_ONLY {
            object.remove(key);
        }
    }
}

/// The schema of one kind's entries: the common keys with `kind` fixed, plus its own keys.
fn entry_of(kind: &dyn ErasedKind, common: &Map<String, Value>, generator: &mut SchemaGenerator, named: bool) -> Value {
    let mut own = kind.schema(generator).to_value();
    strip(&mut own);
    let mut properties = common.get("properties").and_then(Value::as_object).cloned().unwrap_or_default();
    if let Some(p) = own.get("properties").and_then(Value::as_object) {
        properties.extend(p.clone());
    }
    properties.insert("kind".into(), json!({ "const": kind.name(), "description": kind.doc() }));
    let mut required: Vec<Value> = vec!["kind".into()];
    if named {
        required.push("name".into());
    }
    if let Some(r) = own.get("required").and_then(Value::as_array) {
        required.extend(r.iter().cloned());
    }
    json!({
        "type": "object",
        "description": kind.doc(),
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    })
}

/// The JSON Schema of a pipeline file.
pub fn schema() -> Value {
    let mut generator = SchemaGenerator::new(SchemaSettings::draft2020_12());
    let runtime = Value::Object(object_of::<RuntimeEntry>(&mut generator));
    let source = Value::Object(object_of::<SourceEntry>(&mut generator));
    let common = object_of::<CommonEntry>(&mut generator);
    let session = Value::Object(object_of::<super::sessions::SessionEntry>(&mut generator));
    let actors: Vec<Value> = actor_kinds().into_iter().map(|k| entry_of(k, &common, &mut generator, true)).collect();
    let sinks: Vec<Value> = sink_kinds().into_iter().map(|k| entry_of(k, &common, &mut generator, false)).collect();
    let definitions = generator.take_definitions(true);
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://github.com/ocellus-robotics/ocellus/configs/ocellus.schema.json",
        "title": "Ocellus pipeline",
        "description": "A pipeline file: sources, actors, sinks, and the wires between them.",
        "type": "object",
        "properties": {
            "runtime": runtime,
            "source": { "type": "array", "items": source },
            "actor": { "type": "array", "items": { "oneOf": actors } },
            "sink": { "type": "array", "items": { "oneOf": sinks } },
            "zenoh": {
                "type": "object",
                "description": "zenoh sessions by name, shared by every entry that names one (`session = \"<name>\"`)",
                "additionalProperties": session,
            },
        },
        "additionalProperties": false,
        "$defs": definitions,
    })
}

/// The schema as the text of `configs/ocellus.schema.json` (pretty, with a final newline).
pub fn schema_text() -> String {
    let mut text = serde_json::to_string_pretty(&schema()).unwrap_or_default();
    text.push('\n');
    text
}
