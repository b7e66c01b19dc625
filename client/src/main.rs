//! `trunkline-client`: the headless softphone on the command line.
//!
//! ```text
//! trunkline-client --server ws://127.0.0.1:8080/ws --number 2001 --password-file pw.txt \
//!     call 1001 --play tone.wav --record out.wav --seconds 10 --dtmf 123
//! trunkline-client --server … --number 2002 --password-file - listen --auto-answer --play tone:440 --record in.wav
//! ```
//!
//! Prints one progress line per step (with the patent's step letters) and the final outcome.
//! Exit status: 0 when every call connected and audio arrived, 1 when a call ended otherwise,
//! 2 for usage errors, 3 when signing in or signalling failed.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use trunkline_client::wav::{self, RATE};
use trunkline_client::webrtc::AudioSource;
use trunkline_client::{CallHandle, PeerOptions, Softphone, SoftphoneConfig, SoftphoneError, TlsOptions};
use trunkline_protocol::{DeclineReason, Outcome};

#[derive(Parser)]
#[command(name = "trunkline-client", version, about = "Trunkline headless softphone (speaks what the browser softphone speaks)")]
struct Cli {
    /// Signal server WebSocket URL, ws(s)://HOST/ws.
    #[arg(long, env = "TRUNKLINE_SERVER")]
    server: String,
    /// This softphone's number (a browser account).
    #[arg(long)]
    number: String,
    /// File holding the password ("-" reads it from standard input). Passwords are never
    /// taken from the command line.
    #[arg(long)]
    password_file: PathBuf,
    /// Local IP for WebRTC media sockets; 0.0.0.0 uses every interface address.
    #[arg(long, default_value = "0.0.0.0")]
    media_ip: IpAddr,
    /// Extra CA certificates (PEM) to trust for wss:// (a private CA or self-signed gateway).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Place a call.
    Call {
        /// The number to call.
        to: String,
        #[command(flatten)]
        media: MediaArgs,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 60)]
        answer_timeout: u64,
    },
    /// Wait for incoming calls.
    Listen {
        /// Answer each incoming call.
        #[arg(long, conflicts_with = "decline")]
        auto_answer: bool,
        /// Decline each incoming call with this reason (busy, not_registered, declined).
        #[arg(long, value_parser = parse_decline)]
        decline: Option<DeclineReason>,
        /// How many calls to take before exiting.
        #[arg(long, default_value_t = 1)]
        calls: u32,
        /// Give up if no call comes within this many seconds (default: wait forever).
        #[arg(long)]
        wait: Option<u64>,
        #[command(flatten)]
        media: MediaArgs,
    },
}

#[derive(Args, Clone)]
struct MediaArgs {
    /// What to send: a WAV file (converted to mono 8 kHz) or tone:HZ. Default: silence.
    #[arg(long)]
    play: Option<String>,
    /// Write what arrives to this WAV file (mono 8 kHz 16-bit). With several calls, -N is
    /// added before the extension.
    #[arg(long)]
    record: Option<PathBuf>,
    /// Hang up this many seconds after media connects (default for `call`: 10; for `listen`:
    /// wait for the other side to hang up).
    #[arg(long)]
    seconds: Option<f64>,
    /// DTMF digits to send once media flows (0-9 * # A-D).
    #[arg(long)]
    dtmf: Option<String>,
}

fn parse_decline(s: &str) -> Result<DeclineReason, String> {
    match s {
        "busy" => Ok(DeclineReason::Busy),
        "not_registered" => Ok(DeclineReason::NotRegistered),
        "declined" => Ok(DeclineReason::Declined),
        other => Err(format!("{other:?}: expected busy, not_registered or declined")),
    }
}

/// "No limit" for waits (a century: far, but no overflow when added to now).
const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

const EXIT_FAILED_CALL: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_SIGNALLING: u8 = 3;

struct Out {
    start: Instant,
}

impl Out {
    fn line(&self, what: impl std::fmt::Display) {
        println!("[{:>8.3}] {what}", self.start.elapsed().as_secs_f64());
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let out = Arc::new(Out { start: Instant::now() });
    match run(cli, out).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(EXIT_FAILED_CALL),
        Err((code, msg)) => {
            eprintln!("trunkline-client: {msg}");
            ExitCode::from(code)
        }
    }
}

