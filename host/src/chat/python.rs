//! The parts of Python a chat template sees through Jinja2, written out for
//! minijinja: how a value prints (`str()`), `tojson` as `transformers`
//! defines it (`json.dumps`), and `strftime`.
//!
//! Templates are written against Jinja2 on CPython, and a prompt that
//! differs by one byte from what the model was trained on is a different
//! prompt. minijinja's own printing (`none`, `true`) and `tojson` (compact,
//! HTML-safe) are right for HTML and wrong here, so these replace them.
//! Hand-written because no crate writes Python's text: `serde_json` and
//! minijinja print floats and separators their own way.

use std::fmt::Write as _;

use chrono::NaiveDateTime;
use chrono::format::{Item, StrftimeItems};
use minijinja::value::{Kwargs, Rest, ValueKind};
use minijinja::{Error, ErrorKind, Output, State, Value};

/// Jinja2's `{{ value }}`: Python's `str(value)` (undefined prints nothing).
pub fn format_value(out: &mut Output, _state: &mut State, value: &Value) -> Result<(), Error> {
    if value.is_undefined() {
        return Ok(());
    }
    out.write_str(&str_of(value)).map_err(Error::from)
}

/// Jinja2's `string` filter: `str(value)`.
pub fn string(value: &Value) -> String {
    str_of(value)
}

/// Python's `str()`: a string as itself, anything else as its `repr()`.
fn str_of(value: &Value) -> String {
    match value.as_str() {
        Some(s) if value.kind() == ValueKind::String => s.to_owned(),
        _ => {
            let mut out = String::new();
            repr(value, &mut out);
            out
        }
    }
}

/// Python's `repr()` of the values a template holds.
fn repr(value: &Value, out: &mut String) {
    match value.kind() {
        ValueKind::Undefined => {}
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::Number => number(value, out),
        ValueKind::String => string_repr(value.as_str().unwrap_or_default(), out),
        ValueKind::Seq | ValueKind::Iterable => {
            out.push('[');
            for (i, item) in value.try_iter().into_iter().flatten().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                repr(&item, out);
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            for (i, key) in value.try_iter().into_iter().flatten().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                repr(&key, out);
                out.push_str(": ");
                repr(&value.get_item(&key).unwrap_or_default(), out);
            }
            out.push('}');
        }
        _ => out.push_str(&value.to_string()),
    }
}

/// An int as Python prints it, a float as `repr(float)` does.
fn number(value: &Value, out: &mut String) {
    if value.is_integer() {
        let _ = write!(out, "{value}");
    } else {
        out.push_str(&float_repr(f64::try_from(value.clone()).unwrap_or(f64::NAN)));
    }
}

/// `repr(x)` of a Python float: the shortest text that reads back as `x`,
/// in scientific notation below 1e-4 and from 1e16 on (`1e+16`, `1.5e-05`).
fn float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    // Rust's `{:e}` is the same shortest digits, as `1.5e-5`.
    let sci = format!("{x:e}");
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    if (-4..16).contains(&exponent) {
        let plain = format!("{x}");
        if plain.contains('.') { plain } else { plain + ".0" }
    } else {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exponent.abs())
    }
}

