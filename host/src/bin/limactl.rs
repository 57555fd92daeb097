//! `limactl`: manage lima-rs instances (Lima-compatible command line); the
//! command line itself is `lima_host::cli`.
fn main() -> std::process::ExitCode {
    lima_host::cli::main()
}
