//! Expressions over YAML documents: jq syntax, run by jaq.
//!
//! Lima embeds mikefarah's yq for `--set` and `limactl yq`; we use jq's
//! language instead (through the jaq crates), which covers the forms Lima's
//! own edit flags write (`.cpus = 4`, `.mounts += [...]`, `.param.K = "V"`).
//! Where the two languages differ is listed in docs/lima-compat.md
//! ("Expressions").
//!
//! Values cross between the worlds as JSON text: a YAML document is read
//! into a `serde_yaml_ng::Value` (which keeps key order), written as JSON for
//! jaq (whose objects keep order too), and each output read back.
//!
//! jaq, unlike jq, refuses to assign below a missing key (`{} | .a.b = 1`
//! fails: "cannot use null as iterable"). When an expression fails that
//! way, its top-level assignments are run again through jq's own
//! definition of assignment (`reduce path(LHS) as $p (.; setpath($p; V))`)
//! with a `setpath` that creates the missing parents, as jq does.
use jaq_core::load::{Arena, File, Loader};
use jaq_core::{data, unwrap_valr, Compiler, Ctx, Vars};
use jaq_json::Val;
use serde_json::Value;
use serde_yaml_ng::Value as Yaml;

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
    let text = serde_json::to_string(input).map_err(|e| YqError::Yaml(e.to_string()))?;
    run_json(expr, &text)?
        .iter()
        .map(|o| serde_json::from_str(o).map_err(|e| YqError::Yaml(e.to_string())))
        .collect()
}

/// Runs `expr` on a YAML document and returns each output as a YAML value
/// (key order kept).
pub fn eval_yaml(expr: &str, doc: &Yaml) -> Result<Vec<Yaml>, YqError> {
    let text = serde_json::to_string(doc).map_err(|e| {
        YqError::Yaml(format!(
            "the document cannot be handed to an expression (keys must be strings): {e}"
        ))
    })?;
    run_json(expr, &text)?
        .iter()
        // JSON is YAML: reading it as YAML keeps the key order.
        .map(|o| serde_yaml_ng::from_str(o).map_err(|e| YqError::Yaml(e.to_string())))
        .collect()
}

const NULL_UPDATE: &str = "cannot use null as iterable";

/// `expr` on the JSON `input`, each output as JSON text; a failed
/// assignment below a missing key is retried as jq would run it.
fn run_json(expr: &str, input: &str) -> Result<Vec<String>, YqError> {
    match run_once(expr, expr, input) {
        Err(YqError::Run { reason, .. }) if reason.contains(NULL_UPDATE) => {
            if let Some(rw) = rewrite_assignments(expr) {
                if let Ok(out) = run_once(expr, &rw, input) {
                    return Ok(out);
                }
            }
            Err(YqError::Run {
                expr: expr.to_string(),
                reason: format!(
                    "{reason} (a key on the way is missing or null; set it first, \
                     e.g. `.a = (.a // {{}}) | .a.b = 1`)"
                ),
            })
        }
        other => other,
    }
}

/// Compiles and runs `code` (errors name `expr`, what the user wrote).
fn run_once(expr: &str, code: &str, input: &str) -> Result<Vec<String>, YqError> {
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
        .load(&arena, File { code, path: () })
        .map_err(|errs| compile_err(describe_load_errors(errs)))?;
    let filter = Compiler::default()
        .with_funs(funs)
        .with_global_vars(["$ENV"])
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
    let val = jaq_json::read::parse_single(input.as_bytes())
        .map_err(|e| run_err(format!("cannot read the input: {e}")))?;
    let env: serde_json::Map<String, Value> = std::env::vars()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    let env = jaq_json::read::parse_single(Value::Object(env).to_string().as_bytes())
        .map_err(|e| run_err(format!("cannot read the environment: {e}")))?;
    let ctx = Ctx::<data::JustLut<Val>>::new(&filter.lut, Vars::new([env]));
    let mut out = Vec::new();
    for result in filter.id.run((ctx, val)).map(unwrap_valr) {
        let v = result.map_err(|e| run_err(e.to_string()))?;
        out.push(to_json(&v).map_err(run_err)?);
    }
    Ok(out)
}

