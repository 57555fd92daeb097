//! `cargo xtask`: the project's build chores, written in Rust so they need
//! nothing but cargo and run the same way on every machine.
//!
//! Each task lives in its own module and calls the tasks it depends on
//! (`image` builds first, `build` sets up first), so any one command brings a
//! fresh checkout to the state it needs. Tasks that are already done (tools
//! installed, image cached) say so and skip the work.
//!
//! ```text
//! cargo xtask setup            host packages and Rust tools
//! cargo xtask build [--release]  host binaries + static guest agent
//! cargo xtask kernel           our guest kernel (kernel/*.config); prints its vmlinux
//! cargo xtask image            target/images/default/{vmlinux,initrd.img,image.json}
//! cargo xtask image debian     target/images/debian/ (the above + rootfs.ext4)
//! cargo xtask image docker     target/images/docker/ (debian + docker.io and its modules)
//! cargo xtask image debian-cloud  target/images/debian-cloud/disk.qcow2 (UEFI, cloud-init)
//! cargo xtask test [-- ARGS]   cargo test --workspace with LIMA_BIN_DIR set
//! cargo xtask run              start instance `default` and run `uname -a` in it
//! cargo xtask bench [ARGS]     cargo run --release -p lima-benches -- ARGS
//! cargo xtask fuzz [TARGET] [--time 10m]  the fuzz targets in fuzz/, for as long as asked
//! cargo xtask fuzz --ci        all of them within 5 minutes, as `test` runs them
//! ```

