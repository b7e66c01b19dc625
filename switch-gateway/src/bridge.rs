//! WebRTC ⇄ RTP bridges for direct callers (C15).
//!
//! In progress: until the str0m bridge lands, direct callers get a typed `not_implemented`
//! after their key is accepted and their offer arrives.

use crate::b2bua::{BridgeError, BridgeSetup, Bridges};

pub struct DriverBridges;

impl DriverBridges {
    pub fn new() -> Self {
        DriverBridges
    }
}

impl Default for DriverBridges {
    fn default() -> Self {
        Self::new()
    }
}

impl Bridges for DriverBridges {
    fn accept(&mut self, _offer: &str, _phone_offer: Option<&str>) -> Result<BridgeSetup, BridgeError> {
        Err(BridgeError::Unavailable)
    }
}
