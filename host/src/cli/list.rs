//! `limactl list [NAME…]` (also `ls`): the instances as Lima lists them:
//! a table, JSON lines, YAML documents or a Go template per instance;
//! `--yq`/`--filter` run jq expressions over each instance's JSON.
use std::path::Path;
use std::process::ExitCode;

use super::{listfmt, msg};
use crate::instance::{self, Instance};
use crate::listing::{self, HostFields, InstanceInfo};

#[derive(clap::Args)]
#[command(
    after_help = "Formats: --format json (one object per line), yaml (a document per \
instance), table, or a Go template such as '{{.Name}} {{.Status}}' (fields: --list-fields; \
functions: json, yaml, indent, missing).\n\
--filter EXPR keeps the instances for which `select(EXPR)` gives something; \
repeat it to require several. --yq EXPR prints EXPR of each instance (JSON unless \
--format yaml); repeat it to chain expressions. Expressions are jq's syntax."
)]
pub struct ListArgs {
    /// Output format: json, yaml, table, or a Go template
    #[arg(short, long)]
    pub format: Option<String>,
    /// List the fields Go templates can use
    #[arg(long)]
    pub list_fields: bool,
    /// Same as --format=json
    #[arg(long)]
    pub json: bool,
    /// Only show names
    #[arg(short, long)]
    pub quiet: bool,
    /// Show all fields (table columns) even when they are all alike
    #[arg(long)]
    pub all_fields: bool,
    /// Apply an expression to each instance (repeatable)
    #[arg(long, value_name = "EXPR")]
    pub yq: Vec<String>,
    /// Keep only instances for which the expression holds (repeatable)
    #[arg(short = 'l', long, value_name = "EXPR")]
    pub filter: Vec<String>,
    pub instances: Vec<String>,
}

/// Lima's `unmatched instances` error: the others were listed, exit 1.
const UNMATCHED: &str = "unmatched instances";

pub fn run(home: &Path, a: ListArgs) -> anyhow::Result<ExitCode> {
    let format_set = a.format.is_some();
    let mut format = a.format.clone().unwrap_or_else(|| "table".into());
    if a.json {
        format = "json".into();
    }
    // Lima's checks, in Lima's order and words.
    if a.json && format_set {
        anyhow::bail!("option --json conflicts with option --format");
    }
    if a.list_fields && format_set {
        anyhow::bail!("option --list-fields conflicts with option --format");
    }
    if !a.yq.is_empty() {
        if format_set && format != "json" && format != "yaml" {
            anyhow::bail!("option --yq only works with --format json or yaml");
        }
        if a.list_fields {
            anyhow::bail!("option --list-fields conflicts with option --yq");
        }
    }
    if !a.filter.is_empty() && a.list_fields {
        anyhow::bail!("option --list-fields conflicts with option --filter");
    }
    if a.quiet && format != "table" {
        anyhow::bail!("option --quiet can only be used with '--format table'");
    }
    if a.list_fields {
        listfmt::emit(&format!("{}\n", listing::field_names().join("\n")))?;
        return Ok(ExitCode::SUCCESS);
    }

    let all = Instance::list(home);
    if let Some(junk) = all.iter().find(|i| !i.exists()) {
        msg::warn(format!(
            "The directory {:?} does not look like a valid Lima directory: {} does not exist",
            home.display().to_string(),
            junk.path(instance::LIMA_YAML).display()
        ));
    }
    if a.instances.is_empty() && all.is_empty() {
        msg::warn("No instance found. Run `limactl create` to create an instance.");
        return Ok(ExitCode::SUCCESS);
    }
    let mut chosen: Vec<&Instance> = Vec::new();
    let mut unmatched = false;
    if a.instances.is_empty() {
        chosen.extend(all.iter());
    } else {
        for name in &a.instances {
            match all.iter().find(|i| &i.name == name) {
                Some(i) => chosen.push(i),
                None => {
                    msg::warn(format!("No instance matching {name} found."));
                    unmatched = true;
                }
            }
        }
    }
    let done = |unmatched: bool| {
        if unmatched {
            Err(anyhow::anyhow!(UNMATCHED))
        } else {
            Ok(ExitCode::SUCCESS)
        }
    };

    if a.quiet && a.yq.is_empty() && a.filter.is_empty() {
        listfmt::emit(
            &chosen
                .iter()
                .map(|i| format!("{}\n", i.name))
                .collect::<String>(),
        )?;
        return done(unmatched);
    }

    let host = HostFields::new(home);
    let mut rows: Vec<InstanceInfo> = chosen.iter().map(|i| listing::info(i, &host)).collect();

    if !a.filter.is_empty() {
        let expr = a
            .filter
            .iter()
            .map(|f| format!("select({f})"))
            .collect::<Vec<_>>()
            .join(" | ");
        listfmt::check_no_env(&expr)?;
        let mut kept = Vec::new();
        for r in rows {
            let v = serde_json::to_value(&r)?;
            let out = crate::yq::eval(&expr, &v)
                .map_err(|e| anyhow::anyhow!("failed to apply filter {expr:?}: {e}"))?;
            if !out.is_empty() {
                kept.push(r);
            }
        }
        rows = kept;
    }

    if a.quiet && a.yq.is_empty() {
        listfmt::emit(
            &rows
                .iter()
                .map(|r| format!("{}\n", r.name))
                .collect::<String>(),
        )?;
        return done(unmatched);
    }

    for r in rows.iter().filter(|r| !r.errors.is_empty()) {
        msg::warn(format!(
            "instance {:?} has errors: {}",
            r.name,
            r.errors.join("; ")
        ));
    }

    let tty = listfmt::output_is_tty();
    // --yq means JSON unless a format was asked for.
    if !a.yq.is_empty() && !format_set {
        format = "json".into();
    }
    let mut yq = a.yq.clone();
    if a.quiet {
        yq.push(".name".into());
    }
    let expr = (!yq.is_empty()).then(|| yq.join(" | "));
    let values = || -> anyhow::Result<Vec<serde_json::Value>> {
        Ok(rows
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<_, _>>()?)
    };
    let out = match format.as_str() {
        "json" => {
            let mut vals = listfmt::apply(expr.as_deref(), values()?)?;
            if expr.is_some() {
                vals.iter_mut().for_each(listfmt::drop_empty_maps);
            }
            listfmt::json_lines(&vals, if tty { 4 } else { 0 })
        }
        "yaml" => listfmt::yaml_docs(&listfmt::apply(expr.as_deref(), values()?)?),
        "table" => {
            let width = if tty {
                crate::shell::window_size().map_or(0, |w| w.cols as usize)
            } else {
                0
            };
            let home_dir = std::env::var("HOME").unwrap_or_default();
            listing::table(&rows, width, a.all_fields, &home_dir)
        }
        // Anything else is a Go template, as in Lima.
        template => {
            let items: Vec<_> = rows
                .iter()
                .map(|r| {
                    let fields = listing::go_fields(r)
                        .into_iter()
                        .map(|(k, v, _)| (k, v))
                        .collect();
                    Ok((fields, serde_json::to_value(r)?))
                })
                .collect::<anyhow::Result<_>>()?;
            crate::gotmpl::render(template, &items)?
        }
    };
    listfmt::emit(&out)?;
    done(unmatched)
}
