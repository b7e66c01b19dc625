//! The headless softphone's signal connection drops (a network cut between it and the real
//! signal server, in-process): it comes back by itself with `resume` — same softphone, same
//! inbox — and can be called again; the token it had is rotated (a second `resume` with it is
//! refused). Closed on purpose, it does not come back.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use common::{ALICE, BOB, Cloud, WAIT};
use trunkline_client::signal::SignalClient;
use trunkline_client::{Softphone, SoftphoneConfig, TlsOptions};

/// A TCP forwarder to the server whose connections can be cut.
struct Cut {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Cut {
    async fn start(to: SocketAddr) -> Cut {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let list = conns.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                list.lock().unwrap().push(task.abort_handle());
            }
        });
        Cut { addr, conns }
    }

    fn cut(&self) -> usize {
        let conns: Vec<_> = self.conns.lock().unwrap().drain(..).collect();
        conns.iter().for_each(|c| c.abort());
        conns.len()
    }
}

fn server_addr(ws_url: &str) -> SocketAddr {
    ws_url.trim_start_matches("ws://").trim_end_matches("/ws").parse().unwrap()
}

async fn wait_sign_ins(phone: &Softphone, n: u64) {
    let mut w = phone.signal().sign_ins_watch();
    tokio::time::timeout(WAIT, w.wait_for(|&s| s >= n))
        .await
        .unwrap_or_else(|_| panic!("not signed in again: {:?}", phone.closed_reason()))
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_comes_back_with_resume_and_a_closed_one_does_not() {
    let cloud = Cloud::start().await;
    let cut = Cut::start(server_addr(&cloud.ws_url)).await;
    let cfg = SoftphoneConfig::new(format!("ws://{}/ws", cut.addr), ALICE.0, ALICE.1);
    let alice = Softphone::login(cfg).await.unwrap();
    let first_token = alice.session().session_token.clone();
    let bob = cloud.phone(BOB).await;
    assert_eq!(alice.signal().sign_ins(), 1);

    // The network drops the connection (no close frame): back by itself, signed in again.
    assert_eq!(cut.cut(), 1);
    wait_sign_ins(&alice, 2).await;
    assert!(alice.closed_reason().is_none());
    alice.signal().sync(WAIT).await.expect("the new connection answers");
    // The server has it online again: a call to it rings on the same softphone.
    let call = bob.call(ALICE.0, trunkline_client::AudioSource::tone(440.0)).await.unwrap();
    let incoming = alice.next_incoming(WAIT).await.expect("rung after the reconnect");
    assert_eq!(incoming.call_id, call.call_id());
    call.hangup();
    drop(incoming);

    // `resume` rotated the token: the one from the first `welcome` is dead.
    let e = SignalClient::resume(&cloud.ws_url, &first_token, &TlsOptions::default()).await.err().expect("refused");
    assert!(e.to_string().contains("auth_failed"), "{e}");

    // Twice more, to be sure it keeps doing it.
    assert_eq!(cut.cut(), 1);
    wait_sign_ins(&alice, 3).await;

    // Closed on purpose: it stays closed (the inbox ends, no further sign-in).
    alice.close();
    tokio::time::timeout(WAIT, async {
        while alice.closed_reason().is_none() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the connection closes");
    assert!(alice.signal().is_closed(), "the connection task is gone");
    assert_eq!(alice.signal().sign_ins(), 3, "no reconnect after close");
    cloud.stop().await;
}
