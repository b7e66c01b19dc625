//! Shared fixtures for the gateway's integration tests: a real signal server (the workspace's
//! `trunkline-test-support`: library, port-0 listener, temp SQLite) with the site directory,
//! and real gateways (library, port-0 sockets); plus small helpers to run sipp and register
//! over SIP, and ([`direct`]) a browser that reaches a switch over WebRTC through the cloud
//! and presents its key on the DataChannel.
#![allow(dead_code)]

pub mod direct;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use signal_server::directory::Directory;
use signal_server::directory::sqlite::SqliteDirectory;

pub const WAIT: Duration = Duration::from_secs(15);

pub use trunkline_test_support::{REALM, free_udp_port, secret_of};

/// The signal server (the workspace's `trunkline_test_support::Cloud`) with the site
/// directory (`SITE_PHONES`: passwords `pw-<number>`; switches hq and branch with
/// [`secret_of`]) in `cloud.db`.
pub struct Cloud {
    pub addr: SocketAddr,
    pub ws_url: String,
    pub db_url: String,
    server: trunkline_test_support::Cloud,
}

impl Cloud {
    /// A provisioned signal server in `dir` on a fresh port.
    pub async fn start(dir: &Path) -> Cloud {
        provision(&Self::config(dir).database_url).await;
        Cloud::start_at(dir, "127.0.0.1:0".parse().unwrap()).await
    }

    /// (Re)start on `addr` over the database in `dir` (already provisioned).
    pub async fn start_at(dir: &Path, addr: SocketAddr) -> Cloud {
        let server = trunkline_test_support::Cloud::start_at(Self::config(dir), addr).await;
        Cloud { addr: server.addr, ws_url: server.ws_url.clone(), db_url: server.db_url.clone(), server }
    }

    fn config(dir: &Path) -> signal_server::Config {
        let mut cfg = trunkline_test_support::Cloud::config(dir);
        cfg.database_url = format!("sqlite://{}", dir.join("cloud.db").display());
        cfg
    }

    /// Stop, waiting up to [`WAIT`]; how the server ended is not checked.
    pub async fn stop(self) {
        let _ = self.server.stop_within(WAIT).await;
    }
}

/// Provision the site directory at `db_url`.
pub async fn provision(db_url: &str) {
    trunkline_test_support::provision_with(db_url, &trunkline_test_support::Directory::site()).await
}

pub struct Gateway {
    pub id: String,
    /// SIP (UDP and TCP) address: the only port it listens on (callers come over WebRTC).
    pub sip: SocketAddr,
    pub config: switch_gateway::Config,
    /// The patent steps the gateway's core traced, per cloud call.
    pub steps: switch_gateway::steps::Steps,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), switch_gateway::GatewayError>>>,
}

/// A free RTP range for one gateway (tests run in parallel; ranges are picked by probing).
fn rtp_range() -> String {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let slot = NEXT.fetch_add(1, Ordering::Relaxed) % 200;
    let base = 40000 + (std::process::id() as u16 % 50) * 100 + slot * 40;
    let base = 40000 + (base - 40000) % 20000;
    let base = base & !1;
    format!("{}-{}", base, base + 39)
}

impl Gateway {
    /// Start gateway `id` linked to `cloud_ws` with state in `dir`.
    pub async fn start(id: &str, cloud_ws: &str, dir: &Path) -> Gateway {
        Self::start_with(id, cloud_ws, dir, |_| {}).await
    }

