//! Trunkline browser softphone (Leptos CSR, built by Trunk). The call logic lives in plain
//! Rust modules with native unit tests (`call`, `conn`, `history`); `phone` drives the browser
//! (WebSocket, WebRTC, WebAudio) and `ui` draws the screens.

mod audio;
mod conn;
mod history;
mod phone;
mod push;
mod ui;

fn main() {
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(ui::App);
}