mod apt;
mod bench;
mod build;
mod cache;
mod cloud_image;
mod cmd;
mod cpio;
mod debian;
mod fsutil;
mod fuzz;
mod image;
mod kernel;
mod mcp_clients;
mod mke2fs;
mod pvh;
mod run;
mod setup;
mod test;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build chores for lima-rs")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build needs (apt packages, nightly, rust targets,
    /// bpf-linker, vhost-device-vsock, cargo-fuzz); skips whatever is present.
    Setup,
    /// Set up, then build the host binaries and the static guest agent.
    Build {
        /// Build the host binaries with the release profile (the agent is
        /// always built in release).
        #[arg(long)]
        release: bool,
    },
    /// Build our guest kernel from Debian's linux-source package with the
    /// fragments in kernel/ (or find it in the cache); prints the path of
    /// its vmlinux last.
    Kernel,
    /// Build, then assemble the default guest image (kernel + initramfs)
    /// into target/images/default, or with `debian` (or `all`) also the
    /// Debian root filesystem image into target/images/debian. `debian-cloud`
    /// makes a Debian cloud image (qcow2) instead and prints its path.
    Image {
        /// Which image to make.
        #[arg(value_enum, default_value = "default")]
        which: image::Which,
        /// The kernel: ours, or Debian's (the baseline; the image is then
        /// named `default-debian-kernel`).
        #[arg(long, value_enum, default_value = "lima")]
        kernel: image::KernelChoice,
        /// Use this static agent binary instead of building
        /// lima-guest-agent (skips the build step).
        #[arg(long, hide = true, value_name = "PATH")]
        agent: Option<PathBuf>,
    },
    /// Build, make the image, then `cargo test --workspace`.
    Test {
        /// Run the slow tier (distro images) instead of the default one
        #[arg(long)]
        slow: bool,
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build, make the image, start instance `default` and run `uname -a` in it.
    Run,
    /// Build in release, make the image, then run the benchmarks.
    Bench {
        /// Arguments for the benchmark binary.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Fuzz the decoders a guest (or a user's file) can feed, with
    /// cargo-fuzz on nightly: one target or all, one after another.
    /// Corpora, seeds and crash inputs live in target/fuzz/.
    Fuzz {
        /// The target; all of them if omitted.
        #[arg(value_enum)]
        target: Option<fuzz::Target>,
        /// How long each target runs: seconds, or with s, m or h (`8h`);
        /// 0 runs one target until Ctrl-C.
        #[arg(long, default_value = "10m", value_parser = fuzz::parse_time)]
        time: std::time::Duration,
        /// Run what `cargo xtask test` runs instead: every target, 5
        /// minutes in all, building included.
        #[arg(long, conflicts_with_all = ["target", "time", "args"])]
        ci: bool,
        /// Extra arguments for libFuzzer (after `--`), e.g. `-fork=2`.
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::run().map(|()| ExitCode::SUCCESS),
        Task::Build { release } => {
            build::run(build::Profile::from_release(release)).map(|()| ExitCode::SUCCESS)
        }
        Task::Image {
            agent,
            which,
            kernel,
        } => image::run(agent.as_deref(), which, kernel).map(|made| {
            // Tests read the disk's path from the last line of stdout.
            if which == image::Which::DebianCloud {
                println!("{}", made.display());
            }
            ExitCode::SUCCESS
        }),
        Task::Kernel => kernel::run().map(|vmlinux| {
            println!("{}", vmlinux.display());
            ExitCode::SUCCESS
        }),
        Task::Test { slow, args } => test::run(&args, slow).map(|()| ExitCode::SUCCESS),
        Task::Run => run::run(),
        Task::Bench { args } => bench::run(&args).map(|()| ExitCode::SUCCESS),
        Task::Fuzz {
            target,
            time,
            ci,
            args,
        } => fuzz_task(target, time, ci, &args).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // `{:#}` prints the whole cause chain on one line.
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--time 0` means no limit.
fn fuzz_task(
    target: Option<fuzz::Target>,
    time: std::time::Duration,
    ci: bool,
    args: &[String],
) -> anyhow::Result<()> {
    if ci {
        setup::run()?;
        return fuzz::ci();
    }
    let time = (!time.is_zero()).then_some(time);
    let targets = match target {
        Some(t) => vec![t],
        None if time.is_none() => {
            anyhow::bail!("`--time 0` runs until Ctrl-C: name one target")
        }
        None => fuzz::Target::ALL.to_vec(),
    };
    fuzz::run(&targets, time, args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Task {
        Cli::try_parse_from(std::iter::once("xtask").chain(args.iter().copied()))
            .unwrap()
            .task
    }

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn test_and_bench_forward_their_arguments() {
        let Task::Test { args, slow } = parse(&["test", "--", "--nocapture", "vm"]) else {
            panic!()
        };
        assert_eq!(args, ["--nocapture", "vm"]);
        assert!(!slow);
        let Task::Test { slow, .. } = parse(&["test", "--slow"]) else {
            panic!()
        };
        assert!(slow);
        let Task::Bench { args } = parse(&["bench", "--quick", "ports"]) else {
            panic!()
        };
        assert_eq!(args, ["--quick", "ports"]);
        let Task::Bench { args } = parse(&["bench", "--", "--quick"]) else {
            panic!()
        };
        assert_eq!(args, ["--quick"]);
    }

    #[test]
    fn fuzz_takes_a_target_a_time_and_libfuzzer_arguments() {
        let Task::Fuzz {
            target,
            time,
            ci,
            args,
        } = parse(&["fuzz"])
        else {
            panic!()
        };
        assert!(!ci);
        assert_eq!(target, None);
        assert_eq!(time, std::time::Duration::from_secs(600));
        assert!(args.is_empty());
        let Task::Fuzz {
            target, time, args, ..
        } = parse(&["fuzz", "port-event", "--time", "8h", "--", "-fork=2"])
        else {
            panic!()
        };
        assert_eq!(target, Some(fuzz::Target::PortEvent));
        assert_eq!(time, std::time::Duration::from_secs(8 * 3600));
        assert_eq!(args, ["-fork=2"]);
        let Task::Fuzz { time, .. } = parse(&["fuzz", "frames", "--time", "0"]) else {
            panic!()
        };
        assert!(time.is_zero());
        assert!(Cli::try_parse_from(["xtask", "fuzz", "nothing"]).is_err());
        let Task::Fuzz { ci, .. } = parse(&["fuzz", "--ci"]) else {
            panic!()
        };
        assert!(ci);
        assert!(Cli::try_parse_from(["xtask", "fuzz", "--ci", "frames"]).is_err());
        assert!(Cli::try_parse_from(["xtask", "fuzz", "--ci", "--time", "1m"]).is_err());
        assert!(Cli::try_parse_from(["xtask", "fuzz", "--time", "1d"]).is_err());
    }

    #[test]
    fn image_names_which_image() {
        let Task::Image { which, .. } = parse(&["image", "debian"]) else {
            panic!()
        };
        assert_eq!(which, image::Which::Debian);
        let Task::Image { which, .. } = parse(&["image", "all"]) else {
            panic!()
        };
        assert_eq!(which, image::Which::All);
        let Task::Image { which, .. } = parse(&["image", "debian-cloud"]) else {
            panic!()
        };
        assert_eq!(which, image::Which::DebianCloud);
        assert!(Cli::try_parse_from(["xtask", "image", "ubuntu"]).is_err());
        let Task::Image { kernel, .. } = parse(&["image", "--kernel", "debian"]) else {
            panic!()
        };
        assert_eq!(kernel, image::KernelChoice::Debian);
        assert!(Cli::try_parse_from(["xtask", "image", "--kernel", "tiny"]).is_err());
    }

    #[test]
    fn image_takes_a_hidden_agent_override() {
        let Task::Image {
            agent,
            which,
            kernel,
        } = parse(&["image", "--agent", "/tmp/init"])
        else {
            panic!()
        };
        assert_eq!(agent.as_deref(), Some(std::path::Path::new("/tmp/init")));
        assert_eq!(which, image::Which::Default);
        assert_eq!(kernel, image::KernelChoice::Lima);
        let help = Cli::command()
            .find_subcommand_mut("image")
            .unwrap()
            .render_help()
            .to_string();
        assert!(!help.contains("--agent"), "{help}");
    }
}
