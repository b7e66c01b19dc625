//! The gateway core stays sans-IO: no clock, no OS randomness, no files, no sockets, no tasks.
//! Time, wall time and a seeded RNG come in from the driver (`lib.rs`); the phone list is saved
//! by the driver (`Output::SavePhones`). This reads the core's source and names every offence.
//!
//! The driver's side of the traits the core calls synchronously (`MediaPorts`, `Bridges`) runs
//! in the core's call stack too: those impls live in files of their own, checked the same way
//! and for binds and spawns besides (sockets are bound beforehand, tasks start from outputs).

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

/// The driver's files that hold the impls of the traits the core calls, and those traits.
const CORE_CALLED: &[(&str, &str)] = &[("src/driver/media.rs", "MediaPorts"), ("src/bridge/setup.rs", "Bridges")];

/// What the core-called impls may not do besides [`FORBIDDEN`]: bind a socket (a port pair comes
/// from the ready pool), spawn a task (the driver does at the core's output).
const FORBIDDEN_IN_CORE_CALLED: &[&str] = &["bind(", ".allocate(", "spawn(", "sleep"];

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
    offences_of(source, FORBIDDEN)
}

/// The source before a trailing `#[cfg(test)] mod tests { … }`.
fn cut_test_module(source: &str) -> &str {
    match source.find("#[cfg(test)]\nmod tests {") {
        Some(at) => &source[..at],
        None => source,
    }
}

fn offences_of(source: &str, forbidden: &[&str]) -> Vec<(usize, String)> {
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
        if forbidden.iter().any(|f| line.contains(f)) {
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
fn the_driver_code_the_core_calls_does_not_bind_spawn_or_read_the_clock() {
    let mut report = vec![];
    for (file, _) in CORE_CALLED {
        let source = std::fs::read_to_string(crate_dir().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        for (line, text) in offences(&source) {
            report.push(format!("{file}:{line}: {text}"));
        }
        for (line, text) in offences_of(&source, FORBIDDEN_IN_CORE_CALLED) {
            report.push(format!("{file}:{line}: {text}"));
        }
    }
    assert!(
        report.is_empty(),
        "the core calls this code: bind, spawn and read clocks in the driver, between its calls:\n{}",
        report.join("\n")
    );
}

#[test]
fn the_traits_the_core_calls_are_implemented_only_in_the_checked_files() {
    let mut rs = vec![];
    let mut dirs = vec![crate_dir().join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                rs.push(path);
            }
        }
    }
    for (file, tr) in CORE_CALLED {
        let needle = format!("impl {tr} for ");
        let holders: Vec<String> = rs
            .iter()
            .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with("tests"))
            .filter(|p| {
                let source = std::fs::read_to_string(p).unwrap();
                let code = cut_test_module(&source);
                code.lines().any(|l| !l.trim_start().starts_with("//") && l.contains(&needle))
            })
            .map(|p| p.strip_prefix(crate_dir()).unwrap().display().to_string())
            .collect();
        assert_eq!(holders, vec![file.to_string()], "`{needle}` outside {file} escapes the check: move it there");
    }
}

#[test]
fn the_check_finds_a_clock_read_and_a_file_write_and_skips_comments_and_the_test_module() {
    let sample = "fn f() {\n    let t = Instant::now();\n    // Instant::now is only a comment here\n    std::fs::write(p, b)?;\n}\n#[cfg(test)]\nmod tests {\n    fn g() { Instant::now(); }\n}\n";
    let hits: Vec<usize> = offences(sample).into_iter().map(|(l, _)| l).collect();
    assert_eq!(hits, vec![2, 4]);
    let driver = "fn f() {\n    let s = alloc.allocate()?;\n    tokio::spawn(run(s));\n    let ok = ready.take();\n}\n";
    let hits: Vec<usize> = offences_of(driver, FORBIDDEN_IN_CORE_CALLED).into_iter().map(|(l, _)| l).collect();
    assert_eq!(hits, vec![2, 3]);
}

#[test]
fn every_listed_core_file_exists() {
    for f in CORE.iter().chain(CORE_CALLED.iter().map(|(f, _)| f)) {
        assert!(crate_dir().join(f).is_file(), "{f} moved: update the list");
    }
}
