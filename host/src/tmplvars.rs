//! Lima's template variables in `lima.yaml`: `{{.Name}}`, `{{.Dir}}`,
//! `{{.Home}}`, `{{.User}}`, `{{.UID}}`, `{{.Hostname}}`,
//! `{{.GlobalTempDir}}` and `{{.Param.KEY}}` (from `param:`), filled in
//! mounts (`location`, `mountPoint`), provision scripts, probes,
//! port-forwarded sockets, `copyToHost` paths and `message:`.
//!
//! Only these forms are understood (with or without spaces inside the
//! braces); anything else between `{{` and `}}` is an error naming the
//! field, as Lima's Go templates would refuse it too. `{{.Home}}` is the
//! host user's home on the host side (`mounts[].location`, `hostSocket`,
//! `message`) and the guest user's home on the guest side (`mountPoint`,
//! scripts, probes, `guestSocket`), as in Lima.
use std::collections::BTreeMap;
use std::path::Path;

use serde_yaml_ng::Value;

use crate::config::{ConfigError, LimaYaml};

/// Which machine a field's path belongs to (decides `{{.Home}}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Host,
    Guest,
}

/// The values the variables stand for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Vars {
    pub name: String,
    pub dir: String,
    pub host_home: String,
    pub guest_home: String,
    pub user: String,
    pub uid: u32,
    pub hostname: String,
    pub global_temp_dir: String,
    pub param: BTreeMap<String, String>,
}

impl Vars {
    /// Fills `text`; the error says what is wrong (the caller names the field).
    pub fn expand(&self, text: &str, side: Side) -> Result<String, String> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| "opens `{{` without closing it with `}}`".to_string())?;
            let var = after[..end].trim();
            let value = match var {
                ".Name" => self.name.clone(),
                ".Dir" => self.dir.clone(),
                ".Home" => match side {
                    Side::Host => self.host_home.clone(),
                    Side::Guest => self.guest_home.clone(),
                },
                ".User" => self.user.clone(),
                ".UID" => self.uid.to_string(),
                ".Hostname" => self.hostname.clone(),
                ".GlobalTempDir" => self.global_temp_dir.clone(),
                p if p.starts_with(".Param.") => {
                    let key = &p[".Param.".len()..];
                    self.param.get(key).cloned().ok_or_else(|| {
                        format!("`{{{{{p}}}}}` names a parameter that `param:` does not set; add `{key}` to `param:`")
                    })?
                }
                other => {
                    return Err(format!(
                        "`{{{{{other}}}}}` is not a variable lima-rs fills; use {{{{.Name}}}}, {{{{.Dir}}}}, {{{{.Home}}}}, {{{{.User}}}}, {{{{.UID}}}}, {{{{.Hostname}}}}, {{{{.GlobalTempDir}}}} or {{{{.Param.KEY}}}}"
                    ))
                }
            };
            out.push_str(&value);
            rest = &after[end + 2..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// The environment Lima gives provision scripts and probes for
    /// `param:`: `PARAM_KEY=value`.
    pub fn param_env(&self) -> Vec<(String, String)> {
        self.param
            .iter()
            .map(|(k, v)| (format!("PARAM_{k}"), v.clone()))
            .collect()
    }
}

/// `param:` as a map of strings: keys are identifiers, values scalars.
pub fn params(yaml: &LimaYaml, origin: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    let invalid = |msg: String| ConfigError::Invalid {
        path: origin.to_string(),
        field: "param".into(),
        msg,
    };
    let mut out = BTreeMap::new();
    let Some(v) = yaml.param.as_ref().filter(|v| !v.is_null()) else {
        return Ok(out);
    };
    let Value::Mapping(m) = v else {
        return Err(invalid("must be a map of NAME: value".into()));
    };
    for (k, v) in m {
        let Some(k) = k.as_str() else {
            return Err(invalid(format!("key {k:?} must be a string")));
        };
        let ident = !k.is_empty()
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !k.starts_with(|c: char| c.is_ascii_digit());
        if !ident {
            return Err(invalid(format!(
                "`{k}` must be letters, digits and `_`, not starting with a digit"
            )));
        }
        let v = match v {
            Value::String(s) => s.clone(),
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => n.to_string(),
            Value::Null => String::new(),
            _ => return Err(invalid(format!("`{k}` must be a string, number or bool"))),
        };
        out.insert(k.to_string(), v);
    }
    Ok(out)
}

