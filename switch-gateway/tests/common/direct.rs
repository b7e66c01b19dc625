//! The party that connects to a switch (C14 over WebRTC), by hand: a browser signed in at the
//! real signal server on raw protocol messages, and its WebRTC legs to a switch — an offer with
//! the `trunkline-direct` DataChannel sent as `direct_signal`, the switch's answer and trickled
//! candidates applied as they come through the cloud, our own server-reflexive candidates
//! trickled back, and the key presented on the DataChannel. Built on the headless client's
//! `WebRtcPeer` alone (not its softphone), so the tests check the gateway and the cloud, and
//! can do what a well-behaved softphone never does (forged keys, replays, offers for other
//! calls).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use trunkline_client::softphone::DIRECT_CHANNEL;
use trunkline_client::webrtc::{AudioSource, MediaEvent, MediaSession, PeerOptions, WebRtcPeer};
use trunkline_protocol::{CallEvent, ClientMsg, DirectClientMsg, DirectServerMsg, IceServer, Outcome, ServerMsg, SignalPayload};

use super::WAIT;

/// Where the reader task sends what the cloud relays for a call we connect on.
enum Route {
    /// Our offer went out: the answer goes to the waiting `connect`; candidates wait.
    Offered { answer: Option<oneshot::Sender<String>>, early: Vec<String> },
    /// The leg is up: candidates go straight to it.
    Live(Arc<MediaSession>),
}

type Routes = Arc<Mutex<HashMap<String, Route>>>;

/// A browser signed in at the signal server.
pub struct Browser {
    pub number: String,
    /// From `welcome` (STUN/TURN the cloud hands out).
    pub ice_servers: Vec<IceServer>,
    out: mpsc::UnboundedSender<String>,
    inbox: mpsc::UnboundedReceiver<ServerMsg>,
    /// Messages [`wait_for`](Self::wait_for) passed over, for later calls.
    backlog: std::collections::VecDeque<ServerMsg>,
    routes: Routes,
}

impl Browser {
    /// Sign in as `number` with password `pw-<number>` (the test directory's convention).
    pub async fn login(ws_url: &str, number: &str) -> Browser {
        Self::login_with(ws_url, number, &format!("pw-{number}")).await
    }

