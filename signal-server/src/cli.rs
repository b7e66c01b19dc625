//! The `signal-server` command line: `run`, and the admin commands that work directly on the
//! configured database (`account`, `switch`, `calls`).
//!
//! Secrets never come from argv (they would show in `ps` and shell history): passwords and
//! switch secrets are read from a file, or from standard input with `-`. They are never printed.
//!
//! Exit codes: 0 success; 2 the command line or its input is wrong (nothing was changed);
//! 1 anything else (config, database, not found, already exists, I/O).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use trunkline_protocol::AccountKind;

use crate::Config;
use crate::admin::{self, AccountInput, AdminError, SwitchInput};
use crate::directory::{self, Directory, DirectoryError};

const AFTER_HELP: &str = "\
Every command reads --config FILE if given (TOML; see signal-server.example.toml), then applies \
TRUNKLINE_SIGNAL_<KEY> environment variables (TRUNKLINE_SIGNAL_<TABLE>__<KEY> for keys inside a \
table). Admin commands work directly on the configured database; a running server notices their \
changes within seconds.

Exit codes: 0 ok, 2 wrong command line or input (nothing changed), 1 other errors.";

#[derive(Parser, Debug)]
#[command(name = "signal-server", version, about = "Trunkline cloud signal server", after_help = AFTER_HELP)]
pub struct Cli {
    /// Config file (TOML). Without it: built-in defaults plus TRUNKLINE_SIGNAL_* variables.
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// Replicas (live or not, lease left), and attempts in flight by owner and state.
    Status,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the signal server (HTTP, WebSocket /ws, admin API /api) until Ctrl-C or SIGTERM.
    Run,
    /// Add, list and remove accounts.
    #[command(subcommand)]
    Account(AccountCmd),
    /// Add, list and remove switch gateways.
    #[command(subcommand)]
    Switch(SwitchCmd),
    /// List and revoke browser sessions (signed-in browsers that can `resume`).
    #[command(subcommand)]
    Sessions(SessionsCmd),
    /// Show call records, newest first.
    Calls {
        /// Print one JSON array instead of a table.
        #[arg(long)]
        json: bool,
        /// Only calls where this number is the caller or the callee.
        #[arg(long, value_name = "N")]
        number: Option<String>,
        /// At most this many records (1–10000).
        #[arg(long, value_name = "N", default_value_t = admin::DEFAULT_CALLS_LIMIT)]
        limit: u32,
    },
    /// Cluster mode: the replicas and their leases, and the call attempts in flight (read from
    /// the shared PostgreSQL database).
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Check that the server this config describes answers `GET /healthz` (on loopback when it
    /// listens on a wildcard address; over TLS with `[tls]`, certificate not checked). Exit 0
    /// healthy, 1 not: a container's HEALTHCHECK (the image has no shell and no curl).
    Healthcheck {
        /// Give up after this long (milliseconds).
        #[arg(long, value_name = "MS", default_value_t = 3000)]
        timeout_ms: u64,
    },
}

#[derive(Subcommand, Debug)]
pub enum AccountCmd {
    /// Add an account. The password is read from a file (`-`: standard input).
    Add {
        /// The account's number (1–32 of A-Z a-z 0-9 + . _ -).
        #[arg(long, value_name = "N")]
        number: String,
        /// File holding the password (one trailing newline is ignored); `-` reads standard input.
        #[arg(long, value_name = "FILE")]
        password_file: PathBuf,
        /// Home switch of the account (desk phones; implies --kind deskphone unless given).
        #[arg(long, value_name = "ID")]
        switch: Option<String>,
        /// Display name (default: the number).
        #[arg(long, value_name = "TEXT")]
        name: Option<String>,
        /// Device kind (default: deskphone with --switch, else browser).
        #[arg(long, value_enum)]
        kind: Option<KindArg>,
    },
    /// List accounts.
    List {
        /// Print one JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove an account (its sessions and push subscriptions go with it).
    Remove {
        #[arg(long, value_name = "N")]
        number: String,
    },
    /// Change (reset) an account's password, read from a file (`-`: standard input). Every
    /// session of the account is revoked: its browsers must sign in with the new password.
    SetPassword {
        #[arg(long, value_name = "N")]
        number: String,
        /// File holding the new password (one trailing newline is ignored); `-` reads stdin.
        #[arg(long, value_name = "FILE")]
        password_file: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum SessionsCmd {
    /// List unexpired sessions (id, number, created, expires, last used; never a token).
    List {
        /// Only this account's sessions.
        #[arg(long, value_name = "N")]
        number: Option<String>,
        /// Print one JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke sessions: every session of an account (--number) or one (--id from `list`).
    /// A revoked session cannot `resume`; its browser must sign in again.
    Revoke {
        #[arg(long, value_name = "N", required_unless_present = "id", conflicts_with = "id")]
        number: Option<String>,
        #[arg(long, value_name = "ID")]
        id: Option<i64>,
    },
}

#[derive(Subcommand, Debug)]
pub enum SwitchCmd {
    /// Add a switch gateway. Its shared secret (≥ 16 bytes) is read from a file (`-`: stdin).
    Add {
        /// The switch id (1–64 of A-Z a-z 0-9 . _ -).
        #[arg(long, value_name = "ID")]
        id: String,
        /// File holding the secret (one trailing newline is ignored); `-` reads standard input.
        #[arg(long, value_name = "FILE")]
        secret_file: PathBuf,
    },
    /// List switches with their presence.
    List {
        /// Print one JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a switch (refused while accounts still have it as their home switch).
    Remove {
        #[arg(long, value_name = "ID")]
        id: String,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum KindArg {
    Browser,
    Deskphone,
}

impl From<KindArg> for AccountKind {
    fn from(k: KindArg) -> Self {
        match k {
            KindArg::Browser => AccountKind::Browser,
            KindArg::Deskphone => AccountKind::Deskphone,
        }
    }
}

/// A failed command: what to print after `error: `, and the exit code.
#[derive(Debug)]
pub enum CliError {
    /// Wrong command line or input; nothing changed. Exit 2.
    Usage(String),
    /// Exit 1.
    Failed(String),
}

impl CliError {
    fn code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Failed(_) => 1,
        }
    }
    fn message(&self) -> &str {
        match self {
            CliError::Usage(m) | CliError::Failed(m) => m,
        }
    }
}

impl From<AdminError> for CliError {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::Invalid(m) => CliError::Usage(m),
            AdminError::Directory(d) => d.into(),
            other => CliError::Failed(other.to_string()),
        }
    }
}

impl From<DirectoryError> for CliError {
    fn from(e: DirectoryError) -> Self {
        match e {
            // The directory refused a change that conflicts with stored data (e.g. removing a
            // switch that still has accounts): not a command-line mistake, so exit 1.
            DirectoryError::Invalid(m) => CliError::Failed(m),
            other => CliError::Failed(other.to_string()),
        }
    }
}

/// Entry point of the `signal-server` binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help / --version print to stdout and succeed; real errors exit 2.
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    let runtime = match cli.command {
        Command::Run => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
        _ => tokio::runtime::Builder::new_current_thread().enable_all().build(),
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(execute(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", e.message());
            ExitCode::from(e.code())
        }
    }
}

/// Run one parsed command.
pub async fn execute(cli: Cli) -> Result<(), CliError> {
    let config = Config::load(cli.config.as_deref()).map_err(|e| CliError::Failed(e.to_string()))?;
    match cli.command {
        Command::Run => run(config).await,
        Command::Account(cmd) => account(config, cmd).await,
        Command::Switch(cmd) => switch(config, cmd).await,
        Command::Calls { json, number, limit } => calls(config, json, number, limit).await,
        Command::Sessions(cmd) => sessions(config, cmd).await,
        Command::Cluster(ClusterCmd::Status) => cluster_status(config).await,
        Command::Healthcheck { timeout_ms } => {
            let status = crate::healthcheck::check(&config, std::time::Duration::from_millis(timeout_ms))
                .await
                .map_err(CliError::Failed)?;
            say(&format!("healthy: {status}\n"));
            Ok(())
        }
    }
}

async fn run(config: Config) -> Result<(), CliError> {
    init_tracing();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| CliError::Failed(format!("cannot listen on {}: {e}", config.listen)))?;
    let addr = listener.local_addr().map_err(|e| CliError::Failed(format!("listening socket: {e}")))?;
    let (http, ws) = if config.tls.is_some() { ("https", "wss") } else { ("http", "ws") };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "signal server listening on {http}://{addr} (ws: {ws}://{addr}/ws)");
    let _ = out.flush();
    drop(out);
    let shutdown = shutdown_signal().map_err(|e| CliError::Failed(format!("cannot watch for signals: {e}")))?;
    crate::server::run(config, listener, shutdown).await.map_err(|e| CliError::Failed(e.to_string()))
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::prelude::*;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Never trace for these, whatever RUST_LOG says: at trace they print every WebSocket frame
    // and message, i.e. passwords, switch secrets and session tokens. (A filter of its own, so
    // it only ever removes: a `tungstenite=debug` directive would raise them under RUST_LOG=warn.)
    // The hint (the env filter's, which this only narrows) is what `log` records and disabled
    // callsites are checked against first: without it every tungstenite `log::trace!` (several
    // per frame) went through the whole subscriber, a quarter of a steering decision's CPU.
    let hint = filter.max_level_hint().unwrap_or(tracing_subscriber::filter::LevelFilter::TRACE);
    let no_frames = tracing_subscriber::filter::filter_fn(|m| {
        *m.level() != tracing::Level::TRACE
            || !(m.target().starts_with("tungstenite") || m.target().starts_with("tokio_tungstenite"))
    })
    .with_max_level_hint(hint);
    // Logs go to stderr; stdout carries the one "listening" line.
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let _ = tracing_subscriber::registry().with(fmt.with_filter(filter).with_filter(no_frames)).try_init();
}

/// A future resolving on Ctrl-C (SIGINT) or SIGTERM. The handlers are installed now, so a
/// signal arriving before the future is first polled is not lost.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        Ok(async move {
            let which = tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            };
            tracing::info!(signal = which, "shutting down");
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async move {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
            tracing::info!("shutting down");
        })
    }
}

