//! `limactl yq EXPR [FILE]`: run an expression (jq syntax) on a YAML
//! document (FILE, or stdin) and print each result as YAML (or JSON with
//! `-o json`), as Lima's embedded yq does for the common cases.
use std::io::Read as _;
use std::process::ExitCode;

use anyhow::Context;

#[derive(clap::Args)]
pub struct YqArgs {
    /// Output format: yaml or json
    #[arg(short = 'o', long = "output-format", default_value = "yaml", value_parser = ["yaml", "y", "json", "j"])]
    pub output: String,
    /// Write the result back to FILE (comments kept outside the keys that change)
    #[arg(short = 'i', long = "inplace", requires = "file")]
    pub inplace: bool,
    /// Print strings without quotes (yq's -r)
    #[arg(short = 'r', long = "unwrapScalar")]
    pub raw: bool,
    /// The expression (jq syntax; see docs/lima-compat.md "Expressions")
    pub expr: String,
    /// The YAML file (default: stdin)
    pub file: Option<String>,
}

pub fn run(a: YqArgs) -> anyhow::Result<ExitCode> {
    let text = match a.file.as_deref() {
        None | Some("-") => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("cannot read stdin")?;
            s
        }
        Some(f) => std::fs::read_to_string(f).with_context(|| format!("cannot read {f}"))?,
    };
    if a.inplace {
        let f = a.file.as_deref().unwrap_or_default();
        let out = crate::yq::edit_yaml_keeping_comments(&text, std::slice::from_ref(&a.expr))?;
        if out != text {
            let tmp = format!("{f}.tmp");
            std::fs::write(&tmp, &out).with_context(|| format!("cannot write {tmp}"))?;
            std::fs::rename(&tmp, f).with_context(|| format!("cannot replace {f}"))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let json = matches!(a.output.as_str(), "json" | "j");
    print!("{}", evaluate(&a.expr, &text, json, a.raw)?);
    Ok(ExitCode::SUCCESS)
}

/// Each result of `expr` on the YAML `text`, as YAML (or JSON), a
/// string without quotes when `raw`, one after another.
pub fn evaluate(expr: &str, text: &str, json: bool, raw: bool) -> anyhow::Result<String> {
    let doc = crate::yq::parse_yaml_doc(text)?;
    let mut out = String::new();
    for v in crate::yq::eval_yaml(expr, &doc)? {
        match (&v, raw) {
            (serde_yaml_ng::Value::String(s), true) => out.push_str(s),
            _ if json => out.push_str(&serde_json::to_string_pretty(&v)?),
            _ => out.push_str(&crate::yq::yaml_text(&v)?),
        }
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}
