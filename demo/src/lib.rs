//! Trunkline's main job on the embedded default, in one process: a signal server on SQLite and
//! two switch gateways ("hq" and "branch") on loopback, provisioned with demo accounts and an
//! echo-test number per gateway. `./trunkline run` runs this; tests start it on random ports.
//!
//! Everything lives in one data folder: the SQLite directory, the admin token, the switch
//! secrets, the demo logins and the gateways' local phone lists. A second start reuses it.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use signal_server::admin::{self, AccountInput, SwitchInput};
use tokio::net::{TcpListener, UdpSocket};

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("data folder {path}: {source}")]
    Data { path: PathBuf, source: std::io::Error },
    #[error("cannot bind {what} on {addr}: {source} (is another Trunkline running? set TRUNKLINE_PORT)")]
    Bind { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("provisioning: {0}")]
    Provision(String),
    #[error("signal server: {0}")]
    Server(#[from] signal_server::ServerError),
    #[error("gateway config: {0}")]
    Gateway(String),
}

/// How to start the stack.
#[derive(Clone, Debug)]
pub struct StackOptions {
    pub data_dir: PathBuf,
    /// HTTP/WebSocket port of the signal server; 0 picks random ports for everything.
    pub http_port: u16,
    pub bind_ip: IpAddr,
    /// The built softphone (Trunk's `dist`).
    pub web_root: PathBuf,
    /// Also start baresip desk phones (auto-answer, each playing its own tone) for the demo
    /// desk-phone numbers, if baresip is installed.
    pub with_phones: bool,
}

/// What was started, for the summary and for tests.
#[derive(Clone, Debug)]
pub struct StackInfo {
    /// Desk phones started with `with_phones` (number, tone in Hz), or why none were.
    pub phones: Result<Vec<(String, u32)>, String>,
    pub http: SocketAddr,
    pub admin_token: String,
    pub browsers: Vec<Login>,
    pub gateways: Vec<GatewayInfo>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Login {
    pub number: String,
    pub name: String,
    pub password: String,
}

#[derive(Clone, Debug)]
pub struct GatewayInfo {
    pub id: String,
    pub sip: SocketAddr,
    pub echo_number: String,
    pub phones: Vec<Login>,
}

/// Secrets kept in the data folder (owner-only), created on first start.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Secrets {
    admin_token: String,
    switches: Vec<(String, String)>,
    browsers: Vec<Login>,
    deskphones: Vec<(String, Login)>,
    echo: Vec<(String, String)>,
}