    pub async fn start_with(id: &str, cloud_ws: &str, dir: &Path, edit: impl FnOnce(&mut switch_gateway::Config)) -> Gateway {
        // UDP and TCP on the same port, as phones expect; the TCP port may be taken (e.g. by an
        // outgoing connection's ephemeral port), so try until both bind.
        let mut bound = None;
        for _ in 0..50 {
            let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let port = udp.local_addr().unwrap().port();
            if let Ok(tcp) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                bound = Some((udp, tcp, port));
                break;
            }
        }
        let (udp, tcp, port) = bound.expect("a port free for both UDP and TCP");
        let secret_file = dir.join(format!("{id}.secret"));
        std::fs::write(&secret_file, secret_of(id)).unwrap();
        let mut config = switch_gateway::Config {
            id: id.into(),
            secret_file,
            cloud_url: cloud_ws.into(),
            sip_listen: format!("127.0.0.1:{port}").parse().unwrap(),
            rtp_ports: rtp_range(),
            state_dir: dir.join(format!("{id}-state")),
            ring_timeout_secs: 5,
            ..Default::default()
        };
        edit(&mut config);
        Self::launch(id, config, udp, tcp).await
    }

    /// Run the gateway with `config` on sockets already bound.
    async fn launch(
        id: &str,
        config: switch_gateway::Config,
        udp: tokio::net::UdpSocket,
        tcp: tokio::net::TcpListener,
    ) -> Gateway {
        let port = udp.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        // SIP over TLS when the test configured it (its listener on a fresh port).
        let sip_tls = match &config.sip_tls {
            Some(t) => Some(tokio::net::TcpListener::bind(t.listen).await.expect("TLS port")),
            None => None,
        };
        let sockets = switch_gateway::Sockets { sip_udp: udp, sip_tcp: tcp, sip_tls };
        let steps = switch_gateway::steps::Steps::default();
        let task = tokio::spawn(switch_gateway::run_with_steps(
            config.clone(),
            sockets,
            async move {
                let _ = rx.await;
            },
            steps.clone(),
        ));
        Gateway {
            id: id.into(),
            sip: format!("127.0.0.1:{port}").parse().unwrap(),
            config,
            steps,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Stop as on SIGTERM and start again with the same config and state directory, on the
    /// same SIP port (phones keep sending there): an upgrade in place.
    pub async fn restart(self) -> Gateway {
        let (id, config, sip) = (self.id.clone(), self.config.clone(), self.sip);
        self.stop().await;
        let mut bound = None;
        eventually(&format!("SIP port {sip} free again after the stop"), || {
            let ok = match (std::net::UdpSocket::bind(sip), std::net::TcpListener::bind(sip)) {
                (Ok(u), Ok(t)) => {
                    bound = Some((u, t));
                    true
                }
                _ => false,
            };
            async move { ok }
        })
        .await;
        let (udp, tcp) = bound.unwrap();
        udp.set_nonblocking(true).unwrap();
        tcp.set_nonblocking(true).unwrap();
        let udp = tokio::net::UdpSocket::from_std(udp).unwrap();
        let tcp = tokio::net::TcpListener::from_std(tcp).unwrap();
        Self::launch(&id, config, udp, tcp).await
    }

    /// The steps of the one call this gateway traced (panics if it traced none or several).
    pub fn steps_of_the_call(&self) -> Vec<trunkline_protocol::Step> {
        match self.steps.all().as_slice() {
            [(_, steps)] => steps.clone(),
            other => panic!("gateway {}: expected the steps of one call, got {other:?}", self.id),
        }
    }

    /// The switch's address as the cloud hands it to callers (C13, C2, C3): its name.
    pub fn address(&self) -> String {
        trunkline_protocol::switch_address(&self.id)
    }

    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let _ = tokio::time::timeout(WAIT, self.task.take().unwrap()).await;
    }
}

/// Wait until `cond` holds, within [`WAIT`] (a poll with a deadline, not a sleep standing in
/// for synchronisation).
pub async fn eventually<F, Fut>(what: &str, cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    trunkline_test_support::eventually(what, WAIT, cond).await
}

/// The newest call records (up to 100) in the signal server's directory, newest first.
pub async fn call_records(db_url: &str) -> Vec<signal_server::directory::CallRecord> {
    let dir = SqliteDirectory::open(db_url).await.unwrap();
    let recs = dir.call_records(None, 100).await.unwrap();
    dir.close().await;
    recs
}

/// The records of `call_id`, once there is one (within [`WAIT`]).
pub async fn call_records_of(db_url: &str, call_id: &str) -> Vec<signal_server::directory::CallRecord> {
    eventually(&format!("a record of call {call_id}"), move || async move {
        call_records(db_url).await.iter().any(|r| r.call_id == call_id)
    })
    .await;
    call_records(db_url).await.into_iter().filter(|r| r.call_id == call_id).collect()
}

/// Is switch `id` online according to the signal server's directory?
pub async fn switch_online(db_url: &str, id: &str) -> bool {
    let dir = SqliteDirectory::open(db_url).await.unwrap();
    let online = dir.list_switches().await.unwrap().into_iter().any(|s| s.id == id && s.online);
    dir.close().await;
    online
}

/// The folder with the sipp scenarios.
pub fn scenarios() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sipp")
}

/// Result of one sipp run.
pub struct SippRun {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
    /// The message trace (`-trace_msg`), for assertions on what was exchanged.
    pub messages: String,
}

