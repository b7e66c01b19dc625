//! Trunkline media plumbing for the switch gateway's B2BUA.
//!
//! * [`sdp`]: sans-IO parsing and rewriting of the audio part of SDP offers/answers.

pub mod sdp;

pub use sdp::{Codec, Direction, Sdp, SdpError};
