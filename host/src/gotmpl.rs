//! Go templates for `limactl list --format '{{…}}'`, through the `gtmpl`
//! crate, with the functions Lima adds (`json`, `yaml`, `indent`,
//! `missing`). Each item is a map of Go field names (`Name`, `CPUs`, …);
//! a field it lacks is an error naming the field, and a construct of Go's
//! templates that `gtmpl` lacks is an error naming the construct (never a
//! silent wrong output).
use std::cell::RefCell;
use std::collections::HashMap;

use gtmpl::{Context, FuncError, Template, Value as G};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("invalid go template: `{0}` is not supported in --format templates (supported: fields, if/else/range/with, variables, and, or, not, eq, ne, lt, le, gt, ge, len, index, print, printf, println, urlquery, json, yaml, indent, missing)")]
    Unsupported(String),
    #[error("invalid go template: {0}")]
    Parse(String),
    #[error("template: can't evaluate field {0} (`limactl list --list-fields` lists the fields)")]
    NoField(String),
    #[error("template: {0}")]
    Exec(String),
}

/// Go template words (keywords and functions) that `gtmpl` does not have.
const UNSUPPORTED: &[&str] = &["break", "continue", "slice", "html", "js"];

/// The key under which each item carries its own JSON (in Lima's key order),
/// so `{{json .}}` and `{{yaml .}}` print what `--format json|yaml` would.
const SELF_KEY: &str = "\u{0}self";

thread_local! {
    static CURRENT: RefCell<Value> = const { RefCell::new(Value::Null) };
}

/// Renders `text` once per item, each followed by a newline (as Lima's
/// `list` does). `items` pairs each item's Go fields with its JSON form.
pub fn render(text: &str, items: &[(Vec<(&str, Value)>, Value)]) -> Result<String, TemplateError> {
    check_supported(text)?;
    let mut tmpl = Template::default();
    tmpl.add_funcs(&[
        ("json", json as gtmpl::Func),
        ("yaml", yaml as gtmpl::Func),
        ("indent", indent as gtmpl::Func),
        ("missing", missing as gtmpl::Func),
    ]);
    tmpl.parse(text)
        .map_err(|e| TemplateError::Parse(e.to_string()))?;
    let mut out = String::new();
    for (fields, own) in items {
        let mut m: HashMap<String, G> = fields
            .iter()
            .map(|(k, v)| (k.to_string(), to_gtmpl(v)))
            .collect();
        m.insert(SELF_KEY.into(), G::Bool(true));
        CURRENT.with(|c| *c.borrow_mut() = own.clone());
        let s = tmpl
            .render(&Context::from(G::Object(m)))
            .map_err(|e| match e {
                gtmpl::error::ExecError::NoFiledFor(f, _) => TemplateError::NoField(f),
                e => TemplateError::Exec(e.to_string()),
            })?;
        out.push_str(&s);
        out.push('\n');
    }
    Ok(out)
}

/// Refuses Go template words `gtmpl` would misread or reject obscurely.
fn check_supported(text: &str) -> Result<(), TemplateError> {
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let end = after.find("}}").unwrap_or(after.len());
        let action = after[..end].trim_matches(|c: char| c == '-' || c.is_whitespace());
        let mut in_str = false;
        let mut word = String::new();
        let mut prev = ' ';
        for c in action.chars().chain([' ']) {
            if c == '"' && prev != '\\' {
                in_str = !in_str;
            }
            if !in_str && (c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '$') {
                word.push(c);
            } else {
                if !word.starts_with(['.', '$']) && UNSUPPORTED.contains(&word.as_str()) {
                    return Err(TemplateError::Unsupported(word));
                }
                word.clear();
            }
            prev = c;
        }
        rest = &after[end.min(after.len())..];
    }
    Ok(())
}

fn to_gtmpl(v: &Value) -> G {
    match v {
        Value::Null => G::Nil,
        Value::Bool(b) => G::Bool(*b),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                G::from(u)
            } else if let Some(i) = n.as_i64() {
                G::from(i)
            } else {
                G::from(n.as_f64().unwrap_or(0.0))
            }
        }
        Value::String(s) => G::String(s.clone()),
        Value::Array(a) => G::Array(a.iter().map(to_gtmpl).collect()),
        Value::Object(o) => {
            let mut m: HashMap<String, G> = HashMap::new();
            for (k, v) in o {
                let g = to_gtmpl(v);
                m.entry(go_name(k)).or_insert_with(|| g.clone());
                m.insert(k.clone(), g);
            }
            G::Map(m)
        }
    }
}

/// The Go field name Lima's structs give a JSON key (`cpus` → `CPUs`,
/// `localPort` → `LocalPort`), so `{{.Config.CPUs}}` works as in Lima; the
/// JSON key works too.
fn go_name(key: &str) -> String {
    const SPECIAL: &[(&str, &str)] = &[
        ("vmType", "VMType"),
        ("vmOpts", "VMOpts"),
        ("cpus", "CPUs"),
        ("cpuType", "CPUType"),
        ("os", "OS"),
        ("ssh", "SSH"),
        ("uid", "UID"),
        ("dns", "DNS"),
        ("caCerts", "CACertificates"),
        ("legacyBIOS", "LegacyBIOS"),
    ];
    if let Some((_, g)) = SPECIAL.iter().find(|(k, _)| *k == key) {
        return g.to_string();
    }
    let mut c = key.chars();
    match c.next() {
        Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
        None => String::new(),
    }
}