fn random_secret(bytes: usize) -> String {
    use base64::Engine as _;
    use rand::RngCore;
    let mut b = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

impl Secrets {
    fn new() -> Secrets {
        let login = |n: &str, name: &str| Login { number: n.into(), name: name.into(), password: random_secret(9) };
        Secrets {
            admin_token: random_secret(32),
            switches: vec![("hq".into(), random_secret(24)), ("branch".into(), random_secret(24))],
            browsers: vec![login("2001", "Alice"), login("2002", "Bob")],
            deskphones: vec![
                ("hq".into(), login("1001", "Reception")),
                ("hq".into(), login("1002", "Office")),
                ("branch".into(), login("3001", "Branch desk")),
            ],
            echo: vec![("hq".into(), "1999".into()), ("branch".into(), "3999".into())],
        }
    }
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    opts.open(path)?.write_all(data)
}

/// A running stack; [`Stack::stop`] shuts everything down cleanly.
pub struct Stack {
    pub info: StackInfo,
    db_url: String,
    phones: Vec<tokio::process::Child>,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Stack {
    /// Wait (up to `within`) until every gateway is signed in to the signal server.
    pub async fn wait_ready(&self, within: std::time::Duration) -> Result<(), DemoError> {
        let deadline = tokio::time::Instant::now() + within;
        let dir = signal_server::directory::open(&self.db_url, &Default::default())
            .await
            .map_err(|e| DemoError::Provision(e.to_string()))?;
        loop {
            let online = dir.list_switches().await.map_err(|e| DemoError::Provision(e.to_string()))?;
            if self.info.gateways.iter().all(|g| online.iter().any(|s| s.id == g.id && s.online)) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(DemoError::Provision("the gateways did not sign in to the signal server in time".into()));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    pub async fn stop(mut self) {
        for p in &mut self.phones {
            let _ = p.kill().await;
        }
        // Gateways first (they hang up their calls), then the signal server.
        for s in self.stops.drain(..).rev() {
            let _ = s.send(());
        }
        for t in self.tasks.drain(..).rev() {
            let _ = t.await;
        }
    }
}

async fn bind_tcp(what: &'static str, addr: SocketAddr) -> Result<TcpListener, DemoError> {
    TcpListener::bind(addr).await.map_err(|source| DemoError::Bind { what, addr, source })
}

/// Start the stack described by `opts`.
pub async fn start(opts: StackOptions) -> Result<Stack, DemoError> {
    let data = &opts.data_dir;
    std::fs::create_dir_all(data).map_err(|source| DemoError::Data { path: data.clone(), source })?;
    let secrets_path = data.join("demo-secrets.json");
    let secrets: Secrets = match std::fs::read(&secrets_path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| DemoError::Provision(format!("{}: {e}", secrets_path.display())))?,
        Err(_) => {
            let s = Secrets::new();
            write_private(&secrets_path, &serde_json::to_vec_pretty(&s).expect("serializes"))
                .map_err(|source| DemoError::Data { path: secrets_path.clone(), source })?;
            s
        }
    };
    let token_file = data.join("admin-token");
    write_private(&token_file, secrets.admin_token.as_bytes())
        .map_err(|source| DemoError::Data { path: token_file.clone(), source })?;

    let mut config = signal_server::Config {
        database_url: format!("sqlite://{}", data.join("trunkline.db").display()),
        web_root: opts.web_root.clone(),
        admin_token_file: Some(token_file),
        ..Default::default()
    };
    let http = bind_tcp("the signal server", SocketAddr::new(opts.bind_ip, opts.http_port)).await?;
    let http_addr = http.local_addr().map_err(|source| DemoError::Data { path: data.clone(), source })?;
    config.listen = http_addr;
    config.public_url = format!("http://{http_addr}");
    // Push services want a contact; the demo runs on loopback, so name a local mailbox.
    config.push.vapid_subject = Some("mailto:admin@localhost".into());

    provision(&config, &secrets).await?;

    let mut stops = vec![];
    let mut tasks = vec![];
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    stops.push(tx);
    let server_cfg = config.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = signal_server::run(server_cfg, http, async move {
            let _ = rx.await;
        })
        .await
        {
            tracing::error!(error = %e, "signal server stopped with an error");
        }
    }));

    let fixed = opts.http_port != 0;
    let mut gateways = vec![];
    for (i, (id, secret)) in secrets.switches.iter().enumerate() {
        // SIP for its desk phones is all a gateway listens on: browsers and the other gateway
        // reach it over WebRTC, negotiated through the signal server.
        let sip_port = if fixed { 5060 + 10 * i as u16 } else { 0 };
        let (udp, tcp) = bind_sip(opts.bind_ip, sip_port).await?;
        let sip = udp.local_addr().map_err(|source| DemoError::Data { path: data.clone(), source })?;
        let secret_file = data.join(format!("{id}.secret"));
        write_private(&secret_file, secret.as_bytes()).map_err(|source| DemoError::Data { path: secret_file.clone(), source })?;
        let echo = secrets.echo.iter().find(|(s, _)| s == id).map(|(_, n)| n.clone()).unwrap_or_default();
        let rtp = if fixed { format!("{}-{}", 20000 + 1000 * i, 20999 + 1000 * i) } else { free_rtp_range(opts.bind_ip) };
        let gw = switch_gateway::Config {
            id: id.clone(),
            secret_file,
            cloud_url: format!("ws://{http_addr}/ws"),
            sip_listen: sip,
            rtp_ports: rtp,
            state_dir: data.join(format!("{id}-state")),
            echo_number: Some(echo.clone()),
            ..Default::default()
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        stops.push(tx);
        let sockets = switch_gateway::Sockets { sip_udp: udp, sip_tcp: tcp, sip_tls: None };
        let gw_id = id.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = switch_gateway::run(gw, sockets, async move {
                let _ = rx.await;
            })
            .await
            {
                tracing::error!(gateway = %gw_id, error = %e, "gateway stopped with an error");
            }
        }));
        gateways.push(GatewayInfo {
            id: id.clone(),
            sip,
            echo_number: echo,
            phones: secrets.deskphones.iter().filter(|(s, _)| s == id).map(|(_, l)| l.clone()).collect(),
        });
    }
    let (phones, started) = if opts.with_phones {
        // Phones register only once their gateway has its phone list from the cloud.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        for g in &gateways {
            let list = data.join(format!("{}-state", g.id)).join("phones.json");
            while tokio::time::Instant::now() < deadline
                && !std::fs::read_to_string(&list)
                    .is_ok_and(|t| g.phones.iter().all(|p| t.contains(&format!("\"{}\"", p.number))))
            {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        match start_phones(data, &gateways).await {
            Ok((children, list)) => (children, Ok(list)),
            Err(why) => (vec![], Err(why)),
        }
    } else {
        (vec![], Ok(vec![]))
    };
    Ok(Stack {
        db_url: config.database_url.clone(),
        phones,
        info: StackInfo {
            phones: started,
            http: http_addr,
            admin_token: secrets.admin_token.clone(),
            browsers: secrets.browsers.clone(),
            gateways,
        },
        stops,
        tasks,
    })
}

