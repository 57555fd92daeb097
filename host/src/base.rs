//! `base:` in `lima.yaml`: a template names one or more other templates
//! (names, paths or URLs, as `limactl start` takes them) and inherits what
//! it does not set itself. We follow Lima's rules (its `limatmpl` embedding):
//!
//! ```text
//!  child  base: [A, B]          A is merged first, then B, each with its
//!    │                          own bases already merged into it
//!    ├─ scalars, null           the child's value wins
//!    ├─ maps                    merged key by key, the same rules inside
//!    ├─ lists                   child's entries, then the base's
//!    │    provision, probes     the base's entries first (Lima runs base
//!    │                          scripts before the child's)
//!    ├─ dns                     the base's list only if the child has none
//!    ├─ mountTypesUnsupported   duplicates removed
//!    └─ minimumLimaVersion,     the higher of the two
//!       vmOpts.qemu.minimumVersion
//!  then, once, over the result:
//!    mounts (key: mountPoint, else location), additionalDisks (name),
//!    networks (interface): a later entry with the key of an earlier one
//!    fills the fields the earlier one lacks and is dropped; key `*`
//!    fills every earlier entry.
//! ```
//!
//! Lists nested inside list entries are not merged (the entry is kept
//! whole), which is where Lima's generic list rule has no meaning either.
//! Relative `file:` paths of `provision:` and `probes:` entries are made
//! absolute against the template that names them, as Lima does, since the
//! merged `lima.yaml` lives in the instance's folder.
//!
//! The merge works on untyped YAML before [`crate::config::LimaYaml`]
//! parses the result, so an unknown field still fails with its file named.
//! A template that appears twice in one chain of bases is an error, as in
//! Lima (a loop, or the same base merged twice).
use serde_yaml_ng::{Mapping, Value};

use crate::template::{self, Template, TemplateError};

#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    #[error("{origin}: base `{locator}` cannot be loaded")]
    Load {
        origin: String,
        locator: String,
        #[source]
        source: TemplateError,
    },
    #[error("{origin}: {msg}")]
    Parse { origin: String, msg: String },
    /// A base that is not a valid `lima.yaml` on its own (named in the error).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{origin}: field `base`: {msg}")]
    Shape { origin: String, msg: String },
    #[error("base templates form a loop: {chain}; remove one of these `base:` entries")]
    Cycle { chain: String },
    #[error("{origin}: base `{locator}` is included twice; list it once")]
    Twice { origin: String, locator: String },
}

/// The template's text with every base merged in and `base:` removed; the
/// text itself (comments kept) when it names no base.
pub fn embed(t: &Template) -> Result<String, BaseError> {
    embed_with(t, &mut |loc: &str| template::locate(loc))
}

/// [`embed`] with a custom way to load a locator (tests).
pub fn embed_with(
    t: &Template,
    load: &mut dyn FnMut(&str) -> Result<Template, TemplateError>,
) -> Result<String, BaseError> {
    let mut doc = parse(&t.text, &t.origin)?;
    let moved = absolute_files(&mut doc, t);
    if !has_base(&doc) && !moved {
        return Ok(t.text.clone());
    }
    let mut stack = vec![t.origin.clone()];
    let mut seen = std::collections::BTreeSet::new();
    let mut merged = embed_value(doc, t, load, &mut stack, &mut seen)?;
    combine_entries(&mut merged);
    serde_yaml_ng::to_string(&merged).map_err(|e| BaseError::Parse {
        origin: t.origin.clone(),
        msg: e.to_string(),
    })
}

fn parse(text: &str, origin: &str) -> Result<Value, BaseError> {
    let v: Value = serde_yaml_ng::from_str(text).map_err(|e| BaseError::Parse {
        origin: origin.to_string(),
        msg: e.to_string(),
    })?;
    match v {
        Value::Null => Ok(Value::Mapping(Mapping::new())),
        Value::Mapping(_) => Ok(v),
        _ => Err(BaseError::Parse {
            origin: origin.to_string(),
            msg: "a template must be a YAML mapping".into(),
        }),
    }
}

fn has_base(doc: &Value) -> bool {
    doc.get("base").is_some_and(|b| !b.is_null())
}

/// The locators in `base:` (a string, or a list of strings or
/// `{url: ...}` maps as Lima allows).
fn locators(base: &Value, origin: &str) -> Result<Vec<String>, BaseError> {
    let shape = |msg: String| BaseError::Shape {
        origin: origin.to_string(),
        msg,
    };
    let one = |v: &Value, i: usize| -> Result<String, BaseError> {
        match v {
            Value::String(s) => Ok(s.clone()),
            Value::Mapping(m) => {
                if m.get("digest").is_some_and(|d| !d.is_null()) {
                    return Err(shape(format!(
                        "base[{i}] has a digest; digests of base templates are not supported (Lima neither), remove it"
                    )));
                }
                if let Some(k) = m
                    .keys()
                    .find(|k| !matches!(k.as_str(), Some("url" | "digest")))
                {
                    return Err(shape(format!(
                        "base[{i}]: unknown field `{}`; a base is a locator or {{url: LOCATOR}}",
                        k.as_str().unwrap_or("?")
                    )));
                }
                m.get("url")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| shape(format!("base[{i}] has no `url`")))
            }
            _ => Err(shape(format!(
                "base[{i}] must be a template locator (a string)"
            ))),
        }
    };
    match base {
        Value::Null => Ok(Vec::new()),
        Value::Sequence(s) => s.iter().enumerate().map(|(i, v)| one(v, i)).collect(),
        other => one(other, 0).map(|l| vec![l]),
    }
}

