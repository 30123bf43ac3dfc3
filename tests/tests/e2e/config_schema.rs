//! The JSON Schema of pipeline files: generated from the types that read them, committed as
//! `configs/ocellus.schema.json` (kept current), and every shipped configuration valid against
//! it, while a wrong key or value is not.
#![allow(clippy::unwrap_used)] // tests may unwrap, helpers included

use std::path::{Path, PathBuf};

use ocellus_pipelines::config::schema::{schema, schema_text};
use serde_json::Value;

fn configs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

/// A TOML file as the JSON value an editor's schema check sees.
fn toml_as_json(text: &str) -> Value {
    let table: toml::Table = text.parse().unwrap();
    serde_json::to_value(table).unwrap()
}

fn validator() -> jsonschema::Validator {
    jsonschema::draft202012::new(&schema()).unwrap_or_else(|e| panic!("the schema is not valid JSON Schema: {e}"))
}

#[test]
fn the_committed_schema_is_current() {
    let committed = std::fs::read_to_string(configs_dir().join("ocellus.schema.json")).unwrap();
    assert!(
        committed == schema_text(),
        "configs/ocellus.schema.json is stale: run `ocellus schema --out configs/ocellus.schema.json`"
    );
}

#[test]
fn every_shipped_config_validates_against_the_schema() {
    let validator = validator();
    let mut checked = 0;
    for entry in std::fs::read_dir(configs_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let value = toml_as_json(&std::fs::read_to_string(&path).unwrap());
            let errors: Vec<String> =
                validator.iter_errors(&value).map(|e| format!("{e} at {}", e.instance_path())).collect();
            assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
            checked += 1;
        }
    }
    assert!(checked >= 10, "{checked} configs checked");
}

#[test]
fn the_schema_rejects_what_the_parser_rejects() {
    let validator = validator();
    let base = "[[source]]\nname = \"front\"\npreset = { kind = \"test_pattern\" }\n";
    let valid = format!(
        "{base}[[actor]]\nname = \"motion\"\nkind = \"motion\"\ninputs = [\"front\"]\nthreshold = 0.1\n\
         [[sink]]\nkind = \"rerun\"\ninputs = [\"front\", \"motion\"]\nsave = \"out.rrd\"\n"
    );
    assert!(validator.is_valid(&toml_as_json(&valid)), "{:?}", validator.validate(&toml_as_json(&valid)).err());
    for bad in [
        // A key another kind has (the labeler's), on a motion actor.
        format!("{base}[[actor]]\nname = \"motion\"\nkind = \"motion\"\ninputs = [\"front\"]\nvocabulary = [\"a\"]\n"),
        // An unknown kind.
        format!("{base}[[actor]]\nname = \"x\"\nkind = \"teleport\"\ninputs = [\"front\"]\n"),
        // A wrong type.
        format!("{base}[[actor]]\nname = \"motion\"\nkind = \"motion\"\ninputs = [\"front\"]\nthreshold = \"high\"\n"),
        // A misspelt runtime key.
        format!("[runtime]\ndevise = \"cpu\"\n{base}"),
        // An unknown edge policy.
        format!("{base}[[sink]]\nkind = \"null\"\ninputs = [\"front\"]\nedge = {{ policy = \"fastest\" }}\n"),
    ] {
        assert!(!validator.is_valid(&toml_as_json(&bad)), "the schema accepts:\n{bad}");
        assert!(ocellus_pipelines::PipelineConfig::parse(Path::new("bad.toml"), &bad).is_err(), "{bad}");
    }
}
