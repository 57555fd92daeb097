//! POSIX shell quoting, for command lines that a guest shell parses
//! (`$SHELL -l -c LINE`, as Lima's `limactl shell` builds them).
//!
//! A word made only of characters no shell treats specially stays as it
//! is (so `ls -l` reads as typed in logs); anything else is put in single
//! quotes, each `'` inside written as `'"'"'`. The empty word is `''`.

use std::borrow::Cow;

fn is_plain(c: char) -> bool {
    c.is_ascii_alphanumeric() || "@%+=:,./_-".contains(c)
}

/// `word` as one shell word.
pub fn quote(word: &str) -> Cow<'_, str> {
    if !word.is_empty() && word.chars().all(is_plain) {
        return Cow::Borrowed(word);
    }
    let mut out = String::with_capacity(word.len() + 2);
    out.push('\'');
    for c in word.chars() {
        if c == '\'' {
            out.push_str("'\"'\"'");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    Cow::Owned(out)
}

/// `words` as one command line: each quoted, joined by spaces.
pub fn join<S: AsRef<str>>(words: &[S]) -> String {
    words
        .iter()
        .map(|w| quote(w.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_words_stay_and_others_are_single_quoted() {
        assert_eq!(quote("ls"), "ls");
        assert_eq!(quote("-l"), "-l");
        assert_eq!(quote("a=b/c.d,e:f@g%h+i_j"), "a=b/c.d,e:f@g%h+i_j");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("two words"), "'two words'");
        assert_eq!(quote("$HOME"), "'$HOME'");
        assert_eq!(quote("it's"), "'it'\"'\"'s'");
        assert_eq!(quote("*"), "'*'");
        assert_eq!(quote("a\nb"), "'a\nb'");
    }

    #[test]
    fn a_line_splits_back_into_the_same_words() {
        let words = ["printf", "%s|", "a b", "", "it's", "$x", "`y`", "\\", "ü"];
        let line = join(&words);
        let out = std::process::Command::new("sh")
            .args(["-c", &line])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            "a b||it's|$x|`y`|\\|ü|"
        );
    }
}
