//! [`rewrite`]: point an offer's or answer's audio at the relay; [`bump_version`] for a new offer.

use super::*;

/// Point the audio stream of `sdp` at the relay.
///
/// * session-level and audio media-level `c=` become `c=IN IP4|IP6 <addr>` (a media-level `c=`
///   is inserted when neither level has one);
/// * the audio `m=` port becomes `port` (a `/count` is dropped); `a=rtcp` becomes `port + 1`
///   (with `addr` if it carried an address);
/// * `keep_payloads`: when given, only those payload types stay on the audio `m=` line (in the
///   offer's order) and the `a=rtpmap`/`a=fmtp`/`a=rtcp-fb` lines of the others are removed;
///   [`SdpError::NoCommonCodec`] if none is left;
/// * every other `m=` line gets port 0 (the relay does not carry it, RFC 3264);
/// * ICE attributes (`a=candidate`, `a=ice-ufrag`, …) are removed at session and audio level,
///   since candidates would steer media around the relay;
/// * everything else, including `o=` (see [`bump_version`]), is kept as is; every line ends in
///   CRLF; blank lines are dropped.
pub fn rewrite(sdp: &str, addr: IpAddr, port: u16, keep_payloads: Option<&[u8]>) -> Result<String, SdpError> {
    if port == 0 || port == u16::MAX {
        return Err(SdpError::InvalidPort(port));
    }
    let parsed = Sdp::parse(sdp)?;
    let audio = parsed.audio.as_ref().ok_or(SdpError::NoAudio)?;
    let kept: Vec<u8> = match keep_payloads {
        Some(keep) => audio.payload_types.iter().copied().filter(|pt| keep.contains(pt)).collect(),
        None => audio.payload_types.clone(),
    };
    if kept.is_empty() {
        return Err(SdpError::NoCommonCodec);
    }
    let conn_line = format!("c=IN {} {}", AddrType::of(addr).as_str(), addr);
    let need_media_conn = audio.connection.is_none() && parsed.connection.is_none();

    let mut out = String::with_capacity(sdp.len() + 64);
    let mut media_idx: Option<usize> = None;
    let mut pending_conn = false; // audio section still needs its inserted c=
    let mut audio_conn_done = false;
    for (no, line) in sdp_lines(sdp) {
        let (kind, value) = split_line(no, line)?;
        let in_audio = media_idx.is_some() && media_idx == Some(audio.index);
        if pending_conn && kind != b'i' {
            push_line(&mut out, &conn_line);
            pending_conn = false;
        }
        match kind {
            b'm' => {
                let idx = media_idx.map_or(0, |i| i + 1);
                media_idx = Some(idx);
                let mut it = value.split_ascii_whitespace();
                let mkind = it.next().unwrap_or("");
                let _port = it.next();
                let proto = it.next().unwrap_or("");
                if idx == audio.index {
                    out.push_str("m=");
                    out.push_str(mkind);
                    out.push(' ');
                    out.push_str(&port.to_string());
                    out.push(' ');
                    out.push_str(proto);
                    for pt in &kept {
                        out.push(' ');
                        out.push_str(&pt.to_string());
                    }
                    out.push_str("\r\n");
                    pending_conn = need_media_conn;
                } else {
                    out.push_str("m=");
                    out.push_str(mkind);
                    out.push_str(" 0 ");
                    out.push_str(proto);
                    for f in it {
                        out.push(' ');
                        out.push_str(f);
                    }
                    out.push_str("\r\n");
                }
            }
            b'c' if media_idx.is_none() => push_line(&mut out, &conn_line),
            b'c' if in_audio => {
                if !audio_conn_done {
                    push_line(&mut out, &conn_line);
                    audio_conn_done = true;
                }
            }
            b'a' if media_idx.is_none() || in_audio => {
                let (name, val) = value.split_once(':').unwrap_or((value.trim_end(), ""));
                if is_ice_attr(name) {
                    continue;
                }
                if !in_audio {
                    push_line(&mut out, line);
                    continue;
                }
                match name {
                    "rtpmap" | "fmtp" | "rtcp-fb" => {
                        let pt = val.split_ascii_whitespace().next().and_then(parse_pt);
                        match pt {
                            Some(pt) if !kept.contains(&pt) => {}
                            _ => push_line(&mut out, line),
                        }
                    }
                    "rtcp" => {
                        out.push_str("a=rtcp:");
                        out.push_str(&(port + 1).to_string());
                        let had_addr = audio.rtcp.as_ref().is_some_and(|r| r.connection.is_some());
                        if had_addr {
                            out.push_str(" IN ");
                            out.push_str(AddrType::of(addr).as_str());
                            out.push(' ');
                            out.push_str(&addr.to_string());
                        }
                        out.push_str("\r\n");
                    }
                    _ => push_line(&mut out, line),
                }
            }
            _ => push_line(&mut out, line),
        }
    }
    if pending_conn {
        push_line(&mut out, &conn_line);
    }
    Ok(out)
}

fn push_line(out: &mut String, line: &str) {
    out.push_str(line);
    out.push_str("\r\n");
}

/// Increment the `o=` session version (RFC 3264 §8: every new offer in a session must carry a
/// higher version). Everything else is kept; every line ends in CRLF.
pub fn bump_version(sdp: &str) -> Result<String, SdpError> {
    let mut out = String::with_capacity(sdp.len() + 4);
    let mut done = false;
    let mut in_media = false;
    for (no, line) in sdp_lines(sdp) {
        let (kind, value) = split_line(no, line)?;
        in_media |= kind == b'm';
        if kind == b'o' && !in_media && !done {
            let o = parse_origin(value).ok_or(SdpError::BadOrigin { line: no })?;
            let v = o.session_version.checked_add(1).ok_or(SdpError::VersionOverflow)?;
            out.push_str(&format!("o={} {} {} {} {} {}\r\n", o.username, o.session_id, v, o.net_type, o.addr_type, o.address));
            done = true;
        } else {
            push_line(&mut out, line);
        }
    }
    if !done {
        return Err(if out.is_empty() { SdpError::Empty } else { SdpError::NoOrigin });
    }
    Ok(out)
}