/// The variables of instance `name` in `dir` with this `lima.yaml`.
pub fn vars_for(
    yaml: &LimaYaml,
    name: &str,
    dir: &Path,
    origin: &str,
) -> Result<Vars, ConfigError> {
    let user_yaml = yaml.user_yaml(origin)?;
    let user = crate::config::resolve_user(user_yaml.as_ref(), name)?;
    Ok(Vars {
        name: name.to_string(),
        dir: dir.display().to_string(),
        host_home: std::env::var("HOME").unwrap_or_default(),
        guest_home: user.home.clone(),
        user: user.name.clone(),
        uid: user.uid,
        hostname: crate::guest_user::guest_hostname(name),
        global_temp_dir: std::env::temp_dir().display().to_string(),
        param: params(yaml, origin)?,
    })
}

/// Fills the template variables of instance `name` (in `dir`) in `yaml`.
pub fn expand_for(
    yaml: &mut LimaYaml,
    name: &str,
    dir: &Path,
    origin: &str,
) -> Result<(), ConfigError> {
    let vars = vars_for(yaml, name, dir, origin)?;
    expand_yaml(yaml, &vars, origin)
}

/// `text` parsed and resolved as instance `name` under `home` would see
/// it, its template variables filled first: what `validate` and `info`
/// check without creating anything.
pub fn resolve_as(
    text: &str,
    origin: &str,
    home: &Path,
    name: &str,
) -> Result<(LimaYaml, crate::config::InstanceConfig), ConfigError> {
    let mut yaml = LimaYaml::parse(text, origin)?;
    let raw = yaml.clone();
    expand_for(&mut yaml, name, &home.join(name), origin)?;
    let cfg = yaml.resolve(origin)?;
    Ok((raw, cfg))
}

