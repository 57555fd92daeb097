//! `limactl shell NAME [--] [COMMAND…]`: a command, or a login shell, in an
//! instance as the guest user.
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use super::msg;
use crate::{instance, lifecycle, shell};

#[derive(clap::Args)]
pub struct ShellArgs {
    /// Working directory in the guest
    #[arg(long)]
    pub workdir: Option<String>,
    /// Instance name (also accepted as the first argument)
    #[arg(long, hide = true)]
    pub instance: Option<String>,
    /// INSTANCE [--] COMMAND...
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub args: Vec<String>,
}

pub fn run(home: &Path, a: ShellArgs) -> anyhow::Result<ExitCode> {
    let ShellArgs {
        workdir,
        instance: flag_instance,
        args,
    } = a;
    let mut args = args.into_iter();
    let name = match flag_instance {
        Some(n) => n,
        None => args.next().context("missing instance name")?,
    };
    let mut argv: Vec<String> = args.collect();
    if argv.first().map(String::as_str) == Some("--") {
        argv.remove(0);
    }
    // Leading NAME=VALUE words are environment, as in Lima.
    let mut env = Vec::new();
    let mut words = Vec::new();
    while let Some((k, v)) = argv
        .first()
        .and_then(|a| a.split_once('='))
        .filter(|(k, _)| is_env_name(k))
    {
        words.push((k.to_string(), v.to_string()));
        argv.remove(0);
    }
    let inst = instance::Instance::open(home, &name)?;
    let transport = lifecycle::transport(&inst)?;
    let cfg = inst.config()?;
    // `env:` of lima.yaml, then the words (which win).
    env.extend(cfg.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.extend(words);
    // As Lima: `--workdir` (which must exist), else the host's current
    // folder when a mount holds it (the home if the guest lacks it), else
    // the home.
    let (cwd, cwd_fallback) = match workdir {
        Some(w) => (Some(w), false),
        None => (
            std::env::current_dir()
                .ok()
                .and_then(|d| crate::mounts::guest_path(&cfg.mounts, &d)),
            true,
        ),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let code = match rt.block_on(shell::exec(
        transport.as_ref(),
        shell::ExecOptions {
            argv,
            env,
            cwd,
            cwd_fallback,
            user: Some(cfg.user.name.clone()),
            login: true,
            tty: super::global::tty_flag(),
            on_started: None,
        },
    )) {
        Ok(code) => code,
        // Like a shell: 127 when the command cannot be started.
        Err(crate::exec::ExecError::Failed(reason)) => {
            msg::fatal(reason);
            127
        }
        Err(e) => return Err(e.into()),
    };
    // Do not wait for the stdin reader thread.
    std::process::exit(code);
}

fn is_env_name(k: &str) -> bool {
    !k.is_empty()
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !k.starts_with(|c: char| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_words() {
        assert!(is_env_name("FOO_1"));
        assert!(!is_env_name("1FOO"));
        assert!(!is_env_name("a-b"));
    }
}