    pub async fn login_with(ws_url: &str, number: &str, password: &str) -> Browser {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(ws_url))
            .await
            .expect("the signal server answers in time")
            .expect("connects to the signal server");
        let (mut sink, mut stream) = ws.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            while let Some(text) = out_rx.recv().await {
                if sink.send(Message::Text(text.into())).await.is_err() {
                    return;
                }
            }
            let _ = sink.close().await;
        });
        let (inbox_tx, inbox) = mpsc::unbounded_channel();
        let routes: Routes = Arc::default();
        let r = routes.clone();
        tokio::spawn(async move {
            while let Some(Ok(frame)) = stream.next().await {
                let Message::Text(text) = frame else { continue };
                let Ok(msg) = ServerMsg::decode(text.as_str()) else { continue };
                if let Some(msg) = route(&r, msg)
                    && inbox_tx.send(msg).is_err()
                {
                    return;
                }
            }
        });
        let login =
            ClientMsg::Login { v: trunkline_protocol::PROTOCOL_VERSION, number: number.into(), password: password.into() };
        let _ = out.send(login.encode());
        let mut b = Browser { number: number.into(), ice_servers: vec![], out, inbox, backlog: Default::default(), routes };
        match b.next().await {
            ServerMsg::Welcome { ice_servers, .. } => b.ice_servers = ice_servers,
            other => panic!("{number} could not sign in: {other:?}"),
        }
        b
    }

    pub fn send(&self, msg: &ClientMsg) {
        self.send_text(&msg.encode());
    }

    pub fn send_text(&self, text: &str) {
        self.out.send(text.to_string()).expect("the connection to the cloud is open");
    }

    /// The next message from the cloud (candidates and answers for our legs excepted).
    pub async fn next(&mut self) -> ServerMsg {
        if let Some(m) = self.backlog.pop_front() {
            return m;
        }
        match tokio::time::timeout(WAIT, self.inbox.recv()).await {
            Ok(Some(m)) => m,
            Ok(None) => panic!("{}: the cloud closed the connection", self.number),
            Err(_) => panic!("{}: no message from the cloud in time", self.number),
        }
    }

    /// The first message (earlier ones passed over included) that `pick` takes; the others
    /// stay, in order, for later calls.
    pub async fn wait_for<T>(&mut self, what: &str, mut pick: impl FnMut(&ServerMsg) -> Option<T>) -> T {
        if let Some(i) = self.backlog.iter().position(|m| pick(m).is_some()) {
            let m = self.backlog.remove(i).expect("found");
            return pick(&m).expect("picked");
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let m = match tokio::time::timeout_at(deadline, self.inbox.recv()).await {
                Ok(Some(m)) => m,
                Ok(None) => panic!("{}: the cloud closed the connection while waiting for {what}", self.number),
                Err(_) => panic!("{}: timed out waiting for {what}; passed over: {:?}", self.number, self.backlog),
            };
            match pick(&m) {
                Some(t) => return t,
                None => self.backlog.push_back(m),
            }
        }
    }

    /// A: dial `to` (C1); returns the cloud's first answer, `connect` (C13) or an `outcome`.
    pub async fn dial(&mut self, call_id: &str, to: &str) -> ServerMsg {
        self.send(&ClientMsg::Dial { call_id: call_id.into(), to: to.into() });
        self.wait_for("connect or outcome", |m| match m {
            ServerMsg::Connect { call_id: c, .. } | ServerMsg::Outcome { call_id: c, .. } if c == call_id => Some(m.clone()),
            _ => None,
        })
        .await
    }

    /// Dial and expect C13: returns the switch's name (`url`) and the key.
    pub async fn dial_connect(&mut self, call_id: &str, to: &str) -> (String, String) {
        match self.dial(call_id, to).await {
            ServerMsg::Connect { url, key, .. } => (url, key),
            other => panic!("C13 expected for {call_id}: {other:?}"),
        }
    }

    /// The outcome of `call_id` (other messages skipped).
    pub async fn outcome(&mut self, call_id: &str) -> Outcome {
        self.wait_for(&format!("the outcome of {call_id}"), |m| match m {
            ServerMsg::Outcome { call_id: c, outcome, .. } if c == call_id => Some(*outcome),
            _ => None,
        })
        .await
    }

    /// Progress of `call_id` from the cloud (`call_event`s), until `connected`.
    pub async fn events_until_connected(&mut self, call_id: &str) -> Vec<CallEvent> {
        let mut seen = vec![];
        while !seen.contains(&CallEvent::Connected) {
            let e = self
                .wait_for("a call event", |m| match m {
                    ServerMsg::CallEvent { call_id: c, event } if c == call_id => Some(event.clone()),
                    ServerMsg::Outcome { call_id: c, outcome, .. } if c == call_id => panic!("{call_id} ended {outcome}"),
                    _ => None,
                })
                .await;
            seen.push(e);
        }
        seen
    }

    /// PeerOptions bound to `ip` with the `stun:` servers of our `welcome` (resolved), as a
    /// softphone would gather its server-reflexive candidate.
    pub async fn peer_options(&self, ip: std::net::IpAddr) -> PeerOptions {
        let mut opts = PeerOptions::bind(ip);
        for url in self.ice_servers.iter().flat_map(|s| s.urls.iter()) {
            if let Some((host, port)) = trunkline_media::srflx::parse_stun_url(url)
                && let Ok(mut found) = tokio::net::lookup_host((host.as_str(), port)).await
                && let Some(addr) = found.find(|a| a.is_ipv4() == ip.is_ipv4())
            {
                opts.stun.push(addr);
            }
        }
        opts
    }

    /// C14 over WebRTC, up to the answer: offer audio (`source`) and the `trunkline-direct`
    /// DataChannel for `call_id` through the cloud and apply the switch's answer (and the
    /// candidates it trickles). Panics if the switch answers nothing in time.
    pub async fn connect(&mut self, call_id: &str, opts: PeerOptions, source: AudioSource) -> DirectLeg {
        self.try_connect(call_id, opts, source, WAIT).await.unwrap_or_else(|e| panic!("{call_id}: {e}"))
    }

    /// As [`connect`](Self::connect); `Err` when no answer came `within`.
    pub async fn try_connect(
        &mut self,
        call_id: &str,
        opts: PeerOptions,
        source: AudioSource,
        within: Duration,
    ) -> Result<DirectLeg, String> {
        let mut peer = WebRtcPeer::bind(opts).await.map_err(|e| e.to_string())?;
        let offer = peer.create_offer_with_channel(DIRECT_CHANNEL).map_err(|e| e.to_string())?;
        let (answer_tx, answer_rx) = oneshot::channel();
        self.routes.lock().unwrap().insert(call_id.into(), Route::Offered { answer: Some(answer_tx), early: vec![] });
        self.send(&ClientMsg::DirectSignal { call_id: call_id.into(), payload: SignalPayload::Offer { sdp: offer } });
        let answer = match tokio::time::timeout(within, answer_rx).await {
            Ok(Ok(a)) => a,
            _ => {
                self.routes.lock().unwrap().remove(call_id);
                return Err(format!("the switch answered no offer within {within:?}"));
            }
        };
        let media = Arc::new(peer.accept_answer(&answer, source).map_err(|e| format!("the switch's answer: {e}"))?);
        let (history, events) = media.subscribe_with_history();
        // Candidates that came before the answer was applied, then live ones.
        let early = match self.routes.lock().unwrap().insert(call_id.into(), Route::Live(media.clone())) {
            Some(Route::Offered { early, .. }) => early,
            _ => vec![],
        };
        for c in early {
            let _ = media.add_remote_candidate(&c);
        }
        // Our own server-reflexive candidates (with STUN in `opts`) go to the switch.
        {
            let (mut ev, out, call_id) = (media.subscribe(), self.out.clone(), call_id.to_string());
            let trickle = move |c: String| {
                let payload = SignalPayload::Ice { candidate: c, sdp_mid: None, sdp_m_line_index: Some(0) };
                let _ = out.send(ClientMsg::DirectSignal { call_id: call_id.clone(), payload }.encode());
            };
            for e in &history {
                if let MediaEvent::LocalCandidate(c) = e {
                    trickle(c.clone());
                }
            }
            tokio::spawn(async move {
                loop {
                    match ev.recv().await {
                        Ok(MediaEvent::LocalCandidate(c)) => trickle(c),
                        Ok(MediaEvent::Closed(_)) | Err(broadcast::error::RecvError::Closed) => return,
                        _ => {}
                    }
                }
            });
        }
        Ok(DirectLeg { call_id: call_id.into(), answer, media, history, events, open: false })
    }
}

