//! A registration storm (a site's phones after a power cut) is answered in full: REGISTERs keep
//! no server transaction (their answers are remembered for retransmissions instead), so even
//! with the transaction table capped at its minimum, 300 digest registrations from sipp at
//! 200/s all get their 200. Before, each kept a transaction for 64·T1 and the 17th got 503.

mod common;
#[path = "common/sipcheck.rs"]
mod sipcheck;

use common::*;
use sipcheck::{require_tool, wait_phone_list};

#[tokio::test]
async fn three_hundred_registrations_with_the_transaction_table_capped_at_16_all_succeed() {
    require_tool("sipp", "sip-tester");
    let dir = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(dir.path()).await;
    let gw = Gateway::start_with("hq", &cloud.ws_url, dir.path(), |c| {
        // One source registering many times a second: the guard's per-source budgets would
        // (rightly) stop it; the table cap is what this test is about.
        c.sip_guard.enabled = false;
        c.sip_guard.max_server_transactions = 16;
    })
    .await;
    wait_phone_list(&gw.config.state_dir, &["1001", "1002", "1003"]).await;
    let csv = dir.path().join("users.csv");
    let mut users = String::from("SEQUENTIAL\n");
    for n in ["1001", "1002", "1003"] {
        users.push_str(&format!("{n};pw-{n};[authentication username={n} password=pw-{n}]\n"));
    }
    std::fs::write(&csv, users).unwrap();
    let sf = concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/sipp/register_auth.xml");
    let run = sipp(dir.path(), gw.sip, &["-sf", sf, "-inf", csv.to_str().unwrap(), "-r", "200", "-m", "300"]).await;
    assert!(
        run.success,
        "every registration must succeed; sipp said:\n{}\n{}",
        run.stdout.lines().rev().take(40).collect::<Vec<_>>().join("\n"),
        run.stderr
    );
    assert!(run.messages.matches("SIP/2.0 200 OK").count() >= 300, "300 answers of 200");
    assert!(!run.messages.contains("SIP/2.0 503"), "no 503: REGISTERs take no transaction");
    gw.stop().await;
    cloud.stop().await;
}