/// `--with-phones`: one baresip per demo desk phone, auto-answering and playing its own tone
/// (440, 660, 880 Hz…) so a caller can tell which phone answered.
async fn start_phones(data: &Path, gateways: &[GatewayInfo]) -> Result<(Vec<tokio::process::Child>, Vec<(String, u32)>), String> {
    const MODULES: &str = "/usr/lib/baresip/modules";
    if std::process::Command::new("baresip")
        .arg("-h")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_err()
    {
        return Err("baresip is not installed (apt-get install baresip)".into());
    }
    let dir = data.join("phones");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut children = vec![];
    let mut list = vec![];
    let mut i = 0u32;
    for g in gateways {
        for p in &g.phones {
            let freq = 440 + 220 * i;
            let wav = dir.join(format!("tone-{freq}.wav"));
            if !wav.is_file() {
                write_tone_wav(&wav, freq as f32, 300).map_err(|e| e.to_string())?;
            }
            let conf = dir.join(&p.number);
            std::fs::create_dir_all(&conf).map_err(|e| e.to_string())?;
            let sip = free_port(g.sip.ip());
            let rtp = 24000 + 40 * i as u16;
            let config = format!(
                "poll_method epoll\nsip_listen {ip}:{sip}\naudio_source aufile,{wav}\naudio_player aubridge,out{n}\n\
                 audio_alert aubridge,out{n}\nrtp_ports {rtp}-{rtp_end}\nmodule_path {MODULES}\nmodule g711.so\n\
                 module aufile.so\nmodule aubridge.so\nmodule_tmp account.so\nmodule_app menu.so\n",
                ip = g.sip.ip(),
                wav = wav.display(),
                n = p.number,
                rtp_end = rtp + 39,
            );
            std::fs::write(conf.join("config"), config).map_err(|e| e.to_string())?;
            let account =
                format!("<sip:{}@{};transport=udp>;auth_pass={};regint=300;answermode=auto\n", p.number, g.sip, p.password);
            std::fs::write(conf.join("accounts"), account).map_err(|e| e.to_string())?;
            std::fs::write(conf.join("contacts"), "").map_err(|e| e.to_string())?;
            let log = std::fs::File::create(conf.join("baresip.log")).map_err(|e| e.to_string())?;
            let child = tokio::process::Command::new("baresip")
                .arg("-f")
                .arg(&conf)
                .stdin(std::process::Stdio::null())
                .stdout(log.try_clone().map_err(|e| e.to_string())?)
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("cannot start baresip: {e}"))?;
            children.push(child);
            list.push((p.number.clone(), freq));
            i += 1;
        }
    }
    Ok((children, list))
}

fn free_port(ip: IpAddr) -> u16 {
    std::net::UdpSocket::bind((ip, 0)).and_then(|s| s.local_addr()).map(|a| a.port()).unwrap_or(5090)
}

/// A mono 8 kHz 16-bit WAV of `freq` Hz lasting `secs` (baresip hangs up when its file ends).
fn write_tone_wav(path: &Path, freq: f32, secs: u32) -> std::io::Result<()> {
    let n = 8000 * secs;
    let mut b = Vec::with_capacity(44 + 2 * n as usize);
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + 2 * n).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&8000u32.to_le_bytes());
    b.extend_from_slice(&16000u32.to_le_bytes());
    b.extend_from_slice(&2u16.to_le_bytes());
    b.extend_from_slice(&16u16.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&(2 * n).to_le_bytes());
    for i in 0..n {
        let v = ((i as f32 / 8000.0 * freq * std::f32::consts::TAU).sin() * 12000.0) as i16;
        b.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, b)
}

/// UDP and TCP on the same SIP port (a random one when `port` is 0).
async fn bind_sip(ip: IpAddr, port: u16) -> Result<(UdpSocket, TcpListener), DemoError> {
    for _ in 0..50 {
        let addr = SocketAddr::new(ip, port);
        let udp = UdpSocket::bind(addr).await.map_err(|source| DemoError::Bind { what: "SIP (UDP)", addr, source })?;
        let bound = udp.local_addr().map_err(|source| DemoError::Bind { what: "SIP (UDP)", addr, source })?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(source) if port != 0 => return Err(DemoError::Bind { what: "SIP (TCP)", addr: bound, source }),
            Err(_) => continue,
        }
    }
    Err(DemoError::Bind { what: "SIP", addr: SocketAddr::new(ip, port), source: std::io::ErrorKind::AddrInUse.into() })
}

