//! `cargo xtask fuzz`: the fuzz targets in `fuzz/` (cargo-fuzz, libFuzzer,
//! nightly), one or all, for as long as asked; and the bounded run that
//! `cargo xtask test` (CI) makes of all of them.
//!
//! Everything lives under `target/fuzz/`, out of git: `build/` (the
//! instrumented binaries), `corpus/<target>/` (what libFuzzer found
//! interesting, kept from run to run), `seeds/<target>/` (written fresh
//! from real messages each run, [`seeds`]), `artifacts/<target>/` (crash,
//! timeout and out-of-memory inputs). A run that ends with a crash names
//! the target and the saved input, and the command that replays it.
//!
//! The binaries are built once per run with `cargo fuzz build` and then
//! started directly: what runs is exactly what the replay command runs.

mod seeds;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{cmd, setup};

/// The fuzz targets (`fuzz/fuzz_targets/*.rs`; their docs say what they
/// feed and check).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// The share protocol, served by a real fs-server on a scratch share.
    Share,
    /// The control, exec, events, forward and share-setup frames, both ways.
    Frames,
    /// The chunk framing of forwarded connections.
    Relay,
    /// The agent's reading of eBPF ring buffer records.
    PortEvent,
    /// `lima.yaml`: parse, resolve, port forwarding rules.
    LimaYaml,
}

impl Target {
    pub const ALL: &'static [Target] = &[
        Target::Share,
        Target::Frames,
        Target::Relay,
        Target::PortEvent,
        Target::LimaYaml,
    ];

    /// The binary's name in `fuzz/Cargo.toml`.
    pub fn name(self) -> &'static str {
        match self {
            Target::Share => "share",
            Target::Frames => "frames",
            Target::Relay => "relay",
            Target::PortEvent => "port-event",
            Target::LimaYaml => "lima-yaml",
        }
    }

    /// libFuzzer's `-timeout`: one input running longer is a finding. The
    /// share target builds a scratch tree and a server per input, and
    /// gives the server 20 s itself.
    fn input_timeout(self) -> u32 {
        match self {
            Target::Share => 30,
            _ => 10,
        }
    }

    /// A libFuzzer dictionary in `fuzz/dicts/`, if the target has one.
    fn dictionary(self) -> Option<&'static str> {
        match self {
            Target::LimaYaml => Some("lima-yaml.dict"),
            _ => None,
        }
    }
}

/// The whole fuzz step of `cargo xtask test`, building included, as the
/// issue bounds it (5 minutes per CI run).
pub const CI_BUDGET: Duration = Duration::from_secs(300);
/// What starting a target costs besides its fuzzing time (process start,
/// reading the corpus), kept out of the time it is given.
const CI_STARTUP: Duration = Duration::from_secs(5);
/// Each target fuzzes at least this long in CI, even when a cold build
/// left less (the step then overruns its budget, and says so).
const CI_MIN_PER_TARGET: Duration = Duration::from_secs(10);

/// libFuzzer's memory limits in MB: the whole process, and one allocation.
/// No decoder should allocate far beyond its input; a 1 MiB read is the
/// largest legitimate buffer.
const RSS_LIMIT_MB: u32 = 2048;
const MALLOC_LIMIT_MB: u32 = 256;

/// `cargo xtask fuzz`: `targets` one after another, each for `time` (or
/// until Ctrl-C when `None`), with `extra` passed to libFuzzer.
pub fn run(targets: &[Target], time: Option<Duration>, extra: &[String]) -> Result<()> {
    setup::run()?;
    build()?;
    let mut failures = Vec::new();
    for &target in targets {
        if let Err(e) = fuzz(target, time, extra) {
            eprintln!("xtask fuzz: {e:#}");
            failures.push(e);
        }
    }
    finish(failures)
}

/// The fuzz step of `cargo xtask test`: build, then every target for an
/// equal share of what [`CI_BUDGET`] leaves. Setup has run.
pub fn ci() -> Result<()> {
    let start = Instant::now();
    build()?;
    let built = start.elapsed();
    let per_target = per_target_time(built, Target::ALL.len());
    eprintln!(
        "xtask fuzz: built in {} s; {} targets, {} s each",
        built.as_secs(),
        Target::ALL.len(),
        per_target.as_secs()
    );
    let mut failures = Vec::new();
    for &target in Target::ALL {
        if let Err(e) = fuzz(target, Some(per_target), &[]) {
            eprintln!("xtask fuzz: {e:#}");
            failures.push(e);
        }
    }
    let total = start.elapsed();
    eprintln!(
        "xtask fuzz: done in {} s (build {} s), budget {} s{}",
        total.as_secs(),
        built.as_secs(),
        CI_BUDGET.as_secs(),
        if total > CI_BUDGET {
            ": OVER BUDGET (was the build cold?)"
        } else {
            ""
        }
    );
    finish(failures)
}

