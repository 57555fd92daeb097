//! Expressions over YAML documents: jq syntax, run by jaq.
//!
//! Lima embeds mikefarah's yq for `--set` and `limactl yq`; we use jq's
//! language instead (through the jaq crates), which covers the forms Lima's
//! own edit flags write (`.cpus = 4`, `.mounts += [...]`, `.param.K = "V"`).
//! Where the two languages differ is listed in docs/lima-compat.md
//! ("Expressions").
//!
//! Values cross between the two worlds as JSON: YAML is read into a
//! `serde_json::Value` (serde_yaml_ng), handed to jaq, and the outputs come
//! back the same way.
use jaq_core::load::{Arena, File, Loader};
use jaq_core::{data, unwrap_valr, Compiler, Ctx, Vars};
use jaq_json::Val;
use serde_json::Value;

/// What went wrong with an expression or the document it ran on.
#[derive(Debug, thiserror::Error)]
pub enum YqError {
    /// The expression does not parse or names something undefined.
    #[error("invalid expression `{expr}`: {reason}")]
    Compile { expr: String, reason: String },
    /// The expression parsed but failed on this input (e.g. `.a + 1` on a string).
    #[error("expression `{expr}` failed: {reason}")]
    Run { expr: String, reason: String },
    /// `edit_yaml` needs exactly one document back from each expression.
    #[error(
        "expression `{expr}` gave {count} results; an edit must give exactly one document \
         (use `=`/`|=` to change a field rather than selecting it)"
    )]
    NotOneDocument { expr: String, count: usize },
    /// The input is not YAML we can read, or a result cannot be written as YAML.
    #[error("{0}")]
    Yaml(String),
}

/// Runs `expr` (jq syntax) on `input` and returns every output in order.
pub fn eval(expr: &str, input: &Value) -> Result<Vec<Value>, YqError> {
    let defs = jaq_core::defs()
        .chain(jaq_std::defs())
        .chain(jaq_json::defs());
    let funs = jaq_core::funs()
        .chain(jaq_std::funs())
        .chain(jaq_json::funs());
    let arena = Arena::default();
    let compile_err = |reason: String| YqError::Compile {
        expr: expr.to_string(),
        reason,
    };
    let modules = Loader::new(defs)
        .load(
            &arena,
            File {
                code: expr,
                path: (),
            },
        )
        .map_err(|errs| compile_err(describe_load_errors(errs)))?;
    let filter = Compiler::default()
        .with_funs(funs)
        .compile(modules)
        .map_err(|errs| {
            let reasons: Vec<String> = errs
                .into_iter()
                .flat_map(|(_, es)| es)
                .map(|(name, undef)| format!("undefined {} `{name}`", undef.as_str()))
                .collect();
            compile_err(reasons.join("; "))
        })?;

    let run_err = |reason: String| YqError::Run {
        expr: expr.to_string(),
        reason,
    };
    let text = serde_json::to_string(input).map_err(|e| YqError::Yaml(e.to_string()))?;
    let val = jaq_json::read::parse_single(text.as_bytes())
        .map_err(|e| run_err(format!("cannot read the input: {e}")))?;
    let ctx = Ctx::<data::JustLut<Val>>::new(&filter.lut, Vars::new([]));
    let mut out = Vec::new();
    for result in filter.id.run((ctx, val)).map(unwrap_valr) {
        let v = result.map_err(|e| run_err(e.to_string()))?;
        out.push(to_json(&v).map_err(run_err)?);
    }
    Ok(out)
}

/// Applies each expression in turn to the YAML document `text` and returns
/// the resulting document as YAML. Each expression must give exactly one
/// output (the new document).
///
/// Comments and key order of the input are not kept here (the document goes
/// through a plain value); callers that care about comments use
/// [`edit_yaml_keeping_comments`].
pub fn edit_yaml(text: &str, exprs: &[String]) -> Result<String, YqError> {
    let mut doc = parse_document(text)?;
    for expr in exprs {
        doc = apply(expr, &doc)?;
    }
    to_yaml(&doc)
}

/// Like [`edit_yaml`], but when every change the expressions make is to a
/// top-level scalar that already sits on its own `key: value` line, only those
/// lines are rewritten, so comments and layout survive. Any other change
/// falls back to [`edit_yaml`]'s output.
pub fn edit_yaml_keeping_comments(text: &str, exprs: &[String]) -> Result<String, YqError> {
    let before = parse_document(text)?;
    let mut after = before.clone();
    for expr in exprs {
        after = apply(expr, &after)?;
    }
    if let Some(edited) = line_edit(text, &before, &after) {
        // Trust the line edit only if it reads back as the same document.
        if parse_yaml(&edited).ok().as_ref() == Some(&after) {
            return Ok(edited);
        }
    }
    to_yaml(&after)
}

