//! Trunkline media plumbing for the switch gateway's B2BUA.
//!
//! * [`sdp`]: sans-IO parsing and rewriting of the audio part of SDP offers/answers.
//! * [`ports`]: a thread-safe pool of RTP/RTCP UDP socket pairs on even ports.

pub mod ports;
pub mod sdp;

pub use ports::{AllocError, LegSockets, PortAllocator};
pub use sdp::{Codec, Direction, Sdp, SdpError};
