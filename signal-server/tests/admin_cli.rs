//! The real `signal-server` binary against a temporary config and database: admin commands,
//! their errors, secrets handling, persistence between invocations, `run` + the admin API,
//! and the example config file.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use signal_server::Config;
use signal_server::credentials;
use signal_server::directory::sqlite::SqliteDirectory;
use signal_server::directory::{CallRecord, Directory};
use trunkline_protocol::{AccountKind, Outcome, Step};

const BIN: &str = env!("CARGO_BIN_EXE_signal-server");
const PASSWORD: &str = "correct horse battery staple";
const SWITCH_SECRET: &str = "switch-secret-0123456789abcdef";

struct Env {
    tmp: tempfile::TempDir,
    config: PathBuf,
}

impl Env {
    fn new() -> Env {
        Self::with_extra("")
    }

    fn with_extra(extra_top_level: &str) -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let config = tmp.path().join("signal.toml");
        let db = tmp.path().join("dir.db");
        std::fs::write(
            &config,
            format!(
                "database_url = \"sqlite://{}\"\nsip_realm = \"test.realm\"\nlisten = \"127.0.0.1:0\"\n\
                 web_root = \"{}\"\n{extra_top_level}\n\
                 [auth]\npassword_hash_memory_kib = 64\npassword_hash_iterations = 1\n",
                db.display(),
                tmp.path().join("no-web").display()
            ),
        )
        .unwrap();
        Env { tmp, config }
    }

    fn db_url(&self) -> String {
        format!("sqlite://{}", self.tmp.path().join("dir.db").display())
    }

    fn file(&self, name: &str, content: &str) -> PathBuf {
        let p = self.tmp.path().join(name);
        std::fs::write(&p, content).unwrap();
        p
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args).arg("--config").arg(&self.config).current_dir(self.tmp.path());
        clear_env(&mut cmd);
        cmd
    }

    fn run(&self, args: &[&str]) -> Out {
        Out::from(self.command(args).stdin(Stdio::null()).output().unwrap())
    }

    fn run_stdin(&self, args: &[&str], stdin: &str) -> Out {
        let mut child = self.command(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        Out::from(child.wait_with_output().unwrap())
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(out.code, 0, "{args:?}: {out:?}");
        out.stdout
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }

    async fn dir(&self) -> SqliteDirectory {
        SqliteDirectory::open(&self.db_url()).await.unwrap()
    }

    fn add_switch(&self, id: &str) {
        let f = self.file(&format!("{id}.secret"), &format!("{SWITCH_SECRET}\n"));
        self.ok(&["switch", "add", "--id", id, "--secret-file", f.to_str().unwrap()]);
    }
}

/// Children must not see TRUNKLINE_SIGNAL_* from the environment running the tests.
fn clear_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("TRUNKLINE_SIGNAL_") {
            cmd.env_remove(k);
        }
    }
    cmd.env_remove("RUST_LOG");
}

