//! `switch-gateway nat-check` inside the NAT lab (natlab/): the real binary runs in a site host
//! behind a real nftables NAT and asks two real STUN servers on "the Internet" (the lab's pub
//! namespace): coturn on 203.0.113.10:3478 and natlab/stunprobe.py's STUN responder on
//! 203.0.113.11:3478. Each scenario builds its own small lab (about a second), so scenarios are
//! independent and a failure names the NAT kind that broke.
//!
//! Needs root (network namespaces); see natlab/rust/lab.rs for `TRUNKLINE_SKIP_NATLAB=1`.

#[path = "../../natlab/rust/lab.rs"]
mod lab;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use lab::Lab;

const COTURN: &str = "203.0.113.10:3478";
const SECOND: &str = "203.0.113.11:3478";
const SECRET: &str = "natcheck-test-secret-0123456789";

/// A lab with `spec` as its only site, coturn, and a second STUN server on another pub address.
struct StunLab {
    lab: Lab,
    _second: std::process::Child,
    _tmp: tempfile::TempDir,
}

fn stun_lab(spec: &str) -> StunLab {
    let mut lab = Lab::up(&[spec]);
    lab.coturn(SECRET);
    let pub_ns = lab.pub_ns();
    let add = lab.exec(&pub_ns, &["ip", "addr", "add", "203.0.113.11/24", "dev", "br0"]);
    assert!(add.status.success(), "adding 203.0.113.11 to pub: {}", String::from_utf8_lossy(&add.stderr));
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("stun2.log");
    let probe = lab::stunprobe();
    let mut second = lab.spawn(&pub_ns, &["python3", "-u", probe.to_str().unwrap(), "server", SECOND], &log);
    lab::wait_for_log(&mut second, &log, "ready", Duration::from_secs(10));
    StunLab { lab, _second: second, _tmp: tmp }
}

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_switch-gateway"))
}

/// `switch-gateway nat-check --stun stun:COTURN --stun stun:SECOND` inside `ns`.
fn nat_check(lab: &Lab, ns: &str) -> (Output, String) {
    let bin = bin();
    let (a, b) = (format!("stun:{COTURN}"), format!("stun:{SECOND}"));
    let out = lab.exec_timeout(ns, &[bin.to_str().unwrap(), "nat-check", "--stun", &a, "--stun", &b], Duration::from_secs(30));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("nat-check in {ns}: {}\n{text}--- stderr\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    (out, text)
}

/// The `local socket` address.
fn local_socket(text: &str) -> SocketAddr {
    let line =
        text.lines().find_map(|l| l.strip_prefix("local socket")).unwrap_or_else(|| panic!("no local socket line:\n{text}"));
    line.trim().parse().unwrap_or_else(|e| panic!("local socket {line:?}: {e}"))
}

/// What `server` said it sees (`None`: no "sees" line for it).
fn sees(text: &str, server: &str) -> Option<SocketAddr> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix("stun ")?.trim_start().strip_prefix(server)?;
        let mapped = rest.trim_start().strip_prefix("sees ")?;
        Some(mapped.trim().parse().unwrap_or_else(|e| panic!("mapped address in {l:?}: {e}")))
    })
}

fn unreachable(text: &str, server: &str) -> bool {
    text.lines().any(|l| {
        l.strip_prefix("stun ")
            .and_then(|r| r.trim_start().strip_prefix(server))
            .is_some_and(|r| r.trim_start().starts_with("unreachable:"))
    })
}

fn verdict(text: &str) -> String {
    text.lines().find_map(|l| l.strip_prefix("nat ")).unwrap_or_else(|| panic!("no nat verdict line:\n{text}")).trim().to_string()
}

