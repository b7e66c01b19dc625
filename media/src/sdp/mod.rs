//! Sans-IO SDP handling for the audio part of an offer/answer (RFC 4566, RFC 3264).
//!
//! [`Sdp::parse`] reads what a B2BUA relaying G.711 needs: the session- and media-level `c=`
//! address, the first usable `m=audio` line (port, payload types), `a=rtpmap`, `a=fmtp`, the
//! direction attributes, `a=ptime`/`a=maxptime`, `a=rtcp` (RFC 3605) and `a=rtcp-mux`. Every
//! other `m=` line is kept as a [`MediaLine`] so that [`rewrite`] can disable it (port 0,
//! RFC 3264 §6/§8) since the relay does not carry it.
//!
//! [`AudioSdp`] builds the SDP our own RTP legs offer or answer (one `m=audio` line, G.711 and
//! optionally `telephone-event`), so no SDP is written by hand with `format!`.
//!
//! Nothing here panics on input: malformed text gives an [`SdpError`] that names the line.
//!
//! Which `m=audio` is "the audio": the first `m=audio` line with an RTP profile and a non-zero
//! port, or, when every one has port 0, the first `m=audio` with an RTP profile.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use crate::g711::Law;

mod build;
mod rewrite;

pub use build::AudioSdp;
pub use rewrite::{bump_version, rewrite};

/// Why an SDP could not be parsed or rewritten. `line` numbers are 1-based.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("empty SDP")]
    Empty,
    #[error("SDP does not start with v=0")]
    MissingVersion,
    #[error("line {line}: not a <type>=<value> line")]
    MalformedLine { line: usize },
    #[error("line {line}: malformed o= line")]
    BadOrigin { line: usize },
    #[error("line {line}: malformed or unsupported c= line")]
    BadConnection { line: usize },
    #[error("line {line}: malformed m= line")]
    BadMedia { line: usize },
    #[error("line {line}: malformed a={name} attribute")]
    BadAttribute { line: usize, name: &'static str },
    #[error("no m=audio line with an RTP profile")]
    NoAudio,
    #[error("no o= line")]
    NoOrigin,
    #[error("o= session version cannot be incremented")]
    VersionOverflow,
    #[error("none of the offered audio payload types is kept")]
    NoCommonCodec,
    #[error("relay port {0} is not usable (must be 1..=65534 so that RTCP fits on port+1)")]
    InvalidPort(u16),
    #[error("telephone-event payload type {0} is not a dynamic one (96–127)")]
    EventPayloadType(u8),
}

/// Media direction attribute (RFC 3264 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    fn from_attr(name: &str) -> Option<Self> {
        match name {
            "sendrecv" => Some(Self::SendRecv),
            "sendonly" => Some(Self::SendOnly),
            "recvonly" => Some(Self::RecvOnly),
            "inactive" => Some(Self::Inactive),
            _ => None,
        }
    }

    /// The attribute name, e.g. `"sendonly"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SendRecv => "sendrecv",
            Self::SendOnly => "sendonly",
            Self::RecvOnly => "recvonly",
            Self::Inactive => "inactive",
        }
    }

    /// The direction an answer mirrors for this offer (sendonly ⇄ recvonly).
    pub fn reversed(self) -> Self {
        match self {
            Self::SendOnly => Self::RecvOnly,
            Self::RecvOnly => Self::SendOnly,
            other => other,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `o=` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub username: String,
    pub session_id: String,
    pub session_version: u64,
    pub net_type: String,
    pub addr_type: String,
    pub address: String,
}

/// Address type of a `c=` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddrType {
    Ip4,
    Ip6,
}

impl AddrType {
    /// `IP4` for an IPv4 address, `IP6` for an IPv6 one.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Self::Ip4,
            IpAddr::V6(_) => Self::Ip6,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ip4 => "IP4",
            Self::Ip6 => "IP6",
        }
    }
}

/// A `c=` line (`IN` network type only). `ip` is `None` when the address is a host name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    pub addr_type: AddrType,
    /// The address as written, without any `/ttl` or `/count` suffix.
    pub address: String,
    pub ip: Option<IpAddr>,
}

/// `a=rtpmap:<pt> <encoding>/<clock rate>[/<channels>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpMap {
    pub payload_type: u8,
    pub encoding: String,
    pub clock_rate: u32,
    pub channels: Option<u16>,
}