type Failure = (u8, String);

fn usage(msg: impl std::fmt::Display) -> Failure {
    (EXIT_USAGE, msg.to_string())
}

fn read_password(path: &Path) -> Result<String, Failure> {
    let raw = if path == Path::new("-") {
        let mut s = String::new();
        std::io::stdin().read_line(&mut s).map_err(|e| usage(format!("reading the password from stdin: {e}")))?;
        s
    } else {
        std::fs::read_to_string(path).map_err(|e| usage(format!("{}: {e}", path.display())))?
    };
    let pw = raw.trim_end_matches(['\r', '\n']).to_string();
    if pw.is_empty() {
        return Err(usage("the password is empty"));
    }
    Ok(pw)
}

fn source(play: &Option<String>) -> Result<AudioSource, Failure> {
    match play.as_deref() {
        None => Ok(AudioSource::Silence),
        Some(spec) if spec.starts_with("tone:") => {
            let hz: f32 = spec["tone:".len()..].parse().map_err(|_| usage(format!("{spec:?}: expected tone:HZ")))?;
            if !(20.0..=3900.0).contains(&hz) {
                return Err(usage(format!("{spec:?}: the tone must be 20–3900 Hz at 8 kHz")));
            }
            Ok(AudioSource::tone(hz))
        }
        Some(path) => AudioSource::wav(path, false).map_err(|e| usage(e.to_string())),
    }
}

fn check_dtmf(digits: &Option<String>) -> Result<(), Failure> {
    if let Some(d) = digits
        && let Some(bad) = d.chars().find(|&c| trunkline_client::webrtc::dtmf_code(c).is_none())
    {
        return Err(usage(format!("--dtmf: {bad:?} is not a DTMF digit (0-9 * # A-D)")));
    }
    Ok(())
}

async fn run(cli: Cli, out: Arc<Out>) -> Result<bool, Failure> {
    let password = read_password(&cli.password_file)?;
    let tls = match &cli.ca_file {
        Some(p) => TlsOptions::with_ca_file(p).map_err(|e| usage(e.to_string()))?,
        None => TlsOptions::default(),
    };
    let media_args = match &cli.command {
        Command::Call { media, .. } | Command::Listen { media, .. } => media.clone(),
    };
    let src = source(&media_args.play)?;
    check_dtmf(&media_args.dtmf)?;
    let mut cfg = SoftphoneConfig::new(&cli.server, &cli.number, password);
    cfg.media = PeerOptions::bind(cli.media_ip);
    cfg.tls = tls;
    let phone = Softphone::login(cfg).await.map_err(|e| (EXIT_SIGNALLING, format!("sign-in to {} failed: {e}", cli.server)))?;
    let s = phone.session();
    out.line(format_args!("signed in as {} ({}) at {}", s.number, s.display_name, cli.server));

    match cli.command {
        Command::Call { to, media, answer_timeout } => {
            let call = phone.call(&to, src).await.map_err(|e| (EXIT_SIGNALLING, format!("dial: {e}")))?;
            let call = Arc::new(call);
            let hold = Duration::from_secs_f64(media.seconds.unwrap_or(10.0).max(0.0));
            let ok = talk(&out, call, &media, Some(hold), Duration::from_secs(answer_timeout), None).await;
            phone.close();
            Ok(ok)
        }
        Command::Listen { auto_answer, decline, calls, wait, media } => {
            if !auto_answer && decline.is_none() {
                return Err(usage("listen needs --auto-answer or --decline REASON"));
            }
            let mut all_ok = true;
            for n in 1..=calls {
                let within = wait.map_or(FOREVER, Duration::from_secs);
                let incoming = match phone.next_incoming(within).await {
                    Ok(c) => c,
                    Err(SoftphoneError::Timeout { .. }) => {
                        out.line("no incoming call in time");
                        return Ok(false);
                    }
                    Err(e) => return Err((EXIT_SIGNALLING, e.to_string())),
                };
                out.line(format_args!("incoming call {} from {} ({})", incoming.call_id, incoming.from, incoming.from_name));
                if let Some(reason) = decline {
                    let id = incoming.call_id.clone();
                    incoming.decline(reason).map_err(|e| (EXIT_SIGNALLING, e.to_string()))?;
                    out.line(format_args!("declined {id} ({reason:?})"));
                    continue;
                }
                let src = source(&media.play)?;
                let call = Arc::new(incoming.answer(src));
                let record = media.record.as_ref().map(|p| if calls > 1 { numbered(p, n) } else { p.clone() });
                let hold = media.seconds.map(|s| Duration::from_secs_f64(s.max(0.0)));
                let ok = talk(&out, call, &media, hold, Duration::from_secs(30), record).await;
                all_ok &= ok;
            }
            phone.close();
            Ok(all_ok)
        }
    }
}

