//! The browser driver: owns the signal WebSocket (the only WebSocket the app opens), the
//! RTCPeerConnection and its `trunkline-direct` DataChannel (C14 over WebRTC), the microphone
//! and the ringtone, and carries out what the sans-IO
//! [`Call`] machine asks for. Every JS callback only queues an [`Ev`]; [`dispatch`] handles the
//! queue one event at a time, so nothing re-enters the driver.
//!
//! The UI reads [`Ui`] signals and sends user actions through [`dispatch`].

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::time::Duration;

use leptos::prelude::*;
use serde::Deserialize;
use trunkline_protocol::{ClientMsg, DeclineReason, DirectClientMsg, DirectServerMsg, ErrorCode, PROTOCOL_VERSION, ServerMsg};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    CloseEvent, HtmlAudioElement, MediaStream, MediaStreamConstraints, MediaStreamTrack, MessageEvent, RtcConfiguration,
    RtcDataChannel, RtcDataChannelState, RtcIceCandidateInit, RtcIceConnectionState, RtcPeerConnection,
    RtcPeerConnectionIceEvent, RtcPeerConnectionState, RtcRtpSender, RtcSdpType, RtcSessionDescriptionInit, RtcTrackEvent,
    WebSocket,
};

use crate::audio::Ringtone;
use crate::conn::{self, ConnState, SignInRefusal};
use crate::history::{self, Entry};
use trunkline_call::{Action, Call, DIRECT_CHANNEL, Input, LocalCandidate, Phase, UserAction};

const SESSION_KEY: &str = "trunkline.session";
const DEVICES_KEY: &str = "trunkline.devices";
/// Protocol keep-alive; a connection that misses a pong by the next ping is dropped.
const PING_EVERY: Duration = Duration::from_secs(20);

/// The signed-in account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Me {
    pub number: String,
    pub display_name: String,
}

/// Microphone / speaker choice (device ids; empty = the default).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct DeviceChoice {
    pub mic: String,
    pub speaker: String,
}

/// Push notification state shown in settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushState {
    /// The server offers no Web Push (no `vapid_public_key` in `welcome`), or the browser has none.
    Unavailable,
    /// Needs the user's permission (a button asks).
    Ask,
    Subscribed,
    Denied,
    Failed(String),
}

/// Everything the UI shows, as signals.
#[derive(Clone, Copy)]
pub struct Ui {
    pub conn: RwSignal<ConnState>,
    pub me: RwSignal<Option<Me>>,
    /// Message on the sign-in form.
    pub login_error: RwSignal<Option<String>>,
    pub call: RwSignal<Option<Call>>,
    pub history: RwSignal<Vec<Entry>>,
    /// Wall clock (ms), ticking every second for the call timer.
    pub now: RwSignal<f64>,
    pub push: RwSignal<PushState>,
    /// (device id, label) of microphones and speakers.
    pub mics: RwSignal<Vec<(String, String)>>,
    pub speakers: RwSignal<Vec<(String, String)>>,
    pub devices: RwSignal<DeviceChoice>,
}

impl Ui {
    pub fn new() -> Ui {
        Ui {
            conn: RwSignal::new(ConnState::SignedOut),
            me: RwSignal::new(None),
            login_error: RwSignal::new(None),
            call: RwSignal::new(None),
            history: RwSignal::new(Vec::new()),
            now: RwSignal::new(now()),
            push: RwSignal::new(PushState::Unavailable),
            mics: RwSignal::new(Vec::new()),
            speakers: RwSignal::new(Vec::new()),
            devices: RwSignal::new(DeviceChoice::default()),
        }
    }
}

/// Everything that happens, queued.
pub enum Ev {
    Login {
        number: String,
        password: String,
    },
    SignOut,
    /// Reconnect now (the backoff timer fired, or the user asked).
    Reconnect,
    /// The network is back or the page is shown again: retry at once if waiting to reconnect.
    Wake,
    WsOpen(u32),
    WsText(u32, String),
    WsClosed(u32, u16, String),
    Ping,
    Dial(String),
    User(UserAction),
    /// For the call with this id.
    Call(String, Input),
    /// The microphone is open for this call.
    LocalStream(String, MediaStream, Option<RtcRtpSender>),
    /// The remote stream arrived.
    RemoteStream(String, MediaStream),
    /// The remote description is set: queued candidates can go in.
    RemoteSet(String),
    /// The `trunkline-direct` DataChannel of this call's peer connection, with its handlers.
    Channel(String, RtcDataChannel, Vec<Closure<dyn FnMut(JsValue)>>),
    /// The clock (every second): the call's connect deadline.
    Tick,
    /// Dismiss the ended call's card.
    Dismiss,
    PushSubscribe,
    /// The browser's push subscription: tell the server (`push_subscribe`).
    PushSubscribed(crate::push::Subscription),
    SetDevices(DeviceChoice),
    DevicesChanged,
}

/// A WebSocket with its handlers (dropping it detaches them and closes the socket).
struct Socket {
    ws: WebSocket,
    _handlers: Vec<Closure<dyn FnMut(JsValue)>>,
}

impl Socket {
    fn open(
        url: &str,
        on_open: impl Fn() + 'static,
        on_text: impl Fn(String) + 'static,
        on_close: impl Fn(u16, String) + 'static,
    ) -> Result<Socket, String> {
        let ws = WebSocket::new(url).map_err(js_text)?;
        let open = Closure::<dyn FnMut(JsValue)>::new(move |_| on_open());
        let msg = Closure::<dyn FnMut(JsValue)>::new(move |e: JsValue| {
            if let Some(t) = e.unchecked_into::<MessageEvent>().data().as_string() {
                on_text(t);
            }
        });
        let close = Closure::<dyn FnMut(JsValue)>::new(move |e: JsValue| {
            let e: CloseEvent = e.unchecked_into();
            on_close(e.code(), e.reason());
        });
        ws.set_onopen(Some(open.as_ref().unchecked_ref()));
        ws.set_onmessage(Some(msg.as_ref().unchecked_ref()));
        ws.set_onclose(Some(close.as_ref().unchecked_ref()));
        Ok(Socket { ws, _handlers: vec![open, msg, close] })
    }

