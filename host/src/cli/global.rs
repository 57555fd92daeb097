//! The global flags every command sees (`--tty`, `--yes`, …), set once by
//! `cli::main` before the command runs.
use std::io::IsTerminal;
use std::sync::OnceLock;

#[derive(Debug, Clone, Default)]
pub struct Global {
    /// `--tty=BOOL`; `None` when not given.
    pub tty: Option<bool>,
    /// `-y/--yes`: never ask (and so `--tty=false`).
    pub yes: bool,
}

static GLOBAL: OnceLock<Global> = OnceLock::new();

pub fn set(g: Global) {
    let _ = GLOBAL.set(g);
}

fn get() -> Global {
    GLOBAL.get().cloned().unwrap_or_default()
}

/// `--tty` as given (`None` when not given and `--yes` was not either).
pub fn tty_flag() -> Option<bool> {
    let g = get();
    if g.yes {
        Some(false)
    } else {
        g.tty
    }
}

/// Whether we may talk to a person: `--tty` if given, else whether stdin
/// and stdout are terminals, as Lima decides.
pub fn interactive() -> bool {
    tty_flag().unwrap_or_else(|| std::io::stdin().is_terminal() && std::io::stdout().is_terminal())
}

/// `-y/--yes` was given.
pub fn yes() -> bool {
    get().yes
}
