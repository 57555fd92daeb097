//! How `list` and `info` print JSON and YAML, with or without `--yq`, as
//! Lima does: JSON one compact value per line (indented by 4 on a
//! terminal), YAML one document per value separated by `---`, and a string
//! result of an expression printed bare (as `yq` and `jq -r` do).
use std::io::IsTerminal;

use serde_json::Value;

/// Whether stdout is a terminal (`_LIMA_OUTPUT_IS_TTY` overrides, as in Lima).
pub fn output_is_tty() -> bool {
    match std::env::var("_LIMA_OUTPUT_IS_TTY") {
        Ok(v) if !v.is_empty() => matches!(v.as_str(), "1" | "true" | "TRUE" | "True" | "t"),
        _ => std::io::stdout().is_terminal(),
    }
}

/// Prints `text` on stdout; a closed pipe (`| head`) ends the output
/// quietly, as it does for Lima.
pub fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

/// Lima runs `--yq`/`--filter` without access to the environment, so an
/// expression cannot copy a secret into the output; so do we.
pub fn check_no_env(expr: &str) -> anyhow::Result<()> {
    let mut in_str = false;
    let mut prev = ' ';
    let mut word = String::new();
    for c in expr.chars().chain([' ']) {
        if c == '"' && prev != '\\' {
            in_str = !in_str;
        }
        if !in_str && (c.is_ascii_alphanumeric() || c == '_' || c == '$') {
            word.push(c);
        } else {
            if word == "env" || word == "$ENV" {
                anyhow::bail!("env operations have been disabled (in `{expr}`)");
            }
            word.clear();
        }
        prev = c;
    }
    Ok(())
}

/// Runs the expression on each value, in order (no expression: the values).
pub fn apply(expr: Option<&str>, values: Vec<Value>) -> anyhow::Result<Vec<Value>> {
    let Some(expr) = expr else {
        return Ok(values);
    };
    check_no_env(expr)?;
    let mut out = Vec::new();
    for v in &values {
        out.extend(crate::yq::eval(expr, v)?);
    }
    Ok(out)
}

/// JSON, one value a line; `indent` pretty-prints with that many spaces.
pub fn json_lines(values: &[Value], indent: usize) -> String {
    let mut out = String::new();
    for v in values {
        match v {
            Value::String(s) => out.push_str(s),
            v if indent == 0 => out.push_str(&v.to_string()),
            v => out.push_str(&pretty(v, indent)),
        }
        out.push('\n');
    }
    out
}

/// `v` as JSON indented by `indent` spaces.
pub fn pretty(v: &Value, indent: usize) -> String {
    let pad = " ".repeat(indent);
    let fmt = serde_json::ser::PrettyFormatter::with_indent(pad.as_bytes());
    let mut buf = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    if serde::Serialize::serialize(v, &mut ser).is_err() {
        return v.to_string();
    }
    String::from_utf8(buf).unwrap_or_default()
}

/// YAML documents separated by `---` (none before the first).
pub fn yaml_docs(values: &[Value]) -> String {
    values
        .iter()
        .map(|v| match v {
            Value::String(s) => format!("{s}\n"),
            v => crate::yamlout::to_yaml(v),
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Lima deletes empty maps from what an expression gives (`del(.. |
/// select(tag == "!!map" and length == 0))`); so do we, inside each value.
pub fn drop_empty_maps(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.values_mut().for_each(drop_empty_maps);
            m.retain(|_, v| !matches!(v, Value::Object(o) if o.is_empty()));
        }
        Value::Array(a) => {
            a.iter_mut().for_each(drop_empty_maps);
            a.retain(|v| !matches!(v, Value::Object(o) if o.is_empty()));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_values_as_lima() {
        let vals = vec![serde_json::json!({"a": 1}), Value::String("x".into())];
        assert_eq!(json_lines(&vals, 0), "{\"a\":1}\nx\n");
        assert_eq!(json_lines(&vals[..1], 4), "{\n    \"a\": 1\n}\n");
        assert_eq!(yaml_docs(&vals), "a: 1\n---\nx\n");
        let mut v = serde_json::json!({"a": {}, "b": [{}, 1], "c": {"d": {}}});
        drop_empty_maps(&mut v);
        assert_eq!(v, serde_json::json!({"b": [1]}));
        assert!(check_no_env("env.HOME").is_err());
        assert!(check_no_env(".a | $ENV").is_err());
        assert!(check_no_env(r#"select(.name == "env")"#).is_ok());
        assert!(check_no_env(".environment").is_ok());
    }
}
