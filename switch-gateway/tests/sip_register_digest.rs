//! Registrar with digest authentication, over the wire with sipp (UDP, and TCP once):
//! 401 then 200 with our Contact and its expiry; wrong password → 403; a number nobody has →
//! exactly the same answer; unregister (Expires: 0) → 200 with no Contact; too short an
//! interval → 423 with Min-Expires.

mod common;
#[path = "common/sipcheck.rs"]
mod sipcheck;

use common::{Cloud, Gateway, SippRun, scenarios, sipp};
use sipcheck::{TraceMsg, dump, received_responses, require_tool, wait_phone_list};

struct Site {
    _dir: tempfile::TempDir,
    cloud: Cloud,
    gw: Gateway,
}

impl Site {
    async fn start() -> Site {
        require_tool("sipp", "sip-tester");
        let dir = tempfile::tempdir().unwrap();
        let cloud = Cloud::start(dir.path()).await;
        // Both algorithms offered (RFC 8760), MD5 first so sipp (MD5 only) can answer; the
        // default offers MD5 alone (see the gateway's digest_algorithms).
        let gw =
            Gateway::start_with("hq", &cloud.ws_url, dir.path(), |c| c.digest_algorithms = vec!["MD5".into(), "SHA-256".into()])
                .await;
        wait_phone_list(&gw.config.state_dir, &["1001", "1002", "1003"]).await;
        Site { _dir: dir, cloud, gw }
    }

    fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    async fn sipp(&self, scenario: &str, number: &str, user: &str, password: &str, extra: &[&str]) -> SippRun {
        let sf = scenarios().join(scenario);
        let sf = sf.to_str().unwrap();
        let mut args = vec!["-sf", sf, "-s", number, "-au", user, "-ap", password, "-m", "1", "-l", "1"];
        args.extend_from_slice(extra);
        sipp(self.dir(), self.gw.sip, &args).await
    }

    async fn stop(self) {
        self.gw.stop().await;
        self.cloud.stop().await;
    }
}

/// The final response to the authenticated REGISTER (the last response sipp received).
fn last_response(run: &SippRun) -> TraceMsg {
    received_responses(&run.messages).pop().unwrap_or_else(|| panic!("no response in the trace\n{}", dump(run)))
}

/// Check the first REGISTER was challenged with MD5 offered first, then SHA-256, realm trunkline.
fn check_challenge(run: &SippRun) {
    let first = received_responses(&run.messages).into_iter().next().expect("a challenge");
    assert_eq!(first.status(), Some(401), "{}", dump(run));
    let challenges = first.headers("WWW-Authenticate");
    assert!(challenges.len() >= 2, "MD5 and SHA-256 challenges expected: {challenges:?}");
    for c in &challenges {
        assert!(c.starts_with("Digest "), "{c}");
        assert!(c.contains("realm=\"trunkline\""), "{c}");
        assert!(c.contains("nonce=\""), "{c}");
    }
    assert!(challenges[0].contains("algorithm=MD5"), "MD5 must come first: {challenges:?}");
    assert!(challenges[1].contains("algorithm=SHA-256"), "then SHA-256: {challenges:?}");
}