    fn send(&self, text: &str) {
        if self.ws.ready_state() == WebSocket::OPEN {
            let _ = self.ws.send_with_str(text);
        }
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        self.ws.set_onopen(None);
        self.ws.set_onmessage(None);
        self.ws.set_onclose(None);
        let _ = self.ws.close();
    }
}

/// The media of the current call.
struct Media {
    call_id: String,
    pc: RtcPeerConnection,
    local: Option<MediaStream>,
    sender: Option<RtcRtpSender>,
    audio: HtmlAudioElement,
    remote_set: bool,
    pending_ice: Vec<RtcIceCandidateInit>,
    /// C14 over WebRTC: the DataChannel the key (and `hangup`) go on.
    dc: Option<RtcDataChannel>,
    _handlers: Vec<Closure<dyn FnMut(JsValue)>>,
    _dc_handlers: Vec<Closure<dyn FnMut(JsValue)>>,
}

impl Media {
    fn close(&mut self) {
        self.pc.set_onicecandidate(None);
        self.pc.set_ontrack(None);
        self.pc.set_onconnectionstatechange(None);
        self.pc.set_oniceconnectionstatechange(None);
        if let Some(s) = &self.local {
            stop_stream(s);
        }
        self.audio.set_src_object(None);
        self.audio.remove();
        debug_hook("pc", &JsValue::NULL);
        debug_hook("remote", &JsValue::NULL);
        debug_hook("dc", &JsValue::NULL);
        match self.dc.take() {
            Some(dc) if dc.ready_state() == RtcDataChannelState::Open => {
                dc.set_onopen(None);
                dc.set_onmessage(None);
                dc.set_onclose(None);
                // What was just sent on the channel (a `hangup`) goes out before the close.
                let pc = self.pc.clone();
                wasm_bindgen_futures::spawn_local(async move {
                    let mut waited = 0;
                    while dc.buffered_amount() > 0 && waited < 1000 {
                        sleep(20).await;
                        waited += 20;
                    }
                    sleep(300).await;
                    dc.close();
                    pc.close();
                });
            }
            Some(dc) => {
                dc.set_onopen(None);
                dc.set_onmessage(None);
                dc.set_onclose(None);
                self.pc.close();
            }
            None => self.pc.close(),
        }
    }
}

struct Driver {
    ui: Ui,
    ws: Option<Socket>,
    /// Generation of `ws` (events of older sockets are ignored).
    generation: u32,
    signed_in: bool,
    /// How the open socket signs in.
    sign_in: Option<ClientMsg>,
    /// Reconnect attempts since the last success.
    attempt: u32,
    reconnect_timer: Option<TimeoutHandle>,
    awaiting_pong: bool,
    /// Stop reconnecting (signed out, or replaced elsewhere).
    hold_off: bool,
    call: Option<Call>,
    media: Option<Media>,
    ringtone: Option<Ringtone>,
    /// Ringback while an outgoing call rings at the far end.
    ringback: Option<Ringtone>,
    vapid_key: Option<String>,
    /// STUN/TURN servers from `welcome` / `ice_servers` (the `iceServers` of new connections).
    ice_servers: Vec<trunkline_protocol::IceServer>,
    /// The endpoint sent in `push_subscribe` (withdrawn with `push_unsubscribe` at sign-out).
    push_endpoint: Option<String>,
    /// Opened from a call notification (`/?answer=<call_id>`): answer that call when its
    /// `incoming` arrives right after `welcome`.
    auto_answer: Option<String>,
}

thread_local! {
    static DRIVER: RefCell<Option<Driver>> = const { RefCell::new(None) };
    static QUEUE: RefCell<VecDeque<Ev>> = const { RefCell::new(VecDeque::new()) };
    static RUNNING: Cell<bool> = const { Cell::new(false) };
}

/// Queue an event and handle the queue (unless a handler is already running: then it is handled
/// right after).
pub fn dispatch(ev: Ev) {
    QUEUE.with(|q| q.borrow_mut().push_back(ev));
    if RUNNING.with(|r| r.replace(true)) {
        return;
    }
    loop {
        let Some(ev) = QUEUE.with(|q| q.borrow_mut().pop_front()) else { break };
        DRIVER.with(|d| {
            if let Some(d) = d.borrow_mut().as_mut() {
                d.handle(ev);
            }
        });
    }
    RUNNING.with(|r| r.set(false));
}

/// Start the driver: resume a stored session, start the clock, watch the network.
pub fn start(ui: Ui) {
    let stored = load_session();
    let devices: DeviceChoice = storage()
        .and_then(|s| s.get_item(DEVICES_KEY).ok().flatten())
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    ui.devices.set(devices);
    let mut d = Driver {
        ui,
        ws: None,
        generation: 0,
        signed_in: false,
        sign_in: None,
        attempt: 0,
        reconnect_timer: None,
        awaiting_pong: false,
        hold_off: false,
        call: None,
        media: None,
        ringtone: None,
        ringback: None,
        vapid_key: None,
        ice_servers: Vec::new(),
        push_endpoint: None,
        auto_answer: take_answer_param(),
    };
    if let Some(s) = stored {
        ui.me.set(Some(Me { number: s.number.clone(), display_name: s.display_name.clone() }));
        ui.history.set(load_history(&s.number));
        d.sign_in = Some(ClientMsg::Resume { v: PROTOCOL_VERSION, token: s.token });
        d.connect();
    }
    DRIVER.with(|cell| *cell.borrow_mut() = Some(d));
    let _ = set_interval_with_handle(
        move || {
            ui.now.set(now());
            dispatch(Ev::Tick);
        },
        Duration::from_millis(1000),
    );
    let _ = set_interval_with_handle(|| dispatch(Ev::Ping), PING_EVERY);
    // Network back, or the page shown again: reconnect at once instead of waiting.
    std::mem::forget(window_event_listener_untyped("online", |_| dispatch(Ev::Wake)));
    if let Some(doc) = web_sys::window().and_then(|w| w.document()) {
        let cb = Closure::<dyn FnMut(JsValue)>::new(|_| dispatch(Ev::Wake));
        let _ = doc.add_event_listener_with_callback("visibilitychange", cb.as_ref().unchecked_ref());
        cb.forget();
    }
    if let Some(md) = web_sys::window().and_then(|w| w.navigator().media_devices().ok()) {
        let cb = Closure::<dyn FnMut(JsValue)>::new(|_| dispatch(Ev::DevicesChanged));
        md.set_ondevicechange(Some(cb.as_ref().unchecked_ref()));
        cb.forget();
    }
    dispatch(Ev::DevicesChanged);
}

