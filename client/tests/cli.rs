//! The `trunkline-client` binary against the real signal server: `listen --auto-answer` on one
//! side, `call` on the other, WAV in and out, DTMF; plus its exit codes for bad input.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{ALICE, BOB, Cloud, WAIT};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use trunkline_client::wav::{self, RATE, dominant_frequency};

const BIN: &str = env!("CARGO_BIN_EXE_trunkline-client");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_and_listen_with_wav_files_and_dtmf() {
    let cloud = Cloud::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("alice.pw");
    std::fs::write(&pw, format!("{}\n", ALICE.1)).unwrap();
    let tone = dir.path().join("tone.wav");
    wav::write_wav(&tone, &wav::tone(1000.0, 3.0, RATE), RATE).unwrap();
    let heard_by_bob = dir.path().join("bob.wav");
    let heard_by_alice = dir.path().join("alice.wav");

    // Bob listens; his password comes on stdin.
    let mut listener = Command::new(BIN)
        .args(["--server", &cloud.ws_url, "--number", BOB.0, "--password-file", "-", "--media-ip", "127.0.0.1"])
        .args(["listen", "--auto-answer", "--play", "tone:440", "--wait", "30", "--record"])
        .arg(&heard_by_bob)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = listener.stdin.take().unwrap();
    stdin.write_all(format!("{}\n", BOB.1).as_bytes()).await.unwrap();
    drop(stdin);
    let mut lines = BufReader::new(listener.stdout.take().unwrap()).lines();
    let mut bob_out = vec![];
    loop {
        let line = tokio::time::timeout(WAIT, lines.next_line()).await.expect("listener output").unwrap().expect("a line");
        let signed_in = line.contains("signed in as 2002");
        bob_out.push(line);
        if signed_in {
            break;
        }
    }
    let bob_rest = tokio::spawn(async move {
        let mut v = vec![];
        while let Ok(Some(l)) = lines.next_line().await {
            v.push(l);
        }
        v
    });

    // Alice calls with a WAV, sends DTMF, hangs up after 2 s.
    let call = Command::new(BIN)
        .args(["--server", &cloud.ws_url, "--number", ALICE.0, "--password-file"])
        .arg(&pw)
        .args(["--media-ip", "127.0.0.1", "call", BOB.0, "--seconds", "2", "--dtmf", "19", "--play"])
        .arg(&tone)
        .arg("--record")
        .arg(&heard_by_alice)
        .output();
    let call = tokio::time::timeout(Duration::from_secs(40), call).await.expect("call finishes").unwrap();
    let alice_out = String::from_utf8_lossy(&call.stdout).into_owned();
    eprintln!("--- caller output ---\n{alice_out}");
    assert!(call.status.success(), "{alice_out}\n{}", String::from_utf8_lossy(&call.stderr));
    assert!(alice_out.contains("OUTCOME connected"), "{alice_out}");
    assert!(alice_out.contains("F4 callee is a browser"), "{alice_out}");

    let status = tokio::time::timeout(WAIT, listener.wait()).await.expect("listener exits").unwrap();
    bob_out.extend(bob_rest.await.unwrap());
    let bob_out = bob_out.join("\n");
    eprintln!("--- listener output ---\n{bob_out}");
    assert!(status.success(), "{bob_out}");
    assert!(bob_out.contains("OUTCOME connected"), "{bob_out}");
    assert!(bob_out.contains("DTMF received 19"), "{bob_out}");

    let at_bob = dominant_frequency(&wav::read_wav(&heard_by_bob).unwrap(), RATE);
    let at_alice = dominant_frequency(&wav::read_wav(&heard_by_alice).unwrap(), RATE);
    assert!((at_bob - 1000.0).abs() <= 20.0, "{at_bob}");
    assert!((at_alice - 440.0).abs() <= 20.0, "{at_alice}");
    cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes() {
    let cloud = Cloud::start().await;
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.pw");
    std::fs::write(&good, ALICE.1).unwrap();
    let bad = dir.path().join("bad.pw");
    std::fs::write(&bad, "wrong-password").unwrap();
    let run = |pw: std::path::PathBuf, args: &'static [&'static str]| {
        let url = cloud.ws_url.clone();
        async move {
            let o = Command::new(BIN)
                .args(["--server", &url, "--number", ALICE.0, "--password-file"])
                .arg(pw)
                .args(["--media-ip", "127.0.0.1"])
                .args(args)
                .stdin(Stdio::null())
                .output();
            let o = tokio::time::timeout(Duration::from_secs(30), o).await.expect("exits").unwrap();
            (o.status.code(), String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr))
        }
    };
    // B3: no such number → outcome rejected_invalid, exit 1.
    let (code, out) = run(good.clone(), &["call", "4040"]).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("OUTCOME rejected_invalid"), "{out}");
    // Wrong password → exit 3.
    let (code, out) = run(bad, &["call", "2002"]).await;
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("auth_failed"), "{out}");
    // Usage errors → exit 2.
    let (code, out) = run(dir.path().join("missing.pw"), &["call", "2002"]).await;
    assert_eq!(code, Some(2), "{out}");
    let (code, out) = run(good.clone(), &["call", "2002", "--dtmf", "12x"]).await;
    assert_eq!(code, Some(2), "{out}");
    let (code, out) = run(good.clone(), &["call", "2002", "--play", "tone:abc"]).await;
    assert_eq!(code, Some(2), "{out}");
    let (code, out) = run(good, &["listen"]).await;
    assert_eq!(code, Some(2), "{out}");
    cloud.stop().await;
}