/// 200 free UDP ports (even start) for one gateway's relays in random-port mode.
fn free_rtp_range(ip: IpAddr) -> String {
    use rand::Rng;
    for _ in 0..200 {
        let base = rand::rng().random_range(30_000u16..60_000) & !1;
        if (base..base + 20).step_by(5).all(|p| std::net::UdpSocket::bind((ip, p)).is_ok()) {
            return format!("{}-{}", base, base + 199);
        }
    }
    "40000-40199".into()
}

/// First start: switches, demo browsers, desk phones and echo numbers (idempotent).
async fn provision(config: &signal_server::Config, s: &Secrets) -> Result<(), DemoError> {
    let dir = signal_server::directory::open(&config.database_url, &config.database)
        .await
        .map_err(|e| DemoError::Provision(e.to_string()))?;
    let cfg = Arc::new(config.clone());
    let existing = dir.list_switches().await.map_err(|e| DemoError::Provision(e.to_string()))?;
    for (id, secret) in &s.switches {
        if !existing.iter().any(|x| &x.id == id) {
            admin::add_switch(&*dir, cfg.clone(), SwitchInput { id: id.clone(), secret: secret.clone() })
                .await
                .map_err(|e| DemoError::Provision(e.to_string()))?;
        }
    }
    let accounts = dir.list_accounts().await.map_err(|e| DemoError::Provision(e.to_string()))?;
    let mut wanted: Vec<AccountInput> = vec![];
    for b in &s.browsers {
        wanted.push(AccountInput {
            number: b.number.clone(),
            password: b.password.clone(),
            name: Some(b.name.clone()),
            switch: None,
            kind: None,
        });
    }
    for (sw, p) in &s.deskphones {
        wanted.push(AccountInput {
            number: p.number.clone(),
            password: p.password.clone(),
            name: Some(p.name.clone()),
            switch: Some(sw.clone()),
            kind: None,
        });
    }
    for (sw, n) in &s.echo {
        wanted.push(AccountInput {
            number: n.clone(),
            password: random_secret(16),
            name: Some("Echo test".into()),
            switch: Some(sw.clone()),
            kind: None,
        });
    }
    for a in wanted {
        if !accounts.iter().any(|x| x.number == a.number) {
            admin::add_account(&*dir, cfg.clone(), a).await.map_err(|e| DemoError::Provision(e.to_string()))?;
        }
    }
    Ok(())
}

impl StackInfo {
    /// What a newcomer needs, in words.
    pub fn summary(&self, web_built: bool, data_dir: &Path) -> String {
        let mut s = String::new();
        let http = self.http;
        s.push_str("\n  Trunkline is running\n  ------------------------------------------------------------------\n");
        s.push_str(&format!(
            "  Softphone     http://{http}/{}\n",
            if web_built { "" } else { "   (not built: run ./trunkline run again after installing the web toolchain)" }
        ));
        s.push_str(&format!("  WebSocket     ws://{http}/ws      health: http://{http}/healthz   metrics: /metrics\n"));
        s.push_str(&format!("  Admin API     http://{http}/api/   Authorization: Bearer {}\n", self.admin_token));
        s.push_str("  Browser logins (number / password / name):\n");
        for b in &self.browsers {
            s.push_str(&format!("                {}  {}  {}\n", b.number, b.password, b.name));
        }
        for g in &self.gateways {
            s.push_str(&format!(
                "  Gateway {:<6} SIP {} (UDP/TCP, realm trunkline, digest MD5)   echo test: dial {}\n",
                g.id, g.sip, g.echo_number
            ));
            for p in &g.phones {
                s.push_str(&format!("                desk phone {}  password {}  ({})\n", p.number, p.password, p.name));
            }
        }
        s.push_str(&format!(
            "  Try           log in as {} and dial {} (echo test) or {} (the other browser)\n",
            self.browsers[0].number, self.gateways[0].echo_number, self.browsers[1].number
        ));
        s.push_str(&format!(
            "  SIP phone     register e.g. Linphone/Zoiper/baresip as 1001@{} with its password above\n",
            self.gateways[0].sip
        ));
        match &self.phones {
            Ok(list) if !list.is_empty() => {
                let l: Vec<String> = list.iter().map(|(n, f)| format!("{n} ({f} Hz)")).collect();
                s.push_str(&format!("  Desk phones   baresip running, auto-answer: {}\n", l.join(", ")));
            }
            Ok(_) => {}
            Err(why) => s.push_str(&format!("  Desk phones   not started: {why}\n")),
        }
        s.push_str(&format!("  Data          {} (reused next time)\n  Stop          Ctrl-C\n", data_dir.display()));
        s.push_str("  ------------------------------------------------------------------\n");
        s
    }
}
