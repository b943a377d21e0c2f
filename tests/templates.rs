//! Chat template conformance: every template of `tests/templates/corpus`
//! (real templates of the model families people run, see its SOURCES.md),
//! rendered with every conversation of `conversations.json` (system
//! prompts, several turns, tools, tool calls and results, reasoning,
//! documents, template arguments), must come out byte for byte as
//! `transformers`' own renderer writes it (`oracle.py`, run here), or fail
//! where it fails. A difference is allowed only where DIFFERENCES.md lists
//! it with its reason, and a listed difference that no longer differs
//! fails too, so the table stays true.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use minijinja::Value;
use wasi_nn_llm_host::chat::{ChatMessage, ChatTemplate, RenderOptions, TemplateValue, Tool, ToolCall};
use wasi_nn_llm_tests::workspace_root;

/// The clock both renderers read for `strftime_now`.
const NOW: &str = "2026-12-06T10:00:00";

#[test]
fn corpus_renders_byte_equal_to_transformers() {
    let dir = workspace_root().join("tests/templates");
    let reference = oracle(&dir);
    let conversations: Value = json(&std::fs::read_to_string(dir.join("conversations.json")).unwrap());
    let tokens: Value = json(&std::fs::read_to_string(dir.join("corpus/tokens.json")).unwrap());
    let listed = listed_differences(&std::fs::read_to_string(dir.join("DIFFERENCES.md")).unwrap());
    let now = chrono::NaiveDateTime::parse_from_str(NOW, "%Y-%m-%dT%H:%M:%S").unwrap();

    let (mut equal, mut both_failed) = (0, 0);
    let mut differences = BTreeMap::new();
    for (name, results) in reference.as_object().expect("the oracle's output is an object") {
        let source = std::fs::read_to_string(dir.join(format!("corpus/{name}.jinja"))).unwrap();
        let special = |key: &str| tokens.get_attr(name).and_then(|t| t.get_attr(key)).ok().and_then(string);
        let template = ChatTemplate::new(&source, special("bos_token"), special("eos_token"));
        for conversation in conversations.try_iter().unwrap() {
            let id = string(conversation.get_attr("name").unwrap()).unwrap();
            let (messages, options) = typed(&conversation);
            let ours = match &template {
                Ok(t) => t.render(&messages, &options, now).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let theirs = &results[&id];
            let outcome = match (&ours, theirs.get("ok").and_then(|t| t.as_str())) {
                (Ok(ours), Some(theirs)) if ours == theirs => {
                    equal += 1;
                    continue;
                }
                (Err(_), None) => {
                    both_failed += 1;
                    continue;
                }
                (Ok(ours), Some(theirs)) => first_difference(ours, theirs),
                (Ok(_), None) => format!("renders; transformers fails: {}", theirs["error"]),
                (Err(e), Some(_)) => format!("fails ({e}); transformers renders it"),
            };
            differences.insert((name.clone(), id), outcome);
        }
    }
    eprintln!(
        "{equal} renders byte-equal, {both_failed} refused by both, {} different ({} listed)",
        differences.len(),
        listed.len()
    );
    let unlisted: Vec<String> = differences
        .iter()
        .filter(|(key, _)| !listed.contains_key(*key))
        .map(|((t, c), outcome)| format!("{t} × {c}: {outcome}"))
        .collect();
    let stale: Vec<String> =
        listed.keys().filter(|key| !differences.contains_key(*key)).map(|(t, c)| format!("{t} × {c}")).collect();
    assert!(unlisted.is_empty(), "{} differences not in DIFFERENCES.md:\n{}", unlisted.len(), unlisted.join("\n"));
    assert!(stale.is_empty(), "DIFFERENCES.md lists renders that no longer differ:\n{}", stale.join("\n"));
    assert!(equal >= 300, "only {equal} renders compared equal: the corpus or the oracle is not being exercised");
}

/// Where two renders part, with a little of each around it.
fn first_difference(ours: &str, theirs: &str) -> String {
    let at = ours.bytes().zip(theirs.bytes()).take_while(|(a, b)| a == b).count();
    let at = (0..=at).rev().find(|&i| ours.is_char_boundary(i) && theirs.is_char_boundary(i)).unwrap_or(0);
    let around = |s: &str| {
        let start = (0..=at.saturating_sub(40)).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
        let end = (at + 60..=s.len()).find(|&i| s.is_char_boundary(i)).unwrap_or(s.len());
        format!("{:?}", &s[start..end.min(s.len())])
    };
    format!("renders differently from byte {at}:\n  ours:   {}\n  theirs: {}", around(ours), around(theirs))
}

/// Run `oracle.py` (transformers' renderer) over the corpus.
fn oracle(dir: &Path) -> serde_json::Value {
    let python = workspace_root().join("target/py/bin/python");
    assert!(python.is_file(), "{} is missing: `make test` installs transformers", python.display());
    let out = std::env::temp_dir().join(format!("wasi-nn-llm-oracle-{}.json", std::process::id()));
    let status = Command::new(python)
        .arg(dir.join("oracle.py"))
        .arg(dir.join("corpus"))
        .arg(dir.join("conversations.json"))
        .arg(&out)
        .env("ORACLE_NOW", NOW)
        .status()
        .expect("python");
    assert!(status.success(), "oracle.py failed: {status}");
    let text = std::fs::read_to_string(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    serde_json::from_str(&text).unwrap()
}

/// JSON as a template value: object keys in their written order, which
/// `tojson` prints and serde_json's own map would sort.
fn json(text: &str) -> Value {
    serde_json::from_str(text).expect("valid JSON")
}

fn string(v: Value) -> Option<String> {
    v.as_str().map(str::to_owned)
}

/// A conversation of `conversations.json` (Hugging Face's dicts) as the
/// extension's typed records carry it.
fn typed(conversation: &Value) -> (Vec<ChatMessage>, RenderOptions) {
    let field = |v: &Value, key: &str| v.get_attr(key).ok().filter(|v| !v.is_undefined() && !v.is_none());
    let text = |v: &Value, key: &str| field(v, key).and_then(string);
    let to_json = |v: &Value| serde_json::to_string(v).unwrap();
    let messages = field(conversation, "messages")
        .unwrap()
        .try_iter()
        .unwrap()
        .map(|m| ChatMessage {
            role: text(&m, "role").unwrap(),
            content: text(&m, "content"),
            reasoning: text(&m, "reasoning_content"),
            tool_calls: field(&m, "tool_calls")
                .map(|calls| {
                    calls
                        .try_iter()
                        .unwrap()
                        .map(|c| {
                            let function = field(&c, "function").unwrap();
                            ToolCall {
                                id: text(&c, "id").unwrap_or_default(),
                                name: text(&function, "name").unwrap(),
                                arguments: to_json(&field(&function, "arguments").unwrap()),
                            }
                        })
                        .collect()
                })
                .unwrap_or_default(),
            tool_call_id: text(&m, "tool_call_id"),
            name: text(&m, "name"),
        })
        .collect();
    let tools = field(conversation, "tools")
        .map(|tools| {
            tools
                .try_iter()
                .unwrap()
                .map(|t| {
                    let function = field(&t, "function").unwrap();
                    Tool {
                        name: text(&function, "name").unwrap(),
                        description: text(&function, "description"),
                        parameters: to_json(&field(&function, "parameters").unwrap()),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let documents = field(conversation, "documents")
        .map(|docs| {
            docs.try_iter()
                .unwrap()
                .map(|d| {
                    d.try_iter()
                        .unwrap()
                        .map(|k| {
                            let v = d.get_item(&k).unwrap();
                            (string(k).unwrap(), string(v).unwrap())
                        })
                        .collect()
                })
                .collect()
        })
        .unwrap_or_default();
    let arguments = field(conversation, "kwargs")
        .map(|kwargs| {
            kwargs
                .try_iter()
                .unwrap()
                .map(|k| {
                    let v = kwargs.get_item(&k).unwrap();
                    let value = match v.kind() {
                        minijinja::value::ValueKind::Bool => TemplateValue::Boolean(v.is_true()),
                        minijinja::value::ValueKind::Number if v.is_integer() => {
                            TemplateValue::Integer(v.as_i64().unwrap())
                        }
                        minijinja::value::ValueKind::Number => TemplateValue::Float(f64::try_from(v).unwrap()),
                        minijinja::value::ValueKind::String => TemplateValue::Text(string(v).unwrap()),
                        _ => TemplateValue::Json(to_json(&v)),
                    };
                    (string(k).unwrap(), value)
                })
                .collect()
        })
        .unwrap_or_default();
    let add_generation_prompt = field(conversation, "add_generation_prompt").is_some_and(|v| v.is_true());
    (messages, RenderOptions { add_generation_prompt, tools, documents, arguments })
}

/// The rows of DIFFERENCES.md's table, `| template | conversations | why |`:
/// names in backticks, several conversations to a row.
fn listed_differences(markdown: &str) -> BTreeMap<(String, String), String> {
    let names = |cell: &str| -> Vec<String> { cell.split('`').skip(1).step_by(2).map(str::to_owned).collect() };
    let mut listed = BTreeMap::new();
    for line in markdown.lines() {
        let Some(row) = line.trim().strip_prefix('|').and_then(|r| r.strip_suffix('|')) else { continue };
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let [template, conversations, why] = cells.as_slice() else { continue };
        for template in names(template) {
            for conversation in names(conversations) {
                listed.insert((template.clone(), conversation), why.to_string());
            }
        }
    }
    listed
}