async fn open_directory(config: &Config) -> Result<Arc<dyn Directory>, CliError> {
    directory::open(&config.database_url, &config.database)
        .await
        .map_err(|e| CliError::Failed(format!("{}: {e}", directory::postgres::redact_url(&config.database_url))))
}

/// Read a secret from `path` (`-`: standard input), dropping one trailing newline.
/// `what` names it in errors ("password", "switch secret"); the content never appears in them.
pub fn read_secret(path: &Path, what: &str) -> Result<String, CliError> {
    let mut bytes = Vec::new();
    let source = if path == Path::new("-") { "standard input".to_string() } else { path.display().to_string() };
    let read = if path == Path::new("-") {
        std::io::stdin().lock().read_to_end(&mut bytes).map(|_| ())
    } else {
        std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut bytes)).map(|_| ())
    };
    read.map_err(|e| CliError::Failed(format!("cannot read {what} from {source}: {e}")))?;
    let mut text = String::from_utf8(bytes).map_err(|_| CliError::Usage(format!("{what} in {source} is not valid UTF-8")))?;
    if text.ends_with("\r\n") {
        text.truncate(text.len() - 2);
    } else if text.ends_with('\n') {
        text.truncate(text.len() - 1);
    }
    if text.is_empty() {
        return Err(CliError::Usage(format!("{what} in {source} is empty")));
    }
    Ok(text)
}