/// Each target's share of what the build left of the budget.
fn per_target_time(built: Duration, targets: usize) -> Duration {
    let left = CI_BUDGET.saturating_sub(built);
    let share = left / targets as u32;
    share.saturating_sub(CI_STARTUP).max(CI_MIN_PER_TARGET)
}

/// Fails with every failure, so the last line of the log names each
/// target and its input.
fn finish(failures: Vec<anyhow::Error>) -> Result<()> {
    if failures.is_empty() {
        return Ok(());
    }
    let all: Vec<String> = failures.iter().map(|e| format!("{e:#}")).collect();
    bail!("{}", all.join("; "))
}

/// Where everything lives: `target/fuzz`.
fn work_dir() -> PathBuf {
    cmd::target_dir().join("fuzz")
}

fn build_dir() -> PathBuf {
    work_dir().join("build")
}

/// The host triple, which cargo-fuzz builds for and names its output after.
fn triple() -> String {
    format!("{}-unknown-linux-gnu", std::env::consts::ARCH)
}

/// The instrumented binary of `target`.
fn binary(target: Target) -> PathBuf {
    build_dir()
        .join(triple())
        .join("release")
        .join(target.name())
}

/// `cargo +nightly fuzz build` of every target: release with debug
/// assertions (so overflow checks stay on) and AddressSanitizer, which
/// also lets libFuzzer see each allocation's size. Through `rustup run`,
/// since the `cargo` on `PATH` under `cargo xtask` may be a toolchain's
/// own rather than rustup's proxy, which alone understands `+nightly`.
fn build() -> Result<()> {
    cmd::run(
        Command::new("rustup")
            .current_dir(cmd::root())
            .args([
                "run",
                "nightly",
                "cargo",
                "fuzz",
                "build",
                "--debug-assertions",
            ])
            .arg("--fuzz-dir")
            .arg(cmd::root().join("fuzz"))
            .arg("--target-dir")
            .arg(build_dir())
            .args(["--target", &triple()]),
    )
}

/// Where one target's inputs go: its corpus (read and written), its seeds
/// (read only) and what it saves on a failure.
struct Dirs {
    corpus: PathBuf,
    seeds: PathBuf,
    artifacts: PathBuf,
}

impl Dirs {
    fn under(work: &Path, target: Target) -> Dirs {
        let name = target.name();
        Dirs {
            corpus: work.join("corpus").join(name),
            seeds: work.join("seeds").join(name),
            artifacts: work.join("artifacts").join(name),
        }
    }
}

/// Fuzzes one target; fails naming it and the inputs it saved.
fn fuzz(target: Target, time: Option<Duration>, extra: &[String]) -> Result<()> {
    let dirs = Dirs::under(&work_dir(), target);
    seeds::write(target, &dirs.seeds)?;
    run_target(&binary(target), target, &dirs, time, extra)
}

/// Runs the libFuzzer binary `program` of `target`.
fn run_target(
    program: &Path,
    target: Target,
    dirs: &Dirs,
    time: Option<Duration>,
    extra: &[String],
) -> Result<()> {
    for dir in [&dirs.corpus, &dirs.artifacts] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let before = listing(&dirs.artifacts)?;
    let mut run = Command::new(program);
    run.current_dir(cmd::root())
        .arg(&dirs.corpus)
        .arg(&dirs.seeds)
        .arg(format!("-artifact_prefix={}/", dirs.artifacts.display()))
        .arg(format!("-timeout={}", target.input_timeout()))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg(format!("-malloc_limit_mb={MALLOC_LIMIT_MB}"))
        .arg("-print_final_stats=1");
    if let Some(time) = time {
        run.arg(format!("-max_total_time={}", time.as_secs().max(1)));
    }
    if let Some(dict) = target.dictionary() {
        run.arg(format!(
            "-dict={}",
            cmd::root().join("fuzz/dicts").join(dict).display()
        ));
    }
    run.args(extra);
    let status = cmd::status(&mut run)?;
    if status.success() {
        return Ok(());
    }
    let name = target.name();
    let saved: Vec<String> = listing(&dirs.artifacts)?
        .into_iter()
        .filter(|p| !before.contains(p))
        .map(|p| p.display().to_string())
        .collect();
    let Some(first) = saved.first() else {
        bail!("fuzz target `{name}` failed ({status}) and saved no input");
    };
    // libFuzzer names each input after what it did: crash-, timeout-,
    // oom-, leak-.
    bail!(
        "fuzz target `{name}` failed ({status}); input saved at {}; replay with `{} {first}`",
        saved.join(", "),
        program.display(),
    )
}