/// `a=fmtp:<pt> <parameters>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fmtp {
    pub payload_type: u8,
    pub params: String,
}

/// `a=rtcp:<port> [IN <addrtype> <address>]` (RFC 3605).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtcpAttr {
    pub port: u16,
    pub connection: Option<Connection>,
}

/// One `m=` line, in SDP order (every media kind, the audio one included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaLine {
    pub kind: String,
    pub port: u16,
    pub proto: String,
    pub formats: Vec<String>,
}

/// Codec family of an audio payload type, as far as this product cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// G.711 µ-law: static PT 0, or a dynamic PT with `PCMU/8000`.
    Pcmu,
    /// G.711 A-law: static PT 8, or a dynamic PT with `PCMA/8000`.
    Pcma,
    /// RFC 4733 DTMF events: a PT with `telephone-event/8000`.
    TelephoneEvent,
    /// Anything else (Opus, G.722, G.729, telephone-event at other rates, CN, …).
    Other,
}

impl Codec {
    /// Classify payload type `pt` given its `a=rtpmap` (if any).
    pub fn classify(pt: u8, rtpmap: Option<&RtpMap>) -> Codec {
        match pt {
            0 => return Codec::Pcmu,
            8 => return Codec::Pcma,
            _ => {}
        }
        let Some(map) = rtpmap else {
            return Codec::Other;
        };
        let mono = matches!(map.channels, None | Some(1));
        let enc = map.encoding.as_str();
        if map.clock_rate != 8000 || !mono {
            return Codec::Other;
        }
        if enc.eq_ignore_ascii_case("PCMU") {
            Codec::Pcmu
        } else if enc.eq_ignore_ascii_case("PCMA") {
            Codec::Pcma
        } else if enc.eq_ignore_ascii_case("telephone-event") {
            Codec::TelephoneEvent
        } else {
            Codec::Other
        }
    }
}

/// The audio stream of an SDP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioMedia {
    /// Index of this stream in [`Sdp::media`].
    pub index: usize,
    pub port: u16,
    pub proto: String,
    /// Payload types in `m=` order (preference order).
    pub payload_types: Vec<u8>,
    /// Media-level `c=` (see [`Sdp::audio_connection`] for the effective one).
    pub connection: Option<Connection>,
    pub rtpmaps: Vec<RtpMap>,
    pub fmtps: Vec<Fmtp>,
    /// Effective direction: media-level attribute, else session-level, else sendrecv.
    pub direction: Direction,
    pub ptime: Option<u32>,
    pub maxptime: Option<u32>,
    pub rtcp: Option<RtcpAttr>,
    pub rtcp_mux: bool,
}

impl AudioMedia {
    pub fn rtpmap(&self, pt: u8) -> Option<&RtpMap> {
        self.rtpmaps.iter().find(|m| m.payload_type == pt)
    }

    pub fn fmtp(&self, pt: u8) -> Option<&Fmtp> {
        self.fmtps.iter().find(|m| m.payload_type == pt)
    }

    /// Codec family of payload type `pt` in this stream.
    pub fn codec(&self, pt: u8) -> Codec {
        Codec::classify(pt, self.rtpmap(pt))
    }

    /// The first offered payload type carrying `telephone-event/8000` (RFC 4733).
    pub fn telephone_event_pt(&self) -> Option<u8> {
        self.payload_types.iter().copied().find(|&pt| self.codec(pt) == Codec::TelephoneEvent)
    }

    /// Offered G.711 payload types (PCMU/PCMA), in preference order.
    pub fn g711_payloads(&self) -> Vec<u8> {
        self.payload_types.iter().copied().filter(|&pt| matches!(self.codec(pt), Codec::Pcmu | Codec::Pcma)).collect()
    }

    /// The G.711 law of payload type `pt` in this stream, if it is PCMU or PCMA.
    pub fn law(&self, pt: u8) -> Option<Law> {
        match self.codec(pt) {
            Codec::Pcmu => Some(Law::Mu),
            Codec::Pcma => Some(Law::A),
            _ => None,
        }
    }

    /// The first (most preferred) G.711 law of the `m=` line.
    pub fn first_law(&self) -> Option<Law> {
        self.payload_types.iter().find_map(|&pt| self.law(pt))
    }

