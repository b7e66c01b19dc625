//! baresip 1.0 as a real desk phone: the workspace's `trunkline_test_support::baresip`, plus
//! what needs the gateway's config. Included with
//! `#[path = "common/baresip.rs"] mod baresip;`.
#![allow(dead_code, unused_imports)]

use std::ops::RangeInclusive;

pub use trunkline_test_support::baresip::*;

/// The RTP port range a gateway relays / bridges on (its `rtp_ports` setting).
pub fn rtp_ports_of(config: &switch_gateway::Config) -> RangeInclusive<u16> {
    let (a, b) = config.rtp_ports.split_once('-').expect("rtp_ports is LOW-HIGH");
    a.parse::<u16>().unwrap()..=b.parse::<u16>().unwrap()
}
