//! The agent without a language model (`rules = true`): captions come from the re-alignment
//! plan alone (what is tracked, its label and its action), and operator instructions are read
//! by a small fixed grammar into the same tool calls a model would make. A call made here is
//! validated, rate-limited and screened exactly like one from a model: the grammar only saves
//! the model, it grants nothing.
//!
//! The grammar (case-insensitive, leading "please" and trailing punctuation ignored):
//!
//! | Instruction | Call |
//! |---|---|
//! | `track|follow|find <text>` | `track {"query": text}` |
//! | `track box x0 y0 x1 y1` (commas allowed) | `track {"box": [...]}` |
//! | `untrack|forget|stop tracking [track] N` | `untrack {"track_id": N}` |
//! | `hide|blur|inpaint [track] N` | `inpaint {"track_id": N}` |
//! | `show|restore|unhide [track] N` | `inpaint {"track_id": N, "restore": true}` |
//! | `label [track] N as a, b, c` | `label {"track_id": N, "candidates": [...]}` |
//! | `describe [track] [N]` | `describe {"track_id": N}` or the scene |
//! | `alert|warn <text>` | `alert {"text": text}` |
//! | `publish <topic> <text>` | `publish {"topic": topic, "text": text}` |

use serde_json::{Map, Value, json};

/// What the rules understand, for the answer to an instruction they do not.
pub const GRAMMAR: &str = "track <what> | track box x0 y0 x1 y1 | untrack N | hide N | show N | \
label N as a, b | describe [N] | alert <text> | publish <topic> <text>";

/// A tool call read from an instruction: the tool's name and its arguments.
pub type RuleCall = (&'static str, Map<String, Value>);

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// `[track] N` at the start of `rest`: the id and what follows it.
fn track_id(rest: &str) -> Option<(u32, &str)> {
    let rest = rest.trim_start();
    let rest = rest.strip_prefix("track ").map(str::trim_start).unwrap_or(rest);
    let rest = rest.strip_prefix('#').unwrap_or(rest);
    let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    let id = rest.get(..end)?.parse().ok()?;
    Some((id, rest.get(end..).unwrap_or_default().trim()))
}

/// The tool call an instruction asks for, or `None` when the rules do not read it.
pub fn parse(instruction: &str) -> Option<RuleCall> {
    let text = instruction.trim().trim_end_matches(['.', '!', '?']).trim();
    let lower = text.to_lowercase();
    let lower = lower.strip_prefix("please ").unwrap_or(&lower).trim_start();
    // The same slice of the original text (case kept for free text).
    let original = text.get(text.len() - lower.len()..).unwrap_or(lower);
    let (verb, rest) = lower.split_once(char::is_whitespace).unwrap_or((lower, ""));
    let rest_original = original.get(verb.len()..).unwrap_or_default().trim();
    let rest = rest.trim();
    match verb {
        "track" | "follow" | "find" => {
            if let Some(numbers) = rest.strip_prefix("box ") {
                let b: Vec<f64> = numbers
                    .split([' ', ',', '[', ']'])
                    .filter(|s| !s.is_empty())
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .ok()?;
                let [x0, y0, x1, y1] = b.as_slice() else { return None };
                return Some(("track", object(json!({"box": [x0, y0, x1, y1]}))));
            }
            (!rest.is_empty()).then(|| ("track", object(json!({"query": rest_original}))))
        }
        "untrack" | "forget" => {
            track_id(rest).filter(|(_, r)| r.is_empty()).map(|(id, _)| ("untrack", object(json!({"track_id": id}))))
        }
        "stop" => {
            let rest = rest.strip_prefix("tracking")?;
            track_id(rest).filter(|(_, r)| r.is_empty()).map(|(id, _)| ("untrack", object(json!({"track_id": id}))))
        }
        "hide" | "blur" | "inpaint" => {
            track_id(rest).filter(|(_, r)| r.is_empty()).map(|(id, _)| ("inpaint", object(json!({"track_id": id}))))
        }
        "show" | "restore" | "unhide" => track_id(rest)
            .filter(|(_, r)| r.is_empty())
            .map(|(id, _)| ("inpaint", object(json!({"track_id": id, "restore": true})))),
        "label" => {
            let (id, r) = track_id(rest)?;
            let list = r.strip_prefix("as ")?;
            let candidates: Vec<&str> =
                list.split([',', '/']).flat_map(|s| s.split(" or ")).map(str::trim).filter(|s| !s.is_empty()).collect();
            (!candidates.is_empty()).then(|| ("label", object(json!({"track_id": id, "candidates": candidates}))))
        }
        "describe" => {
            if rest.is_empty() || rest == "the scene" || rest == "scene" {
                return Some(("describe", Map::new()));
            }
            track_id(rest).filter(|(_, r)| r.is_empty()).map(|(id, _)| ("describe", object(json!({"track_id": id}))))
        }
        "alert" | "warn" => (!rest.is_empty()).then(|| ("alert", object(json!({"text": rest_original})))),
        "publish" => {
            let (topic, message) = rest_original.split_once(char::is_whitespace)?;
            let message = message.trim();
            (!message.is_empty()).then(|| ("publish", object(json!({"topic": topic, "text": message}))))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(s: &str) -> Option<(String, Value)> {
        parse(s).map(|(n, a)| (n.to_owned(), Value::Object(a)))
    }

    #[test]
    fn reads_the_grammar() {
        let cases: &[(&str, &str, Value)] = &[
            ("track the red cup", "track", json!({"query": "the red cup"})),
            ("Please follow The Red Cup.", "track", json!({"query": "The Red Cup"})),
            ("track box 10, 20, 110, 220", "track", json!({"box": [10.0, 20.0, 110.0, 220.0]})),
            ("track box [1 2 3 4]", "track", json!({"box": [1.0, 2.0, 3.0, 4.0]})),
            ("untrack 3", "untrack", json!({"track_id": 3})),
            ("stop tracking track #12!", "untrack", json!({"track_id": 12})),
            ("forget track 7", "untrack", json!({"track_id": 7})),
            ("hide track 1", "inpaint", json!({"track_id": 1})),
            ("blur 2", "inpaint", json!({"track_id": 2})),
            ("show track 2", "inpaint", json!({"track_id": 2, "restore": true})),
            (
                "label track 4 as a cup, a mug or a bowl",
                "label",
                json!({"track_id": 4, "candidates": ["a cup", "a mug", "a bowl"]}),
            ),
            ("describe", "describe", json!({})),
            ("describe track 5", "describe", json!({"track_id": 5})),
            ("alert Someone at the Door", "alert", json!({"text": "Someone at the Door"})),
            ("publish status all clear", "publish", json!({"topic": "status", "text": "all clear"})),
        ];
        for (text, tool, args) in cases {
            assert_eq!(call(text), Some(((*tool).to_owned(), args.clone())), "{text}");
        }
    }

    #[test]
    fn leaves_what_it_does_not_read() {
        for text in [
            "",
            "hello there",
            "track",
            "track box 1 2 3",
            "track box 1 2 three 4",
            "untrack the cup",
            "untrack 3 and 4",
            "hide 99999999999",
            "label 3",
            "label 3 as",
            "describe the cup",
            "alert",
            "publish status",
            "stop 3",
        ] {
            assert_eq!(call(text), None, "{text:?}");
        }
    }
}