/// `repr(str)`: single quotes unless the text has a single quote and no
/// double one; backslash, the quote and unprintable characters escaped.
fn string_repr(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || (0x7f..=0xa0).contains(&(c as u32)) || c == '\u{ad}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// `tojson` as `transformers` defines it for chat templates:
/// `json.dumps(x, ensure_ascii=False, indent=None, separators=None,
/// sort_keys=False)`, each argument by position or by name.
pub fn tojson(value: &Value, args: Rest<Value>, kwargs: Kwargs) -> Result<String, Error> {
    const NAMES: [&str; 4] = ["ensure_ascii", "indent", "separators", "sort_keys"];
    if args.len() > NAMES.len() {
        return Err(Error::new(ErrorKind::TooManyArguments, "tojson takes at most 4 arguments"));
    }
    let arg = |i: usize| -> Result<Option<Value>, Error> {
        let named: Option<Value> = kwargs.get(NAMES[i])?;
        Ok(named.or_else(|| args.get(i).cloned()).filter(|v| !v.is_none() && !v.is_undefined()))
    };
    let ensure_ascii = arg(0)?.is_some_and(|v| v.is_true());
    let indent = match arg(1)? {
        None => None,
        Some(v) if v.kind() == ValueKind::String => Some(v.as_str().unwrap_or_default().to_owned()),
        Some(v) => Some(" ".repeat(v.as_i64().filter(|&n| n > 0).unwrap_or(0) as usize)),
    };
    let (item, key) = match arg(2)? {
        Some(v) => {
            let pair: Vec<Value> = v.try_iter()?.collect();
            match pair.as_slice() {
                [item, key] => (str_of(item), str_of(key)),
                _ => return Err(Error::new(ErrorKind::InvalidOperation, "tojson separators must be a pair")),
            }
        }
        None if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        None => (", ".to_owned(), ": ".to_owned()),
    };
    let sort_keys = arg(3)?.is_some_and(|v| v.is_true());
    kwargs.assert_all_used()?;
    let dumps = Dumps { ensure_ascii, indent, item, key, sort_keys };
    let mut out = String::new();
    dumps.value(value, 0, &mut out)?;
    Ok(out)
}

/// Python's `json.dumps` with its options.
struct Dumps {
    ensure_ascii: bool,
    indent: Option<String>,
    item: String,
    key: String,
    sort_keys: bool,
}

impl Dumps {
    fn value(&self, value: &Value, level: usize, out: &mut String) -> Result<(), Error> {
        match value.kind() {
            ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
            ValueKind::Number if value.is_integer() => {
                let _ = write!(out, "{value}");
            }
            ValueKind::Number => {
                let x = f64::try_from(value.clone())?;
                out.push_str(&match x {
                    x if x.is_nan() => "NaN".into(),
                    x if x.is_infinite() => if x > 0.0 { "Infinity" } else { "-Infinity" }.into(),
                    x => float_repr(x),
                });
            }
            ValueKind::String => self.string(value.as_str().unwrap_or_default(), out),
            ValueKind::Seq => {
                let items: Vec<Value> = value.try_iter()?.collect();
                self.container(('[', ']'), items.len(), level, out, |i, level, out| self.value(&items[i], level, out))?;
            }
            ValueKind::Map => {
                let mut keys: Vec<Value> = value.try_iter()?.collect();
                if self.sort_keys {
                    keys.sort();
                }
                self.container(('{', '}'), keys.len(), level, out, |i, level, out| {
                    let key = &keys[i];
                    match key.kind() {
                        ValueKind::String => self.string(key.as_str().unwrap_or_default(), out),
                        // json.dumps writes other scalar keys as strings.
                        _ => {
                            let mut text = String::new();
                            self.value(key, level, &mut text)?;
                            self.string(&text, out);
                        }
                    }
                    out.push_str(&self.key);
                    self.value(&value.get_item(key)?, level, out)
                })?;
            }
            kind => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("Object of type {kind} is not JSON serializable"),
                ));
            }
        }
        Ok(())
    }

    /// `[...]` or `{...}` of `n` items, on one line or indented.
    fn container(
        &self,
        (open, close): (char, char),
        n: usize,
        level: usize,
        out: &mut String,
        mut item: impl FnMut(usize, usize, &mut String) -> Result<(), Error>,
    ) -> Result<(), Error> {
        out.push(open);
        if n > 0 {
            for i in 0..n {
                if i > 0 {
                    out.push_str(&self.item);
                }
                if let Some(indent) = &self.indent {
                    out.push('\n');
                    out.push_str(&indent.repeat(level + 1));
                }
                item(i, level + 1, out)?;
            }
            if let Some(indent) = &self.indent {
                out.push('\n');
                out.push_str(&indent.repeat(level));
            }
        }
        out.push(close);
        Ok(())
    }

    /// A JSON string as `json.dumps` escapes it.
    fn string(&self, s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 || (self.ensure_ascii && (c as u32) > 0x7e) => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        let _ = write!(out, "\\u{unit:04x}");
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// Jinja2's `indent(width=4, first=False, blank=False)`: unlike
/// minijinja's, it keeps a trailing newline of its input, which
/// Command-R's template relies on.
pub fn indent(value: &str, args: Rest<Value>, kwargs: Kwargs) -> Result<String, Error> {
    const NAMES: [&str; 3] = ["width", "first", "blank"];
    if args.len() > NAMES.len() {
        return Err(Error::new(ErrorKind::TooManyArguments, "indent takes at most 3 arguments"));
    }
    let arg = |i: usize| -> Result<Option<Value>, Error> {
        let named: Option<Value> = kwargs.get(NAMES[i])?;
        Ok(named.or_else(|| args.get(i).cloned()))
    };
    let indention = match arg(0)? {
        None => "    ".to_owned(),
        Some(w) if w.kind() == ValueKind::String => w.as_str().unwrap_or_default().to_owned(),
        Some(w) => " ".repeat(w.as_i64().filter(|&n| n > 0).unwrap_or(0) as usize),
    };
    let first = arg(1)?.is_some_and(|v| v.is_true());
    let blank = arg(2)?.is_some_and(|v| v.is_true());
    kwargs.assert_all_used()?;
    // `s += "\n"` then `splitlines()`, as Jinja2 does.
    let text = format!("{value}\n");
    let lines = splitlines(&text);
    let mut out = if blank {
        lines.join(&format!("\n{indention}"))
    } else {
        let mut out = lines[0].to_owned();
        if lines.len() > 1 {
            out.push('\n');
            let rest: Vec<String> = lines[1..]
                .iter()
                .map(|l| if l.is_empty() { String::new() } else { format!("{indention}{l}") })
                .collect();
            out.push_str(&rest.join("\n"));
        }
        out
    };
    if first {
        out.insert_str(0, &indention);
    }
    Ok(out)
}

/// Python's `str.splitlines()`: lines without their ends, at every line
/// boundary Python knows.
fn splitlines(s: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let end = match c {
            '\r' if chars.peek().is_some_and(|&(_, n)| n == '\n') => {
                chars.next();
                i + 2
            }
            '\n' | '\r' | '\u{b}' | '\u{c}' | '\u{1c}' | '\u{1d}' | '\u{1e}' | '\u{85}' | '\u{2028}' | '\u{2029}' => {
                i + c.len_utf8()
            }
            _ => continue,
        };
        lines.push(&s[start..i]);
        start = end;
    }
    if start < s.len() {
        lines.push(&s[start..]);
    }
    lines
}

