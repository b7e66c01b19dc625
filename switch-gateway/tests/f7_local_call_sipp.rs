//! F7 — desk phone → desk phone on the same switch, handled locally by the gateway, driven
//! over the wire with sipp phones: a registered callee (UAS) and an authenticating caller
//! (UAC). Answered call with SDP rewritten towards the relay, CANCEL while ringing → 487,
//! busy (the callee says so, or is already in a call) → 486, callee not registered → 480,
//! ring timeout → 480, a number nobody has (asked of the cloud, B2/B3) → 404 with the reason
//! in a Warning header; and a caller over TCP.

mod common;
#[path = "common/sipcheck.rs"]
mod sipcheck;

use std::future::Future;
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use common::{Cloud, Gateway, SippRun, free_udp_port, scenarios, sipp};
use sipcheck::{TraceMsg, dump, received_requests, received_responses, require_tool, statuses_for, wait_phone_list};

struct Site {
    dir: tempfile::TempDir,
    cloud: Cloud,
    gw: Gateway,
}

impl Site {
    async fn start() -> Site {
        require_tool("sipp", "sip-tester");
        let dir = tempfile::tempdir().unwrap();
        let cloud = Cloud::start(dir.path()).await;
        let gw = Gateway::start("hq", &cloud.ws_url, dir.path()).await;
        wait_phone_list(&gw.config.state_dir, &["1001", "1002", "1003"]).await;
        // The cloud link is up (the phone list came over it): B2 questions can be asked.
        Site { dir, cloud, gw }
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    fn rtp_range(&self) -> RangeInclusive<u16> {
        let (a, b) = self.gw.config.rtp_ports.split_once('-').unwrap();
        a.parse().unwrap()..=b.parse().unwrap()
    }

    /// Register `number` over UDP from local port `port` (where its UAS will then listen: the
    /// gateway sends requests to the address a REGISTER came from).
    async fn register(&self, number: &str, port: u16) {
        let sf = scenarios().join("register.xml");
        let port = port.to_string();
        let pw = format!("pw-{number}");
        let args = [
            "-sf",
            sf.to_str().unwrap(),
            "-s",
            number,
            "-au",
            number,
            "-ap",
            &pw,
            "-set",
            "expires",
            "300",
            "-m",
            "1",
            "-p",
            &port,
        ];
        let run = sipp(self.path(), self.gw.sip, &args).await;
        assert!(run.success, "registering {number} failed\n{}", dump(&run));
        assert_eq!(statuses_for(&run.messages, "REGISTER"), [401, 200]);
    }

    /// A callee UAS on `port` running `scenario` (it is already registered from that port).
    fn callee<'a>(&'a self, scenario: &str, number: &'a str, port: u16) -> impl Future<Output = SippRun> + 'a {
        let sf = scenarios().join(scenario).to_str().unwrap().to_string();
        async move {
            let port = port.to_string();
            sipp(self.path(), self.gw.sip, &["-sf", &sf, "-s", number, "-m", "1", "-p", &port]).await
        }
    }

    /// A caller UAC `from` → `to` running `scenario`, over UDP or TCP (`-t t1`).
    fn caller<'a>(&'a self, scenario: &str, from: &'a str, to: &'a str, tcp: bool) -> impl Future<Output = SippRun> + 'a {
        let sf = scenarios().join(scenario).to_str().unwrap().to_string();
        async move {
            let pw = format!("pw-{from}");
            let mut args = vec!["-sf", sf.as_str(), "-s", to, "-au", from, "-ap", &pw, "-set", "from", from, "-m", "1"];
            if tcp {
                args.extend(["-t", "t1"]);
            }
            sipp(self.path(), self.gw.sip, &args).await
        }
    }

    async fn stop(self) {
        self.gw.stop().await;
        self.cloud.stop().await;
        drop(self.dir);
    }
}

/// Wait until something (the callee's sipp) holds UDP `port` on 127.0.0.1.
async fn listening(port: u16) {
    common::eventually(&format!("a callee listening on UDP {port}"), || async move {
        std::net::UdpSocket::bind(("127.0.0.1", port)).is_err()
    })
    .await;
}

/// Run a callee and, once it listens, a caller; both to completion.
async fn call(callee: impl Future<Output = SippRun>, port: u16, caller: impl Future<Output = SippRun>) -> (SippRun, SippRun) {
    tokio::join!(callee, async {
        listening(port).await;
        caller.await
    })
}

