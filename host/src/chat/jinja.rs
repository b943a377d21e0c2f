//! A GGUF's Jinja chat template, compiled once per model and rendered in
//! the environment `transformers`' `apply_chat_template` builds: a sandbox
//! with `trim_blocks`, `lstrip_blocks` and loop controls; `tojson`,
//! `raise_exception` and `strftime_now`; `messages`, `tools`, `documents`,
//! `add_generation_prompt`, the special tokens and any extra keyword
//! arguments as variables.

use chrono::NaiveDateTime;
use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Rest};
use minijinja::{Environment, Error, ErrorKind, Value};

use super::{ChatMessage, RenderOptions, TemplateValue, Tool, ToolCall, python};

/// Most work one render may do (minijinja's fuel: about one unit per
/// instruction or per 64 bytes made). A template comes with the model
/// file and its input from a guest; neither may make a render run
/// forever or fill memory. Real templates render a long conversation in
/// well under 1% of this.
const FUEL: u64 = 4_000_000;

/// Keyword arguments a guest may not set: the renderer's own parameters
/// (Python refuses them as given twice). The special tokens may be set, as
/// `apply_chat_template`'s keyword arguments override them.
const RESERVED: [&str; 4] = ["messages", "tools", "documents", "add_generation_prompt"];

/// Why a template could not render a conversation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TemplateError {
    /// The template itself is broken (it came with the model).
    #[error("the model's chat template does not compile: {0}")]
    Syntax(String),
    /// The template called `raise_exception`: it refuses this conversation
    /// (roles out of order, a feature it lacks, …).
    #[error("the model's chat template refused this conversation: {0}")]
    Raised(String),
    /// A tool's schema, a call's arguments or a template argument is not
    /// what it must be.
    #[error("{0}")]
    Argument(String),
    /// The template failed on this conversation, or ran out of fuel.
    #[error("the model's chat template failed on this conversation: {0}")]
    Render(String),
}

/// A compiled chat template and the model's special tokens.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

/// The error `raise_exception` raises, found again in the render's error.
#[derive(Debug)]
struct Raised(String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

impl ChatTemplate {
    /// Compile `source` with the model's BOS and EOS marker texts (absent
    /// where its tokenizer has none; the template then sees them undefined,
    /// as a Hugging Face tokenizer without them passes none).
    pub fn new(source: &str, bos_token: Option<String>, eos_token: Option<String>) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| TemplateError::Syntax(e.to_string()))?;
        env.set_syntax(syntax);
        env.set_fuel(Some(FUEL));
        env.set_formatter(python::format_value);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", |value: &Value, args: Rest<Value>, kwargs: Kwargs| {
            python::tojson(value, args, kwargs)
        });
        env.add_filter("string", |value: &Value| python::string(value));
        env.add_filter("indent", |value: &str, args: Rest<Value>, kwargs: Kwargs| python::indent(value, args, kwargs));
        env.add_filter("escape", |value: &Value| python::escape(value));
        env.add_filter("e", |value: &Value| python::escape(value));
        env.add_test("iterable", |value: &Value| python::is_iterable(value));
        env.add_function("raise_exception", |message: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, "raise_exception").with_source(Raised(message)))
        });
        env.add_template_owned("chat", without_generation_tags(source))
            .map_err(|e| TemplateError::Syntax(describe(&e)))?;
        Ok(Self { env, bos_token, eos_token })
    }

    /// Render a conversation as `apply_chat_template(messages, tools=...,
    /// documents=..., add_generation_prompt=..., **arguments)` would, with
    /// `now` for `strftime_now`.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        options: &RenderOptions,
        now: NaiveDateTime,
    ) -> Result<String, TemplateError> {
        let messages: Vec<Value> = messages.iter().map(message).collect::<Result<_, _>>()?;
        let none_if_empty = |v: Vec<Value>| if v.is_empty() { Value::from(()) } else { Value::from(v) };
        let tools = none_if_empty(options.tools.iter().map(tool).collect::<Result<_, _>>()?);
        let documents = none_if_empty(
            options
                .documents
                .iter()
                .map(|fields| Value::from_pairs(fields.iter().map(|(k, v)| (k.as_str(), Value::from(v.as_str())))))
                .collect(),
        );
        let mut context: Vec<(String, Value)> = vec![
            ("messages".into(), Value::from(messages)),
            ("tools".into(), tools),
            ("documents".into(), documents),
            ("add_generation_prompt".into(), Value::from(options.add_generation_prompt)),
        ];
        for (name, token) in [("bos_token", &self.bos_token), ("eos_token", &self.eos_token)] {
            if let Some(token) = token {
                context.push((name.into(), Value::from(token.as_str())));
            }
        }
        context
            .push(("strftime_now".into(), Value::from_function(move |format: String| python::strftime(now, &format))));
        for (name, value) in &options.arguments {
            if RESERVED.contains(&name.as_str()) || !is_identifier(name) {
                return Err(TemplateError::Argument(format!(
                    "template argument {name:?} is not allowed: it must be an identifier and not one of {}",
                    RESERVED.join(", ")
                )));
            }
            context.push((name.clone(), template_value(name, value)?));
        }
        let template = self.env.get_template("chat").map_err(|e| TemplateError::Syntax(describe(&e)))?;
        template.render(Value::from_pairs(context)).map_err(|e| {
            match std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
                .find_map(|e| e.downcast_ref::<Raised>())
            {
                Some(Raised(message)) => TemplateError::Raised(message.clone()),
                None => TemplateError::Render(describe(&e)),
            }
        })
    }
}