    /// Whether any offered payload type is of codec family `codec`.
    pub fn offers(&self, codec: Codec) -> bool {
        self.payload_types.iter().any(|&pt| self.codec(pt) == codec)
    }
}

/// A parsed SDP (audio part in detail, other media as bare `m=` lines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sdp {
    pub origin: Option<Origin>,
    /// Session-level `c=`.
    pub connection: Option<Connection>,
    /// Session-level direction attribute, if any.
    pub direction: Option<Direction>,
    /// Every `m=` line in order.
    pub media: Vec<MediaLine>,
    pub audio: Option<AudioMedia>,
}

impl FromStr for Sdp {
    type Err = SdpError;
    fn from_str(s: &str) -> Result<Self, SdpError> {
        Sdp::parse(s)
    }
}

impl Sdp {
    /// Parse an SDP body. Accepts CRLF or bare LF line ends; blank lines are ignored.
    pub fn parse(text: &str) -> Result<Sdp, SdpError> {
        let mut lines = sdp_lines(text).peekable();
        match lines.peek() {
            None => return Err(SdpError::Empty),
            Some(&(_, line)) if line.trim_end() != "v=0" => return Err(SdpError::MissingVersion),
            Some(_) => {}
        }

        let mut sdp = Sdp { origin: None, connection: None, direction: None, media: Vec::new(), audio: None };
        // Audio candidates (RTP-profile m=audio sections), in order.
        let mut audios: Vec<(AudioMedia, Option<Direction>)> = Vec::new();
        // Whether the current media section is an audio candidate (index into `audios`).
        let mut in_media = false;
        let mut cur_audio: Option<usize> = None;

        for (no, line) in lines {
            let (kind, value) = split_line(no, line)?;
            match kind {
                b'o' if !in_media && sdp.origin.is_none() => {
                    sdp.origin = Some(parse_origin(value).ok_or(SdpError::BadOrigin { line: no })?);
                }
                b'c' => {
                    let conn = parse_connection(value).ok_or(SdpError::BadConnection { line: no })?;
                    if !in_media {
                        sdp.connection.get_or_insert(conn);
                    } else if let Some(i) = cur_audio {
                        audios[i].0.connection.get_or_insert(conn);
                    }
                }
                b'm' => {
                    let m = parse_media_line(value).ok_or(SdpError::BadMedia { line: no })?;
                    in_media = true;
                    cur_audio = None;
                    if m.kind.eq_ignore_ascii_case("audio") && is_rtp_proto(&m.proto) {
                        let mut pts = Vec::with_capacity(m.formats.len());
                        for f in &m.formats {
                            pts.push(parse_pt(f).ok_or(SdpError::BadMedia { line: no })?);
                        }
                        audios.push((
                            AudioMedia {
                                index: sdp.media.len(),
                                port: m.port,
                                proto: m.proto.clone(),
                                payload_types: pts,
                                connection: None,
                                rtpmaps: Vec::new(),
                                fmtps: Vec::new(),
                                direction: Direction::SendRecv,
                                ptime: None,
                                maxptime: None,
                                rtcp: None,
                                rtcp_mux: false,
                            },
                            None,
                        ));
                        cur_audio = Some(audios.len() - 1);
                    }
                    sdp.media.push(m);
                }
                b'a' => {
                    let (name, val) = match value.split_once(':') {
                        Some((n, v)) => (n, Some(v)),
                        None => (value.trim_end(), None),
                    };
                    if !in_media {
                        if let Some(d) = Direction::from_attr(name) {
                            sdp.direction = Some(d);
                        }
                        continue;
                    }
                    let Some(i) = cur_audio else { continue };
                    let (audio, dir) = &mut audios[i];
                    parse_audio_attr(no, name, val, audio, dir)?;
                }
                _ => {}
            }
        }

        let chosen = audios.iter().position(|(a, _)| a.port != 0).or(if audios.is_empty() { None } else { Some(0) });
        if let Some(i) = chosen {
            let (mut audio, dir) = audios.swap_remove(i);
            audio.direction = dir.or(sdp.direction).unwrap_or(Direction::SendRecv);
            sdp.audio = Some(audio);
        }
        Ok(sdp)
    }

    /// The `c=` that applies to the audio stream: media level, else session level.
    pub fn audio_connection(&self) -> Option<&Connection> {
        let audio = self.audio.as_ref()?;
        audio.connection.as_ref().or(self.connection.as_ref())
    }

