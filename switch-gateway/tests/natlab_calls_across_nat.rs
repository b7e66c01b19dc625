//! Calls across real NATs (F1, F2), C14 over WebRTC, no inbound port anywhere (a gateway listens
//! only for its desk phones; callers reach it through the cloud): the signal server and coturn
//! (STUN only here) on the lab's "Internet"; the gateway and a desk phone on a site LAN behind a
//! port-restricted cone NAT; the headless softphone at home behind another cone NAT. The
//! softphone's offer and the gateway's answer and trickled server-reflexive candidates go
//! through the cloud; ICE punches through both NATs directly (no TURN is even configured); the
//! key is accepted on the DataChannel; audio flows both ways (checked by frequency) and keeps
//! flowing after the signal server is stopped. The same LAN case: a softphone next to the
//! gateway connects over host candidates.
//!
//! Every party runs in-process on its own thread whose network namespace is its lab host, with
//! a current-thread runtime: every socket it opens (listeners, the cloud link, RTP and WebRTC
//! sockets) lives in that namespace, as if it were its own machine. Needs root (see natlab/).

mod common;
#[path = "../../natlab/rust/lab.rs"]
mod lab;
#[path = "common/scripted_phone.rs"]
mod scripted_phone;

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use trunkline_client::softphone::{Softphone, SoftphoneConfig};
use trunkline_client::wav::{dominant_frequency, tone};
use trunkline_client::webrtc::{AudioSource, PeerOptions};
use trunkline_media::g711::Law;
use trunkline_media::rtp::{RtpStream, parse_rtp};

const SIGNAL_PORT: u16 = 8080;
const TURN_SECRET: &str = "natlab-turn-secret-0123456789";

/// Run `f` on a new thread inside network namespace `ns`, on a current-thread runtime (tasks
/// never move to a thread in another namespace).
fn in_netns<F, Fut, T>(ns: &str, f: F) -> std::thread::JoinHandle<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
    T: Send + 'static,
{
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns on this thread only, with a namespace file descriptor we hold open.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(f())
    })
}

/// The signal server in the lab's public namespace at 203.0.113.20, with STUN from coturn.
/// Returns when it serves; stops when `stop` fires.
fn start_signal_server(
    lab: &lab::Lab,
    dir: &std::path::Path,
) -> (String, String, oneshot::Sender<()>, std::thread::JoinHandle<()>) {
    start_signal_server_ice(lab, dir, vec![])
}

/// As [`start_signal_server`], also handing out `turn_urls` with credentials minted from
/// `TURN_SECRET` (empty: STUN only).
fn start_signal_server_ice(
    lab: &lab::Lab,
    dir: &std::path::Path,
    turn_urls: Vec<String>,
) -> (String, String, oneshot::Sender<()>, std::thread::JoinHandle<()>) {
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let db_url = format!("sqlite://{}", dir.join("cloud.db").display());
    let secret_file = dir.join("turn.secret");
    std::fs::write(&secret_file, TURN_SECRET).unwrap();
    let addr: SocketAddr = format!("{}:{SIGNAL_PORT}", lab.get("SIGNAL_IP")).parse().unwrap();
    let turn_ip = lab.get("TURN_IP").to_string();
    let web_root = dir.join("no-web");
    let db = db_url.clone();
    let thread = in_netns(&lab.pub_ns(), move || async move {
        provision(&db_url).await;
        let mut cfg = signal_server::Config { database_url: db_url, web_root, ..Default::default() };
        cfg.auth.password_hash_memory_kib = 64;
        cfg.auth.password_hash_iterations = 1;
        cfg.ice.stun_urls = vec![format!("stun:{turn_ip}:3478")];
        if !turn_urls.is_empty() {
            cfg.ice.turn_urls = turn_urls;
            cfg.ice.turn_secret_file = Some(secret_file);
        }
        let listener = tokio::net::TcpListener::bind(addr).await.expect("signal server port in the pub namespace");
        let _ = ready_tx.send(());
        signal_server::run(cfg, listener, async move {
            let _ = stop_rx.await;
        })
        .await
        .expect("signal server runs");
    });
    ready_rx.recv_timeout(WAIT).expect("signal server listening");
    (format!("ws://{addr}/ws"), db, stop_tx, thread)
}

/// The gateway "hq" on site host `ns` (`ip`), linked to `cloud`.
fn start_gateway(ns: &str, ip: &str, cloud: &str, dir: &std::path::Path) -> (oneshot::Sender<()>, std::thread::JoinHandle<()>) {
    start_gateway_id("hq", ns, ip, cloud, dir)
}

fn start_gateway_id(
    id: &str,
    ns: &str,
    ip: &str,
    cloud: &str,
    dir: &std::path::Path,
) -> (oneshot::Sender<()>, std::thread::JoinHandle<()>) {
    start_gateway_with(id, ns, ip, cloud, dir, None)
}

