//! Rust side of the NAT lab (`natlab/lab.sh`, see `natlab/README.md`) for integration tests.
//!
//! Include it from a test crate that lives one directory below the workspace root:
//!
//! ```ignore
//! #[path = "../../natlab/rust/lab.rs"]
//! mod lab;
//!
//! #[test]
//! fn something_behind_a_cone_nat() {
//!     if !lab::should_run("something_behind_a_cone_nat") {
//!         return;
//!     }
//!     let mut lab = lab::Lab::up(&["hq:cone"]);
//!     let turn = lab.coturn("a-secret-of-at-least-16-bytes");
//!     let out = lab.exec(&lab.ns("hq", 1), &["ping", "-c1", "203.0.113.10"]);
//!     // ... `lab` goes down (every process in its namespaces killed) when dropped,
//!     // also when the test panics and unwinds.
//! }
//! ```
//!
//! Root and network namespaces are required. [`should_run`] panics with a clear message when the
//! process is not root, unless `TRUNKLINE_SKIP_NATLAB=1` is set: then it prints why and returns
//! `false` so the test returns early (for developer machines without root; CI runs as root and
//! must not set it). As root the variable is ignored: the lab tests always run.
//!
//! Every command runs with its stdout/stderr in files (never pipes: a daemon that inherits a
//! pipe would keep `Command::output()` waiting for EOF forever) and under a deadline; every wait
//! is a poll with a deadline.
//!
//! Only `std` and `rand` (0.9) are used, so any crate of the workspace that depends on `rand`
//! can include this file.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Deadline for `lab.sh deps` (it may run apt-get on a fresh machine).
const DEPS_TIMEOUT: Duration = Duration::from_secs(900);
/// Deadline for `up`, `gc`, `down` (`up` waits up to 60 s for the lab lock).
const LAB_TIMEOUT: Duration = Duration::from_secs(120);
/// Deadline for `coturn` (lab.sh itself gives up after NATLAB_COTURN_TIMEOUT, default 20 s).
const COTURN_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline for [`Lab::exec`].
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(60);

/// `natlab/lab.sh` of this workspace.
pub fn lab_sh() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../natlab/lab.sh")
}

/// `natlab/stunprobe.py` of this workspace (stdlib STUN/TURN probe, see its docstring).
pub fn stunprobe() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../natlab/stunprobe.py")
}

/// Whether a NAT lab test may run: `true` as root. Not root: panics saying the lab needs root,
/// unless `TRUNKLINE_SKIP_NATLAB=1` is set, in which case it prints why the test is skipped and
/// returns `false` (the test then returns early and counts as passed).
pub fn should_run(test: &str) -> bool {
    let uid = Command::new("id").arg("-u").output().ok().and_then(|o| String::from_utf8(o.stdout).ok());
    let uid = uid.as_deref().map(str::trim).unwrap_or("?");
    if uid == "0" {
        return true;
    }
    if std::env::var("TRUNKLINE_SKIP_NATLAB").as_deref() == Ok("1") {
        eprintln!("SKIPPED {test}: the NAT lab tests need root (uid is {uid}) and TRUNKLINE_SKIP_NATLAB=1 is set");
        return false;
    }
    panic!(
        "{test}: the NAT lab tests need root (network namespaces, nftables, coturn); uid is {uid}. \
         Run them as root, or set TRUNKLINE_SKIP_NATLAB=1 to skip them."
    );
}

/// A unique temp file name for this process (pid + counter).
fn temp_file(tag: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!("natlab-rs-{}-{}-{tag}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)))
}

/// Poll `f` every 20 ms until it returns `Some`, or panic after `timeout` with `what` and the
/// text `diag` returns at that moment.
pub fn poll<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>, diag: impl FnOnce() -> String) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}\n{}", diag());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Run `cmd` to completion with stdout/stderr captured in temp files (not pipes) and a deadline.
/// On timeout the child is killed (by its pid) and this panics with what it printed.
pub fn run(cmd: Command, timeout: Duration) -> Output {
    try_run(cmd, timeout).unwrap_or_else(|e| panic!("{e}"))
}