fn check_registered(run: &SippRun, number: &str, transport: &str, max_expires: u64) {
    assert!(run.success, "REGISTER with digest failed\n{}", dump(run));
    check_challenge(run);
    let ok = last_response(run);
    assert_eq!(ok.start_line(), "SIP/2.0 200 OK", "{}", dump(run));
    assert_eq!(ok.transport, transport);
    let contacts = ok.headers("Contact");
    assert_eq!(contacts.len(), 1, "exactly our binding: {contacts:?}");
    let c = contacts[0];
    let uri_start = format!("<sip:{number}@127.0.0.1:");
    assert!(c.starts_with(&uri_start), "our Contact back: {c}");
    let expires: u64 = c
        .rsplit_once(";expires=")
        .and_then(|(_, e)| e.trim().parse().ok())
        .unwrap_or_else(|| panic!("Contact without expires: {c}"));
    assert!((1..=max_expires).contains(&expires), "expires={expires} (asked {max_expires})");
    // Same dialog identifiers echoed back.
    assert!(ok.header("To").is_some_and(|t| t.contains(&format!("sip:{number}@"))), "{}", ok.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_with_digest_over_udp() {
    let site = Site::start().await;
    let run = site.sipp("register.xml", "1001", "1001", "pw-1001", &["-set", "expires", "120"]).await;
    check_registered(&run, "1001", "UDP", 120);
    site.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_with_digest_over_tcp() {
    let site = Site::start().await;
    let run = site.sipp("register.xml", "1002", "1002", "pw-1002", &["-set", "expires", "600", "-t", "t1"]).await;
    check_registered(&run, "1002", "TCP", 600);
    // The messages really went over TCP.
    assert!(sipcheck::trace(&run.messages).iter().all(|m| m.transport == "TCP"), "{}", dump(&run));
    site.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_intervals_are_capped_at_the_maximum() {
    let site = Site::start().await;
    let run = site.sipp("register.xml", "1003", "1003", "pw-1003", &["-set", "expires", "86400"]).await;
    // max_expires_secs defaults to 3600.
    check_registered(&run, "1003", "UDP", 3600);
    site.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_and_unknown_number_get_the_same_403() {
    let site = Site::start().await;
    let wrong = site.sipp("register_refused.xml", "1001", "1001", "not-the-password", &[]).await;
    assert!(wrong.success, "wrong password must be challenged then refused with 403\n{}", dump(&wrong));
    let unknown = site.sipp("register_refused.xml", "1999", "1999", "pw-1999", &[]).await;
    assert!(unknown.success, "an unknown number must be challenged then refused with 403\n{}", dump(&unknown));
    // A number on another switch is not ours either.
    let elsewhere = site.sipp("register_refused.xml", "3001", "3001", "pw-3001", &[]).await;
    assert!(elsewhere.success, "a number of another switch must be refused with 403\n{}", dump(&elsewhere));

    check_challenge(&wrong);
    check_challenge(&unknown);
    let (w, u, e) = (last_response(&wrong), last_response(&unknown), last_response(&elsewhere));
    assert_eq!(w.start_line(), "SIP/2.0 403 Forbidden");
    // Exactly the same answer: status, reason, and the same set of headers (no hint such as a
    // Warning that would tell an unknown number from a wrong password).
    assert_eq!(u.start_line(), w.start_line());
    assert_eq!(e.start_line(), w.start_line());
    assert_eq!(sipcheck::header_names(&u.text), sipcheck::header_names(&w.text), "\n{}\n---\n{}", w.text, u.text);
    assert_eq!(sipcheck::body(&u.text), sipcheck::body(&w.text));
    // And the challenges looked the same too (same headers, same algorithms).
    let first = |r: &SippRun| received_responses(&r.messages).into_iter().next().unwrap();
    assert_eq!(sipcheck::header_names(&first(&wrong).text), sipcheck::header_names(&first(&unknown).text));
    site.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregister_leaves_no_contact() {
    let site = Site::start().await;
    let run = site.sipp("unregister.xml", "1001", "1001", "pw-1001", &[]).await;
    assert!(run.success, "register then unregister failed\n{}", dump(&run));
    let rs = received_responses(&run.messages);
    let codes: Vec<u16> = rs.iter().filter_map(|m| m.status()).collect();
    assert_eq!(codes, [401, 200, 401, 200], "{}", dump(&run));
    assert_eq!(rs[1].headers("Contact").len(), 1, "registered: one binding\n{}", rs[1].text);
    assert!(rs[3].headers("Contact").is_empty(), "unregistered: no binding left\n{}", rs[3].text);
    site.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_brief_an_interval_gets_423_with_min_expires() {
    let site = Site::start().await;
    let run = site.sipp("register_brief.xml", "1001", "1001", "pw-1001", &[]).await;
    assert!(run.success, "Expires: 30 must get 423 after the challenge\n{}", dump(&run));
    let r = last_response(&run);
    assert_eq!(r.start_line(), "SIP/2.0 423 Interval Too Brief", "{}", r.text);
    assert_eq!(r.header("Min-Expires"), Some("60"), "{}", r.text);
    site.stop().await;
}
