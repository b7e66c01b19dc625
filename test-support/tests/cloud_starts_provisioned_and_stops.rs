//! The fixtures against the real signal server: the standard directory signs in, a scripted
//! switch is seen online, and the server stops cleanly.

use trunkline_protocol::ServerMsg;
use trunkline_test_support::{ALICE, Cloud, HQ, WAIT, eventually};

#[tokio::test]
async fn a_browser_and_a_scripted_switch_sign_in_and_the_server_stops_cleanly() {
    let (cloud, _tmp) = Cloud::start().await;
    let mut alice = cloud.browser(ALICE).await;
    let _hq = cloud.switch(HQ).await;
    let db = cloud.db_url.clone();
    eventually("hq online in the directory", WAIT, || {
        let db = db.clone();
        async move {
            let dir = signal_server::directory::open(&db, &Default::default()).await.unwrap();
            dir.list_switches().await.unwrap().iter().any(|s| s.id == HQ.0 && s.online)
        }
    })
    .await;
    alice.send(r#"{"type":"ping"}"#).await;
    alice.wait_for("a pong", |m| matches!(m, ServerMsg::Pong).then_some(())).await;
    cloud.stop().await.expect("a clean stop");
}