/// `m=audio` port and `c=` address of an SDP body.
fn sdp_audio(msg: &TraceMsg) -> (String, u16) {
    let body = sipcheck::body(&msg.text);
    let c = body
        .lines()
        .find_map(|l| l.trim().strip_prefix("c=IN IP4 "))
        .unwrap_or_else(|| panic!("no c= line in\n{}", msg.text))
        .trim()
        .to_string();
    let port = body
        .lines()
        .find_map(|l| l.trim().strip_prefix("m=audio "))
        .and_then(|m| m.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no m=audio line in\n{}", msg.text));
    (c, port)
}

fn sent(run: &SippRun, pred: impl Fn(&TraceMsg) -> bool) -> TraceMsg {
    sipcheck::trace(&run.messages)
        .into_iter()
        .filter(|m| m.sent)
        .rfind(pred)
        .unwrap_or_else(|| panic!("message not sent\n{}", dump(run)))
}

/// The final response the caller got to its authenticated INVITE.
fn invite_final(run: &SippRun) -> TraceMsg {
    received_responses(&run.messages)
        .into_iter()
        .filter(|m| m.cseq_method() == Some("INVITE") && m.header("CSeq").is_some_and(|c| c.starts_with("2 ")))
        .find(|m| m.status().is_some_and(|s| s >= 200))
        .unwrap_or_else(|| panic!("no final response to the INVITE\n{}", dump(run)))
}

/// Statuses for the authenticated INVITE (CSeq 2), in order, without 100s.
fn invite_statuses(run: &SippRun) -> Vec<u16> {
    received_responses(&run.messages)
        .into_iter()
        .filter(|m| m.header("CSeq") == Some("2 INVITE"))
        .filter_map(|m| m.status())
        .filter(|s| *s != 100)
        .collect::<Vec<_>>()
        .into_iter()
        .fold(Vec::new(), |mut v, s| {
            if v.last() != Some(&s) {
                v.push(s); // retransmissions counted once
            }
            v
        })
}

fn check_challenged_first(run: &SippRun) {
    let first = statuses_for(&run.messages, "INVITE").into_iter().find(|s| *s != 100);
    assert_eq!(first, Some(401), "the gateway must challenge the caller's INVITE\n{}", dump(run));
}

fn check_answered_call(site: &Site, callee: &SippRun, caller: &SippRun, caller_transport: &str) {
    assert!(callee.success, "callee scenario failed\n{}", dump(callee));
    assert!(caller.success, "caller scenario failed\n{}", dump(caller));
    check_challenged_first(caller);
    assert_eq!(invite_statuses(caller), [180, 200], "180 Ringing, then 200 OK\n{}", dump(caller));
    assert!(received_responses(&caller.messages).iter().all(|m| m.transport == caller_transport));

    // The callee was invited by the gateway, as from the caller, with the relay in the SDP.
    let inv = received_requests(&callee.messages).into_iter().find(|m| m.is_request("INVITE")).expect("INVITE at the callee");
    assert!(inv.header("From").is_some_and(|f| f.contains("sip:1001@")), "caller identity towards the callee: {}", inv.text);
    assert!(inv.start_line().starts_with("INVITE sip:1002@127.0.0.1:"), "{}", inv.start_line());
    let caller_offer = sent(caller, |m| m.is_request("INVITE"));
    let callee_answer = sent(callee, |m| m.status() == Some(200) && m.cseq_method() == Some("INVITE"));
    let (c_in, p_in) = sdp_audio(&inv);
    let (_, p_offer) = sdp_audio(&caller_offer);
    assert_eq!(c_in, "127.0.0.1", "SDP towards the callee names the gateway");
    assert!(site.rtp_range().contains(&p_in), "callee's SDP port {p_in} must be a relay port {:?}", site.rtp_range());
    assert_ne!(p_in, p_offer, "the offer must be rewritten towards the relay");

    // The caller's 200 OK names the relay too, not the callee's own media port.
    let ok = invite_final(caller);
    let (c_ok, p_ok) = sdp_audio(&ok);
    let (_, p_answer) = sdp_audio(&callee_answer);
    assert_eq!(c_ok, "127.0.0.1");
    assert!(site.rtp_range().contains(&p_ok), "caller's SDP port {p_ok} must be a relay port");
    assert_ne!(p_ok, p_answer, "the answer must be rewritten towards the relay");
    assert_ne!(p_ok, p_in, "two relay legs, two ports");

    // The call ended end to end: the callee got the BYE (and ACK), the caller a 200 for its BYE.
    let reqs: Vec<String> =
        received_requests(&callee.messages).iter().map(|m| m.start_line().split(' ').next().unwrap().to_string()).collect();
    assert!(reqs.contains(&"ACK".to_string()) && reqs.contains(&"BYE".to_string()), "callee saw {reqs:?}");
    assert_eq!(statuses_for(&caller.messages, "BYE"), [200]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f7_call_rings_answers_and_hangs_up() {
    let site = Site::start().await;
    let port = free_udp_port();
    site.register("1002", port).await;
    let (callee, caller) =
        call(site.callee("callee_answer.xml", "1002", port), port, site.caller("caller.xml", "1001", "1002", false)).await;
    check_answered_call(&site, &callee, &caller, "UDP");
    site.stop().await;
}

/// An upgrade in place: the gateway stops (SIGTERM's path) and starts again on its state
/// directory and SIP port. A phone that registered before is reached at once, without
/// registering again: its binding came back from `registrations.json`. (Before, every call to it
/// got 480 until its next REGISTER, up to `max_expires_secs` later.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f7_callee_registered_before_a_gateway_restart_is_reached_after_it() {
    let Site { dir, cloud, gw } = Site::start().await;
    let port = free_udp_port();
    let site = Site { dir, cloud, gw };
    site.register("1002", port).await;
    let Site { dir, cloud, gw } = site;
    let gw = gw.restart().await;
    let site = Site { dir, cloud, gw };

    let saved = site.gw.config.state_dir.join("registrations.json");
    let text = std::fs::read_to_string(&saved).expect("registrations saved in the state directory");
    assert!(text.contains("\"number\":\"1002\"") && text.contains(&format!("127.0.0.1:{port}")), "{text}");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&saved).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "where every phone is: owner-only");
    }
    let (callee, caller) =
        call(site.callee("callee_answer.xml", "1002", port), port, site.caller("caller.xml", "1001", "1002", false)).await;
    check_answered_call(&site, &callee, &caller, "UDP");
    site.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f7_call_from_a_tcp_phone() {
    let site = Site::start().await;
    let port = free_udp_port();
    site.register("1002", port).await;
    let (callee, caller) =
        call(site.callee("callee_answer.xml", "1002", port), port, site.caller("caller.xml", "1001", "1002", true)).await;
    check_answered_call(&site, &callee, &caller, "TCP");
    site.stop().await;
}

