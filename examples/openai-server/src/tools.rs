//! The `tools` of a chat request, checked before anything reaches the host,
//! and how a call is asked of the model: the tool format of its template,
//! and the grammar that holds its output to a call that parses and
//! validates against the function's `parameters`.
//!
//! A template with a native tool format (Hermes' `<tool_call>`, Mistral's
//! `[TOOL_CALLS]`, Llama 3.x's JSON) gets the tools and calls as typed
//! records and renders them itself; any other template gets llama-server's
//! generic format: the tools and the answer's shape written into the system
//! prompt, and an answer that is JSON, `{"tool_call": ...}` or
//! `{"response": ...}`.

use serde::Deserialize;
use serde_json::{Value, json};
use wasi_nn_llm::tool_calls::Format;
use wasi_nn_llm::{ChatMessage, Tool, ToolCall};

use crate::error::ApiError;

/// One entry of `tools`.
#[derive(Deserialize)]
pub struct ToolSpec {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub function: Option<FunctionSpec>,
}

#[derive(Deserialize)]
pub struct FunctionSpec {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub parameters: Option<Value>,
}

/// `tool_choice`: a mode, or one function by name.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum ToolChoiceSpec {
    Mode(String),
    Named {
        #[serde(rename = "type")]
        kind: String,
        function: NamedFunction,
    },
}

#[derive(Deserialize)]
pub struct NamedFunction {
    pub name: String,
}

/// Whether and which tools the model must call.
#[derive(Clone, PartialEq, Debug)]
pub enum Choice {
    /// Never: tools are shown but not called.
    None,
    /// If it decides to.
    Auto,
    /// At least one call.
    Required,
    /// A call of this function.
    Named(String),
}

/// A request's tools, checked.
pub struct Tools {
    pub list: Vec<Tool>,
    /// Each tool's `parameters`, parsed (keys in the client's order).
    schemas: Vec<Value>,
    pub choice: Choice,
    pub parallel: bool,
}

