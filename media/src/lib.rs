//! Trunkline media plumbing for the switch gateway's B2BUA.
//!
//! * [`sdp`]: sans-IO parsing and rewriting of the audio part of SDP offers/answers.
//! * [`ports`]: a thread-safe pool of RTP/RTCP UDP socket pairs on even ports.
//! * [`srflx`]: sans-IO STUN Binding probes for server-reflexive addresses and the NAT's kind.
//! * [`turn`]: sans-IO TURN allocations (UDP, TCP, TLS) for relayed ICE candidates.
//! * [`rtp`]: sans-IO RTP/RTCP header parsing, bounds-checked for untrusted input.
//! * [`latch`]: sans-IO latching policy: which source a leg's RTP/RTCP is accepted from.
//! * [`relay`]: a symmetric (latching) RTP/RTCP relay between two call legs, one tokio task each.

pub mod latch;
pub mod ports;
pub mod relay;
pub mod rtp;
pub mod sdp;
pub mod srflx;
pub mod turn;

pub use ports::{AllocError, LegSockets, PortAllocator};
pub use relay::{Leg, Relay, RelayConfig, RelayHandle, RelayStats};
pub use sdp::{Codec, Direction, Sdp, SdpError};
