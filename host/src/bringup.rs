//! One bring-up for every VM: the long-lived host agent (`hostagent.rs`)
//! and the one-shot `lima-run` (`oneshot.rs`) both call [`bring_up`].
//!
//! ```text
//! lima.yaml ─▶ resolve image ─▶ plan devices ─▶ driver.start ─▶ wait for the agent
//!                                                    │            (or the VM's end, a stop
//!                                                    │             request, a deadline)
//!                                                    ▼
//!                              Up ◀─ start forwarding ◀─ mount shares
//!                                                        (a confined lima-fs-server
//!                                                         process per vsockfs share)
//! ```
//!
//! The callers differ only in what they observe ([`Phase`], for events or
//! timings), how long they wait, and how they stop ([`Shutdown`]); every
//! failure after the VM started stops it before returning.
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lima_proto::errors::error_chain;
use lima_proto::{AgentInfo, ControlReply, ControlRequest, ExecRequest};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::client;
use crate::driver::{select, Launch, RunningVm};
use crate::instance::Instance;
use crate::plan::{self, VmPlan};
use crate::vsock::{Transport, TransportSpec};

/// How long our own image gets to power the VM off before QMP `quit`.
const GUEST_SHUTDOWN_GRACE: Duration = Duration::from_secs(20);
/// How long a distro guest gets to power off (its init stops every service;
/// under TCG that takes tens of seconds) before it is forced.
pub const DISTRO_SHUTDOWN_GRACE: Duration = Duration::from_secs(150);
/// How long QEMU gets after QMP `quit` on a clean shutdown.
const QMP_GRACE: Duration = Duration::from_secs(5);
/// How long share servers get to end by themselves after the VM did.
const SERVER_GRACE: Duration = Duration::from_secs(2);
/// What the guest agent prints on the console once it listens on vsock.
const READY_MARKER: &[u8] = b"agent ready on vsock port";