/// The files in `dir`.
fn listing(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    Ok(entries.flatten().map(|e| e.path()).collect())
}

/// `--time`: seconds, or a number with `s`, `m` or `h`; zero means no limit.
pub fn parse_time(s: &str) -> Result<Duration, String> {
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => s.split_at(at),
        None => (s, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a time (use e.g. 600, 90s, 10m or 8h)"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (use s, m or h)")),
    };
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_seconds_minutes_and_hours() {
        assert_eq!(parse_time("600"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_time("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_time("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_time("8h"), Ok(Duration::from_secs(8 * 3600)));
        assert_eq!(parse_time("0"), Ok(Duration::ZERO));
        assert!(parse_time("1d").is_err());
        assert!(parse_time("m").is_err());
        assert!(parse_time("").is_err());
    }

    #[test]
    fn ci_splits_what_the_build_leaves() {
        // A warm build: the budget less the build, split, less start-up.
        assert_eq!(
            per_target_time(Duration::from_secs(50), 5),
            Duration::from_secs(45)
        );
        // A cold build that ate most of the budget: the floor.
        assert_eq!(
            per_target_time(Duration::from_secs(290), 5),
            CI_MIN_PER_TARGET
        );
        assert_eq!(
            per_target_time(Duration::from_secs(900), 5),
            CI_MIN_PER_TARGET
        );
    }

    #[test]
    fn every_target_is_a_binary_of_the_fuzz_crate() {
        let manifest = std::fs::read_to_string(cmd::root().join("fuzz/Cargo.toml")).unwrap();
        for target in Target::ALL {
            assert!(
                manifest.contains(&format!("name = \"{}\"", target.name())),
                "{target:?} is not in fuzz/Cargo.toml"
            );
            if let Some(dict) = target.dictionary() {
                assert!(
                    cmd::root().join("fuzz/dicts").join(dict).is_file(),
                    "{dict}"
                );
            }
        }
    }

    /// A stand-in for a libFuzzer binary: a shell script that saves an
    /// input under `-artifact_prefix` (if `save`) and exits with `code`.
    fn fake_fuzzer(dir: &Path, save: bool, code: i32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let script = dir.join(format!("fuzzer-{save}-{code}"));
        let save = if save {
            r#"echo input > "${prefix}crash-0123""#
        } else {
            ""
        };
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nfor a in \"$@\"; do case \"$a\" in -artifact_prefix=*) \
                 prefix=\"${{a#-artifact_prefix=}}\";; esac; done\n{save}\nexit {code}\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        script
    }

    #[test]
    fn a_failure_names_the_target_and_the_saved_input() {
        let work = std::env::temp_dir().join(format!("xtask-fuzz-test-{}", std::process::id()));
        std::fs::create_dir_all(&work).unwrap();
        let dirs = Dirs::under(&work, Target::Relay);
        let run = |script: PathBuf| {
            // A process another test forks while a script is being written
            // holds it open for writing until it execs: ETXTBSY, once.
            for _ in 0..50 {
                let result = run_target(&script, Target::Relay, &dirs, None, &[]);
                let busy = result.as_ref().is_err_and(|e| {
                    e.root_cause()
                        .downcast_ref::<std::io::Error>()
                        .and_then(std::io::Error::raw_os_error)
                        == Some(nix::errno::Errno::ETXTBSY as i32)
                });
                if !busy {
                    return result;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            panic!("{} stayed busy", script.display())
        };

        run(fake_fuzzer(&work, false, 0)).unwrap();

        let e = run(fake_fuzzer(&work, true, 77)).unwrap_err().to_string();
        let input = dirs.artifacts.join("crash-0123");
        assert!(input.is_file());
        assert!(e.contains("fuzz target `relay` failed"), "{e}");
        assert!(
            e.contains(&format!("input saved at {}", input.display())),
            "{e}"
        );
        assert!(e.contains("replay with `"), "{e}");

        // An input saved by an earlier run is not this run's.
        let e = run(fake_fuzzer(&work, false, 1)).unwrap_err().to_string();
        assert!(
            e.contains("`relay` failed") && e.contains("saved no input"),
            "{e}"
        );

        let e = finish(vec![anyhow::anyhow!("one"), anyhow::anyhow!("two")]).unwrap_err();
        assert_eq!(e.to_string(), "one; two");
        std::fs::remove_dir_all(&work).unwrap();
    }

    #[test]
    fn target_names_are_the_command_line_names() {
        use clap::ValueEnum;
        for target in Target::ALL {
            let value = target.to_possible_value().unwrap();
            assert_eq!(value.get_name(), target.name());
        }
    }
}