/// `doc` (the template `t`) with its bases merged in, depth first.
fn embed_value(
    mut doc: Value,
    t: &Template,
    load: &mut dyn FnMut(&str) -> Result<Template, TemplateError>,
    stack: &mut Vec<String>,
    seen: &mut std::collections::BTreeSet<String>,
) -> Result<Value, BaseError> {
    let base = doc
        .as_mapping_mut()
        .and_then(|m| m.remove("base"))
        .unwrap_or(Value::Null);
    for raw in locators(&base, &t.origin)? {
        let locator = t.relative_to.join(&raw);
        let bt = load(&locator).map_err(|source| BaseError::Load {
            origin: t.origin.clone(),
            locator: raw.clone(),
            source,
        })?;
        if let Some(i) = stack.iter().position(|o| *o == bt.origin) {
            let mut chain: Vec<&str> = stack[i..].iter().map(String::as_str).collect();
            chain.push(&bt.origin);
            return Err(BaseError::Cycle {
                chain: chain.join(" → "),
            });
        }
        if !seen.insert(bt.origin.clone()) {
            return Err(BaseError::Twice {
                origin: t.origin.clone(),
                locator: raw,
            });
        }
        stack.push(bt.origin.clone());
        // Strict parsing here names the base file for an unknown field.
        crate::config::LimaYaml::parse(&bt.text, &bt.origin)?;
        let mut bdoc = parse(&bt.text, &bt.origin)?;
        absolute_files(&mut bdoc, &bt);
        let bdoc = embed_value(bdoc, &bt, load, stack, seen)?;
        stack.pop();
        doc = merge_top(doc, bdoc);
    }
    Ok(doc)
}

/// Makes the relative `file:` of `provision:` and `probes:` entries (a
/// string or `{url: ...}`) relative to the template's own place, as Lima
/// does, since the merged result lives in the instance's folder. Returns
/// whether anything changed.
fn absolute_files(doc: &mut Value, t: &Template) -> bool {
    let mut changed = false;
    for list in ["provision", "probes"] {
        let Some(Value::Sequence(entries)) = doc.get_mut(list) else {
            continue;
        };
        for e in entries {
            let slot = match e.get_mut("file") {
                Some(Value::Mapping(m)) => m.get_mut("url"),
                other => other,
            };
            if let Some(Value::String(f)) = slot {
                let abs = t.relative_to.join_file(f);
                if abs != *f {
                    *f = abs;
                    changed = true;
                }
            }
        }
    }
    changed
}

/// Merges `base` under `child` at the top level of a template.
fn merge_top(child: Value, base: Value) -> Value {
    let (Value::Mapping(mut c), Value::Mapping(mut b)) = (child, base) else {
        unreachable!("parse() only returns mappings");
    };
    if c.get("dns").is_some_and(|d| !d.is_null()) {
        b.remove("dns");
    }
    keep_higher_version(&mut c, &b, &["minimumLimaVersion"]);
    keep_higher_version(&mut c, &b, &["vmOpts", "qemu", "minimumVersion"]);
    let mut out = Mapping::new();
    for (k, cv) in c {
        let top = k.as_str().unwrap_or("").to_string();
        let merged = match b.remove(&k) {
            Some(bv) => merge(cv, bv, &top),
            None => cv,
        };
        out.insert(k, merged);
    }
    for (k, bv) in b {
        out.insert(k, bv);
    }
    if let Some(Value::Sequence(s)) = out.get_mut("mountTypesUnsupported") {
        let mut kept: Vec<Value> = Vec::new();
        for v in s.drain(..) {
            if !kept.contains(&v) {
                kept.push(v);
            }
        }
        *s = kept;
    }
    Value::Mapping(out)
}

/// Lima's merge below the top: maps key by key, lists concatenated (the
/// base's first under `provision` and `probes`), otherwise the child wins.
fn merge(child: Value, base: Value, top: &str) -> Value {
    match (child, base) {
        (Value::Mapping(c), Value::Mapping(mut b)) => {
            let mut out = Mapping::new();
            for (k, cv) in c {
                let merged = match b.remove(&k) {
                    Some(bv) => merge(cv, bv, top),
                    None => cv,
                };
                out.insert(k, merged);
            }
            for (k, bv) in b {
                out.insert(k, bv);
            }
            Value::Mapping(out)
        }
        (Value::Sequence(mut c), Value::Sequence(mut b)) => {
            if matches!(top, "provision" | "probes") {
                b.extend(c);
                Value::Sequence(b)
            } else {
                c.extend(b);
                Value::Sequence(c)
            }
        }
        (c, _) => c,
    }
}

