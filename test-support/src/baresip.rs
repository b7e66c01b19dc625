//! baresip 1.0 as a real desk phone: one [`Phone`] per baresip process, each with its own
//! config folder, free SIP/RTP/control ports, a WAV file as its microphone
//! (`audio_source aufile,<wav>`), what it receives recorded by the `sndfile` module
//! (`snd_path` → `dump-*-dec.wav`), and control over `ctrl_tcp` (JSON in netstrings: commands
//! and their responses, plus every UA event). Its password is `pw-<number>`, as in
//! [`SITE_PHONES`](crate::directory::SITE_PHONES).
//!
//! What baresip 1.0 offers a test (read from its v1.0.0 source and checked by the tests):
//! - received RFC 4733 digits: `src/audio.c` `handle_telev` → `src/call.c`
//!   `audio_event_handler` (logs `received event: 'X' (end=0)`) → `src/ua.c`
//!   `call_dtmf_handler` → UA events `CALL_DTMF_START` (`param` = the digit) and
//!   `CALL_DTMF_END`, which `ctrl_tcp` sends like any other event;
//! - sending digits: the menu module's long command `sndcode <digits>` (`modules/menu/menu.c`
//!   `send_code`: `call_send_digit` for each digit, then the key release), which goes out as
//!   RFC 4733 `telephone-event` packets on the call's current audio stream;
//! - its SDP names the machine's eth0 address in the root namespace, so a gateway must latch
//!   RTP to where it really comes from (symmetric RTP);
//! - the call ends by itself when the `aufile` source reaches the end of its WAV file.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

pub use crate::audio::since;
use crate::audio::{self, Pcm};
pub use crate::ports::{free_rtp_range, free_sip_port, free_tcp_port};

pub const MODULES: &str = "/usr/lib/baresip/modules";

/// Fail clearly if baresip (with the modules the harness loads) or sox is missing.
pub fn require() {
    let on_path = |tool: &str| {
        std::env::var_os("PATH").map(|paths| std::env::split_paths(&paths).any(|p| p.join(tool).is_file())).unwrap_or(false)
    };
    assert!(on_path("baresip"), "`baresip` is not installed: this test needs it (Debian package `baresip`)");
    assert!(on_path("sox"), "`sox` is not installed: this test needs it (Debian package `sox`)");
    for m in ["g711", "sndfile", "aufile", "aubridge", "ctrl_tcp", "menu", "account"] {
        let so = Path::new(MODULES).join(format!("{m}.so"));
        assert!(so.is_file(), "baresip module {} missing (Debian package `baresip`)", so.display());
    }
}

/// A mono 8 kHz 16-bit WAV with `secs` of a `freq` sine at half scale (the phone's microphone).
pub fn tone_wav(dir: &Path, name: &str, freq: u32, secs: u32) -> PathBuf {
    let path = dir.join(name);
    let out = std::process::Command::new("sox")
        .args(["-n", "-r", "8000", "-c", "1", "-b", "16"])
        .arg(&path)
        .args(["synth", &secs.to_string(), "sine", &freq.to_string(), "vol", "0.5"])
        .output()
        .expect("sox runs");
    assert!(out.status.success(), "sox: {}", String::from_utf8_lossy(&out.stderr));
    path
}

/// JSON-over-netstring client for baresip's ctrl_tcp module.
pub struct Ctrl {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Every event seen so far, in order (for assertions and dumps).
    pub events: Vec<Value>,
    next_token: u64,
}

