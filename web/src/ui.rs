//! The screens (Leptos CSR). They read [`Ui`] signals and send what the user does to the
//! driver with [`dispatch`]. Every control is a real button or input (keyboard and screen
//! readers work), and the `data-testid`s are stable names the browser tests use.

use leptos::ev::SubmitEvent;
use leptos::html;
use leptos::prelude::*;

use crate::conn::ConnState;
use crate::phone::{self, DeviceChoice, Ev, PushState, Ui, dispatch};
use trunkline_call::{DTMF_KEYS, Direction, Phase, UserAction, clean_number, dtmf_testid, format_duration, is_dtmf};

/// Which screen shows (changes rarely: the screens below update field by field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Screen {
    SignIn,
    Dial,
    Incoming,
    Call,
}

#[component]
pub fn App() -> impl IntoView {
    let ui = Ui::new();
    provide_context(ui);
    phone::start(ui);
    crate::push::register_service_worker();

    // DTMF from the keyboard while connected (unless typing into a field).
    let keys = window_event_listener(leptos::ev::keydown, move |e| {
        let in_field = e
            .target()
            .and_then(|t| wasm_bindgen::JsCast::dyn_into::<web_sys::Element>(t).ok())
            .map(|el| matches!(el.tag_name().as_str(), "INPUT" | "SELECT" | "TEXTAREA"))
            .unwrap_or(false);
        let key = e.key();
        let mut chars = key.chars();
        if let (Some(c), None) = (chars.next(), chars.next())
            && is_dtmf(c)
            && !in_field
            && phone::phase(&ui) == Some(Phase::Connected)
        {
            dispatch(Ev::User(UserAction::Dtmf(c)));
        }
        crate::audio::unlock();
    });
    let clicks = window_event_listener(leptos::ev::pointerdown, |_| crate::audio::unlock());
    std::mem::forget(keys);
    std::mem::forget(clicks);

    let screen = Memo::new(move |_| {
        if ui.me.with(|m| m.is_none()) {
            return Screen::SignIn;
        }
        match phone::phase(&ui) {
            Some(Phase::Incoming) => Screen::Incoming,
            Some(Phase::Ended) | None => Screen::Dial,
            Some(_) => Screen::Call,
        }
    });

    view! {
        <div class="app">
            <Header ui=ui />
            <main>
                {move || match screen.get() {
                    Screen::SignIn => view! { <SignIn ui=ui /> }.into_any(),
                    Screen::Dial => view! { <LastCall ui=ui /> <Dialer ui=ui /> <History ui=ui /> <Settings ui=ui /> }.into_any(),
                    Screen::Incoming => view! { <Incoming ui=ui /> }.into_any(),
                    Screen::Call => view! { <CallScreen ui=ui /> }.into_any(),
                }}
            </main>
        </div>
    }
}

#[component]
fn Header(ui: Ui) -> impl IntoView {
    let retry = move |_| dispatch(Ev::Reconnect);
    view! {
        <header class="bar">
            <span class="brand">"Trunkline"</span>
            <span
                class="conn"
                data-testid="conn-state"
                data-state=move || ui.conn.with(|c| c.as_str())
                role="status"
                aria-live="polite"
            >
                {move || ui.conn.with(|c| c.label())}
            </span>
            <Show when=move || matches!(ui.conn.get(), ConnState::Replaced | ConnState::Reconnecting { .. })>
                <button class="link" type="button" on:click=retry>"Reconnect"</button>
            </Show>
            <Show when=move || ui.me.with(|m| m.is_some())>
                <span class="me">{move || ui.me.with(|m| m.as_ref().map(|m| m.number.clone()).unwrap_or_default())}</span>
                <button class="link" type="button" on:click=move |_| dispatch(Ev::SignOut)>"Sign out"</button>
            </Show>
        </header>
    }
}