/// A message as `apply_chat_template` hands it to a template: only the
/// fields given (it drops keys whose value is None), in the order clients
/// send them; reasoning also as `thinking`, first, which gpt-oss's
/// template reads (`transformers`' `_alias_reasoning_fields`).
fn message(m: &ChatMessage) -> Result<Value, TemplateError> {
    let mut fields = Vec::new();
    if let Some(reasoning) = &m.reasoning {
        fields.push(("thinking", Value::from(reasoning.as_str())));
    }
    fields.push(("role", Value::from(m.role.as_str())));
    if let Some(content) = &m.content {
        fields.push(("content", Value::from(content.as_str())));
    }
    if let Some(reasoning) = &m.reasoning {
        fields.push(("reasoning_content", Value::from(reasoning.as_str())));
    }
    if !m.tool_calls.is_empty() {
        fields.push(("tool_calls", Value::from(m.tool_calls.iter().map(tool_call).collect::<Result<Vec<_>, _>>()?)));
    }
    if let Some(id) = &m.tool_call_id {
        fields.push(("tool_call_id", Value::from(id.as_str())));
    }
    if let Some(name) = &m.name {
        fields.push(("name", Value::from(name.as_str())));
    }
    Ok(Value::from_pairs(fields))
}

/// A call as OpenAI's API and `transformers` write it, arguments parsed:
/// templates print them with `tojson` or walk their items.
fn tool_call(call: &ToolCall) -> Result<Value, TemplateError> {
    let arguments = json(&call.arguments).map_err(|e| {
        TemplateError::Argument(format!("the arguments of tool call {:?} ({}) are not JSON: {e}", call.id, call.name))
    })?;
    let function = Value::from_pairs([("name", Value::from(call.name.as_str())), ("arguments", arguments)]);
    Ok(Value::from_pairs([
        ("id", Value::from(call.id.as_str())),
        ("type", Value::from("function")),
        ("function", function),
    ]))
}

/// A tool as OpenAI's API writes it: `{"type": "function", "function":
/// {"name", "description", "parameters"}}`.
fn tool(tool: &Tool) -> Result<Value, TemplateError> {
    let parameters = json(&tool.parameters)
        .map_err(|e| TemplateError::Argument(format!("the parameters of tool {:?} are not JSON: {e}", tool.name)))?;
    let mut function = vec![("name", Value::from(tool.name.as_str()))];
    if let Some(description) = &tool.description {
        function.push(("description", Value::from(description.as_str())));
    }
    function.push(("parameters", parameters));
    Ok(Value::from_pairs([("type", Value::from("function")), ("function", Value::from_pairs(function))]))
}

fn template_value(name: &str, value: &TemplateValue) -> Result<Value, TemplateError> {
    Ok(match value {
        TemplateValue::Boolean(b) => Value::from(*b),
        TemplateValue::Integer(i) => Value::from(*i),
        TemplateValue::Float(x) => Value::from(*x),
        TemplateValue::Text(s) => Value::from(s.as_str()),
        TemplateValue::Json(text) => {
            json(text).map_err(|e| TemplateError::Argument(format!("template argument {name:?} is not JSON: {e}")))?
        }
    })
}

/// JSON text as a template value, object keys in their written order.
fn json(text: &str) -> Result<Value, serde_json::Error> {
    serde_json::from_str(text)
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `{% generation %}…{% endgeneration %}` (`transformers`' marker for the
/// assistant's tokens in training masks) renders its body unchanged; minijinja
/// has no such tag, so it becomes `{% if true %}…{% endif %}`, which keeps
/// the tags' whitespace control.
fn without_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        let Some(end) = tag.find("%}") else {
            out.push_str(tag);
            return out;
        };
        let inner = &tag[2..end];
        let body = inner.trim_start_matches(['-', '+']).trim_end_matches(['-', '+']);
        let (lead, trail) = (
            &inner[..inner.len() - inner.trim_start_matches(['-', '+']).len()],
            &inner[inner.trim_end_matches(['-', '+']).len()..],
        );
        match body.trim() {
            "generation" => out.push_str(&format!("{{%{lead} if true {trail}%}}")),
            "endgeneration" => out.push_str(&format!("{{%{lead} endif {trail}%}}")),
            _ => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

/// An error with minijinja's detail (the line, what was undefined).
fn describe(e: &Error) -> String {
    let mut text = e.to_string();
    if let Some(detail) = e.detail()
        && !text.contains(detail)
    {
        text = format!("{text}: {detail}");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_tags_keep_their_whitespace_control() {
        assert_eq!(
            without_generation_tags("a{%- generation %}b{% endgeneration -%} c{% if x %}"),
            "a{%- if true %}b{% endif -%} c{% if x %}"
        );
    }

    #[test]
    fn raise_exception_is_a_refusal_with_its_message() {
        let t = ChatTemplate::new("{{ raise_exception('no system role') }}", None, None).unwrap();
        let now = chrono::DateTime::from_timestamp(0, 0).unwrap().naive_utc();
        assert_eq!(t.render(&[], &RenderOptions::default(), now), Err(TemplateError::Raised("no system role".into())));
    }

    #[test]
    fn a_template_that_never_ends_runs_out_of_fuel() {
        let t = ChatTemplate::new(
            "{% for i in range(10000) %}{% for j in range(10000) %}x{% endfor %}{% endfor %}",
            None,
            None,
        )
        .unwrap();
        let now = chrono::DateTime::from_timestamp(0, 0).unwrap().naive_utc();
        assert!(matches!(t.render(&[], &RenderOptions::default(), now), Err(TemplateError::Render(_))));
    }
}
