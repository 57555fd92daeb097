//! Template locators (`limactl start [TEMPLATE]`): `template:NAME` (or a bare
//! NAME) from `$LIMA_TEMPLATES_PATH` and then the templates built into the
//! binary, or a path to a `.yaml` file, or `-` for stdin.
use std::path::{Path, PathBuf};

/// Templates compiled into the binary, so `limactl start` works anywhere.
const BUILTIN: &[(&str, &str)] = &[(
    "default",
    include_str!("../../images/templates/default.yaml"),
)];

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
    #[error("{0} is not supported yet: download templates and save them as a file first")]
    Remote(String),
}

/// A template's text and where it came from (for error messages), plus the
/// instance name it suggests.
#[derive(Debug)]
pub struct Template {
    pub origin: String,
    pub text: String,
    pub suggested_name: String,
}

fn search_path() -> Vec<PathBuf> {
    std::env::var_os("LIMA_TEMPLATES_PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default()
}

pub fn names() -> Vec<String> {
    let mut v: Vec<String> = BUILTIN.iter().map(|(n, _)| n.to_string()).collect();
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
    if locator.starts_with("http://")
        || locator.starts_with("https://")
        || locator.starts_with("github:")
    {
        return Err(TemplateError::Remote(locator.to_string()));
    }
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
        });
    }
    let file = locator.strip_prefix("file://").unwrap_or(locator);
    if file.ends_with(".yaml") || file.ends_with(".yml") || file.contains('/') {
        let path = Path::new(file);
        return Ok(Template {
            origin: path.display().to_string(),
            text: read(path)?,
            suggested_name: stem_of(path),
        });
    }
    let name = locator
        .strip_prefix("template://")
        .or_else(|| locator.strip_prefix("template:"))
        .unwrap_or(locator);
    for dir in search_path() {
        let path = dir.join(format!("{name}.yaml"));
        if path.exists() {
            return Ok(Template {
                origin: path.display().to_string(),
                text: read(&path)?,
                suggested_name: name.into(),
            });
        }
    }
    if let Some((_, text)) = BUILTIN.iter().find(|(n, _)| *n == name) {
        return Ok(Template {
            origin: format!("template:{name}"),
            text: text.to_string(),
            suggested_name: name.into(),
        });
    }
    Err(TemplateError::NotFound {
        name: name.to_string(),
        known: names().join(", "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_and_file_templates() {
        let t = locate("template:default").unwrap();
        assert_eq!(t.suggested_name, "default");
        assert!(t.text.contains("builtin:default"));
        assert_eq!(locate("default").unwrap().origin, "template:default");
        let err = locate("template:nosuch").unwrap_err().to_string();
        assert!(err.contains("nosuch") && err.contains("default"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mine.yaml");
        std::fs::write(&p, "cpus: 1\n").unwrap();
        let t = locate(p.to_str().unwrap()).unwrap();
        assert_eq!(t.suggested_name, "mine");
        assert!(locate("/no/such/file.yaml")
            .unwrap_err()
            .to_string()
            .contains("/no/such/file.yaml"));
    }
}