/// `out.wav` → `out-2.wav`.
fn numbered(p: &Path, n: u32) -> PathBuf {
    let stem = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let name = match p.extension() {
        Some(ext) => format!("{stem}-{n}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{n}"),
    };
    p.with_file_name(name)
}

/// Run one call to its end: print progress, send DTMF, hold, hang up, record, report.
/// Returns whether it connected with audio arriving.
async fn talk(
    out: &Arc<Out>,
    call: Arc<CallHandle>,
    media: &MediaArgs,
    hold: Option<Duration>,
    answer_timeout: Duration,
    record: Option<PathBuf>,
) -> bool {
    let record = record.or_else(|| media.record.clone());
    out.line(format_args!("call {} {} {}", call.call_id(), if call.is_outgoing() { "to" } else { "from" }, call.remote()));
    let printer = {
        let call = call.clone();
        let out = out.clone();
        tokio::spawn(async move {
            while let Some(u) = call.next_update().await {
                out.line(u);
            }
        })
    };

    // Answer and media, unless the call ends first.
    let connected = async {
        if call.is_outgoing() {
            call.wait_answered(answer_timeout).await?;
        }
        call.wait_media(Duration::from_secs(15)).await
    };
    let media_session = tokio::select! {
        r = connected => r.ok(),
        _ = tokio::signal::ctrl_c() => {
            out.line("interrupted");
            None
        }
    };

    if let Some(m) = &media_session {
        if let Some(d) = &media.dtmf
            && let Err(e) = m.send_dtmf_digits(d)
        {
            out.line(format_args!("DTMF: {e}"));
        }
        let ended = call.wait_finished(hold.unwrap_or(FOREVER));
        tokio::select! {
            r = ended => {
                if r.is_ok() {
                    out.line("the other side ended the call");
                }
            }
            _ = tokio::signal::ctrl_c() => out.line("interrupted"),
        }
    }
    call.hangup();
    let status = match call.wait_finished(Duration::from_secs(10)).await {
        Ok(s) => s,
        Err(_) => call.status(),
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), printer).await;

    let mut audio = false;
    if let Some(m) = &media_session {
        let s = m.stats();
        audio = s.packets_received > 0;
        out.line(format_args!(
            "media: sent {} packets ({} bytes, {}), received {} packets ({} bytes){}{}",
            s.packets_sent,
            s.bytes_sent,
            s.send_codec.map_or("-".into(), |c| c.to_string()),
            s.packets_received,
            s.bytes_received,
            s.first_audio_after.map_or(String::new(), |d| format!(", first audio after {} ms", d.as_millis())),
            if s.dtmf_received.is_empty() { String::new() } else { format!(", DTMF received {}", s.dtmf_received) },
        ));
        let rec = m.recording();
        if !rec.is_empty() {
            out.line(format_args!(
                "received audio: {:.1} s, dominant frequency {:.0} Hz, level {:.0} rms",
                rec.len() as f64 / f64::from(RATE),
                wav::dominant_frequency(&rec, RATE),
                wav::rms(&rec)
            ));
        }
        if let Some(path) = &record {
            match wav::write_wav(path, &rec, RATE) {
                Ok(()) => out.line(format_args!("recorded {} samples to {}", rec.len(), path.display())),
                Err(e) => out.line(format_args!("recording: {e}")),
            }
        }
    }
    match (&status.outcome, &status.failure) {
        (Some((o, d)), _) => {
            out.line(format_args!("OUTCOME {o}{}", d.map_or(String::new(), |d| format!(" duration_ms={d}"))));
            *o == Outcome::Connected && audio
        }
        (None, Some(why)) => {
            out.line(format_args!("OUTCOME none: {why}"));
            false
        }
        (None, None) => {
            out.line("OUTCOME none: the call did not finish in time");
            false
        }
    }
}
