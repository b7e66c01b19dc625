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
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
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
                    eprintln!("error: cannot bind {} / {}: {e}", config.sip_listen, config.direct_listen);
                    return ExitCode::FAILURE;
                }
            };
            println!(
                "switch gateway {} listening: SIP udp+tcp {} · direct {} (advertised {})",
                config.id, config.sip_listen, config.direct_listen, config.advertise_url
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
