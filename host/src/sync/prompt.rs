//! Talking to the person at the end of a `--sync` session: the review in
//! their pager, then what to do with the changes.
use std::io::{BufRead, Write};

/// What to do with a layer's changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    All,
    Choose,
    Discard,
    Keep,
}

/// Shows `text` in `$PAGER` (default `less -R`); on stdout when the pager
/// cannot be started.
pub fn page(text: &str) {
    let pager = std::env::var("PAGER")
        .ok()
        .filter(|p| !p.trim().is_empty())
        .unwrap_or_else(|| "less -R".into());
    let child = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(&pager)
        .stdin(std::process::Stdio::piped())
        .spawn();
    if let Ok(mut c) = child {
        if let Some(mut stdin) = c.stdin.take() {
            // A pager quit early closes its end: not an error.
            let _ = stdin.write_all(text.as_bytes());
        }
        // 127: the shell did not find the pager.
        if c.wait().is_ok_and(|st| st.code() != Some(127)) {
            return;
        }
    }
    let _ = std::io::stdout().write_all(text.as_bytes());
}

fn ask(question: &str) -> Option<String> {
    let mut err = std::io::stderr();
    let _ = write!(err, "{question}");
    let _ = err.flush();
    let mut line = String::new();
    match std::io::stdin().lock().read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line.trim().to_lowercase()),
    }
}

/// The answer to "what now?"; end of input keeps the layer.
pub fn choice(n: usize) -> Choice {
    loop {
        let q = format!(
            "Apply the {n} change{} to the host? [a]ll, [c]hoose, [d]iscard, [k]eep for later: ",
            if n == 1 { "" } else { "s" }
        );
        match ask(&q).as_deref() {
            None => return Choice::Keep,
            Some("a" | "all" | "y" | "yes") => return Choice::All,
            Some("c" | "choose") => return Choice::Choose,
            Some("d" | "discard") => return Choice::Discard,
            Some("k" | "keep" | "") => return Choice::Keep,
            Some(_) => continue,
        }
    }
}

/// One yes/no per line; end of input answers no to the rest.
pub fn each(lines: &[String]) -> Vec<bool> {
    let mut out = Vec::with_capacity(lines.len());
    let mut ended = false;
    for line in lines {
        if ended {
            out.push(false);
            continue;
        }
        loop {
            match ask(&format!("Apply {line}? [y/n] ")).as_deref() {
                None => {
                    ended = true;
                    out.push(false);
                }
                Some("y" | "yes") => out.push(true),
                Some("n" | "no") => out.push(false),
                Some(_) => continue,
            }
            break;
        }
    }
    out
}