/// Gateway `id`; `ca` (the lab's TURN CA) is trusted for `turns:` when given.
fn start_gateway_with(
    id: &str,
    ns: &str,
    ip: &str,
    cloud: &str,
    dir: &std::path::Path,
    ca: Option<&str>,
) -> (oneshot::Sender<()>, std::thread::JoinHandle<()>) {
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let secret_file = dir.join(format!("{id}.secret"));
    std::fs::write(&secret_file, secret_of(id)).unwrap();
    let config = switch_gateway::Config {
        id: id.into(),
        secret_file,
        cloud_url: cloud.into(),
        cloud_ca_file: ca.map(Into::into),
        sip_listen: format!("{ip}:5060").parse().unwrap(),
        rtp_ports: "40000-40199".into(),
        state_dir: dir.join(format!("{id}-state")),
        ring_timeout_secs: 10,
        ..Default::default()
    };
    let thread = in_netns(ns, move || async move {
        let sockets = switch_gateway::Sockets::bind(&config).await.expect("gateway sockets on the site LAN");
        switch_gateway::run(config, sockets, async move {
            let _ = stop_rx.await;
        })
        .await
        .expect("gateway runs");
    });
    (stop_tx, thread)
}

/// A desk phone (1001) on site host `ns`: registers with the gateway at `gw` (then says so on
/// the returned receiver), answers the first INVITE, plays 440 Hz for `seconds` and reports the
/// dominant frequency it heard as soon as it has 1 s of it (the thread plays on).
struct Phone {
    registered: std::sync::mpsc::Receiver<()>,
    heard: std::sync::mpsc::Receiver<f32>,
    thread: std::thread::JoinHandle<()>,
}

fn start_phone(ns: &str, ip: &str, gw: SocketAddr, seconds: f32) -> Phone {
    let ip: std::net::IpAddr = ip.parse().unwrap();
    let (registered_tx, registered) = std::sync::mpsc::channel();
    let (heard_tx, heard) = std::sync::mpsc::channel();
    let thread = in_netns(ns, move || async move {
        let sip = UdpSocket::bind((ip, 0)).await.unwrap();
        let rtp = Arc::new(UdpSocket::bind((ip, 0)).await.unwrap());
        // The gateway may still be starting: REGISTER until it answers.
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let r = tokio::time::timeout(Duration::from_secs(2), register_udp(&sip, gw, "1001", "pw-1001", 300, false)).await;
            if r == Ok(200) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "the phone could not register: {r:?}");
            // A phone's retry interval (a new gateway answers 503 until its cloud gives it the
            // phone list; hammering it would trip its scanner limit).
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let _ = registered_tx.send(());
        let gw_rtp = scripted_phone::answer(&sip, rtp.local_addr().unwrap()).await;
        let send = {
            let rtp = rtp.clone();
            tokio::spawn(async move {
                let mut stream = RtpStream::new(7, 0);
                let mut tick = tokio::time::interval(Duration::from_millis(20));
                for (i, frame) in tone(440.0, seconds, 8000).chunks(160).enumerate() {
                    tick.tick().await;
                    let pkt = stream.packet(Law::Mu.payload_type(), (i * 160) as u32, &Law::Mu.encode_frame(frame));
                    let _ = rtp.send_to(&pkt, gw_rtp).await;
                }
            })
        };
        let mut heard: Vec<i16> = vec![];
        let mut buf = vec![0u8; 2048];
        while heard.len() < 8000 {
            let (n, _) = tokio::time::timeout(WAIT, rtp.recv_from(&mut buf)).await.expect("audio from the browser").unwrap();
            if let Ok(h) = parse_rtp(&buf[..n])
                && h.payload_type == Law::Mu.payload_type()
            {
                Law::Mu.decode_into(h.payload(&buf[..n]), &mut heard);
            }
        }
        let _ = heard_tx.send(dominant_frequency(&heard[heard.len() - 4000..], 8000));
        let _ = send.await;
    });
    Phone { registered, heard, thread }
}

/// Packets site `site`'s router has sent out on its Internet side.
fn wan_tx_packets(lab: &lab::Lab, site: &str) -> u64 {
    let router = lab.get(&format!("SITE_{site}_ROUTER_NS")).to_string();
    let out = lab.exec(&router, &["cat", "/sys/class/net/wan0/statistics/tx_packets"]);
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or_else(|_| panic!("tx_packets of {router}: {out:?}"))
}

/// Block until gateway `id` is online at the signal server (its directory says so).
fn wait_switch_online(db_url: &str, id: &str) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(eventually(&format!("{id} online"), || switch_online(db_url, id)));
}

/// What the softphone saw.
#[derive(Debug)]
struct Heard {
    connected_after: Option<Duration>,
    frequency: f32,
    /// Audio packets that arrived while the signal server was down.
    packets_without_cloud: u64,
    /// The call's state at the end (for failure messages).
    status: String,
}