#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl From<Output> for Out {
    fn from(o: Output) -> Self {
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Out {
    fn assert_error(&self, code: i32, needle: &str) {
        assert_eq!(self.code, code, "{self:?}");
        assert!(self.stderr.starts_with("error: "), "{self:?}");
        assert!(self.stderr.contains(needle), "expected {needle:?} in {self:?}");
    }
    fn assert_no_secret(&self) {
        for s in [PASSWORD, SWITCH_SECRET, "argon2"] {
            assert!(!self.stdout.contains(s) && !self.stderr.contains(s), "{s:?} leaked: {self:?}");
        }
    }
}

#[tokio::test]
async fn accounts_add_list_remove_with_file_and_stdin() {
    let env = Env::new();
    let pw = env.file("pw", &format!("{PASSWORD}\n"));
    let out = env.run(&["account", "add", "--number", "100", "--password-file", pw.to_str().unwrap(), "--name", "Alice"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("added browser account 100"), "{out:?}");
    out.assert_no_secret();

    let out = env.run_stdin(&["account", "add", "--number", "101", "--password-file", "-"], &format!("{PASSWORD}-2\n"));
    assert_eq!(out.code, 0, "{out:?}");
    out.assert_no_secret();

    // Each invocation is a fresh process: the data persisted.
    let list = env.json(&["account", "list", "--json"]);
    assert_eq!(
        list,
        serde_json::json!([
            {"number": "100", "display_name": "Alice", "kind": "browser", "home_switch": null},
            {"number": "101", "display_name": "101", "kind": "browser", "home_switch": null},
        ])
    );
    let human = env.run(&["account", "list"]);
    human.assert_no_secret();
    let lines: Vec<&str> = human.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{human:?}");
    assert!(lines[0].starts_with("NUMBER") && lines[0].contains("KIND") && lines[0].contains("NAME"));
    assert!(lines[1].starts_with("100 ") && lines[1].contains("browser") && lines[1].ends_with("Alice"));
    // Columns are aligned: KIND starts at the same offset on every line.
    let col = lines[0].find("KIND").unwrap();
    assert_eq!(&lines[1][col..col + 7], "browser");
    assert_eq!(&lines[2][col..col + 7], "browser");

    // The stored hashes verify the exact password (one newline stripped).
    let dir = env.dir().await;
    assert!(credentials::verify_password(&dir.password_hash("100").await.unwrap().unwrap(), PASSWORD));
    let h101 = dir.password_hash("101").await.unwrap().unwrap();
    assert!(credentials::verify_password(&h101, &format!("{PASSWORD}-2")));
    assert!(!credentials::verify_password(&h101, &format!("{PASSWORD}-2\n")));
    assert_eq!(dir.account("100").await.unwrap().unwrap().ha1_md5, None, "browsers get no SIP verifiers");

    let out = env.run(&["account", "remove", "--number", "100"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("removed account 100"));
    let list = env.json(&["account", "list", "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    env.run(&["account", "remove", "--number", "100"]).assert_error(1, "not found");
}

#[tokio::test]
async fn switches_and_deskphones() {
    let env = Env::new();
    let secret = env.file("secret", &format!("{SWITCH_SECRET}\n"));
    let out = env.run(&["switch", "add", "--id", "sw-1", "--secret-file", secret.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    out.assert_no_secret();
    let out = env.run_stdin(&["switch", "add", "--id", "sw-2", "--secret-file", "-"], SWITCH_SECRET);
    assert_eq!(out.code, 0, "{out:?}");

    let dir = env.dir().await;
    assert!(credentials::verify_password(&dir.switch_secret_hash("sw-1").await.unwrap().unwrap(), SWITCH_SECRET));
    assert!(credentials::verify_password(&dir.switch_secret_hash("sw-2").await.unwrap().unwrap(), SWITCH_SECRET));

    let list = env.json(&["switch", "list", "--json"]);
    assert_eq!(list[0], serde_json::json!({"id": "sw-1", "online": false, "direct_urls": [], "last_seen_ms": null}));
    dir.set_switch_online("sw-1", true, &["wss://gw.example:7443/direct".into()], 1_700_000_000_000).await.unwrap();
    let human = env.ok(&["switch", "list"]);
    let line = human.lines().find(|l| l.starts_with("sw-1")).unwrap();
    assert!(
        line.contains("yes") && line.contains("2023-11-14 22:13:20Z") && line.contains("wss://gw.example:7443/direct"),
        "{human}"
    );
    let line = human.lines().find(|l| l.starts_with("sw-2")).unwrap();
    assert!(line.contains("no") && line.contains("never"), "{human}");
    assert!(!human.contains("argon2"));

    // A desk phone: kind defaults to deskphone with --switch; HA1s use the configured realm.
    let pw = env.file("pw", PASSWORD);
    let out = env.run(&["account", "add", "--number", "200", "--password-file", pw.to_str().unwrap(), "--switch", "sw-1"]);
    assert_eq!(out.code, 0, "{out:?}");
    out.assert_no_secret();
    let a = dir.account("200").await.unwrap().unwrap();
    assert_eq!(a.kind, AccountKind::Deskphone);
    assert_eq!(a.home_switch.as_deref(), Some("sw-1"));
    assert_eq!(a.ha1_md5, Some(credentials::ha1_md5("200", "test.realm", PASSWORD)));
    assert_eq!(a.ha1_sha256, Some(credentials::ha1_sha256("200", "test.realm", PASSWORD)));
    let list = env.ok(&["account", "list", "--json"]);
    assert!(!list.contains(a.ha1_md5.as_deref().unwrap()), "SIP verifiers are never listed");

    // A switch that still has accounts cannot be removed; the error names them.
    let out = env.run(&["switch", "remove", "--id", "sw-1"]);
    out.assert_error(1, "200");
    assert_eq!(env.json(&["switch", "list", "--json"]).as_array().unwrap().len(), 2);
    env.ok(&["account", "remove", "--number", "200"]);
    env.ok(&["switch", "remove", "--id", "sw-1"]);
    let list = env.json(&["switch", "list", "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], "sw-2");
}

#[tokio::test]
async fn wrong_inputs_give_clear_errors_and_change_nothing() {
    let env = Env::new();
    env.add_switch("sw1");
    let pw = env.file("pw", PASSWORD);
    let pw = pw.to_str().unwrap();
    let empty = env.file("empty", "\n");
    let short = env.file("short", "tiny-S3CRET\n");
    let dir = env.dir().await;
    let version = dir.directory_version().await.unwrap();

    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["account", "add", "--number", "300", "--password-file", pw, "--kind", "deskphone"], 2, "home switch"),
        (vec!["account", "add", "--number", "3 00", "--password-file", pw], 2, "number"),
        (vec!["account", "add", "--number", "300", "--password-file", empty.to_str().unwrap()], 2, "empty"),
        (vec!["account", "add", "--number", "300", "--password-file", "/nonexistent/pw"], 1, "cannot read password"),
        (vec!["account", "add", "--number", "300", "--password-file", pw, "--switch", "nope"], 1, "switch \"nope\" not found"),
        (vec!["account", "add", "--number", "300", "--password-file", pw, "--switch", "bad id"], 2, "switch_id"),
        (vec!["account", "add", "--number", "300", "--password-file", pw, "--name", ""], 2, "name"),
        (vec!["account", "add", "--number", "300", "--password-file", pw, "--kind", "fax"], 2, "fax"),
        (vec!["account", "add", "--number", "300", "--password", "x"], 2, "--password"),
        (vec!["account", "add", "--number", "300"], 2, "--password-file"),
        (vec!["switch", "add", "--id", "sw2", "--secret-file", short.to_str().unwrap()], 2, "at least 16 bytes"),
        (vec!["switch", "add", "--id", "bad id", "--secret-file", pw], 2, "switch_id"),
        (vec!["switch", "add", "--id", "sw1", "--secret-file", pw], 1, "already exists"),
        (vec!["switch", "remove", "--id", "nope"], 1, "not found"),
        (vec!["calls", "--limit", "0"], 2, "limit"),
        (vec!["frobnicate"], 2, "frobnicate"),
    ];
    for (args, code, needle) in cases {
        let out = env.run(&args);
        out.assert_error(code, needle);
        out.assert_no_secret();
        assert!(!out.stderr.contains("tiny-S3CRET"), "{out:?}");
    }
    assert_eq!(dir.directory_version().await.unwrap(), version, "no failed command changed the directory");
    // Duplicate account.
    env.ok(&["account", "add", "--number", "300", "--password-file", pw]);
    let version = dir.directory_version().await.unwrap();
    let out = env.run(&["account", "add", "--number", "300", "--password-file", pw]);
    out.assert_error(1, "account \"300\" already exists");
    out.assert_no_secret();

    assert_eq!(dir.directory_version().await.unwrap(), version, "no failed command changed the directory");
    assert_eq!(dir.list_accounts().await.unwrap().len(), 1);
    assert_eq!(dir.list_switches().await.unwrap().len(), 1);

    // A missing or broken config file is an error, not silently the defaults.
    let out = Out::from({
        let mut c = Command::new(BIN);
        c.args(["account", "list", "--config"]).arg(env.tmp.path().join("missing.toml"));
        clear_env(&mut c);
        c.output().unwrap()
    });
    out.assert_error(1, "missing.toml");
    let bad = env.file("bad.toml", "no_such_key = 1\n");
    let mut c = Command::new(BIN);
    c.args(["account", "list", "--config"]).arg(&bad);
    clear_env(&mut c);
    Out::from(c.output().unwrap()).assert_error(1, "no_such_key");
}

#[tokio::test]
async fn env_overrides_apply_without_config_file() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", tmp.path().join("env.db").display());
    let pw = tmp.path().join("pw");
    std::fs::write(&pw, PASSWORD).unwrap();
    let run = |args: &[&str]| {
        let mut c = Command::new(BIN);
        c.args(args).current_dir(tmp.path());
        clear_env(&mut c);
        c.env("TRUNKLINE_SIGNAL_DATABASE_URL", &url)
            .env("TRUNKLINE_SIGNAL_AUTH__PASSWORD_HASH_MEMORY_KIB", "64")
            .env("TRUNKLINE_SIGNAL_AUTH__PASSWORD_HASH_ITERATIONS", "1");
        Out::from(c.output().unwrap())
    };
    let out = run(&["account", "add", "--number", "100", "--password-file", pw.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(run(&["account", "list"]).stdout.contains("100"));
    assert!(tmp.path().join("env.db").exists());
    assert!(!tmp.path().join("trunkline.db").exists(), "the default database was not used");
    let dir = SqliteDirectory::open(&url).await.unwrap();
    let hash = dir.password_hash("100").await.unwrap().unwrap();
    assert!(hash.contains("m=64,t=1"), "env override of the hash cost applied");
}

#[tokio::test]
async fn calls_listing() {
    let env = Env::new();
    let dir = env.dir().await;
    let rec = |id: &str, caller: &str, callee: &str, started: i64, outcome: Outcome, duration: Option<u64>, trace: Vec<Step>| {
        CallRecord {
            call_id: id.into(),
            caller: caller.into(),
            callee: callee.into(),
            switch_id: None,
            started_ms: started,
            ended_ms: started + 70_000,
            outcome,
            duration_ms: duration,
            trace,
        }
    };
    dir.insert_call_records(&[
        rec(
            "c1",
            "100",
            "200",
            1_700_000_000_000,
            Outcome::Connected,
            Some(65_000),
            vec![Step::A, Step::C1, Step::C11, Step::C12, Step::C13],
        ),
        rec("c2", "300", "999", 1_700_000_100_000, Outcome::RejectedInvalid, None, vec![Step::A, Step::B1, Step::B2, Step::B3]),
        rec("c3", "200", "300", 1_700_000_200_000, Outcome::Busy, None, vec![Step::A, Step::C1]),
    ])
    .await
    .unwrap();

    let all = env.json(&["calls", "--json"]);
    let ids: Vec<&str> = all.as_array().unwrap().iter().map(|c| c["call_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["c3", "c2", "c1"], "newest first");
    assert_eq!(all[2]["trace"], serde_json::json!(["A", "C1", "C11", "C12", "C13"]));
    assert_eq!(all[2]["outcome"], "connected");
    assert_eq!(all[2]["duration_ms"], 65_000);

    let some = env.json(&["calls", "--json", "--number", "200", "--limit", "1"]);
    assert_eq!(some.as_array().unwrap().len(), 1);
    assert_eq!(some[0]["call_id"], "c3");

    let human = env.ok(&["calls", "--number", "100"]);
    let lines: Vec<&str> = human.lines().collect();
    assert_eq!(lines.len(), 2, "{human}");
    assert!(lines[0].starts_with("TIME") && lines[0].contains("OUTCOME") && lines[0].contains("TRACE"));
    for needle in ["2023-11-14 22:13:20Z", "100", "200", "connected", "1m05s", "A,C1,C11,C12,C13"] {
        assert!(lines[1].contains(needle), "{needle:?} in {human}");
    }
    assert_eq!(env.ok(&["calls", "--number", "555"]), "no calls\n");
}

fn kill_term(child: &Child) {
    let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(status.success());
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// One HTTP/1.1 request over a fresh connection; returns (status, body).
fn http(addr: &str, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp.split(' ').nth(1).unwrap().parse().unwrap();
    let (head, rest) = resp.split_once("\r\n\r\n").unwrap();
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(rest) } else { rest.to_string() };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

#[tokio::test]
async fn run_serves_admin_api_and_stops_on_sigterm() {
    let token = "test-admin-token-0123456789abcdefghijklmnop";
    let tmp_token = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tmp_token.path(), format!("{token}\n")).unwrap();
    let env = Env::with_extra(&format!("admin_token_file = \"{}\"", tmp_token.path().display()));
    let mut child = env.command(&["run"]).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(line.starts_with("signal server listening on http://127.0.0.1:"), "{line:?}");
    let addr = line.trim_end().split("http://").nth(1).unwrap().split(' ').next().unwrap().to_string();
    assert!(line.trim_end().ends_with(&format!("(ws: ws://{addr}/ws)")), "{line:?}");

    // The API is nested at /api with bearer auth.
    let (status, body) = http(&addr, "GET", "/api/accounts", None, None);
    assert_eq!(status, 401, "{body}");
    let (status, body) = http(&addr, "GET", "/api/accounts", Some(token), None);
    assert_eq!((status, body.as_str()), (200, "[]"));
    let (status, body) = http(
        &addr,
        "POST",
        "/api/accounts",
        Some(token),
        Some(&serde_json::json!({"number": "100", "password": PASSWORD}).to_string()),
    );
    assert_eq!(status, 201, "{body}");
    assert!(!body.contains(PASSWORD));

    // The CLI sees the API's change in the same database, and vice versa.
    assert!(env.ok(&["account", "list"]).contains("100"));
    let pw = env.file("pw", PASSWORD);
    env.ok(&["account", "add", "--number", "101", "--password-file", pw.to_str().unwrap()]);
    let (status, body) = http(&addr, "GET", "/api/accounts", Some(token), None);
    assert_eq!(status, 200);
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2, "{body}");

    kill_term(&child);
    let status = wait_exit(&mut child, Duration::from_secs(15)).expect("server stops on SIGTERM");
    assert!(status.success(), "{status:?}");
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(!err.contains(PASSWORD) && !err.contains(token), "secret in logs: {err}");
}

#[test]
fn run_reports_bind_failure() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap();
    let env = Env::new();
    let mut c = env.command(&["run"]);
    c.env("TRUNKLINE_SIGNAL_LISTEN", addr.to_string());
    let out = Out::from(c.output().unwrap());
    out.assert_error(1, &format!("cannot listen on {addr}"));
}

#[test]
fn help_and_version_succeed() {
    let out = Out::from(Command::new(BIN).arg("--help").output().unwrap());
    assert_eq!(out.code, 0);
    for cmd in ["run", "account", "switch", "calls", "TRUNKLINE_SIGNAL_"] {
        assert!(out.stdout.contains(cmd), "{cmd} in {}", out.stdout);
    }
    let out = Out::from(Command::new(BIN).args(["account", "add", "--help"]).output().unwrap());
    assert_eq!(out.code, 0);
    assert!(out.stdout.contains("--password-file") && !out.stdout.contains("--password <"));
    let out = Out::from(Command::new(BIN).arg("--version").output().unwrap());
    assert_eq!(out.code, 0);
    assert!(out.stdout.contains(env!("CARGO_PKG_VERSION")));
    let out = Out::from(Command::new(BIN).output().unwrap());
    assert_eq!(out.code, 2, "no command is a usage error");
}

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("signal-server.example.toml")
}

#[test]
fn example_config_loads_and_documents_the_defaults() {
    let path = example_path();
    let text = std::fs::read_to_string(&path).unwrap();
    // It loads through the real loader...
    let cfg = Config::from_toml(&text).unwrap();
    // ...and every value it shows is the default, so the comments' "default" claims hold.
    assert_eq!(cfg, Config::default());
    if !std::env::vars().any(|(k, _)| k.starts_with(signal_server::config::ENV_PREFIX)) {
        assert_eq!(Config::load(Some(&path)).unwrap(), Config::default());
    }

    // Every key of Config appears in it: the non-optional ones as settings, the optional ones
    // (admin_token_file, [tls]) as commented-out examples that load once uncommented.
    let table: toml::Table = text.parse().unwrap();
    let defaults = toml::Table::try_from(Config::default()).unwrap();
    for (key, value) in &defaults {
        match value {
            toml::Value::Table(sub) => {
                let shown = table[key].as_table().unwrap_or_else(|| panic!("[{key}] missing"));
                for k in sub.keys() {
                    assert!(shown.contains_key(k), "{key}.{k} missing from the example");
                }
            }
            _ => assert!(table.contains_key(key), "{key} missing from the example"),
        }
    }
    let uncommented: String = text
        .lines()
        .map(|l| {
            let t = l.trim_start();
            for k in [
                "# admin_token_file =",
                "# [tls]",
                "# cert_file =",
                "# key_file =",
                "# vapid_private_key_file =",
                "# vapid_subject =",
                "# turn_secret_file =",
            ] {
                if t.starts_with(k) {
                    return t.trim_start_matches("# ").to_string();
                }
            }
            l.to_string()
        })
        .collect::<Vec<_>>()
        .join("\n");
    let full = Config::from_toml(&uncommented).unwrap();
    assert!(full.admin_token_file.is_some());
    let tls = full.tls.expect("[tls] example present");
    assert!(tls.cert_file.ends_with("cert.pem") && tls.key_file.ends_with("key.pem"));
    assert!(full.push.vapid_private_key_file.is_some_and(|p| p.ends_with("vapid.pem")));
    assert!(full.push.vapid_subject.is_some_and(|s| s.starts_with("mailto:")));
    assert!(full.ice.turn_secret_file.is_some_and(|p| p.ends_with("turn.secret")));
    // The indented example of a real deployment loads too.
    let example: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("#   "))
        .filter(|l| l.starts_with("stun_urls") || l.starts_with("turn_urls") || l.starts_with("turn_secret_file"))
        .collect::<Vec<_>>()
        .join("\n");
    let real = Config::from_toml(&format!("[ice]\n{example}")).unwrap();
    assert_eq!(real.ice.turn_urls.len(), 2);
    assert_eq!(real.ice.stun_urls, vec!["stun:turn.example.com:3478"]);
    // Documented override rule.
    assert!(text.contains("TRUNKLINE_SIGNAL_") && text.contains("__"));
}