/// What the reader does with one message: answers and candidates for our legs are routed to
/// them; everything else is returned for the inbox.
fn route(routes: &Routes, msg: ServerMsg) -> Option<ServerMsg> {
    let ServerMsg::DirectSignal { call_id, payload } = &msg else { return Some(msg) };
    let mut routes = routes.lock().unwrap();
    match (routes.get_mut(call_id), payload) {
        (Some(Route::Offered { answer, .. }), SignalPayload::Answer { sdp }) if answer.is_some() => {
            let _ = answer.take().expect("checked").send(sdp.clone());
            None
        }
        (Some(Route::Offered { early, .. }), SignalPayload::Ice { candidate, .. }) => {
            early.push(candidate.clone());
            None
        }
        (Some(Route::Live(media)), SignalPayload::Ice { candidate, .. }) => {
            let _ = media.add_remote_candidate(candidate);
            None
        }
        (Some(_), SignalPayload::EndOfCandidates) => None,
        _ => Some(msg),
    }
}

/// A WebRTC leg to a switch (its answer applied).
pub struct DirectLeg {
    pub call_id: String,
    /// The switch's SDP answer.
    pub answer: String,
    pub media: Arc<MediaSession>,
    history: Vec<MediaEvent>,
    events: broadcast::Receiver<MediaEvent>,
    open: bool,
}

