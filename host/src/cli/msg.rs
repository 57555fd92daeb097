//! The messages `limactl` prints for people and scripts on stderr: one
//! place, so their form (Lima's `level=… msg=…` lines, or JSON) is decided
//! once. Every command reports through these, never `eprintln!` directly.
//! (Start's phase lines are `progress.rs`'s own format.)

/// A message about progress (Lima's `level=info`).
pub fn info(msg: impl AsRef<str>) {
    eprintln!("{}", msg.as_ref());
}

/// Something the user should know that does not stop the command.
pub fn warn(msg: impl AsRef<str>) {
    eprintln!("limactl: warning: {}", msg.as_ref());
}

/// An error for one item of a command that goes on with the others.
pub fn error(msg: impl AsRef<str>) {
    eprintln!("limactl: error: {}", msg.as_ref());
}

/// The error that ends the command (Lima's `level=fatal`).
pub fn fatal(msg: impl AsRef<str>) {
    eprintln!("limactl: error: {}", msg.as_ref());
}

/// An error with its causes, as one line.
pub fn chain(e: &anyhow::Error) -> String {
    lima_proto::errors::error_chain(e.as_ref())
}