    /// Where the SDP's author wants to receive audio RTP. `None` when there is no audio, the
    /// port is 0 (rejected stream), the address is a host name, or it is the unspecified address
    /// (`0.0.0.0`, the RFC 2543 hold style).
    pub fn audio_rtp_addr(&self) -> Option<SocketAddr> {
        let audio = self.audio.as_ref()?;
        let ip = self.audio_connection()?.ip?;
        if audio.port == 0 || ip.is_unspecified() {
            return None;
        }
        Some(SocketAddr::new(ip, audio.port))
    }

    /// Where the SDP's author wants to receive audio RTCP: `a=rtcp` if present, else RTP port + 1.
    /// (`a=rtcp-mux` is not taken into account: the relay keeps RTCP on its own socket pair.)
    pub fn audio_rtcp_addr(&self) -> Option<SocketAddr> {
        let rtp = self.audio_rtp_addr()?;
        let audio = self.audio.as_ref()?;
        match &audio.rtcp {
            Some(attr) => {
                let ip = match &attr.connection {
                    Some(c) => c.ip.filter(|ip| !ip.is_unspecified())?,
                    None => rtp.ip(),
                };
                (attr.port != 0).then(|| SocketAddr::new(ip, attr.port))
            }
            None => rtp.port().checked_add(1).map(|p| SocketAddr::new(rtp.ip(), p)),
        }
    }
}

fn parse_audio_attr(
    no: usize,
    name: &str,
    val: Option<&str>,
    audio: &mut AudioMedia,
    dir: &mut Option<Direction>,
) -> Result<(), SdpError> {
    if let Some(d) = Direction::from_attr(name) {
        *dir = Some(d);
        return Ok(());
    }
    match name {
        "rtpmap" => {
            let bad = SdpError::BadAttribute { line: no, name: "rtpmap" };
            let map = val.and_then(parse_rtpmap).ok_or(bad)?;
            audio.rtpmaps.push(map);
        }
        "fmtp" => {
            let bad = SdpError::BadAttribute { line: no, name: "fmtp" };
            let (pt, params) = val.and_then(split_pt).ok_or(bad)?;
            audio.fmtps.push(Fmtp { payload_type: pt, params: params.trim().to_owned() });
        }
        "ptime" => {
            let bad = SdpError::BadAttribute { line: no, name: "ptime" };
            audio.ptime = Some(val.and_then(parse_ms).ok_or(bad)?);
        }
        "maxptime" => {
            let bad = SdpError::BadAttribute { line: no, name: "maxptime" };
            audio.maxptime = Some(val.and_then(parse_ms).ok_or(bad)?);
        }
        "rtcp" => {
            let bad = SdpError::BadAttribute { line: no, name: "rtcp" };
            audio.rtcp = Some(val.and_then(parse_rtcp_attr).ok_or(bad)?);
        }
        "rtcp-mux" => audio.rtcp_mux = true,
        _ => {}
    }
    Ok(())
}

/// Non-blank lines with their 1-based numbers, CR stripped.
fn sdp_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.split('\n').enumerate().map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l))).filter(|(_, l)| !l.trim().is_empty())
}

/// `x=value` → (b'x', "value").
fn split_line(no: usize, line: &str) -> Result<(u8, &str), SdpError> {
    let b = line.as_bytes();
    if b.len() < 2 || !b[0].is_ascii_lowercase() || b[1] != b'=' {
        return Err(SdpError::MalformedLine { line: no });
    }
    // b[0] and b[1] are ASCII, so index 2 is a char boundary.
    Ok((b[0], &line[2..]))
}

fn parse_origin(value: &str) -> Option<Origin> {
    let mut it = value.split_ascii_whitespace();
    let o = Origin {
        username: it.next()?.to_owned(),
        session_id: it.next()?.to_owned(),
        session_version: parse_digits(it.next()?)?,
        net_type: it.next()?.to_owned(),
        addr_type: it.next()?.to_owned(),
        address: it.next()?.to_owned(),
    };
    it.next().is_none().then_some(o)
}