#[component]
fn SignIn(ui: Ui) -> impl IntoView {
    let number = NodeRef::<html::Input>::new();
    let password = NodeRef::<html::Input>::new();
    let submit = move |ev: SubmitEvent| {
        ev.prevent_default();
        crate::audio::unlock();
        let (Some(n), Some(p)) = (number.get(), password.get()) else { return };
        let num = n.value().trim().to_string();
        let pw = p.value();
        if num.is_empty() || pw.is_empty() {
            ui.login_error.set(Some("Enter your number and password.".into()));
            return;
        }
        dispatch(Ev::Login { number: num, password: pw });
    };
    let busy = move || ui.conn.get() == ConnState::Connecting;
    view! {
        <form class="card login" on:submit=submit>
            <h1>"Sign in"</h1>
            <label for="login-number">"Number"</label>
            <input id="login-number" data-testid="login-number" node_ref=number type="text" inputmode="tel"
                autocomplete="username" autocapitalize="off" spellcheck="false" required />
            <label for="login-password">"Password"</label>
            <input id="login-password" data-testid="login-password" node_ref=password type="password"
                autocomplete="current-password" required />
            <p class="error" role="alert">{move || ui.login_error.get()}</p>
            <button class="primary" data-testid="login-submit" type="submit" disabled=busy>
                {move || if busy() { "Signing in…" } else { "Sign in" }}
            </button>
        </form>
    }
}

/// The ended call: how it went, until the next call or "Dismiss".
#[component]
fn LastCall(ui: Ui) -> impl IntoView {
    let ended = move || ui.call.with(|c| c.as_ref().is_some_and(|c| c.is_over()));
    view! {
        <Show when=ended>
            <section class="card last" aria-live="polite">
                <div class="who">{move || ui.call.with(|c| c.as_ref().map(remote_label).unwrap_or_default())}</div>
                <div class="state" data-testid="call-state" data-state="ended">"Call ended"</div>
                <div class="outcome" data-testid="call-outcome">
                    {move || ui.call.with(|c| c.as_ref().and_then(|c| c.outcome_line()).unwrap_or_default())}
                </div>
                <button class="link" type="button" on:click=move |_| dispatch(Ev::Dismiss)>"Dismiss"</button>
            </section>
        </Show>
    }
}

fn remote_label(c: &trunkline_call::Call) -> String {
    let arrow = if c.direction == Direction::Outgoing { "To" } else { "From" };
    if c.remote_name.is_empty() || c.remote_name == c.remote {
        format!("{arrow} {}", c.remote)
    } else {
        format!("{arrow} {} ({})", c.remote_name, c.remote)
    }
}

#[component]
fn Dialer(ui: Ui) -> impl IntoView {
    let number = RwSignal::new(String::new());
    let input = NodeRef::<html::Input>::new();
    let online = move || ui.conn.get() == ConnState::Connected;
    let call = move |ev: SubmitEvent| {
        ev.prevent_default();
        crate::audio::unlock();
        let n = clean_number(&number.get_untracked());
        if !n.is_empty() {
            dispatch(Ev::Dial(n));
        }
    };
    let press = move |d: char| {
        number.update(|n| n.push(d));
        if let Some(i) = input.get() {
            let _ = i.focus();
        }
    };
    let backspace = move |_| {
        number.update(|n| {
            n.pop();
        })
    };
    view! {
        <form class="card dialer" on:submit=call>
            <label for="dial-input" class="sr-only">"Number to call"</label>
            <div class="number-row">
                <input id="dial-input" data-testid="dial-input" node_ref=input type="tel" inputmode="tel"
                    autocomplete="off" placeholder="Number" aria-label="Number to call"
                    prop:value=move || number.get()
                    on:input=move |ev| number.set(event_target_value(&ev)) />
                <button type="button" class="icon" aria-label="Delete last digit" on:click=backspace>"⌫"</button>
            </div>
            <div class="keypad" role="group" aria-label="Dialpad">
                {DTMF_KEYS.iter().map(|(d, _, letters)| {
                    let d = *d;
                    view! {
                        <button type="button" class="key" aria-label=d.to_string() on:click=move |_| press(d)>
                            <span class="digit">{d.to_string()}</span>
                            <span class="letters">{*letters}</span>
                        </button>
                    }
                }).collect_view()}
            </div>
            <button class="primary call" data-testid="dial-call" type="submit"
                disabled=move || !online() || number.with(|n| clean_number(n).is_empty())>
                "Call"
            </button>
        </form>
    }
}