impl DirectLeg {
    /// The next media event (history first).
    async fn event(&mut self, within: Duration) -> Option<MediaEvent> {
        if !self.history.is_empty() {
            return Some(self.history.remove(0));
        }
        loop {
            match tokio::time::timeout(within, self.events.recv()).await {
                Ok(Ok(e)) => return Some(e),
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
                Ok(Err(broadcast::error::RecvError::Closed)) | Err(_) => return None,
            }
        }
    }

    /// Wait until ICE + DTLS are up and the DataChannel is open.
    pub async fn wait_open(&mut self, within: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + within;
        while !self.open {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.event(left).await {
                Some(MediaEvent::ChannelOpen) => self.open = true,
                Some(MediaEvent::Closed(why)) => return Err(format!("the leg closed: {why}")),
                Some(_) => {}
                None => return Err(format!("the DataChannel did not open within {within:?}")),
            }
        }
        Ok(())
    }

    pub fn send(&self, msg: &DirectClientMsg) {
        self.send_text(&msg.encode());
    }

    pub fn send_text(&self, text: &str) {
        self.media.channel_send(text).expect("the leg is open");
    }

    /// The next message from the switch on the DataChannel; `None` if the leg closed first.
    pub async fn recv(&mut self) -> Option<DirectServerMsg> {
        loop {
            match self.event(WAIT).await? {
                MediaEvent::ChannelText(t) => {
                    return Some(DirectServerMsg::decode(&t).unwrap_or_else(|e| panic!("unreadable from the switch: {e}: {t}")));
                }
                MediaEvent::Closed(_) => return None,
                _ => {}
            }
        }
    }

    /// C14: present `key` for this leg's call as `caller` once the DataChannel is open; the
    /// switch's reply.
    pub async fn present(&mut self, key: &str, caller: &str) -> DirectServerMsg {
        self.present_for(&self.call_id.clone(), key, caller).await
    }

    /// As [`present`](Self::present), naming another call (what a confused or hostile party
    /// might do).
    pub async fn present_for(&mut self, call_id: &str, key: &str, caller: &str) -> DirectServerMsg {
        self.wait_open(WAIT).await.unwrap_or_else(|e| panic!("{}: {e}", self.call_id));
        let v = trunkline_protocol::PROTOCOL_VERSION;
        self.send(&DirectClientMsg::Present { v, call_id: call_id.into(), key: key.into(), caller: caller.into() });
        self.recv().await.unwrap_or_else(|| panic!("{}: the leg closed without a reply to the key", self.call_id))
    }

    /// `progress` on the DataChannel until `connected` (C15).
    pub async fn progress_until_connected(&mut self) -> Vec<CallEvent> {
        let mut seen = vec![];
        while !seen.contains(&CallEvent::Connected) {
            match self.recv().await {
                Some(DirectServerMsg::Progress { event }) => seen.push(event),
                other => panic!("{}: expected progress, got {other:?}", self.call_id),
            }
        }
        seen
    }

    /// Wait for `ended` on the DataChannel (other messages skipped).
    pub async fn ended(&mut self) -> Outcome {
        loop {
            match self.recv().await {
                Some(DirectServerMsg::Ended { outcome }) => return outcome,
                Some(_) => continue,
                None => panic!("{}: the leg closed without `ended`", self.call_id),
            }
        }
    }
}

/// A key that differs from `key` in its first character (same length, still base64url).
pub fn forge(key: &str) -> String {
    let mut k = key.to_string().into_bytes();
    k[0] = if k[0] == b'A' { b'B' } else { b'A' };
    String::from_utf8(k).expect("ASCII")
}