fn from_gtmpl(v: &G) -> Value {
    match v {
        G::Object(o) if o.contains_key(SELF_KEY) => CURRENT.with(|c| c.borrow().clone()),
        G::NoValue | G::Nil | G::Function(_) => Value::Null,
        G::Bool(b) => Value::Bool(*b),
        G::String(s) => Value::String(s.clone()),
        G::Number(n) => serde_json::from_str(&n.to_string()).unwrap_or(Value::Null),
        G::Array(a) => Value::Array(a.iter().map(from_gtmpl).collect()),
        G::Object(o) | G::Map(o) => {
            let mut keys: Vec<_> = o.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), from_gtmpl(&o[k])))
                    .collect(),
            )
        }
    }
}

fn one_arg<'a>(name: &str, args: &'a [G]) -> Result<&'a G, FuncError> {
    match args {
        [a] => Ok(a),
        _ => Err(FuncError::ExactlyXArgs(name.into(), 1)),
    }
}

fn json(args: &[G]) -> Result<G, FuncError> {
    let v = from_gtmpl(one_arg("json", args)?);
    serde_json::to_string(&v)
        .map(G::String)
        .map_err(|e| FuncError::Generic(e.to_string()))
}

fn yaml(args: &[G]) -> Result<G, FuncError> {
    let v = from_gtmpl(one_arg("yaml", args)?);
    let text = crate::yamlout::to_yaml(&v);
    Ok(G::String(format!("---\n{}", text.trim_end_matches('\n'))))
}

fn text_arg(args: &[G]) -> Result<(Option<&G>, String), FuncError> {
    match args {
        [t] => Ok((None, t.to_string())),
        [a, t] => Ok((Some(a), t.to_string())),
        [] => Err(FuncError::Generic(
            "function takes at least one string argument".into(),
        )),
        _ => Err(FuncError::Generic(
            "function takes at most 2 arguments".into(),
        )),
    }
}

/// `indent [N] TEXT`: N spaces (default 2) before each non-empty line.
fn indent(args: &[G]) -> Result<G, FuncError> {
    let (n, text) = text_arg(args)?;
    let n = match n {
        None => 2,
        Some(G::Number(n)) => n
            .to_string()
            .parse::<usize>()
            .map_err(|_| FuncError::Generic("optional first argument must be an integer".into()))?,
        Some(_) => {
            return Err(FuncError::Generic(
                "optional first argument must be an integer".into(),
            ))
        }
    };
    let pad = " ".repeat(n);
    Ok(G::String(
        text.split('\n')
            .map(|l| {
                if l.is_empty() {
                    String::new()
                } else {
                    format!("{pad}{l}")
                }
            })
            .collect::<Vec<_>>()
            .join("\n"),
    ))
}

/// `missing [MESSAGE] TEXT`: MESSAGE (default `<missing>`) when TEXT is empty.
fn missing(args: &[G]) -> Result<G, FuncError> {
    let (msg, text) = text_arg(args)?;
    let msg = match msg {
        None => "<missing>".to_string(),
        Some(G::String(s)) => s.clone(),
        Some(_) => {
            return Err(FuncError::Generic(
                "optional first argument must be a string".into(),
            ))
        }
    };
    Ok(G::String(if text.is_empty() { msg } else { text }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(name: &str, cpus: u32) -> (Vec<(&'static str, Value)>, Value) {
        (
            vec![
                ("Name", name.into()),
                ("CPUs", cpus.into()),
                ("Message", "".into()),
            ],
            serde_json::json!({"name": name, "cpus": cpus}),
        )
    }

    #[test]
    fn renders_fields_functions_and_self() {
        let items = [item("a", 1), item("b", 4)];
        let out = render(
            r#"{{.Name}}={{.CPUs}}{{if gt .CPUs 2}} big{{end}} {{json .}} {{missing "none" .Message}}"#,
            &items,
        )
        .unwrap();
        assert_eq!(
            out,
            "a=1 {\"name\":\"a\",\"cpus\":1} none\nb=4 big {\"name\":\"b\",\"cpus\":4} none\n"
        );
        assert_eq!(
            render("{{indent 4 .Name}}", &items[..1]).unwrap(),
            "    a\n"
        );
    }

    #[test]
    fn unknown_fields_and_unsupported_words_are_named() {
        let items = [item("a", 1)];
        let e = render("{{.Nope}}", &items).unwrap_err().to_string();
        assert!(e.contains("can't evaluate field Nope"), "{e}");
        let e = render("{{slice .Name 1}}", &items).unwrap_err().to_string();
        assert!(e.contains("`slice` is not supported"), "{e}");
        let e = render("{{range .X}}{{break}}{{end}}", &items)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`break` is not supported"), "{e}");
        // Words inside strings are text.
        assert_eq!(render(r#"{{print "slice"}}"#, &items).unwrap(), "slice\n");
        let e = render("{{.Name", &items).unwrap_err().to_string();
        assert!(e.starts_with("invalid go template:"), "{e}");
    }
}
