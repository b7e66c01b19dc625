//! The gateway core stays sans-IO: no clock, no OS randomness, no files, no sockets, no tasks.
//! Time, wall time and a seeded RNG come in from the driver (`lib.rs`); the phone list is saved
//! by the driver (`Output::SavePhones`). This reads the core's source and names every offence.

use std::path::{Path, PathBuf};

/// What only the driver may do.
const FORBIDDEN: &[&str] = &[
    "Instant::now",
    "SystemTime::now",
    "thread_rng",
    "rand::rng(",
    "rand::random",
    "OsRng",
    "std::fs",
    "tokio::fs",
    "UdpSocket",
    "TcpStream",
    "TcpListener",
    "tokio::spawn",
    "spawn_blocking",
];

/// The core's files, relative to the crate. Every non-test file under `src/b2bua/` is core too
/// (see `core_files`), so splitting the core into more files keeps them checked.
const CORE: &[&str] = &["src/b2bua/mod.rs", "src/registrar.rs", "src/queue.rs", "src/guard.rs"];

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn core_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = CORE.iter().map(|f| crate_dir().join(f)).collect();
    for entry in std::fs::read_dir(crate_dir().join("src/b2bua")).expect("src/b2bua exists") {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.ends_with(".rs") && !name.starts_with("tests") && !files.contains(&path) {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// `(line number, line)` of every forbidden call in `source`, outside comments and outside a
/// trailing `#[cfg(test)] mod tests { … }` (tests may read a clock to build their fake one).
fn offences(source: &str) -> Vec<(usize, String)> {
    let lines: Vec<&str> = source.lines().collect();
    let mut hits = vec![];
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        if t == "#[cfg(test)]" && lines.get(i + 1).is_some_and(|next| next.trim_start().starts_with("mod tests {")) {
            break;
        }
        if t.starts_with("//") {
            continue;
        }
        if FORBIDDEN.iter().any(|f| line.contains(f)) {
            hits.push((i + 1, line.trim().to_string()));
        }
    }
    hits
}

#[test]
fn the_gateway_core_reads_no_clock_draws_no_os_randomness_and_does_no_io() {
    let mut report = vec![];
    for file in core_files() {
        let source = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let rel = file.strip_prefix(crate_dir()).unwrap_or(Path::new("?")).display().to_string();
        for (line, text) in offences(&source) {
            report.push(format!("{rel}:{line}: {text}"));
        }
    }
    assert!(report.is_empty(), "the core must get these from its driver:\n{}", report.join("\n"));
}

#[test]
fn the_check_finds_a_clock_read_and_a_file_write_and_skips_comments_and_the_test_module() {
    let sample = "fn f() {\n    let t = Instant::now();\n    // Instant::now is only a comment here\n    std::fs::write(p, b)?;\n}\n#[cfg(test)]\nmod tests {\n    fn g() { Instant::now(); }\n}\n";
    let hits: Vec<usize> = offences(sample).into_iter().map(|(l, _)| l).collect();
    assert_eq!(hits, vec![2, 4]);
}

#[test]
fn every_listed_core_file_exists() {
    for f in CORE {
        assert!(crate_dir().join(f).is_file(), "{f} moved: update the list");
    }
}