/// Reads a YAML document into a JSON value (an empty document is `null`).
pub fn parse_yaml(text: &str) -> Result<Value, YqError> {
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_yaml_ng::from_str::<Value>(text)
        .map_err(|e| YqError::Yaml(format!("the document is not valid YAML: {e}")))
}

/// Writes a value as a YAML document.
pub fn to_yaml(value: &Value) -> Result<String, YqError> {
    serde_yaml_ng::to_string(value)
        .map_err(|e| YqError::Yaml(format!("cannot write the result as YAML: {e}")))
}

/// A document to edit: an empty one is an empty mapping (lima.yaml is one).
fn parse_document(text: &str) -> Result<Value, YqError> {
    Ok(match parse_yaml(text)? {
        Value::Null => Value::Object(Default::default()),
        v => v,
    })
}

fn apply(expr: &str, doc: &Value) -> Result<Value, YqError> {
    let mut outs = eval(expr, doc)?;
    if outs.len() != 1 {
        return Err(YqError::NotOneDocument {
            expr: expr.to_string(),
            count: outs.len(),
        });
    }
    Ok(outs.remove(0))
}

fn to_json(v: &Val) -> Result<Value, String> {
    // jaq prints its values as JSON; NaN and infinities have no JSON form.
    let text = v.to_string();
    serde_json::from_str(&text).map_err(|_| format!("result `{text}` has no YAML form"))
}

fn describe_load_errors(errs: jaq_core::load::Errors<&str, ()>) -> String {
    use jaq_core::load::Error;
    let found = |s: &str| {
        if s.is_empty() {
            "the end of the expression".to_string()
        } else {
            let s: String = s.chars().take(20).collect();
            format!("`{s}`")
        }
    };
    let mut reasons = Vec::new();
    for (_, err) in errs {
        match err {
            Error::Io(es) => reasons.extend(es.into_iter().map(|(_, e)| e)),
            Error::Lex(es) => reasons.extend(
                es.into_iter()
                    .map(|(exp, at)| format!("expected {} at {}", exp.as_str(), found(at))),
            ),
            Error::Parse(es) => reasons.extend(
                es.into_iter()
                    .map(|(exp, at)| format!("expected {} at {}", exp.as_str(), found(at))),
            ),
        }
    }
    if reasons.is_empty() {
        "cannot parse it".to_string()
    } else {
        reasons.join("; ")
    }
}

/// Rewrites only the lines of changed top-level scalars, or `None` when the
/// change is anything else (nested, added or removed keys, non-scalars, or a
/// key whose line we cannot find unambiguously).
fn line_edit(text: &str, before: &Value, after: &Value) -> Option<String> {
    let (Value::Object(b), Value::Object(a)) = (before, after) else {
        return None;
    };
    if a.len() != b.len() || a.keys().any(|k| !b.contains_key(k)) {
        return None;
    }
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for (key, new) in a {
        let old = &b[key];
        if old == new {
            continue;
        }
        if !is_scalar(old) || !is_scalar(new) {
            return None;
        }
        let prefix = format!("{key}:");
        let mut found = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.starts_with(&prefix));
        let (idx, line) = found.next()?;
        if found.next().is_some() {
            return None;
        }
        let rest = &line[prefix.len()..];
        // A value on the next lines (block scalar, `key:` alone) is not ours to edit.
        let value_part = rest.trim_start();
        if value_part.is_empty() || value_part.starts_with('|') || value_part.starts_with('>') {
            return None;
        }
        let comment = trailing_comment(rest).unwrap_or("");
        // JSON's form of a scalar is also YAML's (strings double-quoted).
        let value = serde_json::to_string(new).ok()?;
        lines[idx] = if comment.is_empty() {
            format!("{prefix} {value}")
        } else {
            format!("{prefix} {value} {comment}")
        };
    }
    let mut out = lines.join("\n");
    if text.ends_with('\n') {
        out.push('\n');
    }
    Some(out)
}

fn is_scalar(v: &Value) -> bool {
    !matches!(v, Value::Array(_) | Value::Object(_))
}