impl Ctrl {
    pub async fn connect(port: u16, deadline: Instant) -> Ctrl {
        loop {
            match TcpStream::connect(("127.0.0.1", port)).await {
                Ok(stream) => return Ctrl { stream, buf: Vec::new(), events: Vec::new(), next_token: 1 },
                Err(e) => {
                    assert!(Instant::now() < deadline, "baresip ctrl_tcp on {port} never accepted: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// The next JSON message (event or response), or None at `deadline` / end of stream.
    pub async fn next(&mut self, deadline: Instant) -> Option<Value> {
        loop {
            // netstring: <len>:<json>,
            if let Some(colon) = self.buf.iter().position(|b| *b == b':') {
                let len: usize = std::str::from_utf8(&self.buf[..colon]).ok()?.trim().parse().expect("netstring length");
                if self.buf.len() > colon + len + 1 {
                    let json: Value = serde_json::from_slice(&self.buf[colon + 1..colon + 1 + len]).expect("ctrl_tcp JSON");
                    self.buf.drain(..colon + len + 2);
                    if json.get("event").and_then(Value::as_bool) == Some(true) {
                        self.events.push(json.clone());
                    }
                    return Some(json);
                }
            }
            let mut chunk = [0u8; 8192];
            let n = match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return None,
                Ok(Ok(0)) | Ok(Err(_)) => return None,
                Ok(Ok(n)) => n,
            };
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Run a command; returns the response's `data` text. Events that arrive before the
    /// response are kept in `events`.
    pub async fn command(&mut self, command: &str, params: &str) -> Result<String, String> {
        let token = format!("t{}", self.next_token);
        self.next_token += 1;
        let body = serde_json::json!({ "command": command, "params": params, "token": token }).to_string();
        let frame = format!("{}:{},", body.len(), body);
        self.stream.write_all(frame.as_bytes()).await.map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Some(m) = self.next(deadline).await {
            if m.get("response").and_then(Value::as_bool) == Some(true) && m.get("token").and_then(Value::as_str) == Some(&token)
            {
                let data = m.get("data").and_then(Value::as_str).unwrap_or("").to_string();
                return if m.get("ok").and_then(Value::as_bool) == Some(true) { Ok(data) } else { Err(data) };
            }
        }
        Err(format!("no response to {command}"))
    }

    /// Wait for an event of `kind` (already seen ones count).
    pub async fn event(&mut self, kind: &str, deadline: Instant) -> Option<Value> {
        self.event_where(deadline, |e| e["type"] == kind).await
    }

    /// Wait for an event matching `pred` (already seen ones count).
    pub async fn event_where(&mut self, deadline: Instant, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        if let Some(e) = self.events.iter().find(|e| pred(e)) {
            return Some(e.clone());
        }
        while let Some(m) = self.next(deadline).await {
            if m.get("event").and_then(Value::as_bool) == Some(true) && pred(&m) {
                return Some(m);
            }
        }
        None
    }

    pub fn event_types(&self) -> Vec<String> {
        self.events.iter().map(|e| e["type"].as_str().unwrap_or("?").to_string()).collect()
    }
}

/// One baresip process as a desk phone.
pub struct Phone {
    pub number: String,
    child: tokio::process::Child,
    pub ctrl: Ctrl,
    /// baresip's stdout + stderr.
    pub log: PathBuf,
    /// `snd_path`: sndfile's recordings.
    pub rec: PathBuf,
    pub sip_port: u16,
    pub rtp_ports: RangeInclusive<u16>,
}

impl Phone {
    /// Start baresip for `number` (password `pw-<number>`, as in the fixtures' directory),
    /// registering over UDP with the gateway at `gw`; `wav` is its microphone; `auto_answer`
    /// answers incoming calls at once.
    pub async fn start(dir: &Path, number: &str, gw: SocketAddr, wav: &Path, auto_answer: bool) -> Phone {
        Self::start_on(dir, number, gw, wav, auto_answer, "127.0.0.1").await
    }

    /// [`Phone::start`] with its SIP on loopback address `ip` (another source address than
    /// the test's own sockets, e.g. 127.0.0.5).
    pub async fn start_on(dir: &Path, number: &str, gw: SocketAddr, wav: &Path, auto_answer: bool, ip: &str) -> Phone {
        let conf = dir.join(format!("baresip-{number}"));
        let rec = conf.join("rec");
        std::fs::create_dir_all(&rec).unwrap();
        let sip = free_sip_port();
        let ctrl_port = free_tcp_port();
        let rtp = free_rtp_range();
        let config = format!(
            "poll_method epoll\n\
             sip_listen {ip}:{sip}\n\
             call_local_timeout 120\n\
             call_max_calls 4\n\
             audio_buffer 200\n\
             audio_source aufile,{wav}\n\
             audio_player aubridge,out{number}\n\
             audio_alert aubridge,out{number}\n\
             rtp_ports {}-{}\n\
             jitter_buffer_delay 5-10\n\
             module_path {MODULES}\n\
             module g711.so\n\
             module sndfile.so\n\
             module aufile.so\n\
             module aubridge.so\n\
             module_tmp account.so\n\
             module_app menu.so\n\
             module_app ctrl_tcp.so\n\
             ctrl_tcp_listen 127.0.0.1:{ctrl_port}\n\
             snd_path {}\n",
            rtp.start(),
            rtp.end(),
            rec.display(),
            wav = wav.display(),
        );
        std::fs::write(conf.join("config"), config).unwrap();
        let answer = if auto_answer { ";answermode=auto" } else { "" };
        // Digest credentials; registers with the gateway at `gw` over UDP.
        let account = format!("<sip:{number}@{gw};transport=udp>;auth_pass=pw-{number};regint=300{answer}\n");
        std::fs::write(conf.join("accounts"), account).unwrap();
        std::fs::write(conf.join("contacts"), "").unwrap();
        let log = conf.join("baresip.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = tokio::process::Command::new("baresip")
            .arg("-f")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .expect("baresip starts");
        let ctrl = Ctrl::connect(ctrl_port, Instant::now() + Duration::from_secs(15)).await;
        Phone { number: number.to_string(), child, ctrl, log, rec, sip_port: sip, rtp_ports: rtp }
    }

    /// Wait until baresip reports its registration as OK (its `reginfo` shows OK or ERR).
    pub async fn registered(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let info = self.ctrl.command("reginfo", "").await.unwrap_or_default();
            if info.contains("OK") {
                return;
            }
            let log = self.log_text();
            let failed = log.lines().find(|l| l.contains("reg: ") && l.contains("Register:"));
            assert!(failed.is_none(), "{} could not register: {}\n{}", self.number, failed.unwrap_or(""), self.dump());
            assert!(Instant::now() < deadline, "{} never registered: {info:?}\n{}", self.number, self.dump());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Place a call to `uri` (e.g. `sip:3001@127.0.0.1:5060`).
    pub async fn dial(&mut self, uri: &str) {
        if let Err(e) = self.ctrl.command("dial", uri).await {
            panic!("{}: dial {uri} refused: {e}\n{}", self.number, self.dump());
        }
    }

    /// Hang up the current call.
    pub async fn hangup(&mut self) {
        if let Err(e) = self.ctrl.command("hangup", "").await {
            panic!("{}: hangup refused: {e}\n{}", self.number, self.dump());
        }
    }

    /// Send `digits` as RFC 4733 events on the current call (menu's `sndcode`).
    pub async fn send_dtmf(&mut self, digits: &str) {
        if let Err(e) = self.ctrl.command("sndcode", digits).await {
            panic!("{}: sndcode {digits} refused: {e}\n{}", self.number, self.dump());
        }
    }

    /// Take in every event baresip sent before now (a harmless command's response comes after
    /// them on the same connection).
    pub async fn sync_events(&mut self) {
        let _ = self.ctrl.command("reginfo", "").await;
    }

    pub fn saw_event(&self, kind: &str) -> bool {
        self.ctrl.events.iter().any(|e| e["type"] == kind)
    }

    pub async fn expect_event(&mut self, kind: &str, within: Duration) -> Value {
        match self.ctrl.event(kind, Instant::now() + within).await {
            Some(e) => e,
            None => panic!("{}: no {kind} event; events: {:?}\n{}", self.number, self.ctrl.event_types(), self.dump()),
        }
    }

    /// The digits received so far (each RFC 4733 event's `CALL_DTMF_START`, in order).
    pub fn dtmf_received(&self) -> String {
        self.ctrl.events.iter().filter(|e| e["type"] == "CALL_DTMF_START").filter_map(|e| e["param"].as_str()).collect()
    }

    /// Wait until `count` digits were received (`CALL_DTMF_START` events); returns them.
    pub async fn expect_dtmf(&mut self, count: usize, within: Duration) -> String {
        let deadline = Instant::now() + within;
        while self.dtmf_received().chars().count() < count {
            if self.ctrl.next(deadline).await.is_none() {
                panic!(
                    "{}: {count} DTMF digit(s) expected, got {:?}; events: {:?}\n{}",
                    self.number,
                    self.dtmf_received(),
                    self.ctrl.event_types(),
                    self.dump()
                );
            }
        }
        self.dtmf_received()
    }

    /// Quit baresip and wait for it to exit (recordings are closed then).
    pub async fn quit(&mut self) {
        let _ = self.ctrl.command("quit", "").await;
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }

    /// The recordings of received audio (sndfile's decoder-side dumps) so far.
    pub fn received_audio_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.rec)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with("-dec.wav"))
            .collect();
        files.sort();
        files
    }

    /// The one recording of what this phone received.
    pub fn received_audio(&self) -> PathBuf {
        let files = self.received_audio_files();
        assert_eq!(
            files.len(),
            1,
            "{}: one recording of received audio expected in {}: {files:?}",
            self.number,
            self.rec.display()
        );
        files.into_iter().next().unwrap()
    }

    /// What has been received so far (the recording may still be open: its header is patched
    /// only at close, `audio::read_wav` reads to the end of the file then).
    pub fn received_pcm(&self) -> Option<Pcm> {
        let files = self.received_audio_files();
        assert!(files.len() <= 1, "{}: one recording of received audio expected: {files:?}", self.number);
        files.first().and_then(|f| audio::read_wav(f).ok())
    }

    /// Seconds of received audio recorded so far (0 before the recording starts).
    pub fn received_secs(&self) -> f64 {
        self.received_pcm().map(|p| p.seconds()).unwrap_or(0.0)
    }

    /// Wait until the recording of received audio holds at least `secs` seconds; returns it.
    pub async fn wait_received(&self, secs: f64, within: Duration) -> Pcm {
        let deadline = Instant::now() + within;
        loop {
            if let Some(p) = self.received_pcm()
                && p.seconds() >= secs
            {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "{}: the recording of received audio never reached {secs} s (has {:.2} s)\n{}",
                self.number,
                self.received_secs(),
                self.dump()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Where baresip's RTP came from (its log's `receiving from` line), if it got any.
    pub fn rtp_source(&self) -> Option<SocketAddr> {
        self.log_text().lines().find_map(|l| l.split("receiving from ").nth(1)).and_then(|a| a.trim().parse().ok())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn dump(&self) -> String {
        format!("--- baresip {} log\n{}", self.number, self.log_text())
    }
}

/// Check that `pcm` (what `phone` received) carries at least `min_loud_secs` of signal and that
/// its dominant frequency is `expect_hz`. Returns the frequency found.
pub fn check_tone(phone: &Phone, what: &str, pcm: &Pcm, expect_hz: f64, min_loud_secs: f64) -> f64 {
    let (freq, share) = audio::dominant_frequency(pcm);
    let loud = pcm.seconds_above(0.05);
    eprintln!(
        "{} {what}: {:.2} s ({loud:.2} s with signal), rms {:.3}, dominant {freq:.1} Hz ({:.0}% of the energy)",
        phone.number,
        pcm.seconds(),
        pcm.rms(),
        share * 100.0
    );
    assert!(loud >= min_loud_secs, "{} {what}: only {loud:.2} s of audio arrived\n{}", phone.number, phone.dump());
    assert!(
        (freq - expect_hz).abs() <= 15.0,
        "{} {what}: heard {freq:.1} Hz, expected {expect_hz} Hz\n{}",
        phone.number,
        phone.dump()
    );
    assert!(share > 0.5, "{} {what}: the {freq:.1} Hz tone is only {:.0}% of what arrived (noise?)", phone.number, share * 100.0);
    freq
}

/// The audio reached `phone` from the gateway (a port in `gateway_rtp`), not from elsewhere.
pub fn assert_rtp_from(phone: &Phone, gateway_rtp: &RangeInclusive<u16>) {
    let addr = phone.rtp_source().unwrap_or_else(|| panic!("{}: no 'receiving from' line\n{}", phone.number, phone.dump()));
    assert!(
        gateway_rtp.contains(&addr.port()),
        "{}: RTP came from {addr}, not from a gateway port {gateway_rtp:?}",
        phone.number
    );
}
