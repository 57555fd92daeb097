//! Golden files: an output format pinned in `tests/golden/NAME`.
//!
//! Each file starts with one line `# from Lima: WHERE` naming the Lima doc
//! or source file whose documented shape it follows; that line is not part
//! of the expected text. Golden files are written from Lima's shapes before
//! our implementation, so a test compares our output with Lima's, not with
//! whatever we printed last. Callers replace what varies from run to run
//! (paths, ports, PIDs) with placeholders before comparing.
use std::path::PathBuf;

pub fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("golden")
        .join(name)
}

/// The expected text of golden file `name`, without its `# from Lima:` line.
pub fn expected(name: &str) -> String {
    let p = path(name);
    let text =
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("golden file {}: {e}", p.display()));
    let (first, rest) = text.split_once('\n').unwrap_or((&text, ""));
    assert!(
        first.starts_with("# from Lima: ") && first.len() > "# from Lima: ".len(),
        "golden file {} must start with `# from Lima: WHERE`",
        p.display()
    );
    rest.to_string()
}

/// Asserts `actual` equals golden file `name`, showing both when not.
pub fn assert_golden(name: &str, actual: &str) {
    let want = expected(name);
    assert!(
        want == actual,
        "output differs from golden file tests/golden/{name}\n--- expected ---\n{want}\n--- actual ---\n{actual}"
    );
}