/// Where both documents set the version at `path`, the child gets the
/// higher one.
fn keep_higher_version(child: &mut Mapping, base: &Mapping, path: &[&str]) {
    fn get<'a>(m: &'a Mapping, path: &[&str]) -> Option<&'a Value> {
        let (first, rest) = path.split_first()?;
        let v = m.get(*first)?;
        if rest.is_empty() {
            Some(v)
        } else {
            get(v.as_mapping()?, rest)
        }
    }
    fn get_mut<'a>(m: &'a mut Mapping, path: &[&str]) -> Option<&'a mut Value> {
        let (first, rest) = path.split_first()?;
        let v = m.get_mut(*first)?;
        if rest.is_empty() {
            Some(v)
        } else {
            get_mut(v.as_mapping_mut()?, rest)
        }
    }
    let Some(b) = get(base, path).and_then(Value::as_str).map(version) else {
        return;
    };
    if let Some(slot) = get_mut(child, path) {
        if slot.as_str().map(version).is_some_and(|c| c < b) {
            *slot = get(base, path).cloned().unwrap_or(Value::Null);
        }
    }
}

/// "2.0.1" as numbers for comparison; text after a number is ignored.
fn version(s: &str) -> Vec<u64> {
    s.split('.')
        .map(|p| {
            let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().unwrap_or(0)
        })
        .collect()
}

/// Lima's combining of list entries that share a key, over the merged
/// template.
fn combine_entries(doc: &mut Value) {
    let Some(m) = doc.as_mapping_mut() else {
        return;
    };
    if let Some(Value::Sequence(s)) = m.get_mut("mounts") {
        combine(s, mount_key, &["location"]);
    }
    if let Some(Value::Sequence(s)) = m.get_mut("additionalDisks") {
        // A disk may be just its name; a map can take fields.
        for e in s.iter_mut() {
            if let Value::String(name) = e {
                let mut map = Mapping::new();
                map.insert("name".into(), Value::String(name.clone()));
                *e = Value::Mapping(map);
            }
        }
        combine(s, |e| str_field(e, "name"), &[]);
    }
    if let Some(Value::Sequence(s)) = m.get_mut("networks") {
        combine(s, |e| str_field(e, "interface"), &[]);
    }
}

fn str_field(e: &Value, field: &str) -> Option<String> {
    e.get(field).and_then(Value::as_str).map(str::to_string)
}

fn mount_key(e: &Value) -> Option<String> {
    str_field(e, "mountPoint").or_else(|| str_field(e, "location"))
}

/// For each entry whose key matches an earlier entry's (or is `*`, which
/// matches all earlier ones), fill the earlier entries' missing fields from
/// it and drop it. `never` lists fields that identify an entry and are not
/// copied.
fn combine(list: &mut Vec<Value>, key: fn(&Value) -> Option<String>, never: &[&str]) {
    let mut i = 0;
    while i < list.len() {
        let Some(k) = key(&list[i]) else {
            i += 1;
            continue;
        };
        let targets: Vec<usize> = if k == "*" {
            (0..i).collect()
        } else {
            match (0..i).find(|&j| key(&list[j]).as_deref() == Some(k.as_str())) {
                Some(j) => vec![j],
                None => {
                    i += 1;
                    continue;
                }
            }
        };
        let src = list.remove(i);
        for j in targets {
            fill(&mut list[j], &src, never, k == "*");
        }
    }
}

/// Copies into `dst` the fields of `src` that `dst` lacks (maps field by
/// field). From a `*` entry its key fields (`mountPoint`, `name`,
/// `interface`) are not copied. A network's `lima` and `socket` exclude
/// each other: neither is copied when `dst` has one.
fn fill(dst: &mut Value, src: &Value, never: &[&str], wildcard: bool) {
    let (Some(d), Some(s)) = (dst.as_mapping_mut(), src.as_mapping()) else {
        return;
    };
    let has_net_backend = d.contains_key("lima") || d.contains_key("socket");
    for (k, v) in s {
        let name = k.as_str().unwrap_or("");
        if never.contains(&name)
            || (wildcard && matches!(name, "mountPoint" | "name" | "interface"))
            || (has_net_backend && matches!(name, "lima" | "socket"))
        {
            continue;
        }
        match d.get_mut(k) {
            None | Some(Value::Null) => {
                d.insert(k.clone(), v.clone());
            }
            Some(existing @ Value::Mapping(_)) if v.is_mapping() => {
                fill(existing, v, &[], false);
            }
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests;