/// Run sipp with `args` against `target` (foreground, bounded), from a temp working dir.
pub async fn sipp(dir: &Path, target: SocketAddr, args: &[&str]) -> SippRun {
    let work = tempfile::tempdir_in(dir).unwrap();
    let mut cmd = tokio::process::Command::new("sipp");
    cmd.current_dir(work.path())
        .arg(target.to_string())
        .args([
            "-i",
            "127.0.0.1",
            "-p",
            &free_udp_port().to_string(),
            "-nostdin",
            "-trace_msg",
            "-trace_err",
            "-timeout",
            "20s",
            "-timeout_error",
        ])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(40), cmd.output()).await.expect("sipp finishes").expect("sipp runs");
    let mut messages = String::new();
    for e in std::fs::read_dir(work.path()).unwrap().flatten() {
        if e.file_name().to_string_lossy().ends_with("_messages.log") {
            messages.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
        }
    }
    SippRun {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        messages,
    }
}

/// Register `number` at `gw` over UDP from `local` with digest (MD5, or SHA-256 when
/// `sha256`), the way a desk phone does: REGISTER, 401, REGISTER with credentials. Returns the
/// final status (200 when registered). The socket stays usable as the phone's SIP socket.
pub async fn register_udp(
    sock: &tokio::net::UdpSocket,
    gw: SocketAddr,
    number: &str,
    password: &str,
    expires: u32,
    sha256: bool,
) -> u16 {
    use trunkline_sip::digest::{self, Algorithm};
    let local = sock.local_addr().unwrap();
    let call_id = format!("reg-{number}-{}", local.port());
    let build = |cseq: u32, auth: Option<String>| {
        let mut m = format!(
            "REGISTER sip:{gw} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{number}x{cseq}x{port};rport\r\nMax-Forwards: 70\r\n\
             From: <sip:{number}@{gw}>;tag=t{port}\r\nTo: <sip:{number}@{gw}>\r\nCall-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\n\
             Contact: <sip:{number}@{local}>\r\nExpires: {expires}\r\n",
            port = local.port()
        );
        if let Some(a) = auth {
            m.push_str(&format!("Authorization: {a}\r\n"));
        }
        m.push_str("Content-Length: 0\r\n\r\n");
        m
    };
    // Every REGISTER a new transaction (branch) and a higher CSeq, as a phone does.
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let cseq = SEQ.fetch_add(2, std::sync::atomic::Ordering::Relaxed);
    sock.send_to(build(cseq, None).as_bytes(), gw).await.unwrap();
    let resp = recv_response(sock).await;
    assert_eq!(resp.status, 401, "expected a challenge");
    let alg = if sha256 { Algorithm::Sha256 } else { Algorithm::Md5 };
    let challenge = resp
        .headers
        .get_all("WWW-Authenticate")
        .find(|h| h.contains(alg.as_str()) && (sha256 || !h.contains("SHA-256")))
        .expect("challenge for the algorithm")
        .to_string();
    let nonce = challenge.split("nonce=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    let uri = format!("sip:{gw}");
    let ha1 = digest::ha1(alg, number, REALM, password);
    let response = digest_response(alg, &ha1, &nonce, "REGISTER", &uri, "00000001", "c0ffee");
    let auth = format!(
        "Digest username=\"{number}\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{response}\", algorithm={}, qop=auth, nc=00000001, cnonce=\"c0ffee\"",
        alg.as_str()
    );
    sock.send_to(build(cseq + 1, Some(auth)).as_bytes(), gw).await.unwrap();
    recv_response(sock).await.status
}

/// RFC 7616 response with qop=auth, computed independently of the gateway's code.
pub fn digest_response(
    alg: trunkline_sip::digest::Algorithm,
    ha1: &str,
    nonce: &str,
    method: &str,
    uri: &str,
    nc: &str,
    cnonce: &str,
) -> String {
    use sha2::Digest;
    let h = |s: String| match alg {
        trunkline_sip::digest::Algorithm::Md5 => hex::encode(md5::Md5::digest(s.as_bytes())),
        trunkline_sip::digest::Algorithm::Sha256 => hex::encode(sha2::Sha256::digest(s.as_bytes())),
    };
    let ha2 = h(format!("{method}:{uri}"));
    h(format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"))
}

/// Next SIP response on `sock` (requests in between are ignored), within [`WAIT`].
pub async fn recv_response(sock: &tokio::net::UdpSocket) -> trunkline_sip::Response {
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, _) = tokio::time::timeout(WAIT, sock.recv_from(&mut buf)).await.expect("a SIP response in time").unwrap();
        if let Ok(trunkline_sip::Message::Response(r)) = trunkline_sip::parse(&buf[..n])
            && r.status >= 200
        {
            return r;
        }
    }
}
