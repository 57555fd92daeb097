//! Issue 21: `limactl shell` and the `lima` wrapper as Lima's: flags on
//! both sides of the instance name, `--shell`/`LIMA_SHELL`, `--workdir`,
//! `--preserve-env` with Lima's block list, `--start`, and the default
//! template's mounts (the home read-only, `/tmp/lima` writable), so `lima`
//! starts in the current folder.
use std::path::Path;

use lima_tests::Lima;

/// `lima ARGS` with `LIMACTL` a script that prints its arguments: what
/// the wrapper would run.
fn wrapper_runs(lima: &Lima, env: &[(&str, &str)], args: &[&str]) -> String {
    use std::os::unix::fs::PermissionsExt;
    let echo = lima.home.path().join("print-args");
    std::fs::write(&echo, "#!/bin/sh\necho \"$*\"\n").unwrap();
    std::fs::set_permissions(&echo, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut c = lima.cmd("lima");
    c.env("LIMACTL", &echo)
        .env_remove("LIMA_WORKDIR")
        .env_remove("LIMA_SHELL")
        .envs(env.iter().copied())
        .args(args);
    lima.run(&mut c, None).ok().stdout()
}

/// No VM: the wrapper's arguments, and usage errors of `limactl shell`.
#[test]
fn the_wrapper_passes_its_arguments_and_usage_errors_exit_1() {
    let lima = Lima::new();
    // Everything after `lima` follows the instance name, flags included.
    assert_eq!(
        wrapper_runs(&lima, &[], &["--tty=false", "pwd"]),
        "shell default --tty=false pwd\n"
    );
    assert_eq!(
        wrapper_runs(
            &lima,
            &[
                ("LIMA_INSTANCE", "vm"),
                ("LIMA_WORKDIR", "/w"),
                ("LIMA_SHELL", "/bin/zsh")
            ],
            &["ls", "-l"]
        ),
        "shell --workdir /w --shell /bin/zsh vm ls -l\n"
    );
    // A lone -v/--version is limactl's version; with more words it is a command.
    assert_eq!(wrapper_runs(&lima, &[], &["-v"]), "--version\n");
    assert_eq!(
        wrapper_runs(&lima, &[], &["-v", "x"]),
        "shell default -v x\n"
    );
    let help = wrapper_runs(&lima, &[("LIMA_INSTANCE", "vm")], &["--help"]);
    assert!(
        help.starts_with("Usage: lima [COMMAND...]")
            && help.contains("/print-args shell vm\"")
            && help.contains("$LIMA_INSTANCE")
            && help.contains("$LIMA_SHELL")
            && help.contains("$LIMA_WORKDIR"),
        "{help}"
    );

    let r = lima
        .limactl(&["shell"])
        .fails_with("requires instance name as first argument");
    assert_eq!(r.code(), 1);
    lima.limactl(&["shell", "nosuch", "--workdir", "/tmp", "true"])
        .fails_with(
            "instance \"nosuch\" does not exist, run `limactl create nosuch` to create a new instance",
        );
    // Before the instance name only our flags are allowed.
    let r = lima.limactl(&["shell", "--foo", "vm", "true"]);
    assert_eq!(r.code(), 1, "{}", r.stderr());
    assert!(r.messages().contains("--foo"), "{}", r.stderr());
}

/// `PROGRAM ARGS` (`limactl` or `lima`, whose instance is ours) started in `cwd`.
fn in_dir(lima: &Lima, cwd: &Path, program: &str, args: &[&str]) -> lima_tests::Run {
    let mut c = lima.cmd(program);
    c.current_dir(cwd)
        .env("LIMA_INSTANCE", "sh21")
        .env_remove("LIMA_WORKDIR")
        .env_remove("LIMA_SHELL")
        .env_remove("LIMA_SHELLENV_ALLOW")
        .env_remove("LIMA_SHELLENV_BLOCK")
        .args(args);
    lima.run(&mut c, None)
}

/// One VM of the default template, started by an ordinary user.
#[test]
fn shell_and_lima_as_limas_on_the_default_template() {
    let lima = Lima::as_ordinary_user();
    let folder = lima.home_folder("lima-shell-test");
    let project = folder.0.clone();
    lima.start("sh21", &[]);

    // `lima` starts in the current folder (the home is shared), and its
    // own flags reach `limactl shell`.
    let r = in_dir(&lima, &project.join("sub"), "lima", &["--tty=false", "pwd"]).ok();
    assert_eq!(r.stdout(), format!("{}\n", project.join("sub").display()));
    // The home is read-only in the guest.
    let r = in_dir(&lima, &project, "lima", &["touch", "by-guest"]);
    assert_ne!(r.code(), 0, "the home is writable: {}", r.stdout());
    assert!(!project.join("by-guest").exists());
    // /tmp/lima is shared writable.
    let scratch = format!("/tmp/lima/sh21-{}", std::process::id());
    in_dir(
        &lima,
        &project,
        "lima",
        &["sh", "-c", &format!("echo w > {scratch}")],
    )
    .ok();
    assert_eq!(std::fs::read_to_string(&scratch).unwrap(), "w\n");
    std::fs::remove_file(&scratch).unwrap();

    // Flags right after the name; the command's own flags stay its own.
    let r = in_dir(
        &lima,
        &project,
        "limactl",
        &["shell", "sh21", "--workdir", "/tmp", "pwd"],
    )
    .ok();
    assert_eq!(r.stdout(), "/tmp\n");
    let r = in_dir(
        &lima,
        &project,
        "limactl",
        &["shell", "sh21", "ls", "-d", "/"],
    )
    .ok();
    assert_eq!(r.stdout(), "/\n");
    // Through the login shell as one line: builtins are commands.
    let r = in_dir(
        &lima,
        &project,
        "limactl",
        &["shell", "sh21", "command", "-v", "cd"],
    )
    .ok();
    assert_eq!(r.stdout(), "cd\n");

    // --shell and LIMA_SHELL: that program, as a login shell, gets the
    // command as one quoted line.
    in_dir(
        &lima,
        &project,
        "limactl",
        &[
            "shell",
            "sh21",
            "sh",
            "-c",
            "printf '#!/bin/sh\\necho \"fake: $*\"\\n' > /tmp/fake-sh && chmod +x /tmp/fake-sh",
        ],
    )
    .ok();
    let r = in_dir(
        &lima,
        &project,
        "limactl",
        &["shell", "--shell", "/tmp/fake-sh", "sh21", "echo", "a b"],
    )
    .ok();
    assert_eq!(r.stdout(), "fake: -l -c echo 'a b'\n");
    let mut c = lima.cmd("lima");
    c.current_dir(&project)
        .env("LIMA_INSTANCE", "sh21")
        .env("LIMA_SHELL", "/tmp/fake-sh")
        .args(["uname"]);
    assert_eq!(lima.run(&mut c, None).ok().stdout(), "fake: -l -c uname\n");
    // A shell the guest lacks: the command cannot start.
    let r = in_dir(
        &lima,
        &project,
        "limactl",
        &["shell", "sh21", "--shell=/no/such/sh", "true"],
    );
    assert_eq!(r.code(), 127, "{}", r.stderr());

    // --preserve-env passes the host's variables but Lima's blocked ones.
    let show = [
        "sh",
        "-c",
        "echo ${SH21_PASSED:-unset} ${SSH_SH21:-unset} $HOME",
    ];
    let with_env = |flags: &[&str]| {
        let mut c = lima.cmd("limactl");
        c.current_dir(&project)
            .env("SH21_PASSED", "passed")
            .env("SSH_SH21", "blocked")
            .env_remove("LIMA_SHELLENV_ALLOW")
            .env_remove("LIMA_SHELLENV_BLOCK")
            .arg("shell")
            .args(flags)
            .arg("sh21")
            .args(show);
        lima.run(&mut c, None).ok().stdout()
    };
    let guest_home = with_env(&[]);
    assert!(guest_home.starts_with("unset unset /home/"), "{guest_home}");
    let preserved = with_env(&["--preserve-env"]);
    assert_eq!(
        preserved,
        guest_home.replacen("unset unset", "passed unset", 1),
        "HOME is blocked, so it stays the guest's"
    );

    // A stopped instance: Lima's message, or --start boots it first.
    lima.limactl(&["stop", "sh21"]).ok();
    lima.limactl(&["shell", "sh21", "true"])
        .fails_with("instance \"sh21\" is stopped, run `limactl start sh21` to start the instance");
    let r = in_dir(
        &lima,
        &project,
        "limactl",
        &["shell", "--start", "--reconnect", "sh21", "echo", "started"],
    )
    .ok();
    assert_eq!(r.stdout(), "started\n");
    assert_eq!(lima.info("sh21")["status"], "Running");
}