/// The callee registered over TCP: the gateway must send its INVITE (and later BYE) down the
/// phone's own connection. One sipp registers and keeps the connection; the gateway's INVITE
/// (a Call-ID of its own) runs in that sipp's out-of-call scenario, callee_answer.xml.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f7_call_to_a_tcp_phone() {
    let site = Site::start().await;
    let reg = scenarios().join("register_stay.xml");
    let ooc = scenarios().join("callee_answer.xml");
    let args = [
        "-sf",
        reg.to_str().unwrap(),
        "-oocsf",
        ooc.to_str().unwrap(),
        "-s",
        "1002",
        "-au",
        "1002",
        "-ap",
        "pw-1002",
        "-set",
        "expires",
        "300",
        "-m",
        "1",
        "-t",
        "t1",
    ];
    let callee = sipp(site.path(), site.gw.sip, &args);
    let caller = async {
        common::eventually("the TCP callee registered", || async {
            !sipcheck::find_files(site.path(), "registered.flag").is_empty()
        })
        .await;
        site.caller("caller.xml", "1001", "1002", false).await
    };
    let (callee, caller) = tokio::join!(callee, caller);
    assert!(callee.success, "TCP callee\n{}", dump(&callee));
    assert_eq!(statuses_for(&callee.messages, "REGISTER"), [401, 200]);
    let tcp_only = sipcheck::trace(&callee.messages).iter().all(|m| m.transport == "TCP");
    assert!(tcp_only, "everything to and from the callee over its TCP connection\n{}", dump(&callee));
    check_answered_call(&site, &callee, &caller, "UDP");
    site.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f7_caller_cancels_while_ringing() {
    let site = Site::start().await;
    let port = free_udp_port();
    site.register("1002", port).await;
    let (callee, caller) = call(
        site.callee("callee_ringing_cancelled.xml", "1002", port),
        port,
        site.caller("caller_cancel.xml", "1001", "1002", false),
    )
    .await;
    assert!(caller.success, "caller: 180, CANCEL → 200 + 487\n{}", dump(&caller));
    assert!(callee.success, "callee: CANCEL from the gateway, 487 ACKed\n{}", dump(&callee));
    check_challenged_first(&caller);
    assert_eq!(invite_statuses(&caller), [180, 487], "{}", dump(&caller));
    assert_eq!(invite_final(&caller).start_line(), "SIP/2.0 487 Request Terminated");
    assert_eq!(statuses_for(&caller.messages, "CANCEL"), [200]);
    let got: Vec<String> =
        received_requests(&callee.messages).iter().map(|m| m.start_line().split(' ').next().unwrap().to_string()).collect();
    assert_eq!(got, ["INVITE", "CANCEL", "ACK"], "{}", dump(&callee));
    site.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f7_callee_answers_busy_gives_486() {
    let site = Site::start().await;
    let port = free_udp_port();
    site.register("1002", port).await;
    let (callee, caller) =
        call(site.callee("callee_busy.xml", "1002", port), port, site.caller("caller_rejected.xml", "1001", "1002", false)).await;
    assert!(callee.success, "callee: 486 ACKed by the gateway\n{}", dump(&callee));
    assert!(caller.success, "{}", dump(&caller));
    check_challenged_first(&caller);
    assert_eq!(invite_final(&caller).start_line(), "SIP/2.0 486 Busy Here", "{}", dump(&caller));
    site.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f7_callee_already_in_a_call_gives_486() {
    let site = Site::start().await;
    let port = free_udp_port();
    site.register("1002", port).await;
    // 1003 → 1002, answered and left up.
    let (callee, first) =
        call(site.callee("callee_stay.xml", "1002", port), port, site.caller("caller_stay.xml", "1003", "1002", false)).await;
    assert!(callee.success && first.success, "first call\n{}\n{}", dump(&callee), dump(&first));
    assert_eq!(invite_statuses(&first), [180, 200]);
    // Now 1001 → 1002: busy at once, and 1002's phone is not disturbed (nothing listens there
    // any more; a fork would show up as ringing or a timeout instead of 486).
    let started = Instant::now();
    let second = site.caller("caller_rejected.xml", "1001", "1002", false).await;
    assert!(second.success, "{}", dump(&second));
    assert_eq!(invite_statuses(&second), [486], "no ringing, just busy\n{}", dump(&second));
    assert_eq!(invite_final(&second).start_line(), "SIP/2.0 486 Busy Here");
    assert!(started.elapsed() < Duration::from_secs(4), "busy must be immediate, took {:?}", started.elapsed());
    // The caller of the first call is busy too.
    let third = site.caller("caller_rejected.xml", "1001", "1003", false).await;
    assert!(third.success, "{}", dump(&third));
    let code = invite_final(&third).status();
    // 1003 is not registered: the registrar answers first (480); it must never ring.
    assert!(matches!(code, Some(480) | Some(486)), "{}", dump(&third));
    site.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f7_callee_not_registered_gives_480() {
    let site = Site::start().await;
    let run = site.caller("caller_rejected.xml", "1001", "1003", false).await;
    assert!(run.success, "{}", dump(&run));
    check_challenged_first(&run);
    let r = invite_final(&run);
    assert_eq!(r.start_line(), "SIP/2.0 480 Temporarily Unavailable", "{}", dump(&run));
    assert_eq!(invite_statuses(&run), [480], "nothing rings");
    let w = r.header("Warning").unwrap_or_else(|| panic!("480 without a Warning\n{}", r.text));
    assert!(w.starts_with("399 ") && w.contains("not registered"), "{w}");
    site.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f7_ring_timeout_gives_480_and_cancels_the_phone() {
    let site = Site::start().await;
    let port = free_udp_port();
    site.register("1002", port).await;
    let started = Instant::now();
    let (callee, caller) = call(
        site.callee("callee_ringing_cancelled.xml", "1002", port),
        port,
        site.caller("caller_rejected.xml", "1001", "1002", false),
    )
    .await;
    assert!(caller.success, "{}", dump(&caller));
    assert!(callee.success, "the ringing phone must be CANCELled at the ring timeout\n{}", dump(&callee));
    assert_eq!(invite_statuses(&caller), [180, 480], "{}", dump(&caller));
    let r = invite_final(&caller);
    assert_eq!(r.start_line(), "SIP/2.0 480 Temporarily Unavailable");
    assert!(r.header("Warning").is_some_and(|w| w.contains("no answer")), "{}", r.text);
    // The fixture's ring timeout is 5 s.
    assert!(started.elapsed() >= Duration::from_secs(5), "480 before the ring timeout: {:?}", started.elapsed());
    site.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_number_gives_404_with_the_reason() {
    let site = Site::start().await;
    let run = site.caller("caller_rejected.xml", "1001", "4040", false).await;
    assert!(run.success, "{}", dump(&run));
    check_challenged_first(&run);
    let r = invite_final(&run);
    assert_eq!(r.start_line(), "SIP/2.0 404 Not Found", "{}", dump(&run));
    assert_eq!(invite_statuses(&run), [404], "nothing rings");
    let w = r.header("Warning").unwrap_or_else(|| panic!("404 without a Warning\n{}", r.text));
    assert!(w.starts_with("399 trunkline \"") && w.contains("4040") && w.contains("does not exist"), "{w}");
    site.stop().await;
}