async fn account(config: Config, cmd: AccountCmd) -> Result<(), CliError> {
    match cmd {
        AccountCmd::Add { number, password_file, switch, name, kind } => {
            let password = read_secret(&password_file, "password")?;
            let input = AccountInput { number, password, name, switch, kind: kind.map(AccountKind::from) };
            // Every rule that needs no database first: a wrong command line changes nothing.
            admin::check_account(&input)?;
            let dir = open_directory(&config).await?;
            let view = admin::add_account(dir.as_ref(), Arc::new(config), input).await?;
            let via = match &view.home_switch {
                Some(sw) => format!(" at switch {sw}"),
                None => String::new(),
            };
            say(&format!("added {} account {} ({}){via}\n", view.kind.as_str(), view.number, view.display_name));
        }
        AccountCmd::List { json } => {
            let dir = open_directory(&config).await?;
            let accounts: Vec<admin::AccountView> = dir.list_accounts().await?.into_iter().map(Into::into).collect();
            if json {
                say(&to_json(&accounts));
            } else if accounts.is_empty() {
                say("no accounts\n");
            } else {
                let rows = accounts
                    .iter()
                    .map(|a| {
                        vec![
                            a.number.clone(),
                            a.kind.as_str().to_string(),
                            a.home_switch.clone().unwrap_or_else(|| "-".into()),
                            a.display_name.clone(),
                        ]
                    })
                    .collect();
                say(&table(&["NUMBER", "KIND", "SWITCH", "NAME"], rows));
            }
        }
        AccountCmd::Remove { number } => {
            trunkline_protocol::check_number("number", &number).map_err(|e| CliError::Usage(e.message))?;
            let dir = open_directory(&config).await?;
            dir.remove_account(&number).await?;
            say(&format!("removed account {number}\n"));
        }
        AccountCmd::SetPassword { number, password_file } => {
            trunkline_protocol::check_number("number", &number).map_err(|e| CliError::Usage(e.message))?;
            let password = read_secret(&password_file, "password")?;
            admin::check_password(&password)?;
            let dir = open_directory(&config).await?;
            let revoked = admin::set_password(dir.as_ref(), Arc::new(config), &number, password).await?;
            say(&format!("changed the password of {number}; revoked {revoked} session(s)\n"));
        }
    }
    Ok(())
}