impl Tools {
    /// Check `tools`, `tool_choice` and `parallel_tool_calls`: each tool a
    /// function with a name OpenAI accepts, no name twice, parameters a
    /// JSON schema the host can make a grammar of, and a named choice one
    /// of them. None when the request has no tools.
    pub fn check(
        specs: Option<&[ToolSpec]>,
        choice: Option<&ToolChoiceSpec>,
        parallel: Option<bool>,
    ) -> Result<Option<Self>, ApiError> {
        let specs = specs.unwrap_or_default();
        let choice = match choice {
            None => Choice::Auto,
            Some(ToolChoiceSpec::Mode(mode)) => match mode.as_str() {
                "none" => Choice::None,
                "auto" => Choice::Auto,
                "required" => Choice::Required,
                other => {
                    return Err(ApiError::invalid(
                        format!("tool_choice {other:?} is not one of none, auto, required or a named function"),
                        Some("tool_choice"),
                    ));
                }
            },
            Some(ToolChoiceSpec::Named { kind, function }) => {
                if kind != "function" {
                    return Err(ApiError::invalid(
                        format!("tool_choice of type {kind:?} is not supported: only \"function\""),
                        Some("tool_choice"),
                    ));
                }
                Choice::Named(function.name.clone())
            }
        };
        if specs.is_empty() {
            if choice != Choice::Auto && choice != Choice::None {
                return Err(ApiError::invalid("tool_choice needs tools", Some("tool_choice")));
            }
            return Ok(None);
        }
        let mut list: Vec<Tool> = Vec::new();
        let mut schemas = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let function = match (spec.kind.as_str(), &spec.function) {
                ("function", Some(function)) => function,
                ("function", None) => {
                    return Err(ApiError::invalid(format!("tools[{i}] has no function"), Some("tools")));
                }
                (kind, _) => {
                    return Err(ApiError::invalid(
                        format!("tools[{i}] is of type {kind:?}: only \"function\" tools are supported"),
                        Some("tools"),
                    ));
                }
            };
            let name = &function.name;
            let valid = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
            if name.is_empty() || name.len() > 64 || !name.chars().all(valid) {
                return Err(ApiError::invalid(
                    format!("tools[{i}].function.name {name:?} must be 1 to 64 letters, digits, '_' or '-'"),
                    Some("tools"),
                ));
            }
            if list.iter().any(|t| &t.name == name) {
                return Err(ApiError::invalid(format!("tools[{i}]: a second function named {name:?}"), Some("tools")));
            }
            let schema = function.parameters.clone().unwrap_or_else(|| json!({ "type": "object", "properties": {} }));
            if !schema.is_object() {
                return Err(ApiError::invalid(
                    format!("tools[{i}].function.parameters must be a JSON schema object"),
                    Some("tools"),
                ));
            }
            // The host's grammar of it is what will hold the call: a schema
            // it cannot make one of is refused now, naming the tool.
            wasi_nn_llm::json_schema_grammar(&schema.to_string()).map_err(|e| {
                ApiError::invalid(
                    format!("tools[{i}].function.parameters ({name}) is not a usable JSON schema: {e}"),
                    Some("tools"),
                )
            })?;
            list.push(Tool {
                name: name.clone(),
                description: function.description.clone(),
                parameters: schema.to_string(),
            });
            schemas.push(schema);
        }
        if let Choice::Named(name) = &choice
            && !list.iter().any(|t| &t.name == name)
        {
            return Err(ApiError::invalid(
                format!("tool_choice names {name:?}, which is not in tools"),
                Some("tool_choice"),
            ));
        }
        Ok(Some(Self { list, schemas, choice, parallel: parallel.unwrap_or(false) }))
    }

    /// The tools a call may name: all, or the one `tool_choice` names.
    fn callable(&self) -> impl Iterator<Item = (&Tool, &Value)> {
        self.list.iter().zip(&self.schemas).filter(|(t, _)| !matches!(&self.choice, Choice::Named(n) if n != &t.name))
    }

    /// The schema of one call: `{"name": <const>, <arguments key>: <parameters>}`.
    fn call_schema(&self, arguments: &str, extra: Option<(&str, Value)>) -> Value {
        let mut alternatives: Vec<Value> = self
            .callable()
            .map(|(tool, schema)| {
                let mut properties = serde_json::Map::new();
                properties.insert("name".into(), json!({ "type": "string", "const": tool.name }));
                properties.insert(arguments.into(), schema.clone());
                let mut required = vec![json!("name"), json!(arguments)];
                if let Some((key, schema)) = &extra {
                    properties.insert((*key).into(), schema.clone());
                    required.push(json!(key));
                }
                json!({ "type": "object", "properties": properties, "required": required })
            })
            .collect();
        if alternatives.len() == 1 { alternatives.remove(0) } else { json!({ "anyOf": alternatives }) }
    }
}

/// The reply's constraint for a request's tools, in the template's tool
/// format: GBNF where the host offers it (`gbnf`), else the same grammar in
/// Lark, the constraint every host of extension 0.1.6 serves. The generic
/// format's reply is a JSON schema, which every host serves as it is.
pub trait Constrain {
    fn constraint(self, tools: &Tools, gbnf: bool) -> Result<Option<Constraint>, ApiError>;
}