/// The headless softphone 2001 on host `ns` calls 1001 over C14-over-WebRTC, plays 1 kHz, and
/// measures what it hears; after `cloud_down` fires (the test stopped the signal server) it
/// counts the audio that still arrives.
fn start_softphone(
    ns: &str,
    ip: &str,
    cloud: &str,
    cloud_down: Option<(std::sync::mpsc::Sender<()>, mpsc::UnboundedReceiver<()>)>,
) -> std::thread::JoinHandle<Heard> {
    let mut cfg = SoftphoneConfig::new(cloud, "2001", "pw-2001");
    cfg.media = PeerOptions::bind(ip.parse().unwrap());
    in_netns(ns, move || async move {
        let alice = Softphone::login(cfg).await.expect("sign in from behind the home NAT");
        let call = alice.call("1001", AudioSource::tone(1000.0)).await.unwrap();
        let media = call.wait_media(WAIT).await.expect("a WebRTC leg to the gateway");
        let stats = media.wait_connected(Duration::from_secs(20)).await.expect("ICE + DTLS through both NATs");
        media.wait_packets(100, WAIT).await.expect("audio from the desk phone");
        let rec = media.recording();
        let frequency = dominant_frequency(&rec[rec.len().saturating_sub(4000)..], 8000);
        let mut packets_without_cloud = 0;
        if let Some((heard_enough, mut down)) = cloud_down {
            let _ = heard_enough.send(());
            down.recv().await.expect("the test says when the cloud is down");
            let before = media.stats().packets_received;
            let _ = media.wait_packets(before + 100, WAIT).await;
            packets_without_cloud = media.stats().packets_received - before;
        }
        let status = format!("{:?}", call.status());
        media.close().await;
        Heard { connected_after: stats.connected_after, frequency, packets_without_cloud, status }
    })
}

#[test]
fn f1_softphone_behind_a_cone_nat_reaches_a_desk_phone_at_a_site_behind_a_cone_nat_directly() {
    if !lab::should_run("f1_softphone_behind_a_cone_nat_reaches_a_desk_phone_at_a_site_behind_a_cone_nat_directly") {
        return;
    }
    let mut lab = lab::Lab::up(&["site:cone:2", "home:cone:1"]);
    lab.coturn(TURN_SECRET);
    let tmp = tempfile::tempdir().unwrap();
    let (cloud, db_url, cloud_stop, cloud_thread) = start_signal_server(&lab, tmp.path());
    let (gw_ip, phone_ip) = (lab.host_ip("site", 1), lab.host_ip("site", 2));
    let (gw_stop, gw_thread) = start_gateway(&lab.ns("site", 1), &gw_ip, &cloud, tmp.path());
    let phone = start_phone(&lab.ns("site", 2), &phone_ip, format!("{gw_ip}:5060").parse().unwrap(), 12.0);
    wait_switch_online(&db_url, "hq");
    phone.registered.recv_timeout(WAIT).expect("the desk phone registered");
    let (down_tx, down_rx) = mpsc::unbounded_channel();
    let (heard_tx, heard_rx) = std::sync::mpsc::channel();
    let browser = start_softphone(&lab.ns("home", 1), &lab.host_ip("home", 1), &cloud, Some((heard_tx, down_rx)));

    let phone_heard = phone.heard.recv_timeout(Duration::from_secs(40)).expect("the desk phone heard the browser");
    heard_rx.recv_timeout(Duration::from_secs(40)).expect("the browser heard the desk phone");
    assert!((phone_heard - 1000.0).abs() < 20.0, "the desk phone heard {phone_heard} Hz, expected the browser's 1 kHz");
    // Mid-call, the signal server goes away: media runs directly, so it does not care.
    let _ = cloud_stop.send(());
    cloud_thread.join().expect("signal server stops");
    let _ = down_tx.send(());
    let heard = browser.join().expect("the softphone's thread");
    assert!((heard.frequency - 440.0).abs() < 20.0, "the browser heard {} Hz, expected the phone's 440 Hz", heard.frequency);
    assert!(heard.connected_after.is_some());
    assert!(heard.packets_without_cloud >= 100, "audio kept flowing without the cloud: {heard:?}; call: {}", heard.status);
    // Nothing was relayed: coturn allocated nothing (no TURN is configured, and its log agrees).
    let turn_log = std::fs::read_to_string(lab.get("TURN_LOG")).unwrap_or_default();
    assert!(!turn_log.contains("ALLOCATE processed, success"), "no relay may be used");
    phone.thread.join().expect("the desk phone's thread");
    let _ = gw_stop.send(());
    gw_thread.join().expect("gateway stops");
}

