//! `trunkline-demo run`: the whole system in one process (what `./trunkline run` starts).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "trunkline-demo",
    about = "Trunkline in one process: signal server + gateways hq and branch, with demo accounts"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start everything and print how to use it; Ctrl-C stops it.
    Run {
        /// Data folder (database, secrets, demo logins); reused by the next run.
        #[arg(long, env = "TRUNKLINE_DATA", default_value = "data")]
        data: PathBuf,
        /// Signal server port (gateways: SIP 5060/5070; nothing else listens). 0: random ports.
        #[arg(long, env = "TRUNKLINE_PORT", default_value_t = 8080)]
        port: u16,
        #[arg(long, default_value = "127.0.0.1")]
        bind: std::net::IpAddr,
        /// The built softphone.
        #[arg(long, default_value = "dist")]
        web_root: PathBuf,
        /// Also start baresip desk phones for the demo desk-phone numbers (auto-answer).
        #[arg(long)]
        with_phones: bool,
    },
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let Command::Run { data, port, bind, web_root, with_phones } = Cli::parse().command;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    rt.block_on(async move {
        let opts = trunkline_demo::StackOptions {
            data_dir: data.clone(),
            http_port: port,
            bind_ip: bind,
            web_root: web_root.clone(),
            with_phones,
        };
        let stack = match trunkline_demo::start(opts).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Err(e) = stack.wait_ready(std::time::Duration::from_secs(20)).await {
            eprintln!("warning: {e}");
        }
        println!("{}", stack.info.summary(web_root.join("index.html").is_file(), &data));
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("stopping…");
        stack.stop().await;
        ExitCode::SUCCESS
    })
}