#[component]
fn Incoming(ui: Ui) -> impl IntoView {
    let answer = NodeRef::<html::Button>::new();
    Effect::new(move |_| {
        if let Some(b) = answer.get() {
            let _ = b.focus();
        }
    });
    let who = move || ui.call.with(|c| c.as_ref().map(|c| (c.remote.clone(), c.remote_name.clone())).unwrap_or_default());
    view! {
        <section class="card incoming" role="alertdialog" aria-labelledby="incoming-title">
            <div id="incoming-title" class="state" data-testid="call-state" data-state="incoming">"Incoming call"</div>
            <div class="caller-name" data-testid="incoming-name">
                {move || { let (n, name) = who(); if name.is_empty() { n } else { name } }}
            </div>
            <div class="caller-number" data-testid="incoming-from">{move || who().0}</div>
            <div class="actions">
                <button class="decline" data-testid="incoming-decline" type="button"
                    on:click=move |_| dispatch(Ev::User(UserAction::Decline))>"Decline"</button>
                <button class="answer" data-testid="incoming-answer" type="button" node_ref=answer
                    on:click=move |_| { crate::audio::unlock(); dispatch(Ev::User(UserAction::Answer)) }>"Answer"</button>
            </div>
        </section>
    }
}

#[component]
fn CallScreen(ui: Ui) -> impl IntoView {
    let phase = move || ui.call.with(|c| c.as_ref().map(|c| c.phase).unwrap_or(Phase::Ended));
    let direction = move || ui.call.with(|c| c.as_ref().map(|c| c.direction).unwrap_or(Direction::Outgoing));
    let muted = move || ui.call.with(|c| c.as_ref().is_some_and(|c| c.muted));
    let held = move || ui.call.with(|c| c.as_ref().is_some_and(|c| c.held));
    let connected = move || phase() == Phase::Connected;
    let timer = move || {
        let now = ui.now.get();
        ui.call.with(|c| c.as_ref().and_then(|c| c.elapsed(now)).map(format_duration).unwrap_or_default())
    };
    view! {
        <section class="card call" aria-label="Call">
            <div class="who">{move || ui.call.with(|c| c.as_ref().map(remote_label).unwrap_or_default())}</div>
            <div class="state" data-testid="call-state" data-state=move || phase().as_str() role="status" aria-live="polite">
                {move || if held() { "On hold".to_string() } else { phase().label(direction()).to_string() }}
            </div>
            <div class="timer" data-testid="call-timer" aria-label="Call time">{timer}</div>
            <div class="controls">
                <button type="button" data-testid="call-mute" aria-pressed=move || muted().to_string()
                    class:on=muted on:click=move |_| dispatch(Ev::User(UserAction::ToggleMute))>
                    {move || if muted() { "Unmute" } else { "Mute" }}
                </button>
                <button type="button" data-testid="call-hold" aria-pressed=move || held().to_string()
                    class:on=held disabled=move || !connected()
                    on:click=move |_| dispatch(Ev::User(UserAction::ToggleHold))>
                    {move || if held() { "Resume" } else { "Hold" }}
                </button>
            </div>
            <div class="keypad dtmf" role="group" aria-label="Keypad (tones)">
                {DTMF_KEYS.iter().map(|(d, _, letters)| {
                    let d = *d;
                    view! {
                        <button type="button" class="key" data-testid=dtmf_testid(d).unwrap_or_default() aria-label=format!("Tone {d}")
                            disabled=move || !connected() || held()
                            on:click=move |_| dispatch(Ev::User(UserAction::Dtmf(d)))>
                            <span class="digit">{d.to_string()}</span>
                            <span class="letters">{*letters}</span>
                        </button>
                    }
                }).collect_view()}
            </div>
            <button class="hangup" data-testid="call-hangup" type="button"
                on:click=move |_| dispatch(Ev::User(UserAction::Hangup))>
                "Hang up"
            </button>
        </section>
    }
}

