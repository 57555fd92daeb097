//! Template locators (`limactl start [TEMPLATE]`): `template:NAME` or
//! `template://NAME` (or a bare NAME) from `$LIMA_TEMPLATES_PATH` and then
//! the templates built into the binary, a path to a `.yaml` file, an
//! `http(s)://` URL, or `-` for stdin.
//!
//! A template's `base:` is resolved by [`crate::base`], which locates each
//! base through [`locate`] too.
use std::io::Read as _;
use std::path::{Path, PathBuf};

/// Templates compiled into the binary, so `limactl start` works anywhere.
/// `default` is our own fast image; the others boot distributions' cloud
/// images (docs/templates.md).
const BUILTIN: &[(&str, &str)] = &[
    (
        "default",
        include_str!("../../images/templates/default.yaml"),
    ),
    (
        "almalinux",
        include_str!("../../images/templates/almalinux.yaml"),
    ),
    ("alpine", include_str!("../../images/templates/alpine.yaml")),
    (
        "archlinux",
        include_str!("../../images/templates/archlinux.yaml"),
    ),
    (
        "debian-12",
        include_str!("../../images/templates/debian-12.yaml"),
    ),
    (
        "debian-13",
        include_str!("../../images/templates/debian-13.yaml"),
    ),
    ("docker", include_str!("../../images/templates/docker.yaml")),
    (
        "docker-rootful",
        include_str!("../../images/templates/docker-rootful.yaml"),
    ),
    ("fedora", include_str!("../../images/templates/fedora.yaml")),
    (
        "opensuse",
        include_str!("../../images/templates/opensuse.yaml"),
    ),
    ("rocky", include_str!("../../images/templates/rocky.yaml")),
    (
        "ubuntu-24.04",
        include_str!("../../images/templates/ubuntu-24.04.yaml"),
    ),
];

/// Lima's other names for the same templates (its `debian` is Debian 13, its
/// `ubuntu` and `ubuntu-lts` the newest LTS we ship, its `opensuse-leap` the
/// Leap release).
const ALIASES: &[(&str, &str)] = &[
    ("debian", "debian-13"),
    ("ubuntu", "ubuntu-24.04"),
    ("ubuntu-lts", "ubuntu-24.04"),
    ("opensuse-leap", "opensuse"),
];

/// The most a remote template may hold (Lima's limit too).
pub const MAX_REMOTE_BYTES: u64 = 4 << 20;

/// The built-in templates, by name (for tests and `limactl`'s help).
pub fn builtin() -> impl Iterator<Item = (&'static str, &'static str)> {
    BUILTIN.iter().copied()
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("template `{name}` does not exist (known: {known}); give a template name or a path to a .yaml file")]
    NotFound { name: String, known: String },
    #[error("cannot read template {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{0}` is not supported: give a template name, a .yaml path or an http(s) URL")]
    Unsupported(String),
    #[error("cannot fetch template {url}: {why}")]
    Fetch { url: String, why: String },
    #[error("template {url} is larger than {max} bytes; a template is a small YAML file")]
    TooLarge { url: String, max: u64 },
}

/// A template's text and where it came from (for error messages), plus the
/// instance name it suggests.
#[derive(Debug)]
pub struct Template {
    pub origin: String,
    pub text: String,
    pub suggested_name: String,
    /// Where a relative `base:` locator in this template is looked up.
    pub relative_to: Relative,
}

/// What a relative locator inside a template is relative to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relative {
    /// The folder of a template file (or the current folder for stdin).
    Dir(PathBuf),
    /// The URL of a remote template: a sibling URL.
    Url(String),
}

impl Relative {
    /// `locator` made absolute when it is a relative file path; other
    /// locators (names, `template:`, URLs, absolute paths) as they are.
    pub fn join(&self, locator: &str) -> String {
        let is_path =
            locator.ends_with(".yaml") || locator.ends_with(".yml") || locator.contains('/');
        if !is_path
            || locator.contains("://")
            || locator.starts_with("template:")
            || locator.starts_with('/')
            || locator.starts_with('~')
        {
            return locator.to_string();
        }
        self.join_any(locator)
    }

    /// `locator` made absolute when it is any relative path (a `file:` of
    /// `provision:` or `probes:`, where `setup.sh` is a path too).
    pub fn join_file(&self, locator: &str) -> String {
        if locator.contains("://")
            || locator.starts_with("template:")
            || locator.starts_with('/')
            || locator.starts_with('~')
        {
            return locator.to_string();
        }
        self.join_any(locator)
    }

    fn join_any(&self, locator: &str) -> String {
        match self {
            Relative::Dir(d) => d.join(locator).display().to_string(),
            Relative::Url(u) => match u.rfind('/') {
                Some(i) => format!("{}{locator}", &u[..=i]),
                None => locator.to_string(),
            },
        }
    }
}