impl Constrain for Format {
    /// The grammar that holds a reply to the request's tool choice, as a
    /// GBNF or Lark grammar or (generic) a JSON schema. None for
    /// `tool_choice: none`.
    fn constraint(self, tools: &Tools, gbnf: bool) -> Result<Option<Constraint>, ApiError> {
        if !gbnf && self != Self::Generic {
            return Ok(lark(self, tools)?.map(Constraint::Lark));
        }
        let must_call = matches!(tools.choice, Choice::Required | Choice::Named(_));
        Ok(Some(match (self, &tools.choice) {
            (_, Choice::None) => return Ok(None),
            (Self::Generic, _) => {
                let call = tools.call_schema("arguments", None);
                let calls = if tools.parallel {
                    json!({ "type": "object", "properties": { "tool_calls": { "type": "array", "items": call, "minItems": 1 } }, "required": ["tool_calls"] })
                } else {
                    json!({ "type": "object", "properties": { "tool_call": call }, "required": ["tool_call"] })
                };
                let schema = if must_call {
                    calls
                } else {
                    let response = json!({ "type": "object", "properties": { "response": { "type": "string" } }, "required": ["response"] });
                    json!({ "anyOf": [calls, response] })
                };
                Constraint::JsonSchema(schema.to_string())
            }
            (Self::Hermes, _) => {
                let call = rule_grammar("call", &tools.call_schema("arguments", None))?;
                let repeat = if tools.parallel { " (\"\\n<tool_call>\\n\" call \"\\n</tool_call>\")*" } else { "" };
                let calls = format!("calls ::= \"<tool_call>\\n\" call \"\\n</tool_call>\"{repeat}\n");
                Constraint::Grammar(root(must_call, &calls, "[^<]", &call))
            }
            (Self::Mistral, _) => {
                let id = json!({ "type": "string", "pattern": "^[a-zA-Z0-9]{9}$" });
                let mut list = json!({ "type": "array", "items": tools.call_schema("arguments", Some(("id", id))), "minItems": 1 });
                if !tools.parallel {
                    list["maxItems"] = json!(1);
                }
                let call = rule_grammar("call", &list)?;
                Constraint::Grammar(root(must_call, "calls ::= \"[TOOL_CALLS]\" call\n", "[^\\[]", &call))
            }
            (Self::Llama3, _) => {
                if tools.parallel {
                    return Err(ApiError::invalid(
                        "this model's template takes one tool call at a time: parallel_tool_calls must be false",
                        Some("parallel_tool_calls"),
                    ));
                }
                let call = rule_grammar("call", &tools.call_schema("parameters", None))?;
                Constraint::Grammar(root(must_call, "calls ::= call\n", "[^{]", &call))
            }
        }))
    }
}

/// A constraint for the reply.
pub enum Constraint {
    Grammar(String),
    JsonSchema(String),
    Lark(String),
}

