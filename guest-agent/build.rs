//! Builds `guest-ebpf` (target `bpfel-unknown-none`) and leaves the object at
//! `$OUT_DIR/lima-guest-ebpf`, where `src/ports/ebpf.rs` embeds it with
//! `aya::include_bytes_aligned!`.
//!
//! The eBPF crate is not a workspace member: it needs a nightly toolchain with
//! `rust-src` (for `-Z build-std=core`) and `bpf-linker`, which the rest of the
//! workspace does not. aya-build runs `rustup run <toolchain> cargo build
//! --package lima-guest-ebpf --target bpfel-unknown-none ...` with its own
//! target directory under `$OUT_DIR`; the object does not depend on the
//! agent's own target, so host and `x86_64-unknown-linux-musl` builds of the
//! agent embed the same bytes.
//!
//! Environment:
//! - `LIMA_EBPF_TOOLCHAIN`: rustup toolchain for the eBPF build (default
//!   `nightly`). Its LLVM must match the one `bpf-linker` was built against.
//! - `AYA_BUILD_SKIP=1`: build no eBPF object; the agent then embeds an empty
//!   one and its watcher reports "unavailable".

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

/// Name of the eBPF package and of the binary aya-build copies to `$OUT_DIR`.
const EBPF_PACKAGE: &str = "lima-guest-ebpf";

fn main() {
    // Print the error and its causes, without the backtrace anyhow would
    // attach under RUST_BACKTRACE: the message is what the reader needs.
    if let Err(e) = build() {
        eprintln!("error: {e}");
        for cause in e.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
        std::process::exit(1);
    }
}

fn build() -> anyhow::Result<()> {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?);
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let ebpf_dir = manifest_dir.join("../guest-ebpf");
    let ebpf_dir = ebpf_dir
        .canonicalize()
        .with_context(|| format!("the eBPF crate is missing: {}", ebpf_dir.display()))?;
    // aya-build watches the eBPF crate itself; the event structs it uses live
    // in proto.
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("../proto/src").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("../proto/Cargo.toml").display()
    );
    println!("cargo:rerun-if-env-changed=LIMA_EBPF_TOOLCHAIN");
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");

    if skip_requested() {
        // Leave an empty object so `include_bytes_aligned!` still compiles.
        println!("cargo:warning=AYA_BUILD_SKIP is set: the agent embeds no eBPF object");
        let object = out_dir.join(EBPF_PACKAGE);
        fs::write(&object, b"").with_context(|| format!("writing {}", object.display()))?;
        return Ok(());
    }

    let toolchain = env::var("LIMA_EBPF_TOOLCHAIN").unwrap_or_else(|_| "nightly".to_owned());
    if let Err(missing) = check_toolchain(&toolchain) {
        bail!(
            "cannot build the guest eBPF programs: {missing:#}\n\
             Run `cargo xtask setup` to install the eBPF toolchain (nightly with rust-src, \
             and bpf-linker built against nightly's LLVM), or set AYA_BUILD_SKIP=1 to build \
             an agent without eBPF (its socket watcher then reports \"unavailable\")."
        );
    }

    // aya-build runs `cargo build --package lima-guest-ebpf` in the current
    // directory. The root workspace excludes guest-ebpf, so run it from the
    // crate's own directory, where it is its own workspace (with its own
    // Cargo.lock pinning versions that fit our nightly).
    env::set_current_dir(&ebpf_dir).with_context(|| format!("cd {}", ebpf_dir.display()))?;
    // aya-build turns every line the nested cargo prints into a cargo warning;
    // keep that to real errors and compiler diagnostics.
    env::set_var("CARGO_TERM_QUIET", "true");
    let root_dir = ebpf_dir
        .to_str()
        .context("the eBPF crate's path is not UTF-8")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: EBPF_PACKAGE,
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
    .context("building the guest eBPF programs")?;

    let object = out_dir.join(EBPF_PACKAGE);
    if !object.is_file() {
        bail!("aya-build finished but left no {}", object.display());
    }
    Ok(())
}

/// The same test aya-build applies to `AYA_BUILD_SKIP`.
fn skip_requested() -> bool {
    env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// Checks for what the eBPF build needs, so a missing piece gets named
/// instead of surfacing as a linker error deep inside the nested cargo.
fn check_toolchain(toolchain: &str) -> anyhow::Result<()> {
    let sysroot = run("rustup", &["run", toolchain, "rustc", "--print", "sysroot"])
        .with_context(|| format!("no usable rustup toolchain `{toolchain}`"))?;
    let core_src = Path::new(sysroot.trim()).join("lib/rustlib/src/rust/library/core");
    if !core_src.is_dir() {
        bail!(
            "toolchain `{toolchain}` has no rust-src component (no {})",
            core_src.display()
        );
    }
    // Under `rustup run`, as aya-build runs it: that puts the toolchain's
    // libLLVM on the library path, which bpf-linker links against.
    run("rustup", &["run", toolchain, "bpf-linker", "--version"]).with_context(|| {
        format!("bpf-linker is not installed or does not run with toolchain `{toolchain}`")
    })?;
    Ok(())
}

/// Runs a command and returns its stdout, or an error naming it.
fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let shown = format!("`{program} {}`", args.join(" "));
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {shown}"))?;
    if !output.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            output.status,
            // The first line is the message; the rest may be a backtrace.
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
        );
    }
    String::from_utf8(output.stdout).with_context(|| format!("{shown} printed non-UTF-8"))
}
