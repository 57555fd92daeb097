//! Lima's rule for the names of instances and disks (containerd
//! identifiers): alphanumerics separated by single `.`, `_` or `-`, at
//! most 76 characters, not ending in `.yaml`/`.yml`. A leaf: the modules
//! that check names import it, it imports nothing of ours.

pub fn is_valid_name(name: &str) -> bool {
    if name.is_empty() || name.len() > 76 || name.ends_with(".yaml") || name.ends_with(".yml") {
        return false;
    }
    let mut prev_sep = true;
    for c in name.chars() {
        let sep = matches!(c, '.' | '_' | '-');
        if (sep && prev_sep) || (!sep && !c.is_ascii_alphanumeric()) {
            return false;
        }
        prev_sep = sep;
    }
    !prev_sep
}