impl Driver {
    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Login { number, password } => {
                self.ui.login_error.set(None);
                self.hold_off = false;
                self.sign_in = Some(ClientMsg::Login { v: PROTOCOL_VERSION, number, password });
                self.attempt = 0;
                self.connect();
            }
            Ev::SignOut => {
                if let Some(c) = &self.call
                    && !c.is_over()
                {
                    self.call_input(c.call_id.clone(), Input::User(UserAction::Hangup));
                }
                // Withdraw this browser's push subscription: nobody is signed in here any more.
                if let Some(endpoint) = self.push_endpoint.take() {
                    let msg = serde_json::json!({"type": "push_unsubscribe", "endpoint": endpoint});
                    if let Some(ws) = &self.ws {
                        ws.send(&msg.to_string());
                    }
                    crate::push::unsubscribe();
                }
                // Revoke the session on the server before closing, so the stored token is dead
                // even if a copy of it survives somewhere (sent only when the socket is open).
                if self.signed_in {
                    self.send(&ClientMsg::Logout);
                }
                self.hold_off = true;
                self.signed_in = false;
                self.sign_in = None;
                self.ws = None;
                self.cancel_reconnect();
                if let Some(s) = storage() {
                    let _ = s.remove_item(SESSION_KEY);
                }
                self.ui.me.set(None);
                self.ui.call.set(None);
                self.ui.history.set(Vec::new());
                self.ui.push.set(PushState::Unavailable);
                self.ui.conn.set(ConnState::SignedOut);
                self.call = None;
            }
            Ev::Reconnect => {
                if self.hold_off || self.sign_in.is_none() {
                    return;
                }
                if matches!(self.ui.conn.get_untracked(), ConnState::Reconnecting { .. } | ConnState::Replaced) {
                    self.hold_off = false;
                    self.connect();
                }
            }
            Ev::Wake => {
                if !self.hold_off
                    && self.sign_in.is_some()
                    && matches!(self.ui.conn.get_untracked(), ConnState::Reconnecting { .. })
                {
                    self.connect();
                }
            }
            Ev::WsOpen(g) if g == self.generation => {
                if let (Some(ws), Some(m)) = (&self.ws, &self.sign_in) {
                    ws.send(&m.encode());
                }
            }
            Ev::WsText(g, text) if g == self.generation => self.on_server_text(&text),
            Ev::WsClosed(g, code, reason) if g == self.generation => self.on_closed(code, reason),
            Ev::WsOpen(_) | Ev::WsText(..) | Ev::WsClosed(..) => {}
            Ev::Ping => {
                if !self.signed_in {
                    return;
                }
                if self.awaiting_pong {
                    // No pong for a whole interval: the connection is dead; start over.
                    self.ws = None;
                    self.on_closed(1006, "no pong".into());
                    return;
                }
                self.awaiting_pong = true;
                self.send(&ClientMsg::Ping);
            }
            Ev::Dial(to) => self.dial(to),
            Ev::User(u) => {
                if let Some(c) = &self.call {
                    let id = c.call_id.clone();
                    self.call_input(id, Input::User(u));
                }
            }
            Ev::Call(id, input) => self.call_input(id, input),
            Ev::LocalStream(id, stream, sender) => match &mut self.media {
                Some(m) if m.call_id == id => {
                    m.local = Some(stream);
                    m.sender = sender;
                    debug_hook("local", m.local.as_ref().unwrap());
                    self.apply_mute_hold();
                }
                _ => stop_stream(&stream),
            },
            Ev::RemoteStream(id, stream) => {
                if let Some(m) = &self.media
                    && m.call_id == id
                {
                    m.audio.set_src_object(Some(&stream));
                    if let Ok(p) = m.audio.play() {
                        // A refused autoplay retries at the next click (audio::unlock).
                        wasm_bindgen_futures::spawn_local(async move {
                            let _ = JsFuture::from(p).await;
                        });
                    }
                    debug_hook("remote", &stream);
                    self.apply_mute_hold();
                }
            }
            Ev::RemoteSet(id) => {
                if let Some(m) = &mut self.media
                    && m.call_id == id
                {
                    m.remote_set = true;
                    for c in m.pending_ice.drain(..) {
                        add_ice(&m.pc, &c);
                    }
                    // The call's own queue of remote candidates goes in now.
                    self.call_input(id, Input::RemoteSet);
                }
            }
            Ev::Channel(id, dc, handlers) => match &mut self.media {
                Some(m) if m.call_id == id => {
                    m.dc = Some(dc);
                    m._dc_handlers = handlers;
                }
                _ => {
                    dc.set_onopen(None);
                    dc.set_onmessage(None);
                    dc.set_onclose(None);
                    dc.close();
                }
            },
            Ev::Tick => {
                // Only a call with a deadline (its connection coming up, its offer, or a lost
                // media path's grace) needs the clock.
                if let Some(c) = &self.call
                    && !c.is_over()
                    && c.next_deadline().is_some()
                {
                    let id = c.call_id.clone();
                    self.call_input(id, Input::Tick);
                }
            }
            Ev::Dismiss => {
                if self.call.as_ref().is_some_and(|c| c.is_over()) {
                    self.call = None;
                    self.ui.call.set(None);
                }
            }
            Ev::PushSubscribe => self.push_subscribe(true),
            Ev::PushSubscribed(sub) => {
                let msg = serde_json::json!({"type": "push_subscribe", "endpoint": sub.endpoint, "p256dh": sub.p256dh, "auth": sub.auth});
                if let Some(ws) = &self.ws {
                    ws.send(&msg.to_string());
                }
                self.push_endpoint = Some(sub.endpoint);
                self.ui.push.set(PushState::Subscribed);
            }
            Ev::SetDevices(choice) => {
                if let Some(s) = storage() {
                    let _ = s.set_item(DEVICES_KEY, &serde_json::to_string(&choice).unwrap_or_default());
                }
                if let Some(m) = &self.media {
                    set_sink(&m.audio, &choice.speaker);
                }
                self.ui.devices.set(choice);
            }
            Ev::DevicesChanged => {
                let ui = self.ui;
                wasm_bindgen_futures::spawn_local(async move {
                    if let Ok((mics, speakers)) = list_devices().await {
                        ui.mics.set(mics);
                        ui.speakers.set(speakers);
                    }
                });
            }
        }
    }

    // ---- signal connection ------------------------------------------------------------------

    fn connect(&mut self) {
        self.cancel_reconnect();
        self.generation += 1;
        let g = self.generation;
        self.signed_in = false;
        self.awaiting_pong = false;
        self.ui.conn.set(ConnState::Connecting);
        let url = signal_url();
        match Socket::open(
            &url,
            move || dispatch(Ev::WsOpen(g)),
            move |t| dispatch(Ev::WsText(g, t)),
            move |c, r| dispatch(Ev::WsClosed(g, c, r)),
        ) {
            Ok(s) => self.ws = Some(s),
            Err(e) => {
                self.ws = None;
                self.schedule_reconnect(Some(e));
            }
        }
    }

    fn cancel_reconnect(&mut self) {
        if let Some(t) = self.reconnect_timer.take() {
            t.clear();
        }
    }

    fn schedule_reconnect(&mut self, _why: Option<String>) {
        self.cancel_reconnect();
        let ms = conn::backoff_ms(self.attempt, js_sys::Math::random());
        self.attempt = self.attempt.saturating_add(1);
        self.ui.conn.set(ConnState::Reconnecting { retry_in_s: ms.div_ceil(1000) });
        self.reconnect_timer = set_timeout_with_handle(|| dispatch(Ev::Reconnect), Duration::from_millis(ms as u64)).ok();
    }

    fn send(&self, msg: &ClientMsg) {
        if let Some(ws) = &self.ws {
            ws.send(&msg.encode());
        }
    }

    fn on_closed(&mut self, _code: u16, _reason: String) {
        self.ws = None;
        let was_signed_in = self.signed_in;
        self.signed_in = false;
        if let Some(c) = &self.call
            && !c.is_over()
        {
            let id = c.call_id.clone();
            self.call_input(id, Input::CloudLost);
        }
        if self.hold_off || self.sign_in.is_none() {
            return;
        }
        if matches!(self.sign_in, Some(ClientMsg::Login { .. })) && !was_signed_in {
            // A first sign-in that never got through: say so on the form.
            self.sign_in = None;
            self.ui.conn.set(ConnState::SignedOut);
            if self.ui.login_error.get_untracked().is_none() {
                self.ui.login_error.set(Some("Cannot reach the server. Try again.".into()));
            }
            return;
        }
        self.schedule_reconnect(None);
    }

    fn on_server_text(&mut self, text: &str) {
        let msg = match ServerMsg::decode(text) {
            Ok(m) => m,
            Err(_) => return, // a message this version does not know
        };
        match msg {
            ServerMsg::Welcome { number, display_name, session_token, ice_servers, .. } => {
                self.ice_servers = ice_servers;
                self.signed_in = true;
                self.attempt = 0;
                let me = Me { number: number.clone(), display_name: display_name.clone() };
                // Forget the password; resume with the (rotated) token from now on.
                self.sign_in = Some(ClientMsg::Resume { v: PROTOCOL_VERSION, token: session_token.clone() });
                store_session(&StoredSession { token: session_token, number: number.clone(), display_name });
                if self.ui.me.get_untracked().as_ref().map(|m| &m.number) != Some(&number) {
                    self.ui.history.set(load_history(&number));
                }
                self.ui.me.set(Some(me));
                self.ui.login_error.set(None);
                self.ui.conn.set(ConnState::Connected);
                // Web Push: the server's VAPID key (absent while the server has no Web Push).
                self.vapid_key = serde_json::from_str::<serde_json::Value>(text)
                    .ok()
                    .and_then(|v| v.get("vapid_public_key").and_then(|k| k.as_str()).map(String::from));
                self.push_subscribe(false);
                // The server's call records for this account (history list).
                self.send(&ClientMsg::History { limit: Some(history::MAX_ENTRIES as u32) });
            }
            ServerMsg::History { calls } => {
                let Some(me) = self.ui.me.get_untracked() else { return };
                let mut list = self.ui.history.get_untracked();
                for c in &calls {
                    history::record(&mut list, Entry::from_record(c, &me.number));
                }
                if let Some(s) = storage() {
                    let _ = s.set_item(&history::storage_key(&me.number), &history::encode(&list));
                }
                self.ui.history.set(list);
            }
            ServerMsg::Pong => self.awaiting_pong = false,
            // Fresh TURN credentials; connections already up keep the ones they started with.
            ServerMsg::IceServers { ice_servers, .. } => self.ice_servers = ice_servers,
            ServerMsg::Incoming { call_id, from, from_name, via } => {
                let busy = self.call.as_ref().is_some_and(|c| !c.is_over());
                if busy {
                    self.send(&ClientMsg::Decline { call_id, reason: DeclineReason::Busy });
                    return;
                }
                let me = self.ui.me.get_untracked().map(|m| m.number).unwrap_or_default();
                let answer_now = self.auto_answer.as_deref() == Some(call_id.as_str());
                let (call, actions) = Call::incoming(call_id.clone(), me, from.clone(), from_name.clone(), via, now());
                self.set_call(call);
                self.run(actions);
                if answer_now {
                    // The user already chose to answer on the notification.
                    self.auto_answer = None;
                    self.call_input(call_id, Input::User(UserAction::Answer));
                } else {
                    notify_incoming(&from, &from_name);
                }
            }
            ServerMsg::Error { code, message, call_id: None } => {
                let resuming = matches!(self.sign_in, Some(ClientMsg::Resume { .. }));
                match conn::refusal(code, resuming) {
                    Some(SignInRefusal::Credentials(text)) => {
                        self.hold_off = true;
                        self.sign_in = None;
                        self.ws = None;
                        if let Some(s) = storage() {
                            let _ = s.remove_item(SESSION_KEY);
                        }
                        self.ui.me.set(None);
                        self.ui.conn.set(ConnState::SignedOut);
                        self.ui.login_error.set(Some(text));
                    }
                    Some(SignInRefusal::Later(text)) => {
                        self.ui.login_error.set(Some(text));
                    }
                    Some(SignInRefusal::Replaced) => {
                        self.hold_off = true;
                        self.ws = None;
                        self.ui.conn.set(ConnState::Replaced);
                    }
                    None => {
                        if code != ErrorCode::TooManyRequests {
                            web_sys::console::warn_1(&format!("signal server: {code}: {message}").into());
                        }
                    }
                }
            }
            other => {
                let id = server_call_id(&other);
                if let Some(id) = id {
                    self.call_input(id, Input::Cloud(other));
                }
            }
        }
    }

    // ---- calls ------------------------------------------------------------------------------

    fn dial(&mut self, to: String) {
        let to = trunkline_call::clean_number(&to);
        if to.is_empty() || !self.signed_in {
            return;
        }
        if self.call.as_ref().is_some_and(|c| !c.is_over()) {
            return;
        }
        let me = self.ui.me.get_untracked().map(|m| m.number).unwrap_or_default();
        let (call, actions) = Call::dial(new_call_id(), me, to, now());
        self.set_call(call);
        self.run(actions);
    }

    fn set_call(&mut self, call: Call) {
        self.close_media();
        self.ui.call.set(Some(call.clone()));
        self.call = Some(call);
    }

    fn call_input(&mut self, id: String, input: Input) {
        let Some(call) = self.call.as_mut() else { return };
        if call.call_id != id {
            return;
        }
        let actions = call.on(input, now());
        let snapshot = call.clone();
        self.ui.call.set(Some(snapshot.clone()));
        self.run(actions);
        let ringing_there = snapshot.phase == Phase::Ringing && snapshot.direction == trunkline_call::Direction::Outgoing;
        if ringing_there && self.ringback.is_none() {
            self.ringback = Ringtone::ringback();
        } else if !ringing_there && let Some(r) = self.ringback.take() {
            r.stop();
        }
        // The cloud's outcome may refine an ended call: keep its history entry current.
        if snapshot.is_over() {
            self.record(&snapshot);
        }
    }

    fn record(&mut self, call: &Call) {
        let Some(me) = self.ui.me.get_untracked() else { return };
        let entry = Entry::from_call(call, 0.0);
        let mut list = self.ui.history.get_untracked();
        if list.contains(&entry) {
            return;
        }
        history::record(&mut list, entry);
        if let Some(s) = storage() {
            let _ = s.set_item(&history::storage_key(&me.number), &history::encode(&list));
        }
        self.ui.history.set(list);
    }

    fn run(&mut self, actions: Vec<Action>) {
        let Some(call_id) = self.call.as_ref().map(|c| c.call_id.clone()) else { return };
        for a in actions {
            match a {
                Action::Cloud(m) => self.send(&m),
                Action::Direct(m) => self.channel_send(&call_id, &m),
                Action::MakeOffer { channel } => {
                    let pc = self.new_media(&call_id);
                    let mic = self.ui.devices.get_untracked().mic;
                    let id = call_id.clone();
                    wasm_bindgen_futures::spawn_local(async move {
                        let r = make_offer(&id, &pc, channel, &mic).await;
                        let input = match r {
                            Ok(sdp) => Input::LocalOffer(sdp),
                            Err(e) => Input::MediaFailed(e),
                        };
                        dispatch(Ev::Call(id, input));
                    });
                }
                Action::MakeAnswer { offer } => {
                    let pc = self.new_media(&call_id);
                    let mic = self.ui.devices.get_untracked().mic;
                    let id = call_id.clone();
                    wasm_bindgen_futures::spawn_local(async move {
                        let r = make_answer(&id, &pc, &offer, &mic).await;
                        let input = match r {
                            Ok(sdp) => Input::LocalAnswer(sdp),
                            Err(e) => Input::MediaFailed(e),
                        };
                        dispatch(Ev::Call(id, input));
                    });
                }
                Action::ApplyAnswer { sdp } => {
                    if let Some(m) = &self.media {
                        let pc = m.pc.clone();
                        let id = call_id.clone();
                        wasm_bindgen_futures::spawn_local(async move {
                            let d = RtcSessionDescriptionInit::new(RtcSdpType::Answer);
                            d.set_sdp(&sdp);
                            match JsFuture::from(pc.set_remote_description(&d)).await {
                                Ok(_) => dispatch(Ev::RemoteSet(id)),
                                Err(e) => {
                                    dispatch(Ev::Call(id, Input::MediaFailed(format!("The answer was refused: {}", js_text(e)))))
                                }
                            }
                        });
                    }
                }
                Action::AddRemoteIce { candidate, sdp_mid, sdp_m_line_index } => {
                    let init = RtcIceCandidateInit::new(&candidate);
                    init.set_sdp_mid(sdp_mid.as_deref());
                    init.set_sdp_m_line_index(sdp_m_line_index.or(if sdp_mid.is_none() { Some(0) } else { None }));
                    match &mut self.media {
                        Some(m) if m.remote_set => add_ice(&m.pc, &init),
                        Some(m) => m.pending_ice.push(init),
                        None => {}
                    }
                }
                Action::SetMute(_) | Action::SetHold(_) => self.apply_mute_hold(),
                Action::SendDtmf(d) => {
                    if let Some(dtmf) = self.media.as_ref().and_then(|m| m.sender.as_ref()).and_then(|s| s.dtmf()) {
                        dtmf.insert_dtmf_with_duration_and_inter_tone_gap(&d.to_string(), 120, 70);
                    }
                    crate::audio::key_click(d);
                }
                Action::StartRingtone => {
                    if self.ringtone.is_none() {
                        self.ringtone = Ringtone::start();
                    }
                }
                Action::StopRingtone => {
                    if let Some(r) = self.ringtone.take() {
                        r.stop();
                    }
                }
                Action::CloseMedia => self.close_media(),
                Action::Finished => {
                    if let Some(r) = self.ringtone.take() {
                        r.stop();
                    }
                    close_notification();
                }
            }
        }
    }

    fn apply_mute_hold(&self) {
        let (Some(m), Some(c)) = (&self.media, &self.call) else { return };
        let send = !(c.muted || c.held);
        if let Some(s) = &m.local {
            for t in s.get_audio_tracks().iter() {
                t.unchecked_into::<MediaStreamTrack>().set_enabled(send);
            }
        }
        m.audio.set_muted(c.held);
    }

    /// Send on the call's DataChannel (C14 over WebRTC), when it is open.
    fn channel_send(&self, call_id: &str, m: &DirectClientMsg) {
        if let Some(dc) = self.media.as_ref().filter(|x| x.call_id == call_id).and_then(|x| x.dc.as_ref())
            && dc.ready_state() == RtcDataChannelState::Open
        {
            let _ = dc.send_with_str(&m.encode());
        }
    }

    fn close_media(&mut self) {
        if let Some(mut m) = self.media.take() {
            m.close();
        }
    }

    /// A peer connection for the current call, with its handlers; returns it for the async part.
    fn new_media(&mut self, call_id: &str) -> RtcPeerConnection {
        self.close_media();
        let cfg = RtcConfiguration::new();
        // The server's STUN/TURN list is already shaped like RTCIceServer[]: pass it as JSON.
        if !self.ice_servers.is_empty()
            && let Ok(list) = js_sys::JSON::parse(&serde_json::to_string(&self.ice_servers).unwrap_or_default())
        {
            let _ = js_sys::Reflect::set(&cfg, &JsValue::from_str("iceServers"), &list);
        }
        let pc = RtcPeerConnection::new_with_configuration(&cfg).expect("RTCPeerConnection");
        let mut handlers = Vec::new();
        let id = call_id.to_string();
        // Trickle ICE: every candidate goes out as it comes (`None` = gathering complete).
        let on_ice = Closure::<dyn FnMut(JsValue)>::new(move |e: JsValue| {
            let e: RtcPeerConnectionIceEvent = e.unchecked_into();
            let c = e.candidate().and_then(|c| {
                let text = c.candidate();
                (!text.is_empty()).then(|| LocalCandidate {
                    candidate: text,
                    sdp_mid: c.sdp_mid(),
                    sdp_m_line_index: c.sdp_m_line_index(),
                })
            });
            dispatch(Ev::Call(id.clone(), Input::LocalIce(c)));
        });
        pc.set_onicecandidate(Some(on_ice.as_ref().unchecked_ref()));
        handlers.push(on_ice);
        let id = call_id.to_string();
        let on_track = Closure::<dyn FnMut(JsValue)>::new(move |e: JsValue| {
            let e: RtcTrackEvent = e.unchecked_into();
            let stream = match e.streams().get(0).dyn_into::<MediaStream>() {
                Ok(s) => s,
                Err(_) => {
                    let s = MediaStream::new().expect("MediaStream");
                    s.add_track(&e.track());
                    s
                }
            };
            dispatch(Ev::RemoteStream(id.clone(), stream));
        });
        pc.set_ontrack(Some(on_track.as_ref().unchecked_ref()));
        handlers.push(on_track);
        let id = call_id.to_string();
        let pc2 = pc.clone();
        // Both state events feed the same rule: up when the connection (ICE + DTLS) is connected
        // and ICE is not `disconnected`; ICE `disconnected` (consent checks unanswered, e.g. the
        // gateway died) is a media path down that may come back within the call core's grace;
        // `failed` ends it at once.
        let on_state = Closure::<dyn FnMut(JsValue)>::new(move |_| {
            let ice = pc2.ice_connection_state();
            let input = match pc2.connection_state() {
                RtcPeerConnectionState::Failed => Some(Input::ConnectionFailed),
                _ if ice == RtcIceConnectionState::Failed => Some(Input::ConnectionFailed),
                RtcPeerConnectionState::Disconnected => Some(Input::MediaDown),
                _ if ice == RtcIceConnectionState::Disconnected => Some(Input::MediaDown),
                RtcPeerConnectionState::Connected => Some(Input::MediaUp),
                _ => None,
            };
            if let Some(input) = input {
                dispatch(Ev::Call(id.clone(), input));
            }
        });
        pc.set_onconnectionstatechange(Some(on_state.as_ref().unchecked_ref()));
        pc.set_oniceconnectionstatechange(Some(on_state.as_ref().unchecked_ref()));
        handlers.push(on_state);
        let audio = HtmlAudioElement::new().expect("audio element");
        audio.set_autoplay(true);
        let _ = audio.set_attribute("data-testid", "remote-audio");
        let _ = audio.set_attribute("hidden", "");
        if let Some(body) = web_sys::window().and_then(|w| w.document()).and_then(|d| d.body()) {
            let _ = body.append_child(&audio);
        }
        set_sink(&audio, &self.ui.devices.get_untracked().speaker);
        debug_hook("pc", &pc);
        self.media = Some(Media {
            call_id: call_id.to_string(),
            pc: pc.clone(),
            local: None,
            sender: None,
            audio,
            remote_set: false,
            pending_ice: Vec::new(),
            dc: None,
            _handlers: handlers,
            _dc_handlers: Vec::new(),
        });
        pc
    }

    // ---- Web Push -----------------------------------------------------------------------------

    /// With the server's VAPID key: subscribe (at once when notifications are allowed; when
    /// `asked`, after asking the user) and send `push_subscribe`.
    fn push_subscribe(&mut self, asked: bool) {
        let Some(key) = self.vapid_key.clone() else {
            self.ui.push.set(PushState::Unavailable);
            return;
        };
        let permission = crate::push::permission();
        match permission.as_str() {
            "granted" => {}
            "denied" => {
                self.ui.push.set(PushState::Denied);
                return;
            }
            "unsupported" => {
                self.ui.push.set(PushState::Unavailable);
                return;
            }
            _ if !asked => {
                self.ui.push.set(PushState::Ask);
                return;
            }
            _ => {}
        }
        let ui = self.ui;
        wasm_bindgen_futures::spawn_local(async move {
            match crate::push::subscribe(&key).await {
                Ok(sub) => dispatch(Ev::PushSubscribed(sub)),
                Err(e) if e == "denied" => ui.push.set(PushState::Denied),
                Err(e) => ui.push.set(PushState::Failed(e)),
            }
        });
    }
}

