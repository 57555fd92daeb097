//! JSON values printed as YAML the way Lima prints them (go-yaml through
//! yamlfmt): two-space indents, sequences not indented under their key,
//! strings plain unless YAML would read them as something else, then
//! double-quoted. Map keys keep their order.
use serde_json::Value;

/// One YAML document (no `---`), ending in a newline.
pub fn to_yaml(v: &Value) -> String {
    let mut out = String::new();
    match v {
        Value::Object(m) if !m.is_empty() => map(&mut out, m, 0),
        Value::Array(a) if !a.is_empty() => seq(&mut out, a, 0),
        _ => {
            out.push_str(&scalar(v));
            out.push('\n');
        }
    }
    out
}

fn is_collection(v: &Value) -> bool {
    match v {
        Value::Object(m) => !m.is_empty(),
        Value::Array(a) => !a.is_empty(),
        _ => false,
    }
}

fn map(out: &mut String, m: &serde_json::Map<String, Value>, indent: usize) {
    for (i, (k, v)) in m.iter().enumerate() {
        // The first key of a sequence item sits on the `- ` line.
        if !(i == 0 && out.ends_with("- ")) {
            out.push_str(&" ".repeat(indent));
        }
        out.push_str(&string(k));
        out.push(':');
        match v {
            Value::Object(o) if !o.is_empty() => {
                out.push('\n');
                map(out, o, indent + 2);
            }
            Value::Array(a) if !a.is_empty() => {
                out.push('\n');
                seq(out, a, indent);
            }
            _ => {
                out.push(' ');
                out.push_str(&scalar(v));
                out.push('\n');
            }
        }
    }
}

fn seq(out: &mut String, a: &[Value], indent: usize) {
    for v in a {
        if !out.ends_with("- ") {
            out.push_str(&" ".repeat(indent));
        }
        out.push_str("- ");
        match v {
            Value::Object(o) if is_collection(v) => map(out, o, indent + 2),
            Value::Array(inner) if is_collection(v) => seq(out, inner, indent + 2),
            _ => {
                out.push_str(&scalar(v));
                out.push('\n');
            }
        }
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => string(s),
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
    }
}

/// A string plain when YAML reads it back as the same string, else quoted.
fn string(s: &str) -> String {
    if plain_ok(s) {
        s.to_string()
    } else {
        serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
    }
}

fn plain_ok(s: &str) -> bool {
    const RESERVED: &[&str] = &[
        "~", "null", "true", "false", "yes", "no", "on", "off", "y", "n", ".inf", "-.inf", "+.inf",
        ".nan",
    ];
    let Some(first) = s.chars().next() else {
        return false;
    };
    if RESERVED.contains(&s.to_ascii_lowercase().as_str()) {
        return false;
    }
    let numeric = s.parse::<f64>().is_ok()
        || s.strip_prefix("0x")
            .or_else(|| s.strip_prefix("0o"))
            .is_some_and(|r| !r.is_empty() && r.chars().all(|c| c.is_ascii_hexdigit()));
    if numeric {
        return false;
    }
    if ",[]{}#&*!|>'\"%@`".contains(first) {
        return false;
    }
    let second = s.chars().nth(1);
    if "-?:".contains(first) && second.is_none_or(|c| c == ' ') {
        return false;
    }
    !(s.contains(": ")
        || s.contains(" #")
        || s.ends_with(':')
        || s.starts_with(char::is_whitespace)
        || s.ends_with(char::is_whitespace)
        || s.chars().any(|c| c.is_control()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_like_lima() {
        let v = serde_json::json!({
            "name": "foo",
            "empty": "",
            "num": 3,
            "list": [{"a": 1, "b": "x"}, "s"],
            "nested": {"k": true, "deep": {"z": null}},
            "none": {},
            "version": "1.0",
            "colon": "a: b",
        });
        assert_eq!(
            to_yaml(&v),
            "name: foo\nempty: \"\"\nnum: 3\nlist:\n- a: 1\n  b: x\n- s\nnested:\n  k: true\n  deep:\n    z: null\nnone: {}\nversion: \"1.0\"\ncolon: \"a: b\"\n"
        );
    }
}
