//! Trunkline media, in one home for the gateway, the headless softphone and the bench.
//!
//! * [`g711`]: μ-law / A-law companding and transcoding.
//! * [`sdp`]: sans-IO parsing and rewriting of the audio part of SDP offers/answers, and
//!   [`sdp::AudioSdp`], the builder for our own RTP legs' SDP.
//! * [`ports`]: a thread-safe pool of RTP/RTCP UDP socket pairs on even ports.
//! * [`srflx`]: sans-IO STUN Binding probes for server-reflexive addresses and the NAT's kind.
//! * [`turn`]: sans-IO TURN allocations (UDP, TCP, TLS) for relayed ICE candidates.
//! * [`rtp`]: sans-IO RTP/RTCP parsing (bounds-checked for untrusted input) and building, RFC
//!   4733 events.
//! * `webrtc` (feature `webrtc`): the str0m configuration every WebRTC audio leg uses.
//! * [`latch`]: sans-IO latching policy: which source a leg's RTP/RTCP is accepted from.
//! * [`bridge`]: the per-packet core of a WebRTC ⇄ RTP bridge (law conversion, DTMF both ways).
//! * [`relay`]: a symmetric (latching) RTP/RTCP relay between two call legs, one tokio task each.

pub mod bridge;
pub mod g711;
pub mod latch;
pub mod ports;
pub mod relay;
pub mod rtp;
pub mod sdp;
pub mod srflx;
pub mod turn;
#[cfg(feature = "webrtc")]
pub mod webrtc;

pub use ports::{AllocError, LegSockets, PortAllocator};
pub use relay::{Leg, Relay, RelayConfig, RelayHandle, RelayStats};
pub use sdp::{Codec, Direction, Sdp, SdpError};