#[component]
fn History(ui: Ui) -> impl IntoView {
    let online = move || ui.conn.get() == ConnState::Connected;
    view! {
        <section class="card history" aria-labelledby="history-title">
            <h2 id="history-title">"Recent calls"</h2>
            <ul data-testid="history-list">
                <For
                    each=move || ui.history.get()
                    key=|e| (e.call_id.clone(), e.result.clone())
                    children=move |e| {
                        let number = e.number.clone();
                        let when = time_text(e.at_ms);
                        let label = if e.name.is_empty() || e.name == e.number { e.number.clone() } else { format!("{} ({})", e.name, e.number) };
                        view! {
                            <li data-testid="history-item">
                                <span class="dir" aria-label=if e.outgoing { "Outgoing" } else { "Incoming" }>{e.arrow()}</span>
                                <span class="num">{label}</span>
                                <span class="res">{e.result.clone()}</span>
                                <span class="when">{when}</span>
                                <button type="button" class="link" disabled=move || !online()
                                    aria-label=format!("Call {}", number)
                                    on:click={let n = number.clone(); move |_| dispatch(Ev::Dial(n.clone()))}>"Call"</button>
                            </li>
                        }
                    }
                />
            </ul>
            <Show when=move || ui.history.with(|h| h.is_empty())>
                <p class="muted">"No calls yet."</p>
            </Show>
        </section>
    }
}

fn time_text(ms: f64) -> String {
    let d = js_sys::Date::new(&wasm_bindgen::JsValue::from_f64(ms));
    format!("{:02}.{:02}. {:02}:{:02}", d.get_date(), d.get_month() + 1, d.get_hours(), d.get_minutes())
}

#[component]
fn Settings(ui: Ui) -> impl IntoView {
    let set_mic = move |ev| {
        let mut c: DeviceChoice = ui.devices.get_untracked();
        c.mic = event_target_value(&ev);
        dispatch(Ev::SetDevices(c));
    };
    let set_speaker = move |ev| {
        let mut c: DeviceChoice = ui.devices.get_untracked();
        c.speaker = event_target_value(&ev);
        dispatch(Ev::SetDevices(c));
    };
    view! {
        <details class="card settings">
            <summary>"Settings"</summary>
            <label for="mic">"Microphone"</label>
            <select id="mic" data-testid="settings-mic" on:change=set_mic>
                <option value="" selected=move || ui.devices.with(|d| d.mic.is_empty())>"Default"</option>
                {move || ui.mics.get().into_iter().map(|(id, label)| {
                    let sel = ui.devices.with_untracked(|d| d.mic == id);
                    view! { <option value=id selected=sel>{label}</option> }
                }).collect_view()}
            </select>
            <label for="speaker">"Speaker"</label>
            <select id="speaker" data-testid="settings-speaker" on:change=set_speaker>
                <option value="" selected=move || ui.devices.with(|d| d.speaker.is_empty())>"Default"</option>
                {move || ui.speakers.get().into_iter().map(|(id, label)| {
                    let sel = ui.devices.with_untracked(|d| d.speaker == id);
                    view! { <option value=id selected=sel>{label}</option> }
                }).collect_view()}
            </select>
            <p class="push" data-testid="push-state">
                {move || match ui.push.get() {
                    PushState::Unavailable => view! { <span>"Call notifications: not offered by this server."</span> }.into_any(),
                    PushState::Ask => view! {
                        <button type="button" on:click=move |_| dispatch(Ev::PushSubscribe)>"Enable call notifications"</button>
                    }.into_any(),
                    PushState::Subscribed => view! { <span>"Call notifications are on."</span> }.into_any(),
                    PushState::Denied => view! { <span>"Call notifications are blocked in this browser."</span> }.into_any(),
                    PushState::Failed(e) => view! { <span>{format!("Call notifications failed: {e}")}</span> }.into_any(),
                }}
            </p>
        </details>
    }
}
