//! `trunkline-bench`: the measuring half of `bench/run.sh` (which starts the processes and
//! prints the table). Every measurement prints `key=value` lines on stdout; `table` turns
//! those files into the one markdown table. Benchmarks print numbers; they assert nothing.

mod f4lat;
mod gwprov;
mod idle;
mod loadgen;
mod media;
mod mediacpu;
mod mediawebrtc;
mod procfs;
mod provision;
mod report;
mod rtpengine;
mod setup;
mod sippstat;
mod sipua;
mod steer;
mod udp;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "trunkline-bench", about = "Trunkline benchmark load generators (see bench/README.md)")]
struct Cli {
    /// Tokio worker threads of the load generator (1: a single-threaded runtime, which leaves
    /// the most CPU to the server on a small machine).
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the CPU time (user + system, µs) a process has used so far.
    Cpu {
        #[arg(long)]
        pid: u32,
        /// Add the CPU time of all its descendant processes (Kamailio's workers).
        #[arg(long)]
        children: bool,
    },
    /// Print how many processes `cpu --children` would count.
    Processes {
        #[arg(long)]
        pid: u32,
    },
    /// Print the kernel's count of datagrams dropped at the UDP sockets bound to these ports
    /// (full receive buffer; /proc/net/udp).
    UdpDrops {
        #[arg(long, value_delimiter = ',')]
        ports: Vec<u16>,
    },
    /// Print a free loopback port (the kernel's choice) for TCP or UDP.
    FreePort {
        #[arg(long)]
        udp: bool,
        /// Free for both UDP and TCP (a SIP listener binds both).
        #[arg(long)]
        both: bool,
    },
    /// Create the switch pairs, their phones and the browser accounts over the admin API.
    Provision {
        /// host:port of the signal server.
        #[arg(long)]
        addr: String,
        #[arg(long)]
        token_file: PathBuf,
        #[arg(long, default_value_t = 16)]
        pairs: usize,
        #[arg(long)]
        switch_secret: String,
        #[arg(long, default_value_t = 0)]
        browsers: usize,
        #[arg(long, default_value_t = 500_000)]
        first_browser: u64,
        #[arg(long)]
        password: String,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
    /// Steering decisions per second with `window` queries in flight per caller switch.
    Saturate {
        #[command(flatten)]
        s: SteerArgs,
        #[arg(long, default_value_t = 2.0)]
        warmup_secs: f64,
        /// Length of one measured interval.
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        /// Measured intervals (back to back); the median one is reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Server CPU per steering decision at a fixed rate.
    Rate {
        #[command(flatten)]
        s: SteerArgs,
        /// Decisions per second, in total over all switch pairs.
        #[arg(long, default_value_t = 5000.0)]
        rate: f64,
        #[arg(long, default_value_t = 10.0)]
        secs: f64,
    },
    /// F4 dial → ringing latency: browser callers on `caller_url` dial browser callees on
    /// `callee_url` (another replica, or the same server), which decline every call at once.
    F4Latency {
        #[arg(long)]
        caller_url: String,
        #[arg(long)]
        callee_url: String,
        /// Browser numbers: callers FIRST..FIRST+concurrency, callees the next `concurrency`.
        #[arg(long)]
        first_browser: u64,
        #[arg(long)]
        password: String,
        #[arg(long, default_value_t = 300)]
        calls: usize,
        /// Caller/callee pairs placing calls at once (one call per pair at a time).
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
    },
    /// Server RSS growth per idle authenticated browser WebSocket.
    Idle {
        #[arg(long)]
        url: String,
        #[arg(long)]
        server_pid: u32,
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        #[arg(long, default_value_t = 500_000)]
        first_browser: u64,
        #[arg(long)]
        password: String,
        /// Sign-ins in progress at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Seconds to stay idle before reading the RSS again.
        #[arg(long, default_value_t = 12.0)]
        settle_secs: f64,
    },
    /// Provision the gateway benchmarks' directory: switches hq and br, desk phones on each,
    /// browsers (number ranges "FIRST-LAST[,FIRST-LAST]"; phone passwords are pw-NUMBER).
    GwProvision {
        #[arg(long)]
        addr: String,
        #[arg(long)]
        token_file: PathBuf,
        #[arg(long)]
        switch_secret: String,
        #[arg(long)]
        hq: String,
        #[arg(long, default_value = "")]
        br: String,
        #[arg(long, default_value = "")]
        browsers: String,
        #[arg(long)]
        browser_password: String,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
    /// Write the sipp -inf files (users.csv, callers.csv, callees.csv) and Kamailio's
    /// credentials.cfg for the same desk phones.
    SipFiles {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        users: String,
        #[arg(long)]
        callers: String,
        #[arg(long)]
        callees: String,
        /// Also split the users into this many files, users-1.csv …, one per sipp.
        #[arg(long, default_value_t = 1)]
        parts: usize,
    },
    /// Successful calls per second from sipp statistics files (-trace_stat), summed.
    SippRate {
        /// Seconds of warm-up to leave out.
        #[arg(long, default_value_t = 2.0)]
        skip: f64,
        /// Measure at most this long after the warm-up (sipp may run on with stuck calls).
        #[arg(long)]
        secs: Option<f64>,
        files: Vec<PathBuf>,
    },
    /// Call setup times (dial → ringing, dial → first audio) of F1, F2, F3.
    SetupTimes {
        /// The signal server's WebSocket URL.
        #[arg(long)]
        server: String,
        #[arg(long)]
        hq_sip: std::net::SocketAddr,
        #[arg(long)]
        br_sip: std::net::SocketAddr,
        #[arg(long, default_value_t = 200)]
        calls: usize,
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        #[arg(long)]
        hq_first: u64,
        #[arg(long)]
        br_first: u64,
        #[arg(long)]
        browser_first: u64,
        #[arg(long)]
        browser_password: String,
        /// Which flows, comma-separated.
        #[arg(long, default_value = "f1,f2,f3")]
        flows: String,
    },
    /// Concurrent bridged F1 calls one gateway carries with no loss and p99 added delay < 1 ms.
    MediaRamp {
        #[arg(long)]
        server: String,
        #[arg(long)]
        gateway_sip: std::net::SocketAddr,
        #[arg(long)]
        gateway_pid: u32,
        #[arg(long)]
        browser_first: u64,
        #[arg(long, default_value_t = 8)]
        browsers: usize,
        #[arg(long)]
        browser_password: String,
        #[arg(long)]
        phone_first: u64,
        /// Concurrent calls at each step, comma-separated, ascending.
        #[arg(long, default_value = "10,25,50,100,200,400,600,800,1000,1250,1500,1750,2000")]
        steps: String,
        /// Length of the measured window at each step.
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        /// Calls being set up at once while ramping.
        #[arg(long, default_value_t = 32)]
        setup_concurrency: usize,
        /// Start no further step after this many seconds.
        #[arg(long, default_value_t = 300.0)]
        max_secs: f64,
    },
    /// CPU per forwarded packet of plain RTP ⇄ RTP relaying: the gateway's F7 relay and/or
    /// rtpengine (over `ng`), the same streams, the generator pinned to one core and the relay
    /// to another; ramps calls until loss or a saturated core.
    MediaCpu {
        #[arg(long)]
        gateway_sip: Option<std::net::SocketAddr>,
        #[arg(long)]
        gateway_pid: Option<u32>,
        /// rtpengine's `--listen-ng` address.
        #[arg(long)]
        rtpengine_ng: Option<std::net::SocketAddr>,
        #[arg(long)]
        rtpengine_pid: Option<u32>,
        /// Gateway desk phones: callers FIRST.., callees FIRST+max(steps)..
        #[arg(long, default_value_t = 40000)]
        phone_first: u64,
        /// Concurrent calls at each step, comma-separated, ascending.
        #[arg(long, default_value = "50,200,500,1000,1500,2000")]
        steps: String,
        /// Length of the measured window at each step.
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        #[arg(long, default_value_t = 0)]
        generator_cpu: usize,
        #[arg(long, default_value_t = 1)]
        relay_cpu: usize,
        /// Per peer: start no further step after this many seconds.
        #[arg(long, default_value_t = 120.0)]
        max_secs: f64,
        /// Nice value of the generator and of the relay while it is measured (root: < 0).
        #[arg(long, default_value_t = -10, allow_negative_numbers = true)]
        nice: i32,
    },
    /// CPU per forwarded packet of WebRTC (ICE, DTLS-SRTP) ⇄ RTP bridging: the gateway's F1
    /// bridge and/or rtpengine (ICE=force, DTLS=passive, SDES-off over `ng`), the same streams
    /// from str0m peers and plain RTP, the generator pinned to one core and the bridge to
    /// another; ramps calls until loss or a saturated core.
    MediaWebrtc {
        /// The signal server's WebSocket URL (needed for the gateway).
        #[arg(long)]
        server: Option<String>,
        #[arg(long)]
        gateway_sip: Option<std::net::SocketAddr>,
        #[arg(long)]
        gateway_pid: Option<u32>,
        #[arg(long, default_value_t = 50024)]
        browser_first: u64,
        #[arg(long, default_value_t = 8)]
        browsers: usize,
        #[arg(long, default_value = "")]
        browser_password: String,
        /// Desk phones (callees) FIRST..FIRST+max(steps).
        #[arg(long, default_value_t = 43000)]
        phone_first: u64,
        #[arg(long)]
        rtpengine_ng: Option<std::net::SocketAddr>,
        #[arg(long)]
        rtpengine_pid: Option<u32>,
        /// Concurrent calls at each step, comma-separated, ascending.
        #[arg(long, default_value = "50,200,500,750,1000")]
        steps: String,
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        #[arg(long, default_value_t = 0)]
        generator_cpu: usize,
        #[arg(long, default_value_t = 1)]
        relay_cpu: usize,
        /// Per bridge: start no further step after this many seconds.
        #[arg(long, default_value_t = 90.0)]
        max_secs: f64,
        #[arg(long, default_value_t = -10, allow_negative_numbers = true)]
        nice: i32,
        /// Gateway calls being set up at once.
        #[arg(long, default_value_t = 32)]
        setup_concurrency: usize,
    },
    /// Print the markdown table from the files the measurements wrote (missing: n/a).
    Table {
        #[arg(long)]
        saturate: Option<PathBuf>,
        #[arg(long)]
        rate: Option<PathBuf>,
        #[arg(long)]
        idle: Option<PathBuf>,
        #[arg(long)]
        kamailio: Option<PathBuf>,
        /// Gateway benchmarks (run.sh's gateway phase): one key=value file.
        #[arg(long)]
        gateway: Option<PathBuf>,
        /// Browser softphone numbers (wasm_raw, wasm_gzip, tti_ms).
        #[arg(long)]
        web: Option<PathBuf>,
        /// Calls across the NAT lab (natlab/e2e/run.mjs --bench).
        #[arg(long)]
        natlab: Option<PathBuf>,
        /// Cluster mode (run.sh's cluster phase): one key=value file.
        #[arg(long)]
        cluster: Option<PathBuf>,
        /// Date line (default: now, UTC, from `date`).
        #[arg(long)]
        date: Option<String>,
    },
}

#[derive(clap::Args)]
struct SteerArgs {
    /// WebSocket URL of the signal server, e.g. ws://127.0.0.1:8080/ws (the caller switches'
    /// replica in a cluster).
    #[arg(long)]
    url: String,
    /// Cluster: the callee switches' replicas, comma-separated (`br<i>` takes them in turn).
    /// Default: `--url`.
    #[arg(long, value_delimiter = ',')]
    br_url: Vec<String>,
    /// The server process, or every replica's, comma-separated: their CPU is summed.
    #[arg(long, value_delimiter = ',', required = true)]
    server_pid: Vec<u32>,
    #[arg(long, default_value_t = 16)]
    pairs: usize,
    #[arg(long)]
    switch_secret: String,
    /// Queries in flight per caller switch connection at most. Each costs the server two
    /// queued messages per switch (route + outcome; callee_query + outcome), and the server
    /// drops a switch with 1024 messages queued: keep this under 512.
    #[arg(long, default_value_t = 256)]
    window: usize,
}

impl SteerArgs {
    fn params(self, mode: steer::Mode) -> steer::Params {
        steer::Params {
            hq_url: self.url,
            br_urls: self.br_url,
            pairs: self.pairs,
            secret: self.switch_secret,
            window: self.window,
            server_pids: self.server_pid,
            mode,
        }
    }
}

fn print_kv(kv: &[(String, String)]) {
    for (k, v) in kv {
        println!("{k}={v}");
    }
}

/// Many connections need many descriptors: raise the soft limit to the hard one.
fn raise_nofile() {
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

fn runtime(threads: usize) -> tokio::runtime::Runtime {
    let mut b = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    b.enable_all().build().expect("tokio runtime")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    raise_nofile();
    let result: Result<Vec<(String, String)>, String> = match cli.cmd {
        Cmd::Cpu { pid, children } => {
            procfs::cpu_us(pid, children).map(|us| vec![("cpu_us".into(), us.to_string())]).map_err(|e| format!("pid {pid}: {e}"))
        }
        Cmd::Processes { pid } => Ok(vec![("processes".into(), procfs::process_tree(pid).len().to_string())]),
        Cmd::UdpDrops { ports } => Ok(vec![("drops".into(), udp::drops(&ports).to_string())]),
        Cmd::FreePort { udp, both } => {
            let port = if both {
                (0..200)
                    .find_map(|_| {
                        let u = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
                        let a = u.local_addr().ok()?;
                        std::net::TcpListener::bind(a).ok().map(|_| a)
                    })
                    .ok_or_else(|| std::io::Error::other("no port free for both UDP and TCP"))
            } else if udp {
                std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr())
            } else {
                std::net::TcpListener::bind("127.0.0.1:0").and_then(|s| s.local_addr())
            };
            match port {
                Ok(a) => {
                    println!("{}", a.port());
                    return ExitCode::SUCCESS;
                }
                Err(e) => Err(e.to_string()),
            }
        }
        Cmd::Provision { addr, token_file, pairs, switch_secret, browsers, first_browser, password, concurrency } => {
            match std::fs::read_to_string(&token_file) {
                Err(e) => Err(format!("{}: {e}", token_file.display())),
                Ok(token) => runtime(cli.threads).block_on(provision::run(provision::Params {
                    addr,
                    token: token.trim().to_string(),
                    pairs,
                    switch_secret,
                    phone_password: password.clone(),
                    browsers,
                    first_browser,
                    browser_password: password,
                    concurrency,
                })),
            }
        }
        Cmd::Saturate { s, warmup_secs, secs, runs } => {
            runtime(cli.threads).block_on(steer::run(s.params(steer::Mode::Saturate {
                warmup: Duration::from_secs_f64(warmup_secs),
                measure: Duration::from_secs_f64(secs),
                runs,
            })))
        }
        Cmd::Rate { s, rate, secs } => runtime(cli.threads)
            .block_on(steer::run(s.params(steer::Mode::Rate { per_sec: rate, measure: Duration::from_secs_f64(secs) }))),
        Cmd::F4Latency { caller_url, callee_url, first_browser, password, calls, concurrency } => runtime(cli.threads)
            .block_on(f4lat::run(f4lat::Params { caller_url, callee_url, first_browser, password, calls, concurrency })),
        Cmd::Idle { url, server_pid, count, first_browser, password, concurrency, settle_secs } => {
            runtime(cli.threads).block_on(idle::run(idle::Params {
                url,
                count,
                first_number: first_browser,
                password,
                concurrency,
                settle: Duration::from_secs_f64(settle_secs),
                server_pid,
            }))
        }
        Cmd::GwProvision { addr, token_file, switch_secret, hq, br, browsers, browser_password, concurrency } => {
            let ranges =
                (|| Ok::<_, String>((gwprov::parse_ranges(&hq)?, gwprov::parse_ranges(&br)?, gwprov::parse_ranges(&browsers)?)))(
                );
            match (std::fs::read_to_string(&token_file), ranges) {
                (Err(e), _) => Err(format!("{}: {e}", token_file.display())),
                (_, Err(e)) => Err(e),
                (Ok(token), Ok((hq, br, browsers))) => runtime(cli.threads).block_on(gwprov::provision(gwprov::Params {
                    addr,
                    token: token.trim().to_string(),
                    switch_secret,
                    hq,
                    br,
                    browsers,
                    browser_password,
                    concurrency,
                })),
            }
        }
        Cmd::SipFiles { dir, users, callers, callees, parts } => (|| {
            let one = |s: &str| -> Result<std::ops::RangeInclusive<u64>, String> {
                gwprov::parse_ranges(s)?.into_iter().next().ok_or_else(|| format!("{s:?}: one range expected"))
            };
            gwprov::sip_files(&dir, &gwprov::parse_ranges(&users)?, one(&callers)?, one(&callees)?, parts)
        })(),
        Cmd::SippRate { skip, secs, files } => sippstat::rates(&files, skip, secs),
        Cmd::SetupTimes {
            server,
            hq_sip,
            br_sip,
            calls,
            concurrency,
            hq_first,
            br_first,
            browser_first,
            browser_password,
            flows,
        } => runtime(cli.threads).block_on(setup::run(setup::Params {
            server,
            hq_sip,
            br_sip,
            calls,
            concurrency,
            hq_first,
            br_first,
            browser_first,
            browser_password,
            flows: flows.split(',').map(|f| f.trim().to_ascii_lowercase()).filter(|f| !f.is_empty()).collect(),
        })),
        Cmd::MediaRamp {
            server,
            gateway_sip,
            gateway_pid,
            browser_first,
            browsers,
            browser_password,
            phone_first,
            steps,
            secs,
            setup_concurrency,
            max_secs,
        } => match steps.split(',').map(|s| s.trim().parse::<usize>()).collect::<Result<Vec<_>, _>>() {
            Err(e) => Err(format!("--steps: {e}")),
            Ok(steps) => runtime(cli.threads).block_on(media::run(media::Params {
                server,
                gateway_sip,
                gateway_pid,
                browser_first,
                browsers,
                browser_password,
                phone_first,
                steps,
                secs,
                setup_concurrency,
                max_secs,
            })),
        },
        Cmd::MediaCpu {
            gateway_sip,
            gateway_pid,
            rtpengine_ng,
            rtpengine_pid,
            phone_first,
            steps,
            secs,
            generator_cpu,
            relay_cpu,
            max_secs,
            nice,
        } => match steps.split(',').map(|s| s.trim().parse::<usize>()).collect::<Result<Vec<_>, _>>() {
            Err(e) => Err(format!("--steps: {e}")),
            Ok(steps) => mediacpu::run(mediacpu::Params {
                gateway_sip,
                gateway_pid,
                rtpengine_ng,
                rtpengine_pid,
                phone_first,
                steps,
                secs,
                generator_cpu,
                relay_cpu,
                max_secs,
                nice,
            }),
        },
        Cmd::MediaWebrtc {
            server,
            gateway_sip,
            gateway_pid,
            browser_first,
            browsers,
            browser_password,
            phone_first,
            rtpengine_ng,
            rtpengine_pid,
            steps,
            secs,
            generator_cpu,
            relay_cpu,
            max_secs,
            nice,
            setup_concurrency,
        } => match steps.split(',').map(|s| s.trim().parse::<usize>()).collect::<Result<Vec<_>, _>>() {
            Err(e) => Err(format!("--steps: {e}")),
            Ok(steps) => mediawebrtc::run(mediawebrtc::Params {
                server,
                gateway_sip,
                gateway_pid,
                browser_first,
                browsers,
                browser_password,
                phone_first,
                rtpengine_ng,
                rtpengine_pid,
                steps,
                secs,
                generator_cpu,
                relay_cpu,
                max_secs,
                nice,
                setup_concurrency,
            }),
        },
        Cmd::Table { saturate, rate, idle, kamailio, gateway, web, natlab, cluster, date } => {
            let date = date.unwrap_or_else(|| {
                std::process::Command::new("date")
                    .args(["-u", "+%Y-%m-%d %H:%M UTC"])
                    .output()
                    .ok()
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                    .unwrap_or_default()
            });
            let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
            print!(
                "{}",
                report::table(&report::Inputs {
                    saturate: report::read_kv(saturate.as_deref()),
                    rate: report::read_kv(rate.as_deref()),
                    idle: report::read_kv(idle.as_deref()),
                    kamailio: report::read_kv(kamailio.as_deref()),
                    gateway: report::read_kv(gateway.as_deref()),
                    web: report::read_kv(web.as_deref()),
                    natlab: report::read_kv(natlab.as_deref()),
                    cluster: report::read_kv(cluster.as_deref()),
                    cores,
                    date,
                })
            );
            return ExitCode::SUCCESS;
        }
    };
    match result {
        Ok(kv) => {
            print_kv(&kv);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("trunkline-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