/// The call id a server message is about.
fn server_call_id(m: &ServerMsg) -> Option<String> {
    match m {
        ServerMsg::Connect { call_id, .. }
        | ServerMsg::Peer { call_id, .. }
        | ServerMsg::Signal { call_id, .. }
        | ServerMsg::DirectSignal { call_id, .. }
        | ServerMsg::CallEvent { call_id, .. }
        | ServerMsg::Outcome { call_id, .. }
        | ServerMsg::Incoming { call_id, .. } => Some(call_id.clone()),
        ServerMsg::Error { call_id, .. } => call_id.clone(),
        _ => None,
    }
}

// ---- WebRTC -----------------------------------------------------------------------------------

async fn open_mic(call_id: &str, pc: &RtcPeerConnection, mic: &str) -> Result<(), String> {
    let md = web_sys::window()
        .ok_or("no window")?
        .navigator()
        .media_devices()
        .map_err(|_| "This browser has no microphone access".to_string())?;
    let c = MediaStreamConstraints::new();
    if mic.is_empty() {
        c.set_audio_bool(true);
    } else {
        let audio = js_sys::Object::new();
        let exact = js_sys::Object::new();
        let _ = js_sys::Reflect::set(&exact, &"ideal".into(), &mic.into());
        let _ = js_sys::Reflect::set(&audio, &"deviceId".into(), &exact);
        c.set_audio(&audio);
    }
    let p = md.get_user_media_with_constraints(&c).map_err(js_text)?;
    let stream: MediaStream = JsFuture::from(p).await.map_err(|e| format!("No microphone: {}", js_text(e)))?.unchecked_into();
    let mut sender = None;
    for t in stream.get_audio_tracks().iter() {
        let t: MediaStreamTrack = t.unchecked_into();
        sender = Some(pc.add_track_0(&t, &stream));
    }
    dispatch(Ev::LocalStream(call_id.to_string(), stream, sender));
    Ok(())
}

