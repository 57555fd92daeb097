//! Issue 22: docker in our built-in Debian image (`builtin:docker`), the
//! engine started and supervised by our agent, its socket on the host.
//!
//! The host's `docker` CLI talks to the guest's engine with `DOCKER_HOST`
//! set to the forwarded socket (never a host daemon). Needs
//! `cargo xtask image docker` (`cargo xtask test` makes it).
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lima_tests::{Lima, Run};

/// The host's docker CLI.
fn docker_cli() -> PathBuf {
    ["/usr/local/bin/docker", "/usr/bin/docker"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("no docker CLI on this host (/usr/local/bin/docker): install docker.io's CLI")
}

/// `docker ARGS` on the host against the instance's forwarded socket, with
/// a config directory of its own (no contexts of the user's).
fn docker(lima: &Lima, name: &str, args: &[&str]) -> Run {
    let sock = lima.instance_dir(name).join("sock/docker.sock");
    let config = lima.home.path().join("docker-config");
    let mut c = Command::new(docker_cli());
    c.env("DOCKER_HOST", format!("unix://{}", sock.display()))
        .env("DOCKER_CONFIG", &config)
        .env_remove("DOCKER_CONTEXT")
        // The classic builder: 20.10's BuildKit wants a session the CLI
        // sets up over the API; the classic one needs nothing more.
        .env("DOCKER_BUILDKIT", "0")
        .args(args);
    lima.run(&mut c, None)
}

/// A build context with Debian's static busybox and a Dockerfile `FROM
/// scratch`.
fn busybox_context(lima: &Lima, dir: &Path) {
    lima_tests::busybox::busybox(&lima.bin_dir, "amd64", dir);
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /busybox\nCMD [\"/busybox\", \"echo\", \"hi\"]\n",
    )
    .unwrap();
}

fn guest(lima: &Lima, name: &str, script: &str) -> String {
    lima.shell(name, &["sh", "-c", script])
        .ok()
        .stdout()
        .trim()
        .to_string()
}

/// Docker's own `check-config.sh` (Debian's docker.io ships it), run in
/// the guest on the running kernel's `/proc/config.gz`: nothing of its
/// "Generally Necessary" section may be missing (the containers fragment
/// of our kernel, `kernel/containers.config`). Its exit code is no use:
/// any missing optional feature sets it too.
fn kernel_passes_docker_check_config(lima: &Lima, name: &str) {
    let out = lima
        .shell(
            name,
            &[
                "sh",
                "-c",
                "bash /usr/share/docker.io/contrib/check-config.sh 2>&1 || true",
            ],
        )
        .ok()
        .stdout();
    let plain: String = {
        // Strip its colour escapes (ESC [ ... m).
        let mut s = String::new();
        let mut chars = out.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                for d in chars.by_ref() {
                    if d == 'm' {
                        break;
                    }
                }
            } else {
                s.push(c);
            }
        }
        s
    };
    let section: Vec<&str> = plain
        .lines()
        .skip_while(|l| !l.starts_with("Generally Necessary:"))
        .skip(1)
        .take_while(|l| !l.starts_with("Optional Features:"))
        .collect();
    let enabled = section
        .iter()
        .filter(|l| l.contains("CONFIG_") && l.ends_with(": enabled"))
        .count();
    let bad: Vec<&&str> = section
        .iter()
        .filter(|l| l.contains("missing") || l.contains("not "))
        .collect();
    assert!(bad.is_empty(), "check-config.sh: {bad:?}\n{plain}");
    assert!(
        enabled >= 20,
        "check-config.sh listed {enabled} options:\n{plain}"
    );
}

/// A busybox httpd container publishing `port` → 80, serving `text`.
fn serve(lima: &Lima, name: &str, container: &str, port: u16, text: &str) {
    let script = format!(
        "/busybox mkdir -p /www && echo {text} > /www/index.html && exec /busybox httpd -f -p 80 -h /www"
    );
    docker(
        lima,
        name,
        &[
            "run",
            "-d",
            "--name",
            container,
            "-p",
            &format!("{port}:80"),
            "lima-bb",
            "/busybox",
            "sh",
            "-c",
            &script,
        ],
    )
    .ok();
}