async fn sessions(config: Config, cmd: SessionsCmd) -> Result<(), CliError> {
    match cmd {
        SessionsCmd::List { number, json } => {
            if let Some(n) = &number {
                trunkline_protocol::check_number("number", n).map_err(|e| CliError::Usage(e.message))?;
            }
            let dir = open_directory(&config).await?;
            let list: Vec<admin::SessionView> =
                dir.list_sessions(number.as_deref(), crate::server::unix_ms()).await?.into_iter().map(Into::into).collect();
            if json {
                say(&to_json(&list));
            } else if list.is_empty() {
                say("no sessions\n");
            } else {
                let rows = list
                    .iter()
                    .map(|s| {
                        vec![
                            s.id.to_string(),
                            s.number.clone(),
                            admin::format_utc(s.created_ms),
                            admin::format_utc(s.expires_ms),
                            admin::format_utc(s.last_used_ms),
                        ]
                    })
                    .collect();
                say(&table(&["ID", "NUMBER", "CREATED", "EXPIRES", "LAST USED"], rows));
            }
        }
        SessionsCmd::Revoke { number: Some(number), .. } => {
            trunkline_protocol::check_number("number", &number).map_err(|e| CliError::Usage(e.message))?;
            let dir = open_directory(&config).await?;
            if dir.account(&number).await?.is_none() {
                return Err(DirectoryError::NotFound { what: "account", key: number }.into());
            }
            let revoked = dir.revoke_sessions(&number).await?;
            say(&format!("revoked {revoked} session(s) of {number}\n"));
        }
        SessionsCmd::Revoke { id: Some(id), .. } => {
            let dir = open_directory(&config).await?;
            match dir.revoke_session(id).await? {
                Some(number) => say(&format!("revoked session {id} of {number}\n")),
                None => return Err(DirectoryError::NotFound { what: "session", key: id.to_string() }.into()),
            }
        }
        SessionsCmd::Revoke { .. } => return Err(CliError::Usage("give --number N or --id ID".into())),
    }
    Ok(())
}

async fn switch(config: Config, cmd: SwitchCmd) -> Result<(), CliError> {
    match cmd {
        SwitchCmd::Add { id, secret_file } => {
            let secret = read_secret(&secret_file, "switch secret")?;
            let input = SwitchInput { id, secret };
            admin::check_switch(&input)?;
            let dir = open_directory(&config).await?;
            let view = admin::add_switch(dir.as_ref(), Arc::new(config), input).await?;
            say(&format!("added switch {}\n", view.id));
        }
        SwitchCmd::List { json } => {
            let dir = open_directory(&config).await?;
            let switches: Vec<admin::SwitchView> = dir.list_switches().await?.into_iter().map(Into::into).collect();
            if json {
                say(&to_json(&switches));
            } else if switches.is_empty() {
                say("no switches\n");
            } else {
                let rows = switches
                    .iter()
                    .map(|s| {
                        vec![
                            s.id.clone(),
                            if s.online { "yes" } else { "no" }.to_string(),
                            s.last_seen_ms.map(admin::format_utc).unwrap_or_else(|| "never".into()),
                            if s.direct_urls.is_empty() { "-".into() } else { s.direct_urls.join(" ") },
                        ]
                    })
                    .collect();
                say(&table(&["ID", "ONLINE", "LAST SEEN", "DIRECT URLS"], rows));
            }
        }
        SwitchCmd::Remove { id } => {
            trunkline_protocol::check_switch_id(&id).map_err(|e| CliError::Usage(e.message))?;
            let dir = open_directory(&config).await?;
            dir.remove_switch(&id).await?;
            say(&format!("removed switch {id}\n"));
        }
    }
    Ok(())
}

async fn calls(config: Config, json: bool, number: Option<String>, limit: u32) -> Result<(), CliError> {
    admin::check_calls_query(number.as_deref(), limit)?;
    let dir = open_directory(&config).await?;
    let records: Vec<admin::CallView> = dir.call_records(number.as_deref(), limit).await?.into_iter().map(Into::into).collect();
    if json {
        say(&to_json(&records));
    } else if records.is_empty() {
        say("no calls\n");
    } else {
        let rows = records
            .iter()
            .map(|c| {
                vec![
                    admin::format_utc(c.started_ms),
                    c.caller.clone(),
                    c.callee.clone(),
                    c.outcome.as_str().to_string(),
                    c.duration_ms.map(admin::format_duration_ms).unwrap_or_else(|| "-".into()),
                    c.switch_id.clone().unwrap_or_else(|| "-".into()),
                    c.call_id.clone(),
                    c.trace.join(","),
                ]
            })
            .collect();
        say(&table(&["TIME", "CALLER", "CALLEE", "OUTCOME", "DURATION", "SWITCH", "CALL ID", "TRACE"], rows));
    }
    Ok(())
}