/// jq's assignment, with a `setpath` that makes missing parents (an object
/// for a string key, an array, padded with nulls, for a number).
const SETPATH_DEFS: &str = "def __limamk($k): if ($k|type) == \"number\" then [] else {} end; \
def __limaset($p; $v): if $p == [] then $v else \
(if . == null then __limamk($p[0]) else . end) \
| (if type == \"array\" and ($p[0]|type) == \"number\" and $p[0] >= length \
then . + [range(length; $p[0] + 1) | null] else . end) \
| .[$p[0]] |= __limaset($p[1:]; $v) end; ";

/// `expr` with each top-level `LHS op RHS` (between top-level `|`) written
/// with [`SETPATH_DEFS`]; `None` when there is none, or the expression is
/// not a plain pipeline of such steps.
fn rewrite_assignments(expr: &str) -> Option<String> {
    let segments = split_top(expr)?;
    let mut changed = false;
    let mut out = Vec::new();
    for seg in segments {
        match rewrite_segment(seg) {
            Some(r) => {
                changed = true;
                out.push(r);
            }
            None => out.push(seg.to_string()),
        }
    }
    changed.then(|| format!("{SETPATH_DEFS}{}", out.join("|")))
}

/// Splits at top-level `|` (not `|=`); `None` on unbalanced brackets.
fn split_top(expr: &str) -> Option<Vec<&str>> {
    let b = expr.as_bytes();
    let (mut depth, mut i, mut start) = (0i32, 0usize, 0usize);
    let mut parts = Vec::new();
    while i < b.len() {
        match b[i] {
            b'"' => i = skip_string(b, i)?,
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth -= 1,
            b'|' if depth == 0 && b.get(i + 1) != Some(&b'=') => {
                parts.push(&expr[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if depth < 0 {
            return None;
        }
        i += 1;
    }
    (depth == 0).then(|| {
        parts.push(&expr[start..]);
        parts
    })
}

/// Index of the closing quote of the string starting at `i`.
fn skip_string(b: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'"' => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

/// One pipeline step `LHS op RHS` rewritten, or `None` if it is not one.
fn rewrite_segment(seg: &str) -> Option<String> {
    let b = seg.as_bytes();
    let trimmed = seg.trim_start();
    if !trimmed.starts_with('.') {
        return None;
    }
    let (mut depth, mut i) = (0i32, 0usize);
    let mut found: Option<(usize, usize, &str)> = None;
    while i < b.len() {
        match b[i] {
            b'"' => i = skip_string(b, i)?,
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth -= 1,
            // `,` and `//` bind more loosely than assignment; `as` binds
            // over the rest: not a plain step.
            b',' if depth == 0 => return None,
            b'/' if depth == 0 && b.get(i + 1) == Some(&b'/') && b.get(i + 2) != Some(&b'=') => {
                return None
            }
            b'=' if depth == 0 && found.is_none() => {
                if b.get(i + 1) == Some(&b'=') {
                    i += 2;
                    continue;
                }
                let prev = if i > 0 { b[i - 1] } else { 0 };
                let (start, op) = match prev {
                    b'!' | b'<' | b'>' => {
                        i += 1;
                        continue;
                    }
                    b'|' => (i - 1, "|="),
                    b'+' => (i - 1, "+="),
                    b'-' => (i - 1, "-="),
                    b'*' => (i - 1, "*="),
                    b'%' => (i - 1, "%="),
                    b'/' if i >= 2 && b[i - 2] == b'/' => (i - 2, "//="),
                    b'/' => (i - 1, "/="),
                    _ => (i, "="),
                };
                found = Some((start, i + 1, op));
            }
            _ => {}
        }
        i += 1;
    }
    let (start, end, op) = found?;
    let lhs = seg[..start].trim();
    let rhs = seg[end..].trim();
    if lhs.is_empty() || rhs.is_empty() || lhs.contains(" as ") || rhs.contains(" as ") {
        return None;
    }
    let set =
        |value: &str| format!("reduce path({lhs}) as $__limap (.; __limaset($__limap; {value}))");
    Some(match op {
        "=" => format!(" (({rhs}) as $__limav | {}) ", set("$__limav")),
        "|=" => format!(" ({}) ", set(&format!("getpath($__limap) | ({rhs})"))),
        _ => {
            let arith = &op[..op.len() - 1];
            format!(
                " (({rhs}) as $__limav | {}) ",
                set(&format!("getpath($__limap) {arith} $__limav"))
            )
        }
    })
}

/// Applies each expression in turn to the YAML document `text` and returns
/// the resulting document as YAML. Each expression must give exactly one
/// output (the new document). Comments are not kept (see
/// [`edit_yaml_keeping_comments`]); key order is.
pub fn edit_yaml(text: &str, exprs: &[String]) -> Result<String, YqError> {
    let mut doc = parse_document(text)?;
    for expr in exprs {
        doc = apply(expr, &doc)?;
    }
    yaml_text(&doc)
}

/// Like [`edit_yaml`], but the text is changed only where the document
/// changed, one top-level key at a time: a changed scalar on its own
/// `key: value` line is rewritten in place (its trailing comment kept), and
/// any other changed key's block is replaced, so comments elsewhere survive.
/// When the layout is beyond that (flow style at the top, several
/// documents, anchors), the whole document is written anew.
pub fn edit_yaml_keeping_comments(text: &str, exprs: &[String]) -> Result<String, YqError> {
    let before = parse_document(text)?;
    let mut after = before.clone();
    for expr in exprs {
        after = apply(expr, &after)?;
    }
    if let Some(edited) = line_edit(text, &before, &after) {
        // Trust the line edit only if it reads back as the same document.
        if parse_document(&edited).ok().as_ref() == Some(&after) {
            return Ok(edited);
        }
    }
    yaml_text(&after)
}

/// Reads a YAML document into a JSON value (an empty document is `null`).
pub fn parse_yaml(text: &str) -> Result<Value, YqError> {
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_yaml_ng::from_str::<Value>(text)
        .map_err(|e| YqError::Yaml(format!("the document is not valid YAML: {e}")))
}

/// Reads a YAML document, keeping key order (an empty document is `null`).
pub fn parse_yaml_doc(text: &str) -> Result<Yaml, YqError> {
    if text.trim().is_empty() {
        return Ok(Yaml::Null);
    }
    serde_yaml_ng::from_str::<Yaml>(text)
        .map_err(|e| YqError::Yaml(format!("the document is not valid YAML: {e}")))
}

/// Writes a value as a YAML document.
pub fn to_yaml(value: &Value) -> Result<String, YqError> {
    serde_yaml_ng::to_string(value)
        .map_err(|e| YqError::Yaml(format!("cannot write the result as YAML: {e}")))
}

/// Writes a YAML value as a document.
pub fn yaml_text(value: &Yaml) -> Result<String, YqError> {
    serde_yaml_ng::to_string(value)
        .map_err(|e| YqError::Yaml(format!("cannot write the result as YAML: {e}")))
}

/// A document to edit: an empty one is an empty mapping (lima.yaml is one).
fn parse_document(text: &str) -> Result<Yaml, YqError> {
    Ok(match parse_yaml_doc(text)? {
        Yaml::Null => Yaml::Mapping(Default::default()),
        v => v,
    })
}

fn apply(expr: &str, doc: &Yaml) -> Result<Yaml, YqError> {
    let mut outs = eval_yaml(expr, doc)?;
    if outs.len() != 1 {
        return Err(YqError::NotOneDocument {
            expr: expr.to_string(),
            count: outs.len(),
        });
    }
    Ok(outs.remove(0))
}

fn to_json(v: &Val) -> Result<String, String> {
    // jaq prints its values as JSON; NaN and infinities have no JSON form.
    let text = v.to_string();
    serde_json::from_str::<serde::de::IgnoredAny>(&text)
        .map(|_| text.clone())
        .map_err(|_| format!("result `{text}` has no YAML form"))
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

/// The top-level keys of a block mapping: for each, the line it starts on
/// and the line after its block (trailing blank and comment lines belong
/// to what follows). `None` for layouts we do not edit line by line.
fn top_level_blocks(lines: &[&str]) -> Option<Vec<(String, usize, usize)>> {
    let mut starts = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if l.starts_with("---") || l.starts_with("...") || l.starts_with('{') || l.starts_with('%')
        {
            return None;
        }
        if l.is_empty() || l.starts_with([' ', '\t', '#', '-']) {
            continue;
        }
        // `key:` at column 0: plain keys only.
        let (k, rest) = l.split_once(':')?;
        if k.is_empty() || k.contains(['"', '\'', '&', '*', '?', '[', '{', '!']) {
            return None;
        }
        if !(rest.is_empty() || rest.starts_with([' ', '\t'])) {
            return None;
        }
        if rest.trim_start().starts_with(['&', '*']) {
            // Anchors or aliases: leave the layout to the writer.
            return None;
        }
        starts.push((k.trim_end().to_string(), i));
    }
    let mut blocks = Vec::new();
    for (n, (k, s)) in starts.iter().enumerate() {
        let mut end = starts.get(n + 1).map_or(lines.len(), |(_, e)| *e);
        while end > s + 1 && {
            let l = lines[end - 1].trim_start();
            l.is_empty() || l.starts_with('#')
        } {
            end -= 1;
        }
        blocks.push((k.clone(), *s, end));
    }
    Some(blocks)
}

/// See [`edit_yaml_keeping_comments`]; `None` when the text cannot be edited
/// line by line.
fn line_edit(text: &str, before: &Yaml, after: &Yaml) -> Option<String> {
    let (Yaml::Mapping(b), Yaml::Mapping(a)) = (before, after) else {
        return None;
    };
    let key_str = |k: &Yaml| k.as_str().map(str::to_string);
    let lines: Vec<&str> = text.lines().collect();
    let blocks = top_level_blocks(&lines)?;
    if blocks.len() != b.len() {
        return None;
    }
    let mut replace: Vec<(usize, usize, String)> = Vec::new();
    for (k, old) in b {
        let k = key_str(k)?;
        let (_, start, end) = blocks.iter().find(|(bk, _, _)| *bk == k)?;
        match a.get(k.as_str()) {
            Some(new) if new == old => {}
            Some(new) => replace.push((*start, *end, render_entry(&k, new, lines[*start])?)),
            None => replace.push((*start, *end, String::new())),
        }
    }
    let mut added = String::new();
    for (k, v) in a {
        let k = key_str(k)?;
        if !b.contains_key(k.as_str()) {
            added.push_str(&render_entry(&k, v, "")?);
        }
    }
    let mut out = String::new();
    let mut i = 0;
    replace.sort();
    for (start, end, new) in replace {
        for l in &lines[i..start] {
            out.push_str(l);
            out.push('\n');
        }
        out.push_str(&new);
        i = end;
    }
    for l in &lines[i..] {
        out.push_str(l);
        out.push('\n');
    }
    if !added.is_empty() {
        out.push_str(&added);
    }
    if !text.ends_with('\n') && added.is_empty() && out.ends_with('\n') {
        out.pop();
    }
    Some(out)
}

/// `key: value` as YAML lines (ending in a newline). A scalar replacing a
/// scalar on the same line keeps that line's trailing comment.
fn render_entry(key: &str, value: &Yaml, old_line: &str) -> Option<String> {
    let mut m = serde_yaml_ng::Mapping::new();
    m.insert(Yaml::from(key), value.clone());
    let text = serde_yaml_ng::to_string(&Yaml::Mapping(m)).ok()?;
    let scalar = !matches!(
        value,
        Yaml::Sequence(_) | Yaml::Mapping(_) | Yaml::Tagged(_)
    );
    let old_rest = old_line.split_once(':').map_or("", |(_, r)| r);
    let old_value = old_rest.trim_start();
    let old_scalar_line =
        !old_value.is_empty() && !old_value.starts_with(['|', '>', '[', '{', '&', '!']);
    if scalar && old_scalar_line && text.lines().count() == 1 {
        if let Some(c) = trailing_comment(old_rest) {
            return Some(format!("{} {c}\n", text.trim_end()));
        }
    }
    Some(text)
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
    fn env_is_there_as_in_jq() {
        let path = std::env::var("PATH").unwrap();
        assert_eq!(eval("$ENV.PATH", &json!(null)).unwrap(), vec![json!(path)]);
        assert_eq!(eval("env.PATH", &json!(null)).unwrap(), vec![json!(path)]);
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
            "# my VM\ncpus: 3 # two for now\nmemory: 8GiB\n# the end\n"
        );
    }

    #[test]
    fn a_structural_edit_replaces_only_that_key() {
        let text = "# my VM\ncpus: 2\n# shares\nmounts:\n- location: /a # first\n\n# the end\nmemory: 1GiB\n";
        let out = edit_yaml_keeping_comments(
            text,
            &[
                ".mounts += [{\"location\": \"~\"}]".to_string(),
                ".param = {\"X\": \"1\"}".to_string(),
                "del(.cpus)".to_string(),
            ],
        )
        .unwrap();
        assert_eq!(
            out,
            "# my VM\n# shares\nmounts:\n- location: /a\n- location: '~'\n\n# the end\nmemory: 1GiB\nparam:\n  X: '1'\n"
        );
    }

    #[test]
    fn anchors_fall_back_to_a_plain_rewrite_in_order() {
        let text = "# c\nb: &x {k: 1}\na: *x\n";
        let out = edit_yaml_keeping_comments(text, &[".c = 1".to_string()]).unwrap();
        assert_eq!(out, "b:\n  k: 1\na:\n  k: 1\nc: 1\n");
    }

    #[test]
    fn assignments_below_missing_keys_create_them_as_jq_does() {
        for (expr, want) in [
            (
                ".param.FOO = \"bar\"",
                json!({"n": 1, "param": {"FOO": "bar"}}),
            ),
            (".a.b |= 5", json!({"n": 1, "a": {"b": 5}})),
            (".a.b += 2", json!({"n": 1, "a": {"b": 2}})),
            (".x[1].y = .n", json!({"n": 1, "x": [null, {"y": 1}]})),
            (
                ".cpus = 2 | .vmOpts.qemu.minimumVersion = \"8.0\"",
                json!({"n": 1, "cpus": 2, "vmOpts": {"qemu": {"minimumVersion": "8.0"}}}),
            ),
        ] {
            assert_eq!(eval(expr, &json!({"n": 1})).unwrap(), vec![want], "{expr}");
        }
        // A `|` inside a string is not a pipe.
        assert_eq!(
            eval(".a.b = \"x|y\" | .c = 1", &json!({})).unwrap(),
            vec![json!({"a": {"b": "x|y"}, "c": 1})]
        );
        // What cannot be rewritten fails with a hint.
        let err = eval("if true then .a.b = 1 else . end", &json!({})).unwrap_err();
        assert!(err.to_string().contains("set it first"), "{err}");
    }

    #[test]
    fn a_hash_inside_quotes_is_not_a_comment() {
        assert_eq!(trailing_comment(" \"a # b\" # c"), Some("# c"));
        assert_eq!(trailing_comment(" 'x#y'"), None);
    }
}