fn sdp_of(v: &JsValue) -> Result<String, String> {
    js_sys::Reflect::get(v, &"sdp".into()).ok().and_then(|s| s.as_string()).ok_or_else(|| "no SDP".to_string())
}

/// Offer audio (trickle ICE: candidates follow through `onicecandidate`). With `channel`
/// (C14 over WebRTC), the `trunkline-direct` DataChannel is created after the microphone track
/// and before the offer, so the offer carries it.
async fn make_offer(call_id: &str, pc: &RtcPeerConnection, channel: bool, mic: &str) -> Result<String, String> {
    open_mic(call_id, pc, mic).await?;
    if channel {
        open_channel(call_id, pc);
    }
    let offer = JsFuture::from(pc.create_offer()).await.map_err(js_text)?;
    let d = RtcSessionDescriptionInit::new(RtcSdpType::Offer);
    d.set_sdp(&sdp_of(&offer)?);
    JsFuture::from(pc.set_local_description(&d)).await.map_err(js_text)?;
    pc.local_description().map(|d| d.sdp()).ok_or_else(|| "no local description".into())
}

/// The ordinary (not negotiated) DataChannel to the gateway: opened → [`Input::ChannelOpen`],
/// the gateway's messages → [`Input::Direct`], closed → [`Input::ChannelClosed`].
fn open_channel(call_id: &str, pc: &RtcPeerConnection) {
    let dc = pc.create_data_channel(DIRECT_CHANNEL);
    let id = call_id.to_string();
    let open = Closure::<dyn FnMut(JsValue)>::new(move |_| dispatch(Ev::Call(id.clone(), Input::ChannelOpen)));
    let id = call_id.to_string();
    let msg = Closure::<dyn FnMut(JsValue)>::new(move |e: JsValue| {
        let Some(t) = e.unchecked_into::<MessageEvent>().data().as_string() else { return };
        match DirectServerMsg::decode(&t) {
            Ok(m) => dispatch(Ev::Call(id.clone(), Input::Direct(m))),
            Err(e) => web_sys::console::warn_1(&format!("gateway DataChannel: {e}").into()),
        }
    });
    let id = call_id.to_string();
    let close = Closure::<dyn FnMut(JsValue)>::new(move |_| dispatch(Ev::Call(id.clone(), Input::ChannelClosed)));
    dc.set_onopen(Some(open.as_ref().unchecked_ref()));
    dc.set_onmessage(Some(msg.as_ref().unchecked_ref()));
    dc.set_onclose(Some(close.as_ref().unchecked_ref()));
    debug_hook("dc", &dc);
    dispatch(Ev::Channel(call_id.to_string(), dc, vec![open, msg, close]));
}