fn parse_digits<T: FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_connection(value: &str) -> Option<Connection> {
    let mut it = value.split_ascii_whitespace();
    let (net, addr_type, addr) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() || net != "IN" {
        return None;
    }
    let addr_type = if addr_type.eq_ignore_ascii_case("IP4") {
        AddrType::Ip4
    } else if addr_type.eq_ignore_ascii_case("IP6") {
        AddrType::Ip6
    } else {
        return None;
    };
    parse_conn_address(addr_type, addr)
}

fn parse_conn_address(addr_type: AddrType, addr: &str) -> Option<Connection> {
    // Drop a multicast "/ttl[/count]" (IP4) or "/count" (IP6) suffix.
    let addr = addr.split('/').next().unwrap_or(addr);
    let ip = match addr_type {
        AddrType::Ip4 => addr.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
        AddrType::Ip6 => addr.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
    };
    if ip.is_none() && !is_host_name(addr) {
        return None;
    }
    Some(Connection { addr_type, address: addr.to_owned(), ip })
}

/// A plausible DNS name (letters, digits, '-', '.', with at least one letter).
fn is_host_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && s.bytes().any(|b| b.is_ascii_alphabetic())
        && !s.starts_with(['.', '-'])
}

fn parse_media_line(value: &str) -> Option<MediaLine> {
    let mut it = value.split_ascii_whitespace();
    let kind = it.next()?;
    let port = it.next()?;
    let proto = it.next()?;
    let formats: Vec<String> = it.map(str::to_owned).collect();
    if formats.is_empty() {
        return None;
    }
    let port = match port.split_once('/') {
        Some((p, count)) => {
            parse_digits::<u16>(count)?;
            p
        }
        None => port,
    };
    Some(MediaLine { kind: kind.to_owned(), port: parse_digits(port)?, proto: proto.to_owned(), formats })
}

fn is_rtp_proto(proto: &str) -> bool {
    proto.split('/').any(|p| p.eq_ignore_ascii_case("RTP"))
}

/// An RTP payload type, 0..=127.
fn parse_pt(s: &str) -> Option<u8> {
    parse_digits::<u8>(s).filter(|&pt| pt <= 127)
}

/// "<pt> rest" → (pt, rest).
fn split_pt(val: &str) -> Option<(u8, &str)> {
    let val = val.trim_start();
    let (pt, rest) = val.split_once(|c: char| c.is_ascii_whitespace()).unwrap_or((val, ""));
    Some((parse_pt(pt)?, rest))
}

fn parse_rtpmap(val: &str) -> Option<RtpMap> {
    let (pt, rest) = split_pt(val)?;
    let mut parts = rest.trim().split('/');
    let encoding = parts.next()?.trim();
    if encoding.is_empty() || encoding.contains(char::is_whitespace) {
        return None;
    }
    let clock_rate = parse_digits(parts.next()?.trim())?;
    let channels = match parts.next() {
        Some(c) => Some(parse_digits(c.trim())?),
        None => None,
    };
    if parts.next().is_some() {
        return None;
    }
    Some(RtpMap { payload_type: pt, encoding: encoding.to_owned(), clock_rate, channels })
}

/// Milliseconds: an integer, or a decimal such as `20.0` (seen in the wild), rounded.
fn parse_ms(val: &str) -> Option<u32> {
    let v = val.trim();
    if let Some(ms) = parse_digits::<u32>(v) {
        return Some(ms);
    }
    let (int, frac) = v.split_once('.')?;
    let int: u32 = parse_digits(int)?;
    if frac.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(if frac.as_bytes()[0] >= b'5' { int.saturating_add(1) } else { int })
}

fn parse_rtcp_attr(val: &str) -> Option<RtcpAttr> {
    let mut it = val.split_ascii_whitespace();
    let port = parse_digits(it.next()?)?;
    let connection = match it.next() {
        None => None,
        Some(net) => {
            let (addr_type, addr) = (it.next()?, it.next()?);
            if it.next().is_some() {
                return None;
            }
            Some(parse_connection(&format!("{net} {addr_type} {addr}"))?)
        }
    };
    Some(RtcpAttr { port, connection })
}

/// Attributes of ICE (RFC 8839) that would steer media around the relay.
fn is_ice_attr(name: &str) -> bool {
    matches!(
        name,
        "candidate"
            | "end-of-candidates"
            | "remote-candidates"
            | "ice-ufrag"
            | "ice-pwd"
            | "ice-options"
            | "ice-lite"
            | "ice-mismatch"
            | "ice-pacing"
    )
}
