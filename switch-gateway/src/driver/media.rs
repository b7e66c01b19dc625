//! The core's media ports ([`MediaPorts`]): relay pairs and echo endpoints set up from port
//! pairs bound beforehand ([`ReadyPairs`], topped up by `core_loop` between the core's calls).
//! Everything here runs in the core's call stack: no bind, no spawn, no clock, no OS randomness
//! (`tests/core_has_no_clock_or_io.rs` checks this file). The driver starts what is set up here
//! when the core says so (`Output::MediaStart`, `Output::EchoStart`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use trunkline_media::g711::Law;
use trunkline_media::ports::{LegSockets, ReadyPairs};
use trunkline_media::sdp::{AudioSdp, Sdp};

use crate::b2bua::{EchoSetup, MediaPair, MediaPorts};

/// Relay pairs set up and not started yet, by id (taken at `Output::MediaStart`).
pub(crate) type PendingRelays = Arc<Mutex<HashMap<u64, (LegSockets, LegSockets)>>>;
/// Echo endpoints set up and not started yet, by id (taken at `Output::EchoStart`).
pub(crate) type PendingEchoes = Arc<Mutex<HashMap<u64, EchoPlan>>>;

/// An echo endpoint's socket, the peer's signalled RTP address and the payload type to echo.
pub(crate) struct EchoPlan {
    pub(crate) sock: LegSockets,
    pub(crate) remote: Option<SocketAddr>,
    pub(crate) pt: u8,
}

pub(crate) struct DriverMedia {
    pub(crate) ready: ReadyPairs,
    pub(crate) adv_ip: IpAddr,
    pub(crate) relays: PendingRelays,
    pub(crate) echoes: PendingEchoes,
    pub(crate) next: u64,
}

impl DriverMedia {
    fn take(&self, what: &str) -> Option<LegSockets> {
        let pair = self.ready.take();
        if pair.is_none() {
            tracing::error!(range = ?self.ready.allocator(), "no RTP ports for {what}");
        }
        pair
    }
}

impl MediaPorts for DriverMedia {
    fn allocate(&mut self) -> Option<MediaPair> {
        let a = self.take("a relay")?;
        // Without `b`, `a` drops here and its ports go back.
        let b = self.take("a relay")?;
        self.next += 1;
        let pair = MediaPair {
            id: self.next,
            a_local: SocketAddr::new(self.adv_ip, a.rtp_port()),
            b_local: SocketAddr::new(self.adv_ip, b.rtp_port()),
        };
        self.relays.lock().unwrap().insert(self.next, (a, b));
        Some(pair)
    }

    fn start_echo(&mut self, offer: &str) -> Option<EchoSetup> {
        let sdp = Sdp::parse(offer).ok()?;
        let audio = sdp.audio.as_ref()?;
        let pt = audio.payload_types.iter().copied().find(|p| *p == 0 || *p == 8)?;
        let law = Law::from_payload_type(pt)?;
        let remote = sdp.audio_rtp_addr();
        let sock = self.take("the echo test")?;
        self.next += 1;
        let port = sock.rtp_port();
        let answer = AudioSdp::new(self.adv_ip, port)
            .origin("trunkline-echo", self.next)
            .session_name("Echo test")
            .law(law)
            .build()
            .ok()?;
        self.echoes.lock().unwrap().insert(self.next, EchoPlan { sock, remote, pt });
        Some(EchoSetup { id: self.next, local: SocketAddr::new(self.adv_ip, port), answer })
    }
}