/// F4 callee: apply the caller's offer and answer it.
async fn make_answer(call_id: &str, pc: &RtcPeerConnection, offer: &str, mic: &str) -> Result<String, String> {
    open_mic(call_id, pc, mic).await?;
    let d = RtcSessionDescriptionInit::new(RtcSdpType::Offer);
    d.set_sdp(offer);
    JsFuture::from(pc.set_remote_description(&d)).await.map_err(|e| format!("The caller's offer was refused: {}", js_text(e)))?;
    dispatch(Ev::RemoteSet(call_id.to_string()));
    let answer = JsFuture::from(pc.create_answer()).await.map_err(js_text)?;
    let d = RtcSessionDescriptionInit::new(RtcSdpType::Answer);
    d.set_sdp(&sdp_of(&answer)?);
    JsFuture::from(pc.set_local_description(&d)).await.map_err(js_text)?;
    pc.local_description().map(|d| d.sdp()).ok_or_else(|| "no local description".into())
}

fn add_ice(pc: &RtcPeerConnection, c: &RtcIceCandidateInit) {
    let p = pc.add_ice_candidate_with_opt_rtc_ice_candidate_init(Some(c));
    wasm_bindgen_futures::spawn_local(async move {
        let _ = JsFuture::from(p).await;
    });
}