/// The body of `GET /` on the host's 127.0.0.1:`port`, if it answers.
fn http_get(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// `ports.json`'s NAT watcher: its status and how many rule dumps it made.
fn nat(lima: &Lima, name: &str) -> (String, u64) {
    let text =
        std::fs::read_to_string(lima.instance_dir(name).join("ports.json")).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    (
        v["nat"]["watcher"].as_str().unwrap_or_default().to_string(),
        v["nat"]["dumps"].as_u64().unwrap_or_default(),
    )
}

/// A local registry on the host (Debian's docker-registry), on a free
/// port of 127.0.0.1, which the guest reaches as host.lima.internal.
struct Registry {
    child: std::process::Child,
    port: u16,
}

impl Registry {
    fn start(lima: &Lima) -> Registry {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = lima.home.path().join("registry");
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("docker-registry (Debian's; `cargo xtask setup` installs it)");
        lima.wait_until("the registry listens", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Registry { child, port }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What both templates must give: the host CLI reaches the guest engine
/// through a 0600 socket, images build and run, storage is overlay2 on the
/// data disk, and `host.lima.internal` names the host.
fn check_engine(lima: &Lima, name: &str, started: Instant) {
    let sock = lima.instance_dir(name).join("sock/docker.sock");
    let mode = std::fs::metadata(&sock)
        .unwrap_or_else(|e| panic!("{}: {e}", sock.display()))
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{} is {mode:o}", sock.display());
    let v = docker(
        lima,
        name,
        &["version", "--format", "{{.Server.KernelVersion}}"],
    )
    .ok();
    eprintln!(
        "{name}: start to engine answers on the host: {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(v.stdout().trim(), guest(lima, name, "uname -r"));
    let info = docker(
        lima,
        name,
        &[
            "info",
            "--format",
            "{{.Name}} {{.Driver}} {{.KernelVersion}}",
        ],
    )
    .ok()
    .stdout();
    let words: Vec<&str> = info.split_whitespace().collect();
    assert_eq!(
        words.first().copied(),
        Some(guest(lima, name, "cat /proc/sys/kernel/hostname").as_str()),
        "{info}"
    );
    assert_eq!(words.get(1).copied(), Some("overlay2"), "{info}");

    // Built from the host's folder, run in the guest.
    let ctx = lima.home.path().join("ctx");
    busybox_context(lima, &ctx);
    docker(
        lima,
        name,
        &["build", "-q", "-t", "lima-bb", &ctx.to_string_lossy()],
    )
    .ok();
    let r = docker(
        lima,
        name,
        &["run", "--rm", "lima-bb", "/busybox", "echo", "hi"],
    )
    .ok();
    assert_eq!(r.stdout(), "hi\n");
    // The container is on the engine's bridge network (iptables with
    // nf_tables in the guest).
    let r = docker(
        lima,
        name,
        &[
            "run", "--rm", "lima-bb", "/busybox", "ip", "-4", "-o", "addr", "show", "eth0",
        ],
    )
    .ok();
    assert!(r.stdout().contains("inet 172.17."), "{}", r.stdout());

    // `lima docker build .` in a shared folder, with the guest's CLI.
    let shared = PathBuf::from(format!("/tmp/lima/h22a-docker-{}", std::process::id()));
    busybox_context(lima, &shared);
    let mut c = lima.cmd("lima");
    c.current_dir(&shared)
        .env("LIMA_INSTANCE", name)
        .env_remove("LIMA_WORKDIR")
        .args(["docker", "build", "-q", "-t", "lima-bb-guest", "."]);
    let built = lima.run(&mut c, None);
    let _ = std::fs::remove_dir_all(&shared);
    built.ok();
    let r = docker(lima, name, &["run", "--rm", "lima-bb-guest"]).ok();
    assert_eq!(r.stdout(), "hi\n");

    assert_eq!(
        guest(lima, name, "getent hosts host.lima.internal"),
        "10.0.2.2        host.lima.internal"
    );
}

/// The rootless engine (`template:docker`, as Lima's), one VM.
#[test]
fn docker_template_runs_a_rootless_engine_the_host_cli_reaches() {
    let lima = Lima::new();
    let started = Instant::now();
    let r = lima
        .limactl(&[
            "start",
            "--name",
            "dk",
            "--timeout",
            "10m",
            "template:docker",
        ])
        .ok();
    // The start message says how to use it.
    let sock = lima.instance_dir("dk").join("sock/docker.sock");
    let out = r.messages() + &r.stdout();
    assert!(
        out.contains(&format!(
            "docker context create lima-dk --docker \"host=unix://{}\"",
            sock.display()
        )),
        "{out}"
    );
    assert!(out.contains("docker context use lima-dk"), "{out}");
    check_engine(&lima, "dk", started);
    // Rootless: the engine runs as the guest user, its data in their home.
    let user = guest(&lima, "dk", "id -un");
    let owner = guest(&lima, "dk", "ps -o user= -C dockerd");
    assert_eq!(owner, user);
    let root = docker(&lima, "dk", &["info", "--format", "{{.DockerRootDir}}"])
        .ok()
        .stdout();
    assert!(root.trim().ends_with("/.local/share/docker"), "{root}");
    // Lima's `docker.lima`: the host CLI at the forwarded socket, or docker
    // in the guest when the host has no CLI; a missing instance is named.
    let wrapper = |env: &[(&str, &str)], args: &[&str]| {
        let mut c = lima.cmd("docker.lima");
        c.env("LIMA_INSTANCE", "dk")
            .env("DOCKER_CONFIG", lima.home.path().join("docker-config"))
            .envs(env.iter().copied())
            .args(args);
        lima.run(&mut c, None)
    };
    let fmt = ["info", "--format", "{{.DockerRootDir}}"];
    assert_eq!(wrapper(&[], &fmt).ok().stdout(), root);
    assert_eq!(
        wrapper(&[("DOCKER", "no-such-docker-cli")], &fmt)
            .ok()
            .stdout(),
        root
    );
    let r = wrapper(&[("LIMA_INSTANCE", "nosuch")], &["ps"]);
    assert_eq!(r.code(), 1);
    assert!(
        r.stderr().contains("instance \"nosuch\" does not exist, run `limactl create --name=nosuch template:docker`"),
        "{}",
        r.stderr()
    );

    // A published port answers on the host, and goes with its container.
    serve(&lima, "dk", "web", 8090, "rootless");
    lima.wait_until("host port 8090 answers", Duration::from_secs(60), || {
        http_get(8090).is_some_and(|b| b.contains("rootless"))
    });
    docker(&lima, "dk", &["rm", "-f", "web"]).ok();
    lima.wait_until("host port 8090 is gone", Duration::from_secs(60), || {
        http_get(8090).is_none()
    });
}

/// The rootful engine (`template:docker-rootful`): containerd + dockerd as
/// root, restarted by the agent when it dies.
#[test]
fn docker_rootful_engine_is_supervised_and_restarted() {
    let lima = Lima::new();
    let started = Instant::now();
    lima.limactl(&[
        "start",
        "--name",
        "dr",
        "--timeout",
        "10m",
        "template:docker-rootful",
    ])
    .ok();
    check_engine(&lima, "dr", started);
    let root = docker(&lima, "dr", &["info", "--format", "{{.DockerRootDir}}"])
        .ok()
        .stdout();
    assert_eq!(root.trim(), "/var/lib/docker");
    kernel_passes_docker_check_config(&lima, "dr");
    assert_eq!(
        guest(&lima, "dr", "df --output=source /var/lib/docker | tail -1"),
        guest(&lima, "dr", "df --output=source /home | tail -1"),
        "/var/lib/docker is not on the data disk"
    );

    // Killed, it comes back; the state file counts the attempts. It comes
    // back without a userland proxy: published ports are NAT rules only.
    // It also trusts the host's local registry.
    let registry = Registry::start(&lima);
    let reg = format!("host.lima.internal:{}", registry.port);
    let daemon_json =
        format!("{{\"userland-proxy\": false, \"insecure-registries\": [\"{reg}\"]}}");
    lima.shell(
        "dr",
        &[
            "sudo",
            "sh",
            "-c",
            &format!("mkdir -p /etc/docker && echo '{daemon_json}' > /etc/docker/daemon.json"),
        ],
    )
    .ok();
    let before = guest(&lima, "dr", "pgrep -x dockerd");
    lima.shell("dr", &["sudo", "kill", "-9", &before]).ok();
    lima.wait_until("dockerd restarted", Duration::from_secs(180), || {
        docker(&lima, "dr", &["version", "--format", "{{.Server.Version}}"]).code() == 0
    });
    let after = guest(&lima, "dr", "pgrep -x dockerd");
    assert_ne!(after, before);
    let state = guest(&lima, "dr", "cat /run/lima-guest-agent/services/dockerd");
    assert_eq!(state, "running (attempt 2)");
    // The host recorded each change and `limactl list` shows the last.
    lima.wait_until(
        "limactl list shows the restart",
        Duration::from_secs(30),
        || lima.info("dr")["services"]["dockerd"] == "running (attempt 2)",
    );
    assert_eq!(
        lima.info("dr")["services"]["containerd"],
        "running (attempt 1)"
    );
    let events = std::fs::read_to_string(lima.instance_dir("dr").join("ha.events.jsonl")).unwrap();
    let dockerd: Vec<String> = events
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "service" && e["name"] == "dockerd")
        .map(|e| e["state"].as_str().unwrap_or_default().to_string())
        .collect();
    let exited = dockerd
        .iter()
        .position(|s| s.starts_with("exited (attempt 1)"));
    let again = dockerd.iter().position(|s| s == "running (attempt 2)");
    assert!(
        matches!((exited, again), (Some(a), Some(b)) if a < b),
        "dockerd events: {dockerd:?}"
    );

    // Pushed to the host's registry through host.lima.internal, removed,
    // pulled back and run.
    let tag = format!("{reg}/lima-bb:1");
    docker(&lima, "dr", &["tag", "lima-bb", &tag]).ok();
    docker(&lima, "dr", &["push", &tag]).ok();
    docker(&lima, "dr", &["rmi", &tag]).ok();
    docker(&lima, "dr", &["pull", &tag]).ok();
    let r = docker(&lima, "dr", &["run", "--rm", &tag]).ok();
    assert_eq!(r.stdout(), "hi\n");
    drop(registry);

    // A foreign-arch image: Debian's arm64 busybox, built for linux/arm64
    // (no RUN step, so the build needs no emulation), runs through the
    // qemu-aarch64 handler our agent registered (flag F).
    let arm = lima.home.path().join("arm-ctx");
    lima_tests::busybox::busybox(&lima.bin_dir, "arm64", &arm);
    std::fs::write(
        arm.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /busybox\nENTRYPOINT [\"/busybox\"]\n",
    )
    .unwrap();
    docker(
        &lima,
        "dr",
        &[
            "build",
            "-q",
            "--platform",
            "linux/arm64",
            "-t",
            "arm-bb",
            &arm.to_string_lossy(),
        ],
    )
    .ok();
    let r = docker(
        &lima,
        "dr",
        &["image", "inspect", "-f", "{{.Architecture}}", "arm-bb"],
    )
    .ok();
    assert_eq!(r.stdout().trim(), "arm64");
    let r = docker(
        &lima,
        "dr",
        &[
            "run",
            "--rm",
            "--platform",
            "linux/arm64",
            "arm-bb",
            "uname",
            "-m",
        ],
    )
    .ok();
    assert_eq!(r.stdout().trim(), "aarch64");

    // NAT-only publication: no docker-proxy, yet the host port answers,
    // found from nf_tables notifications.
    let (watcher, _) = nat(&lima, "dr");
    assert_eq!(watcher, "nftables notifications");
    serve(&lima, "dr", "web", 8080, "rootful");
    lima.wait_until("host port 8080 answers", Duration::from_secs(60), || {
        http_get(8080).is_some_and(|b| b.contains("rootful"))
    });
    assert_eq!(guest(&lima, "dr", "pgrep -c docker-proxy || true"), "0");
    // Idle: no rule dumps while nothing changes.
    let (_, dumps) = nat(&lima, "dr");
    lima.shell("dr", &["sleep", "5"]).ok();
    assert_eq!(nat(&lima, "dr").1, dumps, "rules were read while idle");
    docker(&lima, "dr", &["rm", "-f", "web"]).ok();
    lima.wait_until("host port 8080 is gone", Duration::from_secs(60), || {
        http_get(8080).is_none()
    });

    // A host port that is taken is reported with the container, and
    // forwarded once it frees.
    let held = std::net::TcpListener::bind("127.0.0.1:8081").unwrap();
    serve(&lima, "dr", "taken", 8081, "freed");
    let events = lima.instance_dir("dr").join("ha.events.jsonl");
    lima.wait_until(
        "a warning names the taken port and the container",
        Duration::from_secs(60),
        || {
            let text = std::fs::read_to_string(&events).unwrap_or_default();
            text.contains("127.0.0.1:8081/tcp is already in use") && text.contains("taken")
        },
    );
    drop(held);
    lima.wait_until("host port 8081 answers", Duration::from_secs(60), || {
        http_get(8081).is_some_and(|b| b.contains("freed"))
    });
}

/// An engine that cannot start fails `limactl start` with its log lines.
#[test]
fn an_engine_that_fails_fails_the_start_with_its_last_log_lines() {
    let lima = Lima::new();
    let yaml = lima.home.path().join("broken.yaml");
    std::fs::write(
        &yaml,
        "images:\n- location: builtin:docker\ncpus: 2\nmemory: 1GiB\n\
         provision:\n- mode: system\n  script: |\n    #!/bin/sh\n\
         \x20   mkdir -p /etc/docker && echo '{not json' > /etc/docker/daemon.json\n\
         \x20   exec lima-guest-agent tool service start docker-rootful\n\
         portForwards:\n- guestSocket: /run/docker.sock\n  hostSocket: docker.sock\n",
    )
    .unwrap();
    let r = lima.limactl(&[
        "start",
        "--name",
        "broken",
        "--timeout",
        "10m",
        &yaml.to_string_lossy(),
    ]);
    let r = r.fails_with("dockerd failed to start");
    let out = r.messages();
    assert!(out.contains("/etc/docker/daemon.json"), "{out}");
    // No host socket for an engine that never answered.
    assert!(!lima
        .instance_dir("broken")
        .join("sock/docker.sock")
        .exists());
}
