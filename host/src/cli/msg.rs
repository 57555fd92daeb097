//! The messages `limactl` prints for people and scripts on stderr: one
//! place, so their form is decided once. They are Lima's log lines
//! (`time=… level=info msg=…`, the short coloured form on a terminal, or
//! JSON with `--log-format json`; see `crate::logfmt`) and obey
//! `--log-level`. Every command reports through these, never `eprintln!`
//! directly.
use crate::logfmt::{self, Level};

/// A message about progress (`level=info`).
pub fn info(msg: impl AsRef<str>) {
    logfmt::log(Level::Info, msg.as_ref());
}

/// Detail for `--debug` (`level=debug`).
pub fn debug(msg: impl AsRef<str>) {
    logfmt::log(Level::Debug, msg.as_ref());
}

/// Something the user should know that does not stop the command
/// (`level=warning`).
pub fn warn(msg: impl AsRef<str>) {
    logfmt::log(Level::Warn, msg.as_ref());
}

/// An error for one item of a command that goes on with the others
/// (`level=error`).
pub fn error(msg: impl AsRef<str>) {
    logfmt::log(Level::Error, msg.as_ref());
}

/// The error that ends the command (`level=fatal`); the caller exits 1.
pub fn fatal(msg: impl AsRef<str>) {
    logfmt::log(Level::Fatal, msg.as_ref());
}

/// An error with its causes, as one line.
pub fn chain(e: &anyhow::Error) -> String {
    lima_proto::errors::error_chain(e.as_ref())
}