fn stop_stream(s: &MediaStream) {
    for t in s.get_tracks().iter() {
        t.unchecked_into::<MediaStreamTrack>().stop();
    }
}

/// Route the far end's audio to a chosen speaker (`setSinkId`, where the browser has it).
fn set_sink(audio: &HtmlAudioElement, id: &str) {
    if let Ok(f) = js_sys::Reflect::get(audio, &"setSinkId".into())
        && let Some(f) = f.dyn_ref::<js_sys::Function>()
    {
        let _ = f.call1(audio, &id.into());
    }
}

async fn list_devices() -> Result<(Vec<(String, String)>, Vec<(String, String)>), String> {
    let md = web_sys::window().ok_or("no window")?.navigator().media_devices().map_err(js_text)?;
    let list = JsFuture::from(md.enumerate_devices().map_err(js_text)?).await.map_err(js_text)?;
    let (mut mics, mut speakers) = (Vec::new(), Vec::new());
    for d in js_sys::Array::from(&list).iter() {
        let d: web_sys::MediaDeviceInfo = d.unchecked_into();
        let id = d.device_id();
        if id.is_empty() || id == "default" {
            continue;
        }
        let label = if d.label().is_empty() { format!("Device {}", id.chars().take(6).collect::<String>()) } else { d.label() };
        match d.kind() {
            web_sys::MediaDeviceKind::Audioinput => mics.push((id, label)),
            web_sys::MediaDeviceKind::Audiooutput => speakers.push((id, label)),
            _ => {}
        }
    }
    Ok((mics, speakers))
}

