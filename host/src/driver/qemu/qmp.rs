//! The QMP commands we send: `qmp_capabilities`, then `quit` or
//! `system_powerdown` (the ACPI power button).
//!
//! A QMP client crate would bring QEMU's whole schema for these two lines;
//! see docs/decisions.md.
use std::path::Path;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Asks the QEMU listening on `socket` to quit.
pub async fn quit(socket: &Path) -> std::io::Result<()> {
    command(socket, "quit").await
}

/// Presses the guest's ACPI power button.
pub async fn powerdown(socket: &Path) -> std::io::Result<()> {
    command(socket, "system_powerdown").await
}

async fn command(socket: &Path, name: &str) -> std::io::Result<()> {
    let s = tokio::net::UnixStream::connect(socket).await?;
    let (rd, mut wr) = s.into_split();
    let mut lines = BufReader::new(rd).lines();
    lines.next_line().await?; // greeting
    wr.write_all(b"{\"execute\":\"qmp_capabilities\"}\n")
        .await?;
    lines.next_line().await?;
    wr.write_all(format!("{{\"execute\":\"{name}\"}}\n").as_bytes())
        .await?;
    let _ = lines.next_line().await;
    Ok(())
}