async fn cluster_status(config: Config) -> Result<(), CliError> {
    if !crate::directory::is_postgres_url(&config.database_url) {
        return Err(CliError::Usage("cluster status needs the cluster's postgres:// database_url (this config has none)".into()));
    }
    let failed = |e: crate::cluster::store::StoreError| CliError::Failed(e.to_string());
    // Opening the directory applies the migrations (the cluster tables come with them).
    open_directory(&config).await?;
    let store = crate::cluster::store::ClusterStore::connect(&config.database_url, config.database.statement_timeout_ms)
        .await
        .map_err(failed)?;
    let nodes = store.nodes().await.map_err(failed)?;
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            vec![
                n.node_id.clone(),
                if n.live { "live".into() } else { "gone".into() },
                format!("{:.1} s", n.lease_left_ms as f64 / 1000.0),
                n.incarnation.clone(),
                n.http_addr.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    if rows.is_empty() {
        say("no replicas have joined\n");
    } else {
        say(&table(&["NODE", "STATE", "LEASE LEFT", "INCARNATION", "HTTP"], rows));
    }
    let attempts = store.attempts_by_owner().await.map_err(failed)?;
    let total: i64 = attempts.iter().map(|a| a.2).sum();
    say(&format!("\n{total} call attempts in flight\n"));
    if !attempts.is_empty() {
        let rows = attempts.into_iter().map(|(o, st, n)| vec![o, st, n.to_string()]).collect();
        say(&table(&["OWNER", "STATE", "ATTEMPTS"], rows));
    }
    Ok(())
}

/// Write to stdout; a closed pipe (`| head`) is not an error worth a panic.
fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    let mut s = serde_json::to_string_pretty(value).expect("views always serialize");
    s.push('\n');
    s
}

/// Left-aligned columns separated by two spaces; the last column is not padded.
pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows.iter()) {
        let last = row.len().saturating_sub(1);
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            if i < last {
                line.extend(std::iter::repeat_n(' ', widths[i] - cell.chars().count()));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_commands() {
        let cli = Cli::try_parse_from([
            "signal-server",
            "account",
            "add",
            "--number",
            "100",
            "--password-file",
            "-",
            "--config",
            "x.toml",
        ])
        .unwrap();
        assert_eq!(cli.config.as_deref(), Some(Path::new("x.toml")));
        assert!(matches!(cli.command, Command::Account(AccountCmd::Add { ref number, .. }) if number == "100"));
        let cli = Cli::try_parse_from(["signal-server", "--config", "y.toml", "calls", "--json", "--limit", "5"]).unwrap();
        assert!(matches!(cli.command, Command::Calls { json: true, limit: 5, number: None }));
        // No way to pass a password on the command line.
        assert!(Cli::try_parse_from(["signal-server", "account", "add", "--number", "1", "--password", "x"]).is_err());
        assert!(
            Cli::try_parse_from(["signal-server", "account", "add", "--number", "1", "--password-file", "f", "--kind", "fax"])
                .is_err()
        );
    }

    #[test]
    fn table_aligns_columns() {
        let t = table(&["A", "LONG HEADER", "C"], vec![vec!["xyz".into(), "1".into(), "last".into()]]);
        assert_eq!(t, "A    LONG HEADER  C\nxyz  1            last\n");
    }

    #[test]
    fn secret_file_strips_one_newline() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("pw");
        std::fs::write(&p, "secret\n\n").unwrap();
        assert_eq!(read_secret(&p, "password").unwrap(), "secret\n");
        std::fs::write(&p, "secret\r\n").unwrap();
        assert_eq!(read_secret(&p, "password").unwrap(), "secret");
        std::fs::write(&p, " sp ace ").unwrap();
        assert_eq!(read_secret(&p, "password").unwrap(), " sp ace ");
        std::fs::write(&p, "\n").unwrap();
        assert!(matches!(read_secret(&p, "password"), Err(CliError::Usage(m)) if m.contains("empty")));
        std::fs::write(&p, [0xff, 0xfe]).unwrap();
        assert!(matches!(read_secret(&p, "password"), Err(CliError::Usage(_))));
        let missing = tmp.path().join("missing");
        assert!(matches!(read_secret(&missing, "password"), Err(CliError::Failed(_))));
    }
}