#[test]
fn cone_nat_site_both_servers_see_the_router_wan_with_one_port_endpoint_independent() {
    if !lab::should_run("cone_nat_site") {
        return;
    }
    let l = stun_lab("hq:cone");
    let (out, text) = nat_check(&l.lab, &l.lab.ns("hq", 1));
    assert_eq!(out.status.code(), Some(0), "{text}");
    let local = local_socket(&text);
    assert_eq!(local.ip().to_string(), l.lab.host_ip("hq", 1), "the socket is on the LAN address:\n{text}");
    let m1 = sees(&text, COTURN).unwrap_or_else(|| panic!("coturn answered:\n{text}"));
    let m2 = sees(&text, SECOND).unwrap_or_else(|| panic!("the second server answered:\n{text}"));
    let wan = l.lab.wan("hq");
    assert_eq!(m1.ip().to_string(), wan, "coturn sees the router's WAN address:\n{text}");
    assert_eq!(m2.ip().to_string(), wan, "the second server sees the router's WAN address:\n{text}");
    assert_eq!(m1.port(), m2.port(), "one mapping for both destinations:\n{text}");
    assert!(verdict(&text).starts_with("endpoint-independent mapping"), "{text}");
}

#[test]
fn symmetric_nat_site_each_server_sees_another_port_endpoint_dependent() {
    if !lab::should_run("symmetric_nat_site") {
        return;
    }
    let l = stun_lab("br:sym");
    let (out, text) = nat_check(&l.lab, &l.lab.ns("br", 1));
    assert_eq!(out.status.code(), Some(0), "{text}");
    let m1 = sees(&text, COTURN).unwrap_or_else(|| panic!("coturn answered:\n{text}"));
    let m2 = sees(&text, SECOND).unwrap_or_else(|| panic!("the second server answered:\n{text}"));
    let wan = l.lab.wan("br");
    assert_eq!((m1.ip().to_string(), m2.ip().to_string()), (wan.clone(), wan), "{text}");
    assert_ne!(m1.port(), m2.port(), "a new mapping per destination:\n{text}");
    assert!(verdict(&text).starts_with("endpoint-dependent mapping"), "{text}");
}

#[test]
fn open_site_host_sees_its_own_address_no_nat() {
    if !lab::should_run("open_site") {
        return;
    }
    let l = stun_lab("op:open");
    let (out, text) = nat_check(&l.lab, &l.lab.ns("op", 1));
    assert_eq!(out.status.code(), Some(0), "{text}");
    let local = local_socket(&text);
    assert_eq!(local.ip().to_string(), l.lab.host_ip("op", 1), "{text}");
    assert_eq!(sees(&text, COTURN), Some(local), "coturn sees the socket itself:\n{text}");
    assert_eq!(sees(&text, SECOND), Some(local), "the second server sees the socket itself:\n{text}");
    assert!(verdict(&text).starts_with("no NAT"), "{text}");
}

#[test]
fn udp_blocked_site_both_servers_unreachable_exit_1_unknown() {
    if !lab::should_run("udp_blocked_site") {
        return;
    }
    let l = stun_lab("nu:noudp");
    let started = std::time::Instant::now();
    let (out, text) = nat_check(&l.lab, &l.lab.ns("nu", 1));
    assert_eq!(out.status.code(), Some(1), "exit 1 when no server answered:\n{text}");
    assert!(unreachable(&text, COTURN), "coturn unreachable:\n{text}");
    assert!(unreachable(&text, SECOND), "the second server unreachable:\n{text}");
    assert_eq!(sees(&text, COTURN), None, "{text}");
    assert_eq!(sees(&text, SECOND), None, "{text}");
    assert!(verdict(&text).starts_with("unknown"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(10), "gives up in seconds, took {:?}", started.elapsed());
}

/// No lab needed (and no root): the URL is refused before any packet is sent.
#[test]
fn bad_stun_url_exits_2_with_a_message() {
    let out = std::process::Command::new(bin())
        .args(["nat-check", "--stun", "turn:x"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run switch-gateway");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(err.contains("turn:x") && err.contains("not a stun:host[:port] URL"), "stderr: {err}");
}
