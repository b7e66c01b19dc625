//! [`AudioSdp`]: the SDP builder for our own RTP legs.

use super::*;

/// The SDP of one of our RTP legs: a session with one `m=audio` line over `RTP/AVP` carrying
/// G.711 laws (static payload types 0 and 8, in preference order) and, optionally, RFC 4733
/// `telephone-event/8000` (events 0–16). What a desk phone is offered or answered with.
///
/// ```
/// # use trunkline_media::sdp::{AudioSdp, Sdp};
/// # use trunkline_media::g711::Law;
/// let sdp = AudioSdp::new("192.0.2.1".parse().unwrap(), 20000).origin("trunkline", 7).law(Law::A).telephone_event(101).build().unwrap();
/// let audio = Sdp::parse(&sdp).unwrap().audio.unwrap();
/// assert_eq!((audio.port, audio.telephone_event_pt()), (20000, Some(101)));
/// assert_eq!(audio.payload_types, vec![8, 101]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioSdp {
    username: &'static str,
    session_id: u64,
    session_version: u64,
    session_name: &'static str,
    addr: IpAddr,
    port: u16,
    laws: Vec<Law>,
    telephone_event: Option<u8>,
    ptime: Option<u32>,
    direction: Direction,
}

impl AudioSdp {
    /// Audio received at `addr:port`; origin `trunkline 0 1`, session name `Trunkline`, no codec
    /// yet, `a=ptime:20`, `a=sendrecv`.
    pub fn new(addr: IpAddr, port: u16) -> Self {
        AudioSdp {
            username: "trunkline",
            session_id: 0,
            session_version: 1,
            session_name: "Trunkline",
            addr,
            port,
            laws: Vec::new(),
            telephone_event: None,
            ptime: Some(20),
            direction: Direction::SendRecv,
        }
    }

    /// The `o=` user name and session id (static strings: they never come from the network).
    pub fn origin(mut self, username: &'static str, session_id: u64) -> Self {
        self.username = username;
        self.session_id = session_id;
        self
    }

    /// The `o=` session version (RFC 3264 §8: higher in each new offer of a session).
    pub fn version(mut self, session_version: u64) -> Self {
        self.session_version = session_version;
        self
    }

    /// The `s=` line.
    pub fn session_name(mut self, name: &'static str) -> Self {
        self.session_name = name;
        self
    }

    /// Add a G.711 law after those already added (a repeat is ignored).
    pub fn law(mut self, law: Law) -> Self {
        if !self.laws.contains(&law) {
            self.laws.push(law);
        }
        self
    }

    /// Offer `telephone-event/8000` on payload type `pt` (a dynamic one, 96–127); `None`: none.
    pub fn telephone_event(mut self, pt: impl Into<Option<u8>>) -> Self {
        self.telephone_event = pt.into();
        self
    }

    /// `a=ptime`; `None` leaves it out.
    pub fn ptime(mut self, ms: Option<u32>) -> Self {
        self.ptime = ms;
        self
    }

    pub fn direction(mut self, direction: Direction) -> Self {
        self.direction = direction;
        self
    }

    /// The SDP text, CRLF line ends. [`SdpError::NoCommonCodec`] without any law;
    /// [`SdpError::EventPayloadType`] when the telephone-event payload type is not dynamic (it
    /// could collide with a law, or not fit the RTP header).
    pub fn build(&self) -> Result<String, SdpError> {
        use std::fmt::Write;
        if self.laws.is_empty() {
            return Err(SdpError::NoCommonCodec);
        }
        if let Some(pt) = self.telephone_event.filter(|pt| !(96..=127).contains(pt)) {
            return Err(SdpError::EventPayloadType(pt));
        }
        let (ip, kind) = (self.addr, AddrType::of(self.addr).as_str());
        let mut s = String::with_capacity(256);
        // Writing to a String cannot fail.
        let _ = write!(
            s,
            "v=0\r\no={} {} {} IN {kind} {ip}\r\ns={}\r\nc=IN {kind} {ip}\r\nt=0 0\r\nm=audio {} RTP/AVP",
            self.username, self.session_id, self.session_version, self.session_name, self.port
        );
        for pt in self.laws.iter().map(|l| l.payload_type()).chain(self.telephone_event) {
            let _ = write!(s, " {pt}");
        }
        s.push_str("\r\n");
        for law in &self.laws {
            let _ = write!(s, "a=rtpmap:{} {}/8000\r\n", law.payload_type(), law.name());
        }
        if let Some(te) = self.telephone_event {
            let _ = write!(s, "a=rtpmap:{te} telephone-event/8000\r\na=fmtp:{te} 0-16\r\n");
        }
        if let Some(ms) = self.ptime {
            let _ = write!(s, "a=ptime:{ms}\r\n");
        }
        let _ = write!(s, "a={}\r\n", self.direction);
        Ok(s)
    }
}
