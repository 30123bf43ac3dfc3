//! The JSON Schema of pipeline files: generated from the types that read them, committed as
//! `configs/ocellus.schema.json` (kept current), and every shipped configuration valid against
//! it, while a wrong key or value is not. The validator is the reference implementation,
//! Python's `jsonschema` (installed in the bootstrap venv), run as a child process.
#![allow(clippy::unwrap_used)] // tests may unwrap, helpers included

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ocellus_pipelines::config::schema::{schema, schema_text};
use serde_json::{Value, json};

fn configs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

/// A TOML file as the JSON value an editor's schema check sees.
fn toml_as_json(text: &str) -> Value {
    let table: toml::Table = text.parse().unwrap();
    serde_json::to_value(table).unwrap()
}

/// Validates each document against the schema with Python's `jsonschema` (Draft 2020-12,
/// after checking the schema itself); the errors of each document, in order.
fn validate(documents: &[(String, Value)]) -> Vec<Vec<String>> {
    const SCRIPT: &str = r#"
import json, sys
from jsonschema import Draft202012Validator
data = json.load(sys.stdin)
Draft202012Validator.check_schema(data["schema"])
validator = Draft202012Validator(data["schema"])
print(json.dumps([[f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(d)]
                  for d in data["documents"]]))
"#;
    let python = ocellus_perception::weights::venv_python().expect("no venv Python: run scripts/bootstrap");
    let mut child = Command::new(python)
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = json!({ "schema": schema(), "documents": documents.iter().map(|(_, d)| d).collect::<Vec<_>>() });
    child.stdin.take().unwrap().write_all(input.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "jsonschema failed (scripts/bootstrap installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
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
    let mut documents = Vec::new();
    for entry in std::fs::read_dir(configs_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            documents.push((path.display().to_string(), toml_as_json(&std::fs::read_to_string(&path).unwrap())));
        }
    }
    assert!(documents.len() >= 10, "{} configs", documents.len());
    for ((name, _), errors) in documents.iter().zip(validate(&documents)) {
        assert!(errors.is_empty(), "{name}: {errors:#?}");
    }
}

#[test]
fn the_schema_rejects_what_the_parser_rejects() {
    let base = "[[source]]\nname = \"front\"\npreset = { kind = \"test_pattern\" }\n";
    let valid = format!(
        "{base}[[actor]]\nname = \"motion\"\nkind = \"motion\"\ninputs = [\"front\"]\nthreshold = 0.1\n\
         [[sink]]\nkind = \"rerun\"\ninputs = [\"front\", \"motion\"]\nsave = \"out.rrd\"\n"
    );
    let bad = [
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
    ];
    let documents: Vec<(String, Value)> =
        std::iter::once(&valid).chain(&bad).map(|t| (t.clone(), toml_as_json(t))).collect();
    let errors = validate(&documents);
    assert!(errors[0].is_empty(), "{:?}", errors[0]);
    assert!(ocellus_pipelines::PipelineConfig::parse(Path::new("ok.toml"), &valid).is_ok());
    for (text, errors) in bad.iter().zip(&errors[1..]) {
        assert!(!errors.is_empty(), "the schema accepts:\n{text}");
        assert!(ocellus_pipelines::PipelineConfig::parse(Path::new("bad.toml"), text).is_err(), "{text}");
    }
}