/// [`run`] without panicking (for `Drop`, which must not panic while a test unwinds).
pub fn try_run(mut cmd: Command, timeout: Duration) -> Result<Output, String> {
    let (out_path, err_path) = (temp_file("stdout"), temp_file("stderr"));
    let desc = format!("{cmd:?}");
    let files = File::create(&out_path).and_then(|o| Ok((o, File::create(&err_path)?)));
    let (out_file, err_file) = files.map_err(|e| format!("{desc}: cannot create output files: {e}"))?;
    cmd.stdin(Stdio::null()).stdout(out_file).stderr(err_file);
    let spawned = cmd.spawn();
    let read_and_remove = || {
        let out = (std::fs::read(&out_path).unwrap_or_default(), std::fs::read(&err_path).unwrap_or_default());
        let _ = std::fs::remove_file(&out_path);
        let _ = std::fs::remove_file(&err_path);
        out
    };
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            read_and_remove();
            return Err(format!("cannot start {desc}: {e}"));
        }
    };
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Ok(s),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => break Err(format!("{desc} did not finish within {timeout:?}")),
            Err(e) => break Err(format!("waiting for {desc}: {e}")),
        }
    };
    if status.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let (stdout, stderr) = read_and_remove();
    match status {
        Ok(status) => Ok(Output { status, stdout, stderr }),
        Err(e) => Err(format!(
            "{e}\n--- stdout\n{}\n--- stderr\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        )),
    }
}

fn lab_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(lab_sh());
    c.args(args);
    c
}

fn describe(what: &str, o: &Output) -> String {
    format!(
        "{what}: {}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `KEY=VALUE` lines → map (split at the first `=`; other lines are ignored).
pub fn parse_kv(text: &str) -> HashMap<String, String> {
    text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.trim().to_string(), v.to_string())).collect()
}

/// `lab.sh deps`, once per process; every caller panics with its log if it failed.
fn deps_once() {
    static DEPS: OnceLock<Result<(), String>> = OnceLock::new();
    let r = DEPS.get_or_init(|| {
        let o = run(lab_cmd(&["deps"]), DEPS_TIMEOUT);
        if o.status.success() { Ok(()) } else { Err(describe("natlab/lab.sh deps failed", &o)) }
    });
    if let Err(log) = r {
        panic!("{log}");
    }
}

/// One running lab. Dropping it runs `lab.sh down ID`, which kills every process in the lab's
/// namespaces (coturn, daemons from [`Lab::spawn`]) and deletes them.
pub struct Lab {
    id: String,
    env: HashMap<String, String>,
}