#[test]
fn f1_softphone_on_the_gateway_s_own_lan_connects_over_host_candidates() {
    if !lab::should_run("f1_softphone_on_the_gateway_s_own_lan_connects_over_host_candidates") {
        return;
    }
    let mut lab = lab::Lab::up(&["site:cone:3"]);
    lab.coturn(TURN_SECRET);
    let tmp = tempfile::tempdir().unwrap();
    let (cloud, db_url, cloud_stop, cloud_thread) = start_signal_server(&lab, tmp.path());
    let (gw_ip, phone_ip) = (lab.host_ip("site", 1), lab.host_ip("site", 2));
    let (gw_stop, gw_thread) = start_gateway(&lab.ns("site", 1), &gw_ip, &cloud, tmp.path());
    let phone = start_phone(&lab.ns("site", 2), &phone_ip, format!("{gw_ip}:5060").parse().unwrap(), 6.0);
    wait_switch_online(&db_url, "hq");
    phone.registered.recv_timeout(WAIT).expect("the desk phone registered");
    let wan_tx_before = wan_tx_packets(&lab, "site");
    let browser = start_softphone(&lab.ns("site", 3), &lab.host_ip("site", 3), &cloud, None);
    let phone_heard = phone.heard.recv_timeout(Duration::from_secs(40)).expect("the desk phone heard the browser");
    phone.thread.join().expect("the desk phone's thread");
    let heard = browser.join().expect("the softphone's thread");
    assert!((phone_heard - 1000.0).abs() < 20.0, "the desk phone heard {phone_heard} Hz");
    assert!((heard.frequency - 440.0).abs() < 20.0, "the browser heard {} Hz", heard.frequency);
    // Media stayed on the LAN: ~6 s of audio both ways is 600+ packets between the hosts; the
    // router's Internet side saw only signalling and STUN.
    let wan_tx_after = wan_tx_packets(&lab, "site");
    assert!(
        wan_tx_after - wan_tx_before < 200,
        "{} packets left the site during a LAN call: media went through the Internet",
        wan_tx_after - wan_tx_before
    );
    let _ = cloud_stop.send(());
    cloud_thread.join().unwrap();
    let _ = gw_stop.send(());
    gw_thread.join().unwrap();
}

#[test]
fn f1_between_two_symmetric_nats_without_a_relay_ends_connect_failed_and_nothing_rings() {
    if !lab::should_run("f1_between_two_symmetric_nats_without_a_relay_ends_connect_failed_and_nothing_rings") {
        return;
    }
    let mut lab = lab::Lab::up(&["site:sym:2", "home:sym:1"]);
    lab.coturn(TURN_SECRET);
    let tmp = tempfile::tempdir().unwrap();
    let (cloud, db_url, cloud_stop, cloud_thread) = start_signal_server(&lab, tmp.path());
    let (gw_ip, phone_ip) = (lab.host_ip("site", 1), lab.host_ip("site", 2));
    let (gw_stop, gw_thread) = start_gateway(&lab.ns("site", 1), &gw_ip, &cloud, tmp.path());
    // The desk phone registers and then only listens: any INVITE would be a failure.
    let (registered_tx, registered_rx) = std::sync::mpsc::channel();
    let (stop_phone_tx, stop_phone_rx) = oneshot::channel::<()>();
    let gw: SocketAddr = format!("{gw_ip}:5060").parse().unwrap();
    let phone_ip_addr: std::net::IpAddr = phone_ip.parse().unwrap();
    let phone = in_netns(&lab.ns("site", 2), move || async move {
        let sip = UdpSocket::bind((phone_ip_addr, 0)).await.unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::time::timeout(Duration::from_secs(2), register_udp(&sip, gw, "1001", "pw-1001", 300, false)).await != Ok(200)
        {
            assert!(tokio::time::Instant::now() < deadline, "the phone could not register");
            tokio::time::sleep(Duration::from_millis(250)).await; // a phone's retry interval
        }
        let _ = registered_tx.send(());
        let mut buf = vec![0u8; 65536];
        let mut invites = 0;
        let mut stop = stop_phone_rx;
        loop {
            tokio::select! {
                r = sip.recv_from(&mut buf) => {
                    if let Ok((n, _)) = r && buf[..n].starts_with(b"INVITE") {
                        invites += 1;
                    }
                }
                _ = &mut stop => return invites,
            }
        }
    });
    wait_switch_online(&db_url, "hq");
    registered_rx.recv_timeout(WAIT).expect("the desk phone registered");

    let mut cfg = SoftphoneConfig::new(&cloud, "2001", "pw-2001");
    cfg.media = PeerOptions::bind(lab.host_ip("home", 1).parse().unwrap());
    cfg.timeouts.direct = Duration::from_secs(6);
    let browser = in_netns(&lab.ns("home", 1), move || async move {
        let alice = Softphone::login(cfg).await.expect("sign in");
        let started = tokio::time::Instant::now();
        let call = alice.call("1001", AudioSource::tone(1000.0)).await.unwrap();
        let status = call.wait_finished(Duration::from_secs(30)).await.expect("the attempt ends; no hang");
        (status.outcome, status.direct_error, started.elapsed())
    });
    let (outcome, error, took) = browser.join().expect("the softphone's thread");
    assert_eq!(outcome.map(|o| o.0), Some(trunkline_protocol::Outcome::ConnectFailed), "{error:?}");
    assert!(error.is_some_and(|e| e.starts_with("connect_failed")));
    assert!(took < Duration::from_secs(20), "a readable outcome within seconds, not a hang: {took:?}");
    let _ = stop_phone_tx.send(());
    assert_eq!(phone.join().unwrap(), 0, "nothing rang: the key never arrived");
    // The record says why.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(eventually("a connect_failed call record", || {
        let db_url = db_url.clone();
        async move {
            let dir = signal_server::directory::sqlite::SqliteDirectory::open(&db_url).await.unwrap();
            let recs = signal_server::directory::Directory::call_records(&dir, None, 10).await.unwrap();
            dir.close().await;
            recs.iter().any(|r| r.outcome == trunkline_protocol::Outcome::ConnectFailed)
        }
    }));
    let _ = cloud_stop.send(());
    cloud_thread.join().unwrap();
    let _ = gw_stop.send(());
    gw_thread.join().unwrap();
}

