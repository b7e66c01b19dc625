//! `switch-gateway run --config FILE`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::{Config, Sockets};

#[derive(Parser, Debug)]
#[command(name = "switch-gateway", version, about = "Trunkline switch gateway: SIP for desk phones, linked to the signal server")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway until Ctrl-C or SIGTERM.
    Run {
        /// TOML config (see switch-gateway.example.toml). Env TRUNKLINE_GATEWAY_* overrides keys.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Ask STUN servers how this site's NAT maps a UDP socket (what callers will see), and
    /// whether the NAT is "cone" (direct calls can work) or symmetric (calls need TURN).
    /// Give two servers (two addresses) to tell the NAT's kind. Exit 0 when one answered.
    NatCheck {
        /// A STUN server, `stun:host[:port]` (repeat: two servers tell the NAT's kind).
        #[arg(long = "stun", value_name = "URL", required = true)]
        stun: Vec<String>,
        /// The local address to send from (the RTP range's interface on a gateway).
        #[arg(long, default_value = "0.0.0.0:0")]
        bind: std::net::SocketAddr,
    },
    /// Check that the gateway this config describes is up: a SIP OPTIONS to `sip_listen` over
    /// UDP (loopback for a wildcard address) must get 200 from its core. Exit 0 healthy, 1 not:
    /// a container's HEALTHCHECK (the image has no shell and no curl).
    Healthcheck {
        /// The gateway's TOML config. Env TRUNKLINE_GATEWAY_* overrides keys, as for `run`.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Give up after this long (milliseconds).
        #[arg(long, value_name = "MS", default_value_t = 3000)]
        timeout_ms: u64,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // turn-client-proto traces every poll at info level: keep it to warnings unless asked.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,turn_client_proto=warn,turn_types=warn,stun_proto=warn".into());
    // Colours only on a terminal: not in container logs or the journal.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::NatCheck { stun, bind } => rt.block_on(nat_check(stun, bind)),
        Command::Healthcheck { config, timeout_ms } => {
            let config = match Config::load(config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            match rt.block_on(crate::healthcheck::check(config.sip_listen, std::time::Duration::from_millis(timeout_ms))) {
                Ok(status) => {
                    println!("healthy: {status}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("unhealthy: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run { config } => rt.block_on(async move {
            let config = match Config::load(config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let sockets = match Sockets::bind(&config).await {
                Ok(s) => s,
                Err(e) => {
                    let tls = config.sip_tls.as_ref().map(|t| format!(" / {}", t.listen)).unwrap_or_default();
                    eprintln!("error: cannot bind {}{tls}: {e}", config.sip_listen);
                    return ExitCode::FAILURE;
                }
            };
            // Callers elsewhere come over WebRTC through the cloud: nothing listens for them.
            println!(
                "switch gateway {} listening for desk phones: SIP udp+tcp {}{} · cloud {} · RTP/WebRTC udp {}",
                config.id,
                config.sip_listen,
                config.sip_tls.as_ref().map(|t| format!(" · SIP tls {}", t.listen)).unwrap_or_default(),
                config.cloud_url,
                config.rtp_ports
            );
            match crate::run(config, sockets, shutdown_signal()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }),
    }
}

async fn nat_check(urls: Vec<String>, bind: std::net::SocketAddr) -> ExitCode {
    use trunkline_media::srflx;
    let mut servers = vec![];
    for url in &urls {
        let Some((host, port)) = srflx::parse_stun_url(url) else {
            eprintln!("error: {url:?} is not a stun:host[:port] URL");
            return ExitCode::from(2);
        };
        match tokio::net::lookup_host((host.as_str(), port)).await.map(|mut a| a.find(|a| a.is_ipv4() == bind.is_ipv4())) {
            Ok(Some(a)) => servers.push(a),
            Ok(None) | Err(_) => {
                eprintln!("error: cannot resolve {host} (for {url})");
                return ExitCode::FAILURE;
            }
        }
    }
    let report = match srflx::check(bind, &servers, srflx::ProbeTiming::default()).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot use a UDP socket on {bind}: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("local socket     {}", report.base);
    for (server, mapped) in &report.mapped {
        println!("stun {server:<21} sees {mapped}");
    }
    for (server, why) in &report.unreachable {
        println!("stun {server:<21} unreachable: {why}");
    }
    println!("nat              {}", report.kind.describe());
    if report.mapped.is_empty() { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
