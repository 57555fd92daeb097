//! `limactl create [NAME|TEMPLATE|FILE.yaml|URL|-]`: make an instance from
//! a template, with the edit flags applied, without starting it. The rules
//! for the argument (shared with `start`) follow Lima's: see [`target`].
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context};

use super::editflags::EditFlags;
use super::{global, msg};
use crate::{instance, lifecycle, template};

#[derive(clap::Args)]
pub struct CreateArgs {
    /// Instance name (default: the template's name, or `default`)
    #[arg(long)]
    pub name: Option<String>,
    /// List the templates and exit
    #[arg(long = "list-templates")]
    pub list_templates: bool,
    #[command(flatten)]
    pub flags: EditFlags,
    /// A new instance NAME (from the default template), a template
    /// (`template:NAME`, a built-in NAME), a .yaml path, an http(s) URL, or `-` (stdin; needs --name)
    pub target: Option<String>,
}

/// What `create`/`start` were pointed at.
pub enum Target {
    /// An instance that exists already.
    Existing(instance::Instance),
    /// A new instance `name` to make from `template`.
    New {
        name: String,
        template: template::Template,
    },
}

/// Lima's reading of `create`/`start`'s argument:
/// - `-`: lima.yaml from stdin; `--name` is required, `--tty=true` refused;
/// - none, or a valid instance name: that instance (none: `--name` or
///   `default`); when it does not exist it is made from the default
///   template (Lima's deprecated form, with its warning) — except that a
///   name of one of our templates (e.g. `debian-12`) selects that template;
/// - anything else: a template locator (`template:X`, a path, a URL), the
///   instance named by `--name` or after the template.
pub fn target(home: &Path, name: Option<&str>, arg: Option<&str>) -> anyhow::Result<Target> {
    if let Some(n) = name {
        instance::validate_name(n)?;
    }
    if arg == Some("-") {
        let Some(n) = name else {
            bail!("must pass instance name with --name when reading template from stdin");
        };
        if global::tty_flag() == Some(true) {
            bail!("cannot use --tty=true when reading template from stdin");
        }
        let t = template::locate("-")?;
        return Ok(Target::New {
            name: n.to_string(),
            template: t,
        });
    }
    let as_instance = match arg {
        None => Some(name.unwrap_or("default")),
        Some(a) if instance::validate_name(a).is_ok() => Some(a),
        Some(_) => None,
    };
    if let Some(inst_name) = as_instance {
        let inst = instance::Instance::new(home, inst_name)?;
        if inst.exists() {
            if let (Some(n), Some(a)) = (name, arg) {
                if n != a {
                    bail!("instance name \"{a}\" and CLI flag --name=\"{n}\" cannot be specified together");
                }
            }
            return Ok(Target::Existing(inst));
        }
        if let Some(a) = arg {
            // Our extension: a template's bare name picks that template.
            match template::locate(a) {
                Ok(t) => {
                    let n = name.map_or_else(|| t.suggested_name.clone(), str::to_string);
                    return Ok(Target::New {
                        name: n,
                        template: t,
                    });
                }
                Err(template::TemplateError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            if let Some(n) = name.filter(|n| *n != a) {
                bail!("instance name \"{a}\" and CLI flag --name=\"{n}\" cannot be specified together");
            }
            if a != "default" {
                msg::info(format!(
                    "Creating an instance \"{a}\" from template://default (Not from template://{a})"
                ));
                msg::warn(format!(
                    "This form is deprecated. Use `limactl create --name={a} template://default` instead"
                ));
            }
        }
        let t = template::locate("template:default")?;
        return Ok(Target::New {
            name: inst_name.to_string(),
            template: t,
        });
    }
    let locator = arg.unwrap_or("template:default");
    let t = template::locate(locator)?;
    let n = match name {
        Some(n) => n.to_string(),
        None => {
            let n = t.suggested_name.clone();
            instance::validate_name(&n).with_context(|| {
                format!("cannot name the instance after `{locator}`; give one with --name")
            })?;
            n
        }
    };
    Ok(Target::New {
        name: n,
        template: t,
    })
}

/// `--list-templates`: the template names `create`/`start` take (Lima
/// hides its internal `_…` ones; we have none).
pub fn list_templates() -> ExitCode {
    let mut out = String::new();
    for n in template::names() {
        out.push_str(&n);
        out.push('\n');
    }
    print!("{out}");
    ExitCode::SUCCESS
}

pub fn run(home: &Path, a: CreateArgs) -> anyhow::Result<ExitCode> {
    if a.list_templates {
        return Ok(list_templates());
    }
    crate::privacy::create_private_dir(home)
        .with_context(|| format!("cannot create LIMA_HOME {}", home.display()))?;
    if let Some(w) = crate::privacy::home_warning(home) {
        msg::warn(w);
    }
    let (name, t) = match target(home, a.name.as_deref(), a.target.as_deref())? {
        Target::Existing(inst) => bail!("instance \"{}\" already exists", inst.name),
        Target::New { name, template } => (name, template),
    };
    let exprs = a.flags.expressions(true)?;
    let inst = lifecycle::create_new(home, &name, &t, &exprs)?;
    msg::info(format!(
        "Run `limactl start {}` to start the instance.",
        inst.name
    ));
    Ok(ExitCode::SUCCESS)
}