#[test]
fn f2_desk_phone_to_desk_phone_between_two_sites_behind_cone_nats_goes_gateway_to_gateway_directly() {
    if !lab::should_run("f2_desk_phone_to_desk_phone_between_two_sites_behind_cone_nats_goes_gateway_to_gateway_directly") {
        return;
    }
    let mut lab = lab::Lab::up(&["hq:cone:2", "br:cone:2"]);
    lab.coturn(TURN_SECRET);
    let tmp = tempfile::tempdir().unwrap();
    let (cloud, db_url, cloud_stop, cloud_thread) = start_signal_server(&lab, tmp.path());
    let (hq_ip, br_ip) = (lab.host_ip("hq", 1), lab.host_ip("br", 1));
    let (hq_stop, hq_thread) = start_gateway_id("hq", &lab.ns("hq", 1), &hq_ip, &cloud, tmp.path());
    let (br_stop, br_thread) = start_gateway_id("branch", &lab.ns("br", 1), &br_ip, &cloud, tmp.path());
    wait_switch_online(&db_url, "hq");
    wait_switch_online(&db_url, "branch");

    let (at_caller, at_callee) = f2_phones(&lab, &hq_ip, &br_ip, false);
    assert!((at_caller - 440.0).abs() < 20.0, "1001 heard {at_caller} Hz, expected 3001's 440 Hz");
    assert!((at_callee - 1000.0).abs() < 20.0, "3001 heard {at_callee} Hz, expected 1001's 1 kHz");
    let turn_log = std::fs::read_to_string(lab.get("TURN_LOG")).unwrap_or_default();
    assert!(!turn_log.contains("ALLOCATE processed, success"), "no relay may be used");
    let _ = cloud_stop.send(());
    cloud_thread.join().unwrap();
    let _ = hq_stop.send(());
    hq_thread.join().unwrap();
    let _ = br_stop.send(());
    br_thread.join().unwrap();
}

/// An F2 call between the desk phones of two sites: 3001 (site `br`, host 2) registers with
/// the branch gateway at `br_ip`, answers and plays 440 Hz; 1001 (site `hq`, host 2) registers
/// with hq at `hq_ip`, calls 3001 and plays 1 kHz, then hangs up when `hang_up_after` (so the
/// sessions end, and release any TURN allocation, before the gateways do). Returns the
/// dominant frequency each phone heard: (1001's, 3001's).
fn f2_phones(lab: &lab::Lab, hq_ip: &str, br_ip: &str, hang_up_after: bool) -> (f32, f32) {
    let register = |sip_ip: std::net::IpAddr, gw: SocketAddr, number: &'static str| async move {
        let sip = UdpSocket::bind((sip_ip, 0)).await.unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        let pw = format!("pw-{number}");
        while tokio::time::timeout(Duration::from_secs(2), register_udp(&sip, gw, number, &pw, 300, false)).await != Ok(200) {
            assert!(tokio::time::Instant::now() < deadline, "{number} could not register");
            tokio::time::sleep(Duration::from_millis(250)).await; // a phone's retry interval
        }
        sip
    };
    let (reg_tx, reg_rx) = std::sync::mpsc::channel();
    let br_gw: SocketAddr = format!("{br_ip}:5060").parse().unwrap();
    let callee_ip: std::net::IpAddr = lab.host_ip("br", 2).parse().unwrap();
    let callee = in_netns(&lab.ns("br", 2), move || async move {
        let sip = register(callee_ip, br_gw, "3001").await;
        let rtp = Arc::new(UdpSocket::bind((callee_ip, 0)).await.unwrap());
        let _ = reg_tx.send(());
        let gw_rtp = scripted_phone::answer(&sip, rtp.local_addr().unwrap()).await;
        let heard = scripted_phone::play_and_record(rtp, gw_rtp, 440.0, 4.0).await;
        dominant_frequency(&heard[heard.len().saturating_sub(4000)..], 8000)
    });
    reg_rx.recv_timeout(WAIT).expect("3001 registered");
    let hq_gw: SocketAddr = format!("{hq_ip}:5060").parse().unwrap();
    let caller_ip: std::net::IpAddr = lab.host_ip("hq", 2).parse().unwrap();
    let caller = in_netns(&lab.ns("hq", 2), move || async move {
        let sip = register(caller_ip, hq_gw, "1001").await;
        let rtp = Arc::new(UdpSocket::bind((caller_ip, 0)).await.unwrap());
        let ok = tokio::time::timeout(Duration::from_secs(30), invite(&sip, hq_gw, "3001", rtp.local_addr().unwrap()))
            .await
            .expect("the call is answered in time");
        let gw_rtp = trunkline_media::sdp::Sdp::parse(&String::from_utf8_lossy(&ok.body)).unwrap().audio_rtp_addr().unwrap();
        let heard = scripted_phone::play_and_record(rtp, gw_rtp, 1000.0, 4.0).await;
        if hang_up_after {
            hang_up(&sip, hq_gw, &ok).await;
        }
        dominant_frequency(&heard[heard.len().saturating_sub(4000)..], 8000)
    });
    (caller.join().expect("1001's thread"), callee.join().expect("3001's thread"))
}

