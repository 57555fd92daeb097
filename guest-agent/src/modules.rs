//! Loading kernel modules without modprobe: read `modules.dep`, resolve the
//! dependency order, and hand each file to `finit_module` through the
//! [`Loader`] seam (so the ordering logic is unit-tested without root).
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the kernel has no module support (no /proc/modules)")]
    NoSupport,
    #[error("module {0} is neither built in nor listed in modules.dep")]
    Unknown(String),
    #[error("loading {path} failed")]
    Load {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How a module file reaches the kernel.
pub trait Loader {
    /// Loads one module file; "already loaded" counts as success.
    fn load(&self, path: &Path) -> std::io::Result<()>;
}

/// The module set of one kernel: `modules.dep` and `modules.builtin`.
pub struct ModuleTree {
    root: PathBuf,
    /// module name → (relative path, dependency paths)
    deps: HashMap<String, (String, Vec<String>)>,
    builtin: HashSet<String>,
}

/// `kernel/net/vmw_vsock/vsock.ko` → `vsock`; dashes and underscores are one.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// Whether the running kernel can load modules at all: `/proc/modules`
/// exists exactly when it was built with `CONFIG_MODULES`. Our own kernel
/// has everything built in and no module support.
fn supported() -> bool {
    Path::new("/proc/modules").exists()
}

impl ModuleTree {
    /// The running kernel's module tree; [`ModuleError::NoSupport`] for a
    /// kernel without module support (nothing to load, nothing to warn
    /// about: [`crate::features`] checks what it has built in).
    pub fn open_running() -> Result<Self, ModuleError> {
        if !supported() {
            return Err(ModuleError::NoSupport);
        }
        let release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        Self::open(&Path::new("/lib/modules").join(release))
    }

    pub fn open(root: &Path) -> Result<Self, ModuleError> {
        let read = |name: &str| {
            let path = root.join(name);
            std::fs::read_to_string(&path).map_err(|source| ModuleError::Read { path, source })
        };
        let dep = read("modules.dep")?;
        let builtin = read("modules.builtin").unwrap_or_default();
        Ok(Self::parse(root, &dep, &builtin))
    }

    pub fn parse(root: &Path, dep: &str, builtin: &str) -> Self {
        let mut deps = HashMap::new();
        for line in dep.lines() {
            let Some((module, rest)) = line.split_once(':') else {
                continue;
            };
            let needs = rest.split_whitespace().map(str::to_string).collect();
            deps.insert(module_name(module), (module.to_string(), needs));
        }
        let builtin = builtin
            .lines()
            .filter(|l| !l.is_empty())
            .map(module_name)
            .collect();
        ModuleTree {
            root: root.to_path_buf(),
            deps,
            builtin,
        }
    }

    /// Loads `name` after its dependencies (modules.dep lists them so that the
    /// last one must be loaded first).
    pub fn load(&self, name: &str, loader: &dyn Loader) -> Result<(), ModuleError> {
        let name = name.replace('-', "_");
        if self.builtin.contains(&name) {
            return Ok(());
        }
        let (path, needs) = self
            .deps
            .get(&name)
            .ok_or_else(|| ModuleError::Unknown(name.clone()))?;
        for dep in needs.iter().rev().chain(std::iter::once(path)) {
            let full = self.root.join(dep);
            loader.load(&full).map_err(|source| ModuleError::Load {
                path: full.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    struct Recorder(RefCell<Vec<String>>);
    impl Loader for Recorder {
        fn load(&self, path: &Path) -> std::io::Result<()> {
            self.0
                .borrow_mut()
                .push(path.file_name().unwrap().to_string_lossy().into_owned());
            Ok(())
        }
    }

    const DEP: &str = "kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko: kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko kernel/net/vmw_vsock/vsock.ko\n\
kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko: kernel/net/vmw_vsock/vsock.ko\n\
kernel/net/vmw_vsock/vsock.ko:\n\
kernel/fs/fuse/fuse.ko:\n";

    #[test]
    fn loads_dependencies_first() {
        let tree = ModuleTree::parse(
            Path::new("/m"),
            DEP,
            "kernel/drivers/virtio/virtio_pci.ko\n",
        );
        let rec = Recorder(RefCell::new(vec![]));
        tree.load("vmw_vsock_virtio_transport", &rec).unwrap();
        assert_eq!(
            rec.0.borrow().as_slice(),
            [
                "vsock.ko",
                "vmw_vsock_virtio_transport_common.ko",
                "vmw_vsock_virtio_transport.ko"
            ]
        );
    }

    #[test]
    fn builtin_is_skipped_and_unknown_is_named() {
        let tree = ModuleTree::parse(
            Path::new("/m"),
            DEP,
            "kernel/drivers/virtio/virtio_pci.ko\n",
        );
        let rec = Recorder(RefCell::new(vec![]));
        tree.load("virtio-pci", &rec).unwrap();
        assert!(rec.0.borrow().is_empty());
        let err = tree.load("nosuch", &rec).unwrap_err();
        assert!(err.to_string().contains("nosuch"), "{err}");
    }
}
