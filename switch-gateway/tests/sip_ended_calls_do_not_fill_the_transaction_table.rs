//! A busy site's ended calls do not fill the server transaction table: an ended call's INVITE
//! (ACKed 2xx, RFC 6026 timer L) and BYE (answered, timer J) only linger to absorb
//! retransmissions, so they leave the table `sip_guard.max_server_transactions` caps and their
//! answers are remembered in a bounded table instead. With the cap at its minimum (16), 40
//! local calls (F7) from sipp, one after the other, all connect and end. Before, each ended call
//! held two entries for 64·T1, so the ninth call got 503 (and at the default cap of 10,000 a
//! site could end at most ~156 calls/s).

mod common;
#[path = "common/sipcheck.rs"]
mod sipcheck;

use common::*;
use sipcheck::{dump, require_tool, wait_phone_list};

const CALLS: usize = 40;

#[tokio::test]
async fn forty_calls_in_a_row_with_the_transaction_table_capped_at_16_all_connect() {
    require_tool("sipp", "sip-tester");
    let dir = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(dir.path()).await;
    let gw = Gateway::start_with("hq", &cloud.ws_url, dir.path(), |c| {
        // One caller address calling many times a second: the guard's per-source budgets are
        // not what this test is about.
        c.sip_guard.enabled = false;
        c.sip_guard.max_server_transactions = 16;
    })
    .await;
    wait_phone_list(&gw.config.state_dir, &["1001", "1002", "1003"]).await;
    let bench = concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/sipp");

    // The callee registers from the port its answering sipp then listens on.
    let callee_port = free_udp_port().to_string();
    let callees = dir.path().join("callees.csv");
    std::fs::write(&callees, "SEQUENTIAL\n1002;pw-1002;[authentication username=1002 password=pw-1002]\n").unwrap();
    let reg = sipp(
        dir.path(),
        gw.sip,
        &["-sf", &format!("{bench}/register_auth.xml"), "-inf", callees.to_str().unwrap(), "-m", "1", "-p", &callee_port],
    )
    .await;
    assert!(reg.success, "registering 1002 failed\n{}", dump(&reg));

    let callers = dir.path().join("callers.csv");
    std::fs::write(&callers, "SEQUENTIAL\n1001;[authentication username=1001 password=pw-1001];1002\n").unwrap();
    let calls = CALLS.to_string();
    let (uas, uac) = (format!("{bench}/uas_answer.xml"), format!("{bench}/uac_call.xml"));
    let callee_args = ["-sf", uas.as_str(), "-m", calls.as_str(), "-p", callee_port.as_str()];
    let (callee, caller) = tokio::join!(sipp(dir.path(), gw.sip, &callee_args), async {
        let port: u16 = callee_port.parse().unwrap();
        eventually("the callee's sipp listening", || async move { std::net::UdpSocket::bind(("127.0.0.1", port)).is_err() })
            .await;
        // One call at a time (-l 1), each ended at once (-d 0): the table only ever holds
        // what ended calls leave behind.
        sipp(
            dir.path(),
            gw.sip,
            &["-sf", &uac, "-inf", callers.to_str().unwrap(), "-m", &calls, "-l", "1", "-r", "50", "-d", "0"],
        )
        .await
    });
    assert!(!caller.messages.contains("SIP/2.0 503"), "no 503: ended calls hold no transactions\n{}", dump(&caller));
    assert!(caller.success, "every call must connect and end\n{}", dump(&caller));
    assert!(callee.success, "the callee answered every call\n{}", dump(&callee));
    let byes_answered = caller.messages.matches("CSeq: 3 BYE").count();
    assert!(byes_answered >= 2 * CALLS, "{CALLS} BYEs sent and answered, saw {byes_answered} BYE lines");
    gw.stop().await;
    cloud.stop().await;
}