/// 1001 calls `to` through `gw` with a digest-authenticated INVITE whose SDP names `rtp`;
/// returns the 200 OK (the ACK is sent).
async fn invite(sip: &UdpSocket, gw: SocketAddr, to: &str, rtp: SocketAddr) -> trunkline_sip::Response {
    use trunkline_sip::digest::{self, Algorithm};
    let local = sip.local_addr().unwrap();
    let ip = rtp.ip();
    let sdp = format!(
        "v=0\r\no=a 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n",
        rtp.port()
    );
    let msg = |cseq: u32, auth: &str| {
        format!(
            "INVITE sip:{to}@{gw} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKnat{cseq};rport\r\nMax-Forwards: 70\r\n\
             From: <sip:1001@{gw}>;tag=natcaller\r\nTo: <sip:{to}@{gw}>\r\nCall-ID: nat-f2@test\r\nCSeq: {cseq} INVITE\r\n\
             Contact: <sip:1001@{local}>\r\n{auth}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        )
    };
    let mut buf = vec![0u8; 65536];
    let mut next = async || loop {
        let (n, _) = sip.recv_from(&mut buf).await.unwrap();
        if let Ok(trunkline_sip::Message::Response(r)) = trunkline_sip::parse(&buf[..n]) {
            return r;
        }
    };
    sip.send_to(msg(1, "").as_bytes(), gw).await.unwrap();
    let challenge = loop {
        let r = next().await;
        if r.status == 401 {
            break r;
        }
    };
    let ack = format!(
        "ACK sip:{to}@{gw} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKnat1;rport\r\nMax-Forwards: 70\r\nFrom: <sip:1001@{gw}>;tag=natcaller\r\n\
         To: {}\r\nCall-ID: nat-f2@test\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        challenge.headers.get("To").unwrap()
    );
    sip.send_to(ack.as_bytes(), gw).await.unwrap();
    let h = challenge.headers.get_all("WWW-Authenticate").find(|h| h.contains("MD5")).unwrap().to_string();
    let nonce = h.split("nonce=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    let uri = format!("sip:{to}@{gw}");
    let ha1 = digest::ha1(Algorithm::Md5, "1001", REALM, "pw-1001");
    let resp = digest_response(Algorithm::Md5, &ha1, &nonce, "INVITE", &uri, "00000001", "nat");
    let auth = format!(
        "Authorization: Digest username=\"1001\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{resp}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"nat\"\r\n"
    );
    sip.send_to(msg(2, &auth).as_bytes(), gw).await.unwrap();
    loop {
        let r = next().await;
        match r.status {
            100..=199 => continue,
            200 => {
                let to_hdr = r.headers.get("To").unwrap().to_string();
                let ack = format!(
                    "ACK sip:{to}@{gw} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKnat2ack;rport\r\nMax-Forwards: 70\r\nFrom: <sip:1001@{gw}>;tag=natcaller\r\n\
                     To: {to_hdr}\r\nCall-ID: nat-f2@test\r\nCSeq: 2 ACK\r\nContent-Length: 0\r\n\r\n"
                );
                sip.send_to(ack.as_bytes(), gw).await.unwrap();
                return r;
            }
            other => panic!("the call failed with {other} {}: {:?}", r.reason, r.headers.get("Warning")),
        }
    }
}

// ---- TURN relays at the gateways (sessions allocate on coturn over UDP, TCP and TLS) ----

/// The signal server handing out the lab's TURN URLs (only `turns:` with `tls_only`).
fn start_signal_server_with_turn(
    lab: &lab::Lab,
    dir: &std::path::Path,
    tls_only: bool,
) -> (String, String, oneshot::Sender<()>, std::thread::JoinHandle<()>) {
    let mut turn_urls: Vec<String> =
        ["TURN_URL_UDP", "TURN_URL_TCP", "TURN_URL_TLS"].iter().map(|k| lab.get(k).to_string()).collect();
    if tls_only {
        turn_urls.drain(..2);
    }
    start_signal_server_ice(lab, dir, turn_urls)
}

/// F2 between gateway "hq" (site `hq`, host 1; caller 1001 on host 2) and gateway "branch" (site
/// `br`, host 1; callee 3001 on host 2), both trusting the lab's TURN CA, with TURN handed out by
/// the cloud. Returns what 1001 and 3001 heard (Hz) and coturn's log (read before the lab goes).
fn f2_through_the_cloud_s_turn(lab: &mut lab::Lab, tls_only: bool) -> (f32, f32, String) {
    lab.coturn(TURN_SECRET);
    let ca = lab.get("TURN_CA").to_string();
    let tmp = tempfile::tempdir().unwrap();
    let (cloud, db_url, cloud_stop, cloud_thread) = start_signal_server_with_turn(lab, tmp.path(), tls_only);
    let (hq_ip, br_ip) = (lab.host_ip("hq", 1), lab.host_ip("br", 1));
    let (hq_stop, hq_thread) = start_gateway_with("hq", &lab.ns("hq", 1), &hq_ip, &cloud, tmp.path(), Some(&ca));
    let (br_stop, br_thread) = start_gateway_with("branch", &lab.ns("br", 1), &br_ip, &cloud, tmp.path(), Some(&ca));
    wait_switch_online(&db_url, "hq");
    wait_switch_online(&db_url, "branch");

    let (at_caller, at_callee) = f2_phones(lab, &hq_ip, &br_ip, true);
    // The hang-up ends both sessions, whose deletes (REFRESH with lifetime 0) make coturn log
    // each allocation's usage: wait for those lines (before the gateways stop and take their
    // sockets with them).
    let log_path = lab.get("TURN_LOG").to_string();
    let read = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let turn_log = lab::poll(
        Duration::from_secs(15),
        "coturn's usage line for every allocation",
        || {
            let text = read();
            let sessions = turn_sessions(&text);
            (sessions.iter().any(|s| s.allocated) && sessions.iter().filter(|s| s.allocated).all(|s| s.peer_rx.is_some()))
                .then_some(text)
        },
        || format!("{:#?}", turn_sessions(&read())),
    );
    let _ = cloud_stop.send(());
    cloud_thread.join().unwrap();
    let _ = hq_stop.send(());
    hq_thread.join().unwrap();
    let _ = br_stop.send(());
    br_thread.join().unwrap();
    (at_caller, at_callee, turn_log)
}

/// BYE for the dialog `ok` (the 200 to [`invite`]) from 1001; waits for its 200.
async fn hang_up(sip: &UdpSocket, gw: SocketAddr, ok: &trunkline_sip::Response) {
    let local = sip.local_addr().unwrap();
    let bye = format!(
        "BYE sip:3001@{gw} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKnatbye;rport\r\nMax-Forwards: 70\r\n\
         From: <sip:1001@{gw}>;tag=natcaller\r\nTo: {}\r\nCall-ID: nat-f2@test\r\nCSeq: 3 BYE\r\nContent-Length: 0\r\n\r\n",
        ok.headers.get("To").unwrap()
    );
    sip.send_to(bye.as_bytes(), gw).await.unwrap();
    let mut buf = vec![0u8; 65536];
    let answered = tokio::time::timeout(WAIT, async {
        loop {
            let (n, _) = sip.recv_from(&mut buf).await.unwrap();
            if let Ok(trunkline_sip::Message::Response(r)) = trunkline_sip::parse(&buf[..n])
                && r.status == 200
                && r.headers.get("CSeq").is_some_and(|c| c.contains("BYE"))
            {
                return;
            }
        }
    })
    .await;
    assert!(answered.is_ok(), "no 200 to the BYE");
}

/// One coturn session (an allocation), from its log lines.
#[derive(Debug, Default)]
struct TurnSession {
    id: String,
    username: String,
    /// Over TCP or TLS (coturn names the TCP socket when it closes).
    stream: bool,
    /// Over TLS (coturn logs the cipher when the session starts).
    tls: bool,
    allocated: bool,
    /// Packets relayed from / to peers ("peer usage: ... rp=, sp=", logged when it ends).
    peer_rx: Option<u64>,
    peer_tx: Option<u64>,
}

fn turn_sessions(turn_log: &str) -> Vec<TurnSession> {
    let mut out: Vec<TurnSession> = vec![];
    for line in turn_log.lines() {
        let Some(rest) = line.split("session ").nth(1) else { continue };
        let Some((id, what)) = rest.split_once(':') else { continue };
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let i = match out.iter().position(|s| s.id == id) {
            Some(i) => i,
            None => {
                out.push(TurnSession { id: id.to_string(), ..Default::default() });
                out.len() - 1
            }
        };
        let s = &mut out[i];
        if let Some(u) = what.split("username=<").nth(1).and_then(|u| u.split('>').next()) {
            s.username = u.to_string();
        }
        s.allocated |= what.contains("ALLOCATE processed, success");
        s.stream |= what.contains("TCP socket") || what.contains("TLS socket") || what.contains("TLS/TCP socket");
        s.tls |= what.contains("method=TLS") || what.contains("TLS/TCP socket");
        if what.contains("peer usage:") {
            let field = |k: &str| {
                what.split(&format!(" {k}=")).nth(1).and_then(|v| v.split(',').next()).and_then(|v| v.trim().parse().ok())
            };
            s.peer_rx = field("rp");
            s.peer_tx = field("sp");
        }
    }
    out
}

#[test]
fn f2_from_a_site_that_drops_outgoing_udp_to_a_site_behind_a_cone_nat_is_relayed_over_turn_tcp_or_tls() {
    if !lab::should_run("f2_from_a_site_that_drops_outgoing_udp_to_a_site_behind_a_cone_nat_is_relayed_over_turn_tcp_or_tls") {
        return;
    }
    let mut lab = lab::Lab::up(&["hq:noudp:2", "br:cone:2"]);
    let (at_caller, at_callee, turn_log) = f2_through_the_cloud_s_turn(&mut lab, false);
    assert!((at_caller - 440.0).abs() < 20.0, "1001 (noudp site) heard {at_caller} Hz, expected 3001's 440 Hz");
    assert!((at_callee - 1000.0).abs() < 20.0, "3001 (cone site) heard {at_callee} Hz, expected 1001's 1 kHz");
    // The noudp site's gateway allocated over TCP or TLS, and the call's audio went through it
    // (4 s at 50 packets/s each way).
    let sessions = turn_sessions(&turn_log);
    let hq: Vec<&TurnSession> = sessions.iter().filter(|s| s.username.ends_with(":hq") && s.allocated).collect();
    assert!(hq.iter().any(|s| s.stream), "no successful ALLOCATE over TCP or TLS by hq in coturn's log: {sessions:#?}");
    assert!(
        hq.iter().any(|s| s.stream && s.peer_rx.unwrap_or(0) >= 150 && s.peer_tx.unwrap_or(0) >= 150),
        "hq's stream allocation did not carry the call: {sessions:#?}"
    );
}

#[test]
fn f2_between_two_sites_behind_symmetric_nats_is_relayed_through_turn() {
    if !lab::should_run("f2_between_two_sites_behind_symmetric_nats_is_relayed_through_turn") {
        return;
    }
    let mut lab = lab::Lab::up(&["hq:sym:2", "br:sym:2"]);
    let (at_caller, at_callee, turn_log) = f2_through_the_cloud_s_turn(&mut lab, false);
    assert!((at_caller - 440.0).abs() < 20.0, "1001 heard {at_caller} Hz, expected 3001's 440 Hz");
    assert!((at_callee - 1000.0).abs() < 20.0, "3001 heard {at_callee} Hz, expected 1001's 1 kHz");
    let sessions = turn_sessions(&turn_log);
    // Both ways of 4 s of audio (≈ 400 packets) went through coturn: through one allocation,
    // or each way through the receiving side's own (relay ↔ srflx/prflx pairs, seen in runs).
    let relayed: u64 = sessions.iter().filter(|s| s.allocated).map(|s| s.peer_rx.unwrap_or(0) + s.peer_tx.unwrap_or(0)).sum();
    assert!(relayed >= 300, "the call was not relayed ({relayed} packets through coturn): {sessions:#?}");
}

/// With TURN handed out, two cone sites still talk directly: the gateways allocate relays
/// eagerly (so a relayed candidate is ready if nothing else works), ICE prefers the
/// server-reflexive pair, and no allocation carries the call's audio (only ICE checks: ~30
/// packets each way in these ~6 s, against 200+ for the 4 s of audio at 50 packets/s).
#[test]
fn f2_between_two_cone_sites_with_turn_configured_stays_direct() {
    if !lab::should_run("f2_between_two_cone_sites_with_turn_configured_stays_direct") {
        return;
    }
    let mut lab = lab::Lab::up(&["hq:cone:2", "br:cone:2"]);
    let (at_caller, at_callee, turn_log) = f2_through_the_cloud_s_turn(&mut lab, false);
    assert!((at_caller - 440.0).abs() < 20.0, "1001 heard {at_caller} Hz, expected 3001's 440 Hz");
    assert!((at_callee - 1000.0).abs() < 20.0, "3001 heard {at_callee} Hz, expected 1001's 1 kHz");
    let sessions = turn_sessions(&turn_log);
    assert!(sessions.iter().any(|s| s.allocated), "relays were allocated (eagerly): {sessions:#?}");
    // Every allocation ended (deleted at hang-up, or its stream closed) and relayed little.
    for s in sessions.iter().filter(|s| s.allocated) {
        let (rx, tx) = (s.peer_rx.expect("coturn logs its usage when it ends"), s.peer_tx.unwrap_or(0));
        assert!(rx < 100 && tx < 100, "session {} relayed {rx}/{tx} packets: media went through TURN: {sessions:#?}", s.id);
    }
}

/// The same from the noudp site when the cloud hands out only `turns:` (TLS on 443): the
/// gateway verifies coturn's certificate against the lab's CA (its `cloud_ca_file`).
#[test]
fn f2_from_a_site_that_drops_outgoing_udp_is_relayed_over_turn_tls_on_443() {
    if !lab::should_run("f2_from_a_site_that_drops_outgoing_udp_is_relayed_over_turn_tls_on_443") {
        return;
    }
    let mut lab = lab::Lab::up(&["hq:noudp:2", "br:cone:2"]);
    let (at_caller, at_callee, turn_log) = f2_through_the_cloud_s_turn(&mut lab, true);
    assert!((at_caller - 440.0).abs() < 20.0, "1001 (noudp site) heard {at_caller} Hz, expected 3001's 440 Hz");
    assert!((at_callee - 1000.0).abs() < 20.0, "3001 (cone site) heard {at_callee} Hz, expected 1001's 1 kHz");
    let sessions = turn_sessions(&turn_log);
    assert!(
        sessions.iter().any(|s| s.username.ends_with(":hq") && s.allocated && s.tls && s.peer_rx.unwrap_or(0) >= 150),
        "hq's TLS allocation did not carry the call: {sessions:#?}"
    );
}