/// Jinja2's `iterable` test: Python's `iter()` takes strings, lists,
/// dicts and undefined, and refuses None (minijinja would take it).
pub fn is_iterable(value: &Value) -> bool {
    match value.kind() {
        ValueKind::None => false,
        ValueKind::Undefined => true,
        _ => value.try_iter().is_ok(),
    }
}

/// Jinja2's `escape` (`e`): MarkupSafe's HTML escaping, which it applies
/// even where autoescaping is off, as in chat templates.
pub fn escape(value: &Value) -> Value {
    if value.is_safe() {
        return value.clone();
    }
    let text = str_of(value);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&#34;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    Value::from_safe_string(out)
}

/// `strftime_now(format)`: `now` formatted as Python's `strftime` does.
pub fn strftime(now: NaiveDateTime, format: &str) -> Result<String, Error> {
    let items: Vec<Item> = StrftimeItems::new(format).collect();
    if items.iter().any(|i| matches!(i, Item::Error)) {
        return Err(Error::new(ErrorKind::InvalidOperation, format!("strftime_now: unsupported format {format:?}")));
    }
    let mut text = String::new();
    write!(text, "{}", now.format_with_items(items.into_iter()))
        .map_err(|_| Error::new(ErrorKind::InvalidOperation, format!("strftime_now: cannot format {format:?}")))?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_as_python_prints_them() {
        for (x, text) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1.5e-5, "1.5e-05"),
            (1e16, "1e+16"),
            (123456789012345.6, "123456789012345.6"),
            (-0.0001, "-0.0001"),
            (2.5e-300, "2.5e-300"),
        ] {
            assert_eq!(float_repr(x), text, "{x}");
        }
    }

    #[test]
    fn indent_keeps_a_trailing_newline_as_jinja2_does() {
        let indent =
            |s: &str, args: Vec<Value>| indent(s, Rest(args), Kwargs::from_iter(Vec::<(&str, Value)>::new())).unwrap();
        assert_eq!(indent("{\n", vec![Value::from(4), Value::from(true)]), "    {\n");
        assert_eq!(indent("a\nb\n", vec![Value::from(2)]), "a\n  b\n");
        assert_eq!(indent("a\n\nb", vec![Value::from(2)]), "a\n\n  b");
        assert_eq!(indent("a\n\nb", vec![Value::from(2), Value::from(false), Value::from(true)]), "a\n  \n  b");
    }

    #[test]
    fn values_print_as_python_str_does() {
        let v = Value::from_pairs([
            ("a", Value::from(vec![Value::from(1), Value::from(true), Value::from(())])),
            ("b", Value::from("it's")),
        ]);
        assert_eq!(str_of(&v), r#"{'a': [1, True, None], 'b': "it's"}"#);
    }
}
