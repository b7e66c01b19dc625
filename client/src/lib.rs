//! Trunkline headless softphone (see the crate README).

pub mod g711;
pub mod wav;
pub mod webrtc;