impl Lab {
    /// Build a lab with these site specs (`NAME:MODE[:HOSTS]`, e.g. `"hq:cone"`, `"br:sym:2"`).
    /// Runs `deps` (once per process), `gc` (stale labs only, never by prefix), then `up`.
    pub fn up(specs: &[&str]) -> Lab {
        deps_once();
        // Age-based gc only: `gc tl` would tear down labs of tests running in parallel.
        let gc = run(lab_cmd(&["gc"]), LAB_TIMEOUT);
        if !gc.status.success() {
            eprintln!("{}", describe("natlab/lab.sh gc failed (ignored)", &gc));
        }
        let mut last = String::new();
        for _ in 0..5 {
            let id = format!("tl{:04x}", rand::random::<u16>());
            let mut args = vec!["up", id.as_str()];
            args.extend_from_slice(specs);
            let o = match try_run(lab_cmd(&args), LAB_TIMEOUT) {
                Ok(o) => o,
                Err(e) => {
                    // Killed half-way: its own roll-back did not run.
                    let _ = try_run(lab_cmd(&["down", &id]), LAB_TIMEOUT);
                    panic!("{e}");
                }
            };
            if o.status.success() {
                let env = parse_kv(&String::from_utf8_lossy(&o.stdout));
                let lab = Lab { id, env }; // from here on, Drop takes it down
                assert_eq!(lab.env.get("LAB_ID"), Some(&lab.id), "{}", describe("lab.sh up output", &o));
                return lab;
            }
            last = describe(&format!("natlab/lab.sh up {id} {}", specs.join(" ")), &o);
            // Another lab with the same random ID: pick another. Anything else is a real error.
            if !String::from_utf8_lossy(&o.stderr).contains("already") {
                break;
            }
        }
        panic!("{last}");
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// A value of the lab's `KEY=VALUE` description; panics naming the key when it is absent.
    pub fn get(&self, key: &str) -> &str {
        self.env.get(key).map(String::as_str).unwrap_or_else(|| panic!("lab {}: no key {key} in {:?}", self.id, self.env))
    }

    pub fn env(&self) -> &HashMap<String, String> {
        &self.env
    }

    /// Namespace of host `host` (1-based) of site `site`.
    pub fn ns(&self, site: &str, host: u32) -> String {
        self.get(&format!("SITE_{site}_HOST{host}_NS")).to_string()
    }

    /// Address of host `host` of site `site` (a LAN address behind NAT; public for open sites).
    pub fn host_ip(&self, site: &str, host: u32) -> String {
        self.get(&format!("SITE_{site}_HOST{host}")).to_string()
    }

    /// The site router's public (WAN) address; for open sites host 1's address.
    pub fn wan(&self, site: &str) -> String {
        self.get(&format!("SITE_{site}_WAN")).to_string()
    }

    /// The "Internet" namespace (coturn, the signal server's address).
    pub fn pub_ns(&self) -> String {
        self.get("PUB_NS").to_string()
    }

    /// Start coturn in the pub namespace with `use-auth-secret` / this secret; returns its
    /// `KEY=VALUE` lines (TURN_CA, TURN_LOG, ...), which are also merged into [`Lab::get`].
    pub fn coturn(&mut self, secret: &str) -> HashMap<String, String> {
        let o = run(lab_cmd(&["coturn", &self.id, secret]), COTURN_TIMEOUT);
        // The secret is a test's own, but keep it out of panic messages anyway.
        let what = format!("natlab/lab.sh coturn {} <secret>", self.id);
        assert!(o.status.success(), "{}", describe(&what, &o));
        let kv = parse_kv(&String::from_utf8_lossy(&o.stdout));
        assert!(kv.contains_key("TURN_PID") && kv.contains_key("TURN_CA"), "{}", describe(&what, &o));
        self.env.extend(kv.clone());
        kv
    }

    /// Run `args` inside namespace `ns` (`ip netns exec`) to completion (deadline
    /// [`EXEC_TIMEOUT`]); stdout/stderr are captured through files.
    pub fn exec(&self, ns: &str, args: &[&str]) -> Output {
        self.exec_timeout(ns, args, EXEC_TIMEOUT)
    }

    pub fn exec_timeout(&self, ns: &str, args: &[&str], timeout: Duration) -> Output {
        assert!(ns.starts_with(&format!("{}-", self.id)), "namespace {ns} is not in lab {}", self.id);
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).args(args);
        run(c, timeout)
    }

    /// Start a long-running process inside `ns` with stdout and stderr appended to `log`
    /// (never a pipe). No bookkeeping needed: `down` kills it with the lab. Wait for it to be
    /// ready with [`wait_for_log`].
    pub fn spawn(&self, ns: &str, args: &[&str], log: &Path) -> Child {
        assert!(ns.starts_with(&format!("{}-", self.id)), "namespace {ns} is not in lab {}", self.id);
        let f = File::options().create(true).append(true).open(log).unwrap_or_else(|e| panic!("log {}: {e}", log.display()));
        let f2 = f.try_clone().expect("clone log fd");
        Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(f)
            .stderr(f2)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {args:?} in {ns}: {e}"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        match try_run(lab_cmd(&["down", &self.id]), LAB_TIMEOUT) {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!("{}", describe(&format!("natlab/lab.sh down {} failed", self.id), &o)),
            Err(e) => eprintln!("natlab/lab.sh down {}: {e}", self.id),
        }
    }
}

/// Poll `log` until it contains `needle`; panic with the log if `child` exits first or the
/// deadline passes.
pub fn wait_for_log(child: &mut Child, log: &Path, needle: &str, timeout: Duration) {
    let text = || std::fs::read_to_string(log).unwrap_or_default();
    poll(
        timeout,
        &format!("{needle:?} in {}", log.display()),
        || {
            if text().contains(needle) {
                return Some(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("process exited ({status}) before printing {needle:?}; log {}:\n{}", log.display(), text());
            }
            None
        },
        text,
    );
}