/// Steps a caller may want to report.
pub enum Phase<'a> {
    /// The VM's process runs.
    Spawned {
        accel: &'a str,
        transport: &'a TransportSpec,
    },
    /// The guest printed its first console output (only with
    /// [`Options::watch_console`]).
    KernelStarted,
    AgentReady(&'a AgentInfo),
    SharesMounted,
    /// A shutdown of a running VM begins.
    Stopping,
    /// The guest did not power off by itself and was stopped by force;
    /// why.
    Forced(&'a str),
}

/// How a VM is stopped.
#[derive(Debug, Clone, Copy)]
pub enum Shutdown {
    /// Guest power-off through the agent, then the hypervisor, then kill:
    /// a guest that writes a disk must get to sync it.
    Clean,
    /// The hypervisor at once, then kill after the grace: for throw-away
    /// guests with nothing to keep.
    Quick(Duration),
}

pub type Observer = Arc<dyn Fn(Phase<'_>) + Send + Sync>;

pub struct Options {
    /// Give up if the guest agent has not answered by then.
    pub ready_timeout: Option<Duration>,
    pub shutdown: Shutdown,
    pub watch_console: bool,
    pub observe: Observer,
    /// Give our own images the instance's data disk (`/var` and `/home`
    /// that survive a restart); `lima-run`'s throw-away VMs go without.
    pub data_disk: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BringUpError {
    /// Nothing ran: the image, the driver or its helpers failed.
    #[error("{0}")]
    Prepare(String),
    /// `portForwards[index]` cannot be used here.
    #[error("portForwards[{index}]: {msg}")]
    PortForwards { index: usize, msg: String },
    /// The VM ended before the guest agent answered; how it ended.
    #[error("the VM stopped before the guest agent answered ({0})")]
    VmEnded(String),
    /// The guest agent did not answer in time; the VM was stopped.
    #[error("the guest agent did not answer within {0:?}")]
    NoAnswer(Duration),
    /// A stop was requested before the VM was up; it was stopped.
    #[error("stopped before the guest agent answered")]
    Stopped,
    /// A share could not be mounted; the VM was stopped.
    #[error("{0}")]
    Shares(String),
    /// The guest agent answered in another protocol version (an image
    /// built before the host tools); the VM was stopped.
    #[error("{0}")]
    AgentVersion(String),
}

/// A stop request (signals, Ctrl-C) that can be awaited again and again.
pub struct Stop(watch::Receiver<bool>);

impl Stop {
    /// Requested when one of `kinds` arrives.
    pub fn on_signals(kinds: &[SignalKind]) -> std::io::Result<Stop> {
        let (tx, rx) = watch::channel(false);
        let tx = Arc::new(tx);
        for kind in kinds {
            let mut s = signal(*kind)?;
            let tx = tx.clone();
            tokio::spawn(async move {
                while s.recv().await.is_some() {
                    let _ = tx.send(true);
                }
            });
        }
        Ok(Stop(rx))
    }

    /// Resolves once a stop was requested; never if none can come.
    pub async fn requested(&mut self) {
        if self.0.wait_for(|v| *v).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// A VM whose guest agent answered, shares mounted, forwarding running.
pub struct Up {
    vm: Box<dyn RunningVm>,
    transport: Box<dyn Transport>,
    pub plan: VmPlan,
    pub info: AgentInfo,
    forwarding: JoinHandle<()>,
    servers: crate::shares::Served,
    unix_paths: Arc<Mutex<Vec<std::path::PathBuf>>>,
    /// The `portForwards` rules, and the forwarder's nudge to ask the
    /// guest for its Unix sockets again ([`Up::settle_sockets`]).
    rules: Vec<crate::portfwd::Rule>,
    kick: Arc<tokio::sync::Notify>,
    shutdown: Shutdown,
    observe: Observer,
    /// Held while the VM runs: `limactl disk` disks locked to this instance.
    _disks: DiskLocks,
}

/// Unlocks the instance's `additionalDisks` when dropped: when the VM is
/// gone, or a bring-up fails after locking them.
struct DiskLocks {
    home: std::path::PathBuf,
    inst: Instance,
}

impl Drop for DiskLocks {
    fn drop(&mut self) {
        crate::lima_disks::unlock_all(&self.home, &self.inst);
    }
}

/// Asks the guest to format (if blank) and mount each additional disk; the
/// error names the disk.
async fn prepare_disks(
    transport: &dyn Transport,
    disks: &[crate::additional_disks::AdditionalDisk],
    owner: (u32, u32),
) -> Result<(), String> {
    for (i, d) in disks.iter().enumerate() {
        let req = ControlRequest::Disk {
            serial: crate::additional_disks::serial(i),
            name: d.name.clone(),
            format: d.format,
            fs_type: d.fs_type.clone(),
            fs_args: d.fs_args.clone(),
            owner,
        };
        match client::control(transport, req).await {
            Ok(ControlReply::Mounted) => tracing::info!("disk {} ready", d.name),
            Ok(ControlReply::Error(e)) => return Err(format!("additionalDisks ({}): {e}", d.name)),
            Ok(other) => {
                return Err(format!(
                    "additionalDisks ({}): unexpected reply {other:?}",
                    d.name
                ))
            }
            Err(e) => return Err(format!("additionalDisks ({}): {}", d.name, error_chain(&e))),
        }
    }
    Ok(())
}

/// How [`Up::run`] ended.
pub enum Ending {
    VmEnded(String),
    StopRequested,
}

/// Boots the instance's VM and brings it to [`Up`].
pub async fn bring_up(inst: &Instance, stop: &mut Stop, opts: Options) -> Result<Up, BringUpError> {
    let prepare = |e: &dyn std::error::Error| BringUpError::Prepare(error_chain(e));
    let config = inst.config().map_err(|e| prepare(&e))?;
    let image = crate::image::resolve(&config.image, inst).map_err(|e| prepare(&e))?;
    let rules = crate::portfwd::resolve(&config.port_forwards, &inst.dir)
        .map_err(|(index, msg)| BringUpError::PortForwards { index, msg })?;
    let driver = select::for_vm_type(&config.vm_type).map_err(|e| prepare(&e))?;
    let servers =
        crate::shares::FileServers::prepare(&config.mounts, inst).map_err(BringUpError::Prepare)?;
    let mut plan = plan::plan(inst, &config, &image, driver.caps());
    if opts.data_disk {
        plan::add_data_disk(&mut plan, inst, &config);
        create_data_disk(&plan).map_err(BringUpError::Prepare)?;
    }
    // Named disks: locked to this instance first (another running
    // instance's disk is refused), attached with serials the guest finds.
    let home = inst
        .dir
        .parent()
        .unwrap_or(std::path::Path::new("/"))
        .to_path_buf();
    let locked = crate::lima_disks::lock_all(&home, inst, &config.additional_disks)
        .map_err(|e| prepare(&e))?;
    let disk_locks = DiskLocks {
        home,
        inst: inst.clone(),
    };
    for (i, d) in locked.iter().enumerate() {
        plan.disks.push(plan::Disk {
            id: format!("disk{i}"),
            path: d.dir.join(crate::lima_disks::IMAGE),
            format: crate::lima_disks::format_of(d),
            read_only: false,
            serial: Some(crate::additional_disks::serial(i)),
        });
    }
    prepare_files(inst, &mut plan);
    if let crate::image::BootImage::Disk(_) = image {
        let made = crate::distro::prepare(inst, &config).map_err(BringUpError::Prepare)?;
        plan.ssh_port = Some(made.ssh_port);
    }
    let mut vm = driver
        .start(Launch {
            instance: inst,
            plan: &plan,
        })
        .await
        .map_err(|e| prepare(&e))?;
    let grace = shutdown_grace(&plan);
    let acpi = matches!(plan.boot, plan::Boot::Firmware { .. });
    let spec = vm.transport();
    (opts.observe)(Phase::Spawned {
        accel: vm.accel(),
        transport: &spec,
    });
    let transport = spec.open();
    let hybrid = matches!(spec, TransportSpec::Hybrid { .. });

    // Wait for the guest agent, the VM's end, a stop request or the deadline.
    // In a distro guest the agent starts before cloud-init made the guest
    // user; the instance is ready for commands once that user exists.
    let user = matches!(plan.boot, plan::Boot::Firmware { .. }).then(|| config.user.name.clone());
    let ssh_port = plan.ssh_port;
    let info = {
        let ready = async {
            let info = wait_ready(
                transport.as_ref(),
                hybrid.then_some(plan.serial_log.as_path()),
            )
            .await?;
            if let Some(user) = &user {
                wait_for_user(transport.as_ref(), user).await;
            }
            if let Some(port) = ssh_port {
                wait_for_ssh(transport.as_ref(), port).await;
            }
            Ok::<_, client::ClientError>(info)
        };
        tokio::pin!(ready);
        let deadline = async {
            match opts.ready_timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        let mut console_seen = !opts.watch_console;
        loop {
            tokio::select! {
                info = &mut ready => match info {
                    Ok(info) => break info,
                    Err(e) => {
                        stop_vm(vm.as_mut(), None, opts.shutdown, grace, acpi, &opts.observe).await;
                        return Err(BringUpError::AgentVersion(e.to_string()));
                    }
                },
                // The kernel's first words on the serial port (its setup code
                // probes EDD before anything else) mark the end of firmware and
                // image loading.
                _ = tokio::time::sleep(Duration::from_millis(2)), if !console_seen => {
                    if std::fs::metadata(&plan.serial_log).is_ok_and(|m| m.len() > 0) {
                        console_seen = true;
                        (opts.observe)(Phase::KernelStarted);
                    }
                }
                why = vm.wait() => return Err(BringUpError::VmEnded(why)),
                _ = stop.requested() => {
                    stop_vm(vm.as_mut(), None, opts.shutdown, grace, acpi, &opts.observe).await;
                    return Err(BringUpError::Stopped);
                }
                _ = &mut deadline => {
                    stop_vm(vm.as_mut(), None, opts.shutdown, grace, acpi, &opts.observe).await;
                    return Err(BringUpError::NoAnswer(opts.ready_timeout.unwrap_or_default()));
                }
            }
        }
    };
    (opts.observe)(Phase::AgentReady(&info));

    let mounted = tokio::select! {
        r = crate::shares::mount_all(&config.mounts, transport.as_ref(), &plan.vsockfs, &servers, (config.user.uid, config.user.gid())) => r.map_err(BringUpError::Shares),
        _ = stop.requested() => Err(BringUpError::Stopped),
    };
    let mounted = match mounted {
        Ok(served) => tokio::select! {
            r = prepare_disks(transport.as_ref(), &config.additional_disks, (config.user.uid, config.user.gid())) => r.map(|()| served).map_err(BringUpError::Shares),
            _ = stop.requested() => Err(BringUpError::Stopped),
        },
        Err(e) => Err(e),
    };
    let servers = match mounted {
        Ok(served) => served,
        Err(e) => {
            stop_vm(
                vm.as_mut(),
                Some(transport.as_ref()),
                opts.shutdown,
                grace,
                acpi,
                &opts.observe,
            )
            .await;
            return Err(e);
        }
    };
    (opts.observe)(Phase::SharesMounted);

    let unix_paths = Arc::new(Mutex::new(Vec::new()));
    let kick = Arc::new(tokio::sync::Notify::new());
    let forwarding = tokio::spawn(crate::forwarder::run(
        Arc::from(spec.open()),
        rules.clone(),
        inst.dir.clone(),
        unix_paths.clone(),
        kick.clone(),
        (config.user.uid, config.user.gid()),
    ));
    Ok(Up {
        vm,
        transport,
        plan,
        info,
        forwarding,
        servers,
        unix_paths,
        rules,
        kick,
        shutdown: opts.shutdown,
        observe: opts.observe,
        _disks: disk_locks,
    })
}

/// Creates the data disk on the first start (a sparse qcow2 of the
/// `disk:` size; the guest formats it). A disk that exists is kept as it
/// is: it holds the guest's `/var` and `/home`.
fn create_data_disk(plan: &VmPlan) -> Result<(), String> {
    let (Some(size), Some(disk)) = (
        plan.data_disk_size,
        plan.disks.iter().find(|d| d.id == "data"),
    ) else {
        return Ok(());
    };
    if disk.path.exists() {
        return Ok(());
    }
    let qemu_img = crate::programs::find_program("qemu-img").ok_or_else(|| {
        "qemu-img not found on PATH; it makes the instance's data disk (install qemu-utils)"
            .to_string()
    })?;
    let out = std::process::Command::new(&qemu_img)
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&disk.path)
        .arg(size.to_string())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", qemu_img.display()))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&disk.path);
        return Err(format!(
            "cannot create the data disk {}: qemu-img: {}",
            disk.path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    tracing::info!(
        "created the data disk {} ({})",
        disk.path.display(),
        crate::units::human_size(size)
    );
    Ok(())
}

/// Creates what the plan's devices are backed by; a device whose file
/// cannot be made is left out, with a warning. `LIMA_VSOCKFS_SHM=off`
/// leaves the shared memory out (to compare shares with and without it).
fn prepare_files(inst: &Instance, plan: &mut VmPlan) {
    inst.remove_share_port_sockets();
    let _ = std::fs::remove_file(inst.path(crate::instance::FS_SHM));
    if std::env::var("LIMA_VSOCKFS_SHM").is_ok_and(|v| v == "off") {
        plan.vsockfs.shm = None;
    }
    if let Some(shm) = &plan.vsockfs.shm {
        let made = std::fs::File::create(&shm.path).and_then(|f| f.set_len(shm.size));
        if let Err(e) = made {
            tracing::warn!(
                "{}: {e}; shares will carry their data over vsock",
                shm.path.display()
            );
            plan.vsockfs.shm = None;
        }
    }
}

impl Up {
    pub fn transport(&self) -> &dyn Transport {
        self.transport.as_ref()
    }

    /// Host sockets for every guest socket that accepts now (see
    /// [`crate::forwarder::settle_unix`]); call before saying `running`.
    pub async fn settle_sockets(&self) {
        crate::forwarder::settle_unix(
            self.transport.as_ref(),
            &self.rules,
            &self.unix_paths,
            &self.kick,
        )
        .await;
    }

    pub fn accel(&self) -> &str {
        self.vm.accel()
    }

    /// Runs until the VM ends or a stop is requested.
    pub async fn run(&mut self, stop: &mut Stop) -> Ending {
        tokio::select! {
            why = self.vm.wait() => Ending::VmEnded(why),
            _ = stop.requested() => Ending::StopRequested,
        }
    }

    /// How the VM ended, if it does within `d`.
    pub async fn ended_within(&mut self, d: Duration) -> Option<String> {
        tokio::time::timeout(d, self.vm.wait()).await.ok()
    }

    /// Stops forwarding and the VM (unless it already `ended`), then the
    /// share servers, and removes the host ends of forwarded Unix sockets.
    pub async fn close(mut self, ended: bool) {
        self.forwarding.abort();
        if !ended {
            let acpi = matches!(self.plan.boot, plan::Boot::Firmware { .. });
            stop_vm(
                self.vm.as_mut(),
                Some(self.transport.as_ref()),
                self.shutdown,
                shutdown_grace(&self.plan),
                acpi,
                &self.observe,
            )
            .await;
        }
        self.servers.stop(SERVER_GRACE).await;
        for p in lima_proto::sync::lock(&self.unix_paths).iter() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// How long the guest of `plan` gets to power off by itself.
fn shutdown_grace(plan: &VmPlan) -> Duration {
    match plan.boot {
        plan::Boot::Kernel { .. } => GUEST_SHUTDOWN_GRACE,
        plan::Boot::Firmware { .. } => DISTRO_SHUTDOWN_GRACE,
    }
}

/// Stops a VM as `how` says; `agent` is the guest agent when it answered.
/// A clean stop asks the guest agent to power off (on a distro image it
/// asks the guest's init), else presses the ACPI power button of a distro
/// guest, and waits `grace` before forcing.
async fn stop_vm(
    vm: &mut dyn RunningVm,
    agent: Option<&dyn Transport>,
    how: Shutdown,
    grace: Duration,
    acpi: bool,
    observe: &Observer,
) {
    observe(Phase::Stopping);
    let quit_grace = match how {
        Shutdown::Quick(grace) => grace,
        Shutdown::Clean => {
            let asked = match agent {
                Some(agent) => ask_agent(agent).await,
                None => Err("the guest agent never answered".to_string()),
            };
            let asked = match asked {
                Err(why) if acpi => {
                    tracing::info!("{why}; pressing the ACPI power button");
                    vm.powerdown().await
                }
                other => other,
            };
            let why = match asked {
                Ok(()) => match tokio::time::timeout(grace, vm.wait()).await {
                    Ok(_) => {
                        tracing::info!("guest powered off");
                        return;
                    }
                    Err(_) => format!("the guest did not power off within {grace:?}"),
                },
                Err(why) => why,
            };
            tracing::warn!("{why}; stopping the VM by force");
            observe(Phase::Forced(&why));
            QMP_GRACE
        }
    };
    vm.terminate(quit_grace).await;
}

/// Asks the guest agent to power the VM off.
async fn ask_agent(agent: &dyn Transport) -> Result<(), String> {
    match tokio::time::timeout(
        Duration::from_secs(5),
        client::control(agent, lima_proto::ControlRequest::Shutdown),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("the guest agent's shutdown request failed: {e}")),
        Err(_) => Err("the guest agent did not answer the shutdown request".to_string()),
    }
}

/// Waits until the guest knows `user` (cloud-init's users module made it),
/// then, for at most [`SUDO_RULE_WAIT`], until its passwordless sudo rule
/// is in place too: cloud-init writes the rule just after it made the
/// user, and a loaded machine once ran a user's first `sudo` in between
/// ("a password is required"). A guest without sudo does not wait; one
/// whose rule never comes is used as it is, with a warning.
async fn wait_for_user(transport: &dyn Transport, user: &str) {
    let id = crate::exec::as_root(vec!["id".into(), "-u".into(), user.into()]);
    while !guest_says_yes(transport, &id, user).await {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let sudo = crate::exec::as_root(vec![
        "sh".into(),
        "-c".into(),
        "! command -v sudo >/dev/null || sudo -n -l -U \"$1\" | grep -q NOPASSWD".into(),
        "sh".into(),
        user.into(),
    ]);
    let deadline = tokio::time::Instant::now() + SUDO_RULE_WAIT;
    while !guest_says_yes(transport, &sudo, user).await {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                "guest user {user} has no passwordless sudo rule after {}s; going on",
                SUDO_RULE_WAIT.as_secs()
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A distro guest is ready once its sshd answers on the forwarded port
/// too (at most [`SSH_WAIT`]), as Lima's start waits for ssh: scripts run
/// `ssh -F .../ssh.config lima-NAME` right after `limactl start`. A guest
/// without sshd is not waited for.
async fn wait_for_ssh(transport: &dyn Transport, port: u16) {
    let has_sshd = crate::exec::as_root(vec![
        "sh".into(),
        "-c".into(),
        "test -x /usr/sbin/sshd || command -v sshd >/dev/null".into(),
    ]);
    if !guest_says_yes(transport, &has_sshd, "sshd").await {
        return;
    }
    let deadline = tokio::time::Instant::now() + SSH_WAIT;
    loop {
        if ssh_banner(port).await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                "the guest's sshd does not answer on 127.0.0.1:{port} after {}s; going on",
                SSH_WAIT.as_secs()
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

const SSH_WAIT: Duration = Duration::from_secs(60);

/// Whether an SSH server greets on 127.0.0.1:`port`.
async fn ssh_banner(port: u16) -> bool {
    use tokio::io::AsyncReadExt;
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.ok()?;
        Some(&buf == b"SSH-")
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(3), attempt).await,
        Ok(Some(true))
    )
}

/// How long [`wait_for_user`] waits for the guest user's sudo rule.
const SUDO_RULE_WAIT: Duration = Duration::from_secs(30);

/// Whether `req` (a question to the guest, as root) exits 0.
async fn guest_says_yes(transport: &dyn Transport, req: &ExecRequest, user: &str) -> bool {
    match crate::exec::capture(transport, req, Vec::new()).await {
        Ok(c) if c.status == lima_proto::ExitStatus::Code(0) => true,
        Ok(_) => {
            tracing::debug!("guest user {user}: not ready yet ({:?})", req.argv);
            false
        }
        Err(e) => {
            tracing::debug!("cannot ask the guest about {user}: {e}");
            false
        }
    }
}

/// Waits until the guest console shows the agent listening. Connecting
/// earlier is not harmless with `vhost-device-vsock`: a connection made
/// while the guest's vsock device is still coming up occasionally hangs,
/// and from then on every later connection hangs too (seen here a few times
/// in a hundred boots, more often the faster the guest boots).
async fn wait_for_console_marker(serial: &std::path::Path) {
    let mut seen = 0usize;
    loop {
        if let Ok(text) = std::fs::read(serial) {
            // Only the new part, plus enough overlap for a split marker.
            let from = seen.saturating_sub(READY_MARKER.len());
            if text
                .get(from..)
                .is_some_and(|t| t.windows(READY_MARKER.len()).any(|w| w == READY_MARKER))
            {
                return;
            }
            seen = text.len();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits for the agent's console line when `serial` is given (our images
/// print it), then polls the guest agent until it answers a ping. An agent
/// that speaks another protocol version will never do: that ends the wait.
async fn wait_ready(
    transport: &dyn Transport,
    serial: Option<&std::path::Path>,
) -> Result<AgentInfo, client::ClientError> {
    if let Some(serial) = serial {
        wait_for_console_marker(serial).await;
    }
    // Each attempt gets longer after one times out: on a starved host (many
    // emulated VMs on few cores) one hello+ping can take seconds, and a fixed
    // limit would abandon every attempt just before its answer.
    let mut limit = Duration::from_secs(3);
    loop {
        match tokio::time::timeout(limit, client::ping(transport)).await {
            Ok(Ok(info)) => return Ok(info),
            Ok(Err(e @ client::ClientError::Version(_))) => return Err(e),
            Ok(Err(e)) => tracing::trace!("guest agent not ready: {e}"),
            Err(_) => {
                tracing::debug!("guest agent ping timed out after {limit:?}");
                limit = (limit * 2).min(Duration::from_secs(60));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