/// The ` # comment` at the end of a `key: value` line, if any; a `#` inside
/// quotes is part of the value.
fn trailing_comment(rest: &str) -> Option<&str> {
    let (mut single, mut double) = (false, false);
    let bytes = rest.as_bytes();
    for (i, c) in rest.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && (i == 0 || bytes[i - 1].is_ascii_whitespace()) => {
                return Some(&rest[i..]);
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn eval_gives_every_output_in_order() {
        let out = eval(".[] | . * 2", &json!([1, 2, 3])).unwrap();
        assert_eq!(out, vec![json!(2), json!(4), json!(6)]);
    }

    #[test]
    fn eval_uses_the_standard_library() {
        let out = eval("map(select(. > 1)) | length", &json!([1, 2, 3])).unwrap();
        assert_eq!(out, vec![json!(2)]);
        let out = eval(r#".a | test("^x")"#, &json!({"a": "xy"})).unwrap();
        assert_eq!(out, vec![json!(true)]);
    }

    #[test]
    fn a_syntax_error_names_the_expression_and_the_problem() {
        let err = eval(".cpus = ", &json!({})).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, YqError::Compile { .. }), "{msg}");
        assert!(msg.contains("`.cpus = `"), "{msg}");
        assert!(msg.contains("expected term"), "{msg}");

        let msg = eval(".a[", &json!({})).unwrap_err().to_string();
        assert!(msg.contains("`.a[`") && msg.contains("expected"), "{msg}");
    }

    #[test]
    fn an_undefined_filter_is_named() {
        let msg = eval("nosuchfilter(1)", &json!({})).unwrap_err().to_string();
        assert!(msg.contains("undefined filter `nosuchfilter`"), "{msg}");
    }

    #[test]
    fn a_runtime_error_names_the_expression() {
        let err = eval(".a + 1", &json!({"a": "x"})).unwrap_err();
        assert!(matches!(err, YqError::Run { .. }), "{err}");
        assert!(err.to_string().contains("`.a + 1`"), "{err}");
    }

    #[test]
    fn edit_yaml_applies_expressions_in_turn() {
        let text = "cpus: 2\nmemory: 4GiB\nparam: {}\n";
        let exprs = vec![
            ".cpus = 3".to_string(),
            ".mounts += [{\"location\": \"~\", \"writable\": true}]".to_string(),
            ".param.FOO = \"bar\"".to_string(),
            ".cpus = .cpus + 1".to_string(),
        ];
        let out = edit_yaml(text, &exprs).unwrap();
        let v: Value = serde_yaml_ng::from_str(&out).unwrap();
        assert_eq!(
            v,
            json!({
                "cpus": 4, "memory": "4GiB",
                "mounts": [{"location": "~", "writable": true}],
                "param": {"FOO": "bar"}
            })
        );
    }

    #[test]
    fn edit_yaml_on_an_empty_document_starts_from_an_empty_mapping() {
        let out = edit_yaml("", &[".cpus = 1".to_string()]).unwrap();
        assert_eq!(out.trim(), "cpus: 1");
    }

    #[test]
    fn edit_yaml_refuses_a_selection_that_is_not_one_document() {
        let err = edit_yaml("a: [1, 2]\n", &[".a[]".to_string()]).unwrap_err();
        assert!(
            matches!(err, YqError::NotOneDocument { count: 2, .. }),
            "{err}"
        );
        let err = edit_yaml("a: 1\n", &["empty".to_string()]).unwrap_err();
        assert!(
            matches!(err, YqError::NotOneDocument { count: 0, .. }),
            "{err}"
        );
    }

    #[test]
    fn edit_yaml_reports_bad_yaml() {
        let err = edit_yaml("a: [1\n", &[".".to_string()]).unwrap_err();
        assert!(matches!(err, YqError::Yaml(_)), "{err}");
    }

    #[test]
    fn a_top_level_scalar_edit_keeps_comments() {
        let text = "# my VM\ncpus: 2 # two for now\nmemory: \"4GiB\"\n# the end\n";
        let out = edit_yaml_keeping_comments(
            text,
            &[".cpus = 3".to_string(), ".memory = \"8GiB\"".to_string()],
        )
        .unwrap();
        assert_eq!(
            out,
            "# my VM\ncpus: 3 # two for now\nmemory: \"8GiB\"\n# the end\n"
        );
    }

    #[test]
    fn a_structural_edit_falls_back_to_a_plain_rewrite() {
        let text = "# my VM\ncpus: 2\n";
        let out =
            edit_yaml_keeping_comments(text, &[".mounts = [{\"location\": \"~\"}]".to_string()])
                .unwrap();
        let v: Value = serde_yaml_ng::from_str(&out).unwrap();
        assert_eq!(v, json!({"cpus": 2, "mounts": [{"location": "~"}]}));
    }

    #[test]
    fn a_hash_inside_quotes_is_not_a_comment() {
        assert_eq!(trailing_comment(" \"a # b\" # c"), Some("# c"));
        assert_eq!(trailing_comment(" 'x#y'"), None);
    }
}
