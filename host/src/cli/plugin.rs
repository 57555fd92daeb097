//! Plugins: `limactl FOO ARGS` runs `limactl-FOO ARGS` from PATH, as
//! Lima's do; its exit code is ours.
use std::process::ExitCode;

use anyhow::Context;

pub fn run(args: &[String]) -> anyhow::Result<ExitCode> {
    let Some((name, rest)) = args.split_first() else {
        anyhow::bail!("no command given; see `limactl --help`");
    };
    let program = format!("limactl-{name}");
    let Some(path) = crate::programs::find_program(&program) else {
        anyhow::bail!(
            "unknown command \"{name}\" for \"limactl\" (no plugin `{program}` on PATH); see `limactl --help`"
        );
    };
    let status = std::process::Command::new(&path)
        .args(rest)
        .status()
        .with_context(|| format!("cannot run {}", path.display()))?;
    Ok(match status.code() {
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        None => ExitCode::from(1),
    })
}