/// The instance name Lima derives from a template URL or path: the file
/// name, lower case, without `.yaml`/`.yml`.
pub fn name_from_locator(locator: &str) -> String {
    let path = locator.split(['?', '#']).next().unwrap_or(locator);
    let file = path.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    let lower = file.to_ascii_lowercase();
    let stem = lower
        .strip_suffix(".yaml")
        .or_else(|| lower.strip_suffix(".yml"))
        .unwrap_or(&lower);
    if stem.is_empty() {
        "default".into()
    } else {
        stem.to_string()
    }
}

/// Fetches a remote template with the project's HTTP agent, at most
/// [`MAX_REMOTE_BYTES`].
fn fetch(url: &str) -> Result<String, TemplateError> {
    let fail = |why: String| TemplateError::Fetch {
        url: url.to_string(),
        why,
    };
    let mut resp = crate::download::get(url).map_err(fail)?;
    let mut bytes = Vec::new();
    resp.body_mut()
        .as_reader()
        .take(MAX_REMOTE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(e.to_string()))?;
    if bytes.len() as u64 > MAX_REMOTE_BYTES {
        return Err(TemplateError::TooLarge {
            url: url.to_string(),
            max: MAX_REMOTE_BYTES,
        });
    }
    String::from_utf8(bytes).map_err(|_| fail("the answer is not UTF-8 text".into()))
}

fn search_path() -> Vec<PathBuf> {
    std::env::var_os("LIMA_TEMPLATES_PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default()
}

pub fn names() -> Vec<String> {
    let mut v: Vec<String> = BUILTIN
        .iter()
        .map(|(n, _)| n.to_string())
        .chain(ALIASES.iter().map(|(a, _)| a.to_string()))
        .collect();
    for dir in search_path() {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if let Some(stem) = n.strip_suffix(".yaml") {
                v.push(stem.to_string());
            }
        }
    }
    v.sort();
    v.dedup();
    v
}

pub fn locate(locator: &str) -> Result<Template, TemplateError> {
    if locator.starts_with("http://") || locator.starts_with("https://") {
        return Ok(Template {
            origin: locator.to_string(),
            text: fetch(locator)?,
            suggested_name: name_from_locator(locator),
            relative_to: Relative::Url(locator.to_string()),
        });
    }
    if locator.starts_with("github:") {
        return Err(TemplateError::Unsupported(locator.to_string()));
    }
    let cwd = || std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|source| TemplateError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let stem_of = |p: &Path| {
        p.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    if locator == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map_err(|source| {
            TemplateError::Read {
                path: "-".into(),
                source,
            }
        })?;
        return Ok(Template {
            origin: "<stdin>".into(),
            text,
            suggested_name: "default".into(),
            relative_to: Relative::Dir(cwd()),
        });
    }
    let scheme_name = locator
        .strip_prefix("template://")
        .or_else(|| locator.strip_prefix("template:"));
    let file = locator.strip_prefix("file://").unwrap_or(locator);
    if scheme_name.is_none()
        && (file.ends_with(".yaml") || file.ends_with(".yml") || file.contains('/'))
    {
        let path = Path::new(file);
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        return Ok(Template {
            origin: path.display().to_string(),
            text: read(path)?,
            suggested_name: stem_of(path),
            relative_to: Relative::Dir(cwd().join(dir)),
        });
    }
    let name = scheme_name.unwrap_or(locator);
    let name = name.strip_suffix(".yaml").unwrap_or(name);
    for dir in search_path() {
        let path = dir.join(format!("{name}.yaml"));
        if path.exists() {
            return Ok(Template {
                origin: path.display().to_string(),
                text: read(&path)?,
                suggested_name: name_from_locator(name),
                relative_to: Relative::Dir(path.parent().map_or(dir.clone(), Path::to_path_buf)),
            });
        }
    }
    // Lima's own templates name their images' part `_images/NAME`, which
    // is what our template NAME holds.
    let plain = name.strip_prefix("_images/").unwrap_or(name);
    let target = ALIASES
        .iter()
        .find(|(alias, _)| *alias == plain)
        .map_or(plain, |(_, t)| *t);
    if let Some((_, text)) = BUILTIN.iter().find(|(n, _)| *n == target) {
        return Ok(Template {
            origin: format!("template:{target}"),
            text: text.to_string(),
            // Lima names the instance after the name the user typed.
            suggested_name: name_from_locator(name),
            relative_to: Relative::Dir(cwd()),
        });
    }
    Err(TemplateError::NotFound {
        name: name.to_string(),
        known: names().join(", "),
    })
}

#[cfg(test)]
mod tests;
