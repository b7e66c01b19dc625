// Replays fuzz/corpus/<target> and fuzz/regressions/<target> through a target's exercise function
// in an ordinary `cargo test` (included by sip/, media/ and protocol/ tests/fuzz_regressions.rs).

use std::path::{Path, PathBuf};

/// Runs `f` on every file of both directories; panics naming every input that panicked.
/// Returns (inputs `f` accepted, inputs run).
pub fn replay(target: &str, f: fn(&[u8]) -> bool) -> (usize, usize) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut files: Vec<PathBuf> = vec![];
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(dir).join(target)) else { continue };
        files.extend(entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_file() && !is_doc(p)));
    }
    files.sort();
    let mut failed = vec![];
    let mut accepted = 0;
    for path in &files {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        match std::panic::catch_unwind(|| f(&data)) {
            Ok(true) => accepted += 1,
            Ok(false) => {}
            Err(_) => failed.push(path.display().to_string()),
        }
    }
    assert!(failed.is_empty(), "{target}: {} input(s) panicked:\n{}", failed.len(), failed.join("\n"));
    (accepted, files.len())
}

/// A README.md (or a dotfile) next to the inputs is not an input.
fn is_doc(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "md") || p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))
}
