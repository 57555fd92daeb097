//! `limactl edit [INSTANCE|FILE.yaml] [edit flags] [--start]`: change a
//! stopped instance's `lima.yaml` (or a template file) with the edit flags,
//! or, with none and a terminal, in `$VISUAL`/`$EDITOR`. The result is
//! checked before it replaces the file; a bad edit keeps the original.
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};

use super::editflags::EditFlags;
use super::{global, msg};
use crate::{instance, lifecycle};

#[derive(clap::Args)]
pub struct EditArgs {
    #[command(flatten)]
    pub flags: EditFlags,
    /// Start the instance after editing it
    #[arg(long)]
    pub start: bool,
    /// How long `--start` waits for the guest agent
    #[arg(long, default_value = "10m", value_parser = crate::units::parse_duration)]
    pub timeout: Duration,
    /// The instance (default: `default`), or a lima.yaml file to edit in place
    #[arg(value_name = "INSTANCE|FILE.yaml")]
    pub target: Option<String>,
}

fn is_file_arg(arg: &str) -> bool {
    arg.ends_with(".yaml") || arg.ends_with(".yml") || arg.contains('/')
}

pub fn run(home: &Path, a: EditArgs) -> anyhow::Result<ExitCode> {
    let arg = a.target.as_deref().unwrap_or("default");
    if is_file_arg(arg) {
        if a.start {
            bail!("--start needs an instance, not a file (`{arg}`)");
        }
        return edit_file(Path::new(arg), &a.flags);
    }
    let inst = instance::Instance::new(home, arg)?;
    if !inst.exists() {
        bail!("Instance \"{arg}\" not found");
    }
    if inst.host_agent_running() {
        return Err(lifecycle::LifecycleError::EditRunning { name: inst.name }.into());
    }
    let path = inst.path(instance::LIMA_YAML);
    let original = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let new_text = if !a.flags.is_empty() {
        let exprs = a.flags.expressions(false)?;
        lifecycle::edited_yaml(&inst, &exprs)?
    } else if global::interactive() {
        let header = format!(
            "# Please edit the following configuration for Lima instance \"{}\"\n\
             # and an empty file will abort the edit.\n\n",
            inst.name
        );
        let Some(text) = open_editor(&original, &header)? else {
            msg::info("Aborting, as requested by saving the file with empty content");
            return Ok(ExitCode::SUCCESS);
        };
        if text == original {
            None
        } else {
            if let Err(e) = lifecycle::check_yaml(&inst, &text, &path.display().to_string()) {
                let saved = save_rejected(&text);
                return Err(anyhow::Error::new(e).context(format!(
                    "the edit is invalid and was not saved ({}); {} is unchanged",
                    saved,
                    path.display()
                )));
            }
            Some(text)
        }
    } else {
        bail!(
            "nothing to edit: give edit flags (e.g. --cpus 2, --set '.memory = \"4GiB\"'), \
             or run in a terminal (or with --tty) to open an editor"
        );
    };
    match new_text {
        None => msg::info("Aborting, no changes made to the instance"),
        Some(text) => {
            lifecycle::write_yaml(&inst, &text)?;
            msg::info(format!("Instance \"{}\" configuration edited", inst.name));
        }
    }
    if a.start {
        return super::start::boot(&inst, false, a.timeout);
    }
    Ok(ExitCode::SUCCESS)
}

/// Edits a lima.yaml file (a template) in place: checked as
/// `limactl validate` checks one before it is replaced.
fn edit_file(path: &Path, flags: &EditFlags) -> anyhow::Result<ExitCode> {
    let original =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let text = if !flags.is_empty() {
        crate::yq::edit_yaml_keeping_comments(&original, &flags.expressions(true)?)?
    } else if global::interactive() {
        let header = format!(
            "# Please edit {}\n# and an empty file will abort the edit.\n\n",
            path.display()
        );
        match open_editor(&original, &header)? {
            Some(t) => t,
            None => {
                msg::info("Aborting, as requested by saving the file with empty content");
                return Ok(ExitCode::SUCCESS);
            }
        }
    } else {
        bail!("nothing to edit: give edit flags, or run in a terminal (or with --tty) to open an editor");
    };
    if text == original {
        msg::info("Aborting, no changes made to the file");
        return Ok(ExitCode::SUCCESS);
    }
    let origin = path.display().to_string();
    let check = || -> anyhow::Result<()> {
        let mut t = crate::template::locate(&origin)?;
        t.text = text.clone();
        let embedded = crate::base::embed(&t)?;
        crate::config::LimaYaml::parse(&embedded, &origin)?.resolve(&origin)?;
        Ok(())
    };
    check().with_context(|| format!("the edit is invalid; {origin} is unchanged"))?;
    let tmp = PathBuf::from(format!("{origin}.tmp"));
    std::fs::write(&tmp, &text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {origin}"))?;
    msg::info(format!("\"{origin}\" edited"));
    Ok(ExitCode::SUCCESS)
}

/// Opens `$VISUAL`, `$EDITOR` or `vi` on a private temporary copy of
/// `content` below `header`; returns the text without the header, or
/// `None` when the file was saved empty.
fn open_editor(content: &str, header: &str) -> anyhow::Result<Option<String>> {
    let editor = ["VISUAL", "EDITOR"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .find(|v| !v.trim().is_empty())
        .unwrap_or_else(|| "vi".into());
    let dir = std::env::temp_dir();
    let path = dir.join(format!(
        "lima-editor-{}-{}.yaml",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        f.write_all(header.as_bytes())?;
        f.write_all(content.as_bytes())?;
    }
    let _cleanup = RemoveOnDrop(path.clone());
    // `$EDITOR` may carry arguments (`code --wait`).
    let mut words = editor.split_whitespace();
    let program = words.next().unwrap_or("vi");
    let status = std::process::Command::new(program)
        .args(words)
        .arg(&path)
        .status()
        .with_context(|| format!("could not run the editor `{editor}` (set $EDITOR)"))?;
    if !status.success() {
        bail!("the editor `{editor}` failed ({status}); nothing was changed");
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let text = text.strip_prefix(header).unwrap_or(&text).to_string();
    if text.trim().is_empty() {
        return Ok(None);
    }
    Ok(Some(text))
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Keeps a refused editor buffer as `lima.REJECTED.yaml` in the current
/// folder (as Lima does), so the work is not lost; says where.
fn save_rejected(text: &str) -> String {
    let p = Path::new("lima.REJECTED.yaml");
    match std::fs::write(p, text) {
        Ok(()) => format!("your text is saved as {}", p.display()),
        Err(e) => format!("could not save your text as {}: {e}", p.display()),
    }
}