/// Fills every templated field of `yaml` in place.
pub fn expand_yaml(yaml: &mut LimaYaml, vars: &Vars, origin: &str) -> Result<(), ConfigError> {
    let fill = |field: String, text: &mut String, side: Side| -> Result<(), ConfigError> {
        *text = vars
            .expand(text, side)
            .map_err(|msg| ConfigError::Invalid {
                path: origin.to_string(),
                field,
                msg,
            })?;
        Ok(())
    };
    for (i, m) in yaml.mounts.iter_mut().flatten().enumerate() {
        fill(format!("mounts[{i}].location"), &mut m.location, Side::Host)?;
        if let Some(p) = m.mount_point.as_mut() {
            fill(format!("mounts[{i}].mountPoint"), p, Side::Guest)?;
        }
    }
    for (i, r) in yaml.port_forwards.iter_mut().flatten().enumerate() {
        if let Some(s) = r.guest_socket.as_mut() {
            fill(format!("portForwards[{i}].guestSocket"), s, Side::Guest)?;
        }
        if let Some(s) = r.host_socket.as_mut() {
            fill(format!("portForwards[{i}].hostSocket"), s, Side::Host)?;
        }
    }
    if let Some(m) = yaml.message.as_mut() {
        fill("message".into(), m, Side::Host)?;
    }
    if let Some(Value::Sequence(items)) = yaml.copy_to_host.as_mut() {
        for (i, item) in items.iter_mut().enumerate() {
            let Value::Mapping(map) = item else { continue };
            for (key, side) in [("guest", Side::Guest), ("host", Side::Host)] {
                if let Some(Value::String(s)) = map.get_mut(key) {
                    fill(format!("copyToHost[{i}].{key}"), s, side)?;
                }
            }
        }
    }
    for (list, name) in [
        (yaml.provision.as_mut(), "provision"),
        (yaml.probes.as_mut(), "probes"),
    ] {
        let Some(Value::Sequence(items)) = list else {
            continue;
        };
        for (i, item) in items.iter_mut().enumerate() {
            let Value::Mapping(map) = item else { continue };
            for key in ["script", "content", "path", "owner", "description", "hint"] {
                if let Some(Value::String(s)) = map.get_mut(key) {
                    fill(format!("{name}[{i}].{key}"), s, Side::Guest)?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars {
        Vars {
            name: "dev".into(),
            dir: "/h/.lima/dev".into(),
            host_home: "/h".into(),
            guest_home: "/home/ada.guest".into(),
            user: "ada".into(),
            uid: 501,
            hostname: "lima-dev".into(),
            global_temp_dir: "/tmp".into(),
            param: [("GREETING".to_string(), "hi there".to_string())].into(),
        }
    }

    #[test]
    fn fills_every_variable_with_or_without_spaces() {
        let v = vars();
        assert_eq!(
            v.expand(
                "{{.Name}} {{ .Dir }} {{.User}}:{{.UID}} {{.Hostname}} {{.GlobalTempDir}} {{ .Param.GREETING }}",
                Side::Host
            )
            .unwrap(),
            "dev /h/.lima/dev ada:501 lima-dev /tmp hi there"
        );
        assert_eq!(v.expand("{{.Home}}/x", Side::Host).unwrap(), "/h/x");
        assert_eq!(
            v.expand("{{.Home}}/x", Side::Guest).unwrap(),
            "/home/ada.guest/x"
        );
        assert_eq!(v.expand("no braces {", Side::Host).unwrap(), "no braces {");
    }

    #[test]
    fn unknown_variables_and_params_are_named() {
        let v = vars();
        let e = v.expand("{{.Names}}", Side::Guest).unwrap_err();
        assert!(e.contains("`{{.Names}}` is not a variable"), "{e}");
        let e = v.expand("{{.Param.NOPE}}", Side::Guest).unwrap_err();
        assert!(e.contains("add `NOPE` to `param:`"), "{e}");
        let e = v.expand("x {{.Name", Side::Guest).unwrap_err();
        assert!(e.contains("without closing"), "{e}");
        assert_eq!(
            v.param_env(),
            vec![("PARAM_GREETING".to_string(), "hi there".to_string())]
        );
    }

    #[test]
    fn yaml_fields_are_filled_and_errors_name_the_field() {
        let text = "images: [{location: x}]\nparam: {WHO: world, N: 3}\nmounts:\n- location: '{{.Home}}/src'\n  mountPoint: '{{.Home}}/src'\nportForwards:\n- guestSocket: /run/user/{{.UID}}/d.sock\n  hostSocket: '{{.Dir}}/sock/d.sock'\nprovision:\n- mode: system\n  script: echo {{.Param.WHO}} {{.Param.N}}\nprobes:\n- script: test -e {{.Home}}\nmessage: ssh {{.Name}}\n";
        let mut y = LimaYaml::parse(text, "t.yaml").unwrap();
        let mut v = vars();
        v.param = params(&y, "t.yaml").unwrap();
        expand_yaml(&mut y, &v, "t.yaml").unwrap();
        let m = &y.mounts.as_ref().unwrap()[0];
        assert_eq!(m.location, "/h/src");
        assert_eq!(m.mount_point.as_deref(), Some("/home/ada.guest/src"));
        let p = &y.port_forwards.as_ref().unwrap()[0];
        assert_eq!(p.guest_socket.as_deref(), Some("/run/user/501/d.sock"));
        assert_eq!(p.host_socket.as_deref(), Some("/h/.lima/dev/sock/d.sock"));
        assert_eq!(y.message.as_deref(), Some("ssh dev"));
        let s = serde_yaml_ng::to_string(&y.provision).unwrap();
        assert!(s.contains("echo world 3"), "{s}");
        let s = serde_yaml_ng::to_string(&y.probes).unwrap();
        assert!(s.contains("test -e /home/ada.guest"), "{s}");

        let mut y = LimaYaml::parse(
            "images: [{location: x}]\nprovision:\n- script: echo {{.Param.X}}\n",
            "t.yaml",
        )
        .unwrap();
        let e = expand_yaml(&mut y, &vars(), "t.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("t.yaml: provision[0].script: "), "{e}");
    }

    #[test]
    fn params_must_be_named_scalars() {
        for (text, needle) in [
            ("param: [a]", "map"),
            ("param: {1X: a}", "not starting with a digit"),
            ("param: {X: [1]}", "string, number or bool"),
        ] {
            let y =
                LimaYaml::parse(&format!("images: [{{location: x}}]\n{text}"), "t.yaml").unwrap();
            let e = params(&y, "t.yaml").unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }
}
