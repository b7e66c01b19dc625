//! Trunkline headless softphone: what the browser softphone speaks, as a library and a CLI
//! (`trunkline-client`) for tests, demos and load runs.
//!
//! - [`g711`]: μ-law / A-law (re-exported from `trunkline_media::g711`, their one home).
//! - [`wav`]: WAV in/out, tones, dominant frequency (audio is checked by frequency).
//! - [`webrtc`]: a WebRTC audio peer on str0m (full ICE, DTLS-SRTP, G.711, RFC 4733 DTMF).
//! - [`signal`]: the cloud connection (`login`/`resume`, `dial`, `signal`, …).
//! - [`softphone`]: [`Softphone`] ties them together around the browser's own call core
//!   (`trunkline-call`): [`Softphone::call`], [`Softphone::answer_incoming`],
//!   [`CallHandle::hangup`], outcomes.
//!
//! Step letters (A, B1–B6, C1–C3, C11–C15, F4) are those of patent CN110012057B.

pub mod signal;
pub mod softphone;
pub mod wav;
pub mod webrtc;
pub mod ws;

pub use trunkline_media::g711;

pub use softphone::{CallHandle, CallStatus, CallUpdate, IncomingCall, Softphone, SoftphoneConfig, SoftphoneError, Timeouts};
pub use webrtc::{AudioSource, MediaSession, MediaStats, PeerOptions};
pub use ws::TlsOptions;