/// Test and debugging hook: `window.trunkline.{pc, local, remote}` of the current call.
fn debug_hook(name: &str, v: &JsValue) {
    let Some(w) = web_sys::window() else { return };
    let obj = match js_sys::Reflect::get(&w, &"trunkline".into()) {
        Ok(o) if o.is_object() => o,
        _ => {
            let o: JsValue = js_sys::Object::new().into();
            let _ = js_sys::Reflect::set(&w, &"trunkline".into(), &o);
            o
        }
    };
    let _ = js_sys::Reflect::set(&obj, &name.into(), v);
}

// ---- helpers ----------------------------------------------------------------------------------

pub fn now() -> f64 {
    js_sys::Date::now()
}

async fn sleep(ms: i32) {
    let p = js_sys::Promise::new(&mut |resolve, _| {
        if let Some(w) = web_sys::window() {
            let _ = w.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms);
        }
    });
    let _ = JsFuture::from(p).await;
}

fn js_text(e: JsValue) -> String {
    if let Some(s) = e.as_string() {
        return s;
    }
    js_sys::Reflect::get(&e, &"message".into()).ok().and_then(|m| m.as_string()).unwrap_or_else(|| format!("{e:?}"))
}

/// A fresh call id: a random UUID v4 (the protocol recommends UUIDs).
fn new_call_id() -> String {
    let mut b = [0u8; 16];
    let ok = web_sys::window()
        .and_then(|w| w.crypto().ok())
        .map(|c| c.get_random_values_with_u8_array(&mut b).is_ok())
        .unwrap_or(false);
    if !ok {
        for x in b.iter_mut() {
            *x = (js_sys::Math::random() * 256.0) as u8;
        }
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// `ws(s)://<this host>/ws` — the signal server serves this app.
fn signal_url() -> String {
    let loc = web_sys::window().map(|w| w.location());
    let (proto, host) = loc.map(|l| (l.protocol().unwrap_or_default(), l.host().unwrap_or_default())).unwrap_or_default();
    let scheme = if proto == "https:" { "wss" } else { "ws" };
    format!("{scheme}://{host}/ws")
}

pub fn storage() -> Option<web_sys::Storage> {
    web_sys::window().and_then(|w| w.local_storage().ok().flatten())
}

#[derive(serde::Serialize, Deserialize)]
struct StoredSession {
    token: String,
    number: String,
    #[serde(default)]
    display_name: String,
}

fn load_session() -> Option<StoredSession> {
    serde_json::from_str(&storage()?.get_item(SESSION_KEY).ok()??).ok()
}

fn store_session(s: &StoredSession) {
    if let Some(st) = storage() {
        let _ = st.set_item(SESSION_KEY, &serde_json::to_string(s).unwrap_or_default());
    }
}

fn load_history(number: &str) -> Vec<Entry> {
    storage()
        .and_then(|s| s.get_item(&history::storage_key(number)).ok().flatten())
        .map(|t| history::decode(&t))
        .unwrap_or_default()
}

/// `/?answer=<call_id>` (a click on a call notification): the call id, and the URL made plain.
fn take_answer_param() -> Option<String> {
    let w = web_sys::window()?;
    let search = w.location().search().ok()?;
    let id = search.trim_start_matches('?').split('&').find_map(|kv| kv.strip_prefix("answer="))?.to_string();
    if let Ok(h) = w.history() {
        let _ = h.replace_state_with_url(&JsValue::NULL, "", Some("/"));
    }
    (!id.is_empty()).then_some(id)
}

/// While the page is hidden, show the incoming call as a notification (through the service
/// worker, so a click focuses this window).
fn notify_incoming(from: &str, from_name: &str) {
    let hidden = web_sys::window().and_then(|w| w.document()).map(|d| d.hidden()).unwrap_or(false);
    if hidden {
        crate::push::show_incoming(from, from_name);
    }
}

fn close_notification() {
    crate::push::close_incoming();
}

/// Helper for the UI: the current phase, if a call is shown.
pub fn phase(ui: &Ui) -> Option<Phase> {
    ui.call.with(|c| c.as_ref().map(|c| c.phase))
}