/// The tool grammar of a native `format` (Hermes, Mistral, Llama 3) in Lark
/// (llguidance's dialect): the calls inside the template's markers, each
/// call a `%json` schema, or (unless a call is required) text that does not
/// start as a call does. The generic format needs none (see `constraint`).
fn lark(format: Format, tools: &Tools) -> Result<Option<String>, ApiError> {
    let must_call = matches!(tools.choice, Choice::Required | Choice::Named(_));
    let json = |schema: &Value| format!("%json {schema}");
    let (calls, not_a_call) = match (format, &tools.choice) {
        (_, Choice::None) => return Ok(None),
        (Format::Generic, _) => unreachable!("the generic format's reply is a JSON schema, sent as one"),
        (Format::Hermes, _) => {
            let repeat = if tools.parallel { r#" ("\n<tool_call>\n" call "\n</tool_call>")*"# } else { "" };
            (format!(r#"calls: "<tool_call>\n" call "\n</tool_call>"{repeat}"#), "[^<]")
        }
        (Format::Mistral, _) => ("calls: \"[TOOL_CALLS]\" list".to_owned(), "[^\\[]"),
        (Format::Llama3, _) => {
            if tools.parallel {
                return Err(ApiError::invalid(
                    "this model's template takes one tool call at a time: parallel_tool_calls must be false",
                    Some("parallel_tool_calls"),
                ));
            }
            ("calls: call".to_owned(), "[^{]")
        }
    };
    let call = match format {
        Format::Mistral => {
            let id = json!({ "type": "string", "pattern": "^[a-zA-Z0-9]{9}$" });
            let mut list =
                json!({ "type": "array", "items": tools.call_schema("arguments", Some(("id", id))), "minItems": 1 });
            if !tools.parallel {
                list["maxItems"] = json!(1);
            }
            format!("list: {}\n", json(&list))
        }
        Format::Llama3 => format!("call: {}\n", json(&tools.call_schema("parameters", None))),
        _ => format!("call: {}\n", json(&tools.call_schema("arguments", None))),
    };
    let start = if must_call {
        "start: calls\n".to_owned()
    } else {
        format!("start: calls | text?\ntext: /{not_a_call}(.|\\n)*/\n")
    };
    Ok(Some(format!("{start}{calls}\n{call}")))
}

/// `root` of a grammar whose reply is the calls, or (unless a call is
/// required) text that does not start as a call does.
fn root(must_call: bool, calls: &str, not_a_call: &str, call: &str) -> String {
    if must_call {
        format!("root ::= calls\n{calls}{call}")
    } else {
        format!("root ::= calls | text\ntext ::= ({not_a_call} [^\\x00]*)?\n{calls}{call}")
    }
}

/// The host's grammar of a JSON schema, its start rule renamed `rule` so it
/// can sit inside another grammar.
fn rule_grammar(rule: &str, schema: &Value) -> Result<String, ApiError> {
    let grammar = wasi_nn_llm::json_schema_grammar(&schema.to_string())
        .map_err(|e| ApiError::invalid(format!("the tools' schemas make no grammar: {e}"), Some("tools")))?;
    Ok(grammar
        .lines()
        .map(|line| match line.strip_prefix("root ::=") {
            Some(rest) => format!("{rule} ::={rest}\n"),
            None => format!("{line}\n"),
        })
        .collect())
}

/// A message with only a role and content.
pub fn message(role: &str, content: Option<String>) -> ChatMessage {
    ChatMessage { role: role.into(), content, reasoning: None, tool_calls: vec![], tool_call_id: None, name: None }
}

/// The messages for a template without a native tool format, as
/// llama-server's generic format writes them: the tools and the answer's
/// shape in the system prompt (a first one if there is none), and earlier
/// calls as the JSON the model answered with.
pub fn generic_messages(messages: Vec<ChatMessage>, tools: &Tools) -> Vec<ChatMessage> {
    let listing: Vec<Value> = tools
        .list
        .iter()
        .zip(&tools.schemas)
        .map(|(t, schema)| {
            let mut function = serde_json::Map::new();
            function.insert("name".into(), json!(t.name));
            if let Some(description) = &t.description {
                function.insert("description".into(), json!(description));
            }
            function.insert("parameters".into(), schema.clone());
            json!({ "type": "function", "function": function })
        })
        .collect();
    let key = if tools.parallel { "tool_calls" } else { "tool_call" };
    let mut instructions = String::new();
    if tools.choice != Choice::None {
        instructions = format!(
            "You can call any of the following tools to satisfy the user's requests: {}\n\nRespond in JSON \
             format, either with `{key}` (a request to call tools) or with `response` reply to the user's request",
            serde_json::to_string_pretty(&listing).unwrap_or_default()
        );
    }
    let mut out = Vec::with_capacity(messages.len() + 1);
    let mut messages = messages.into_iter().peekable();
    match messages.peek_mut() {
        Some(first) if first.role == "system" => {
            if !instructions.is_empty() {
                let content = first.content.take().unwrap_or_default();
                first.content =
                    Some(if content.is_empty() { instructions } else { format!("{content}\n\n{instructions}") });
            }
        }
        _ if !instructions.is_empty() => out.push(message("system", Some(instructions))),
        _ => {}
    }
    for mut m in messages {
        if !m.tool_calls.is_empty() {
            let calls: Vec<Value> = m
                .tool_calls
                .drain(..)
                .map(|c: ToolCall| {
                    let arguments: Value = serde_json::from_str(&c.arguments).unwrap_or(Value::String(c.arguments));
                    json!({ "name": c.name, "arguments": arguments })
                })
                .collect();
            let answer = if tools.parallel || calls.len() > 1 {
                json!({ "tool_calls": calls })
            } else {
                json!({ "tool_call": calls[0] })
            };
            m.content = Some(answer.to_string());
        }
        out.push(m);
    }
    out
}
