//! SDP parsing and rewriting against SDPs as real user agents write them.

use std::net::{IpAddr, SocketAddr};

use trunkline_media::sdp::{AddrType, Codec, Direction, RtpMap, Sdp, SdpError, bump_version, rewrite};

fn crlf(lines: &[&str]) -> String {
    let mut s = String::new();
    for l in lines {
        s.push_str(l);
        s.push_str("\r\n");
    }
    s
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn baresip() -> String {
    crlf(&[
        "v=0",
        "o=- 1184961431 1749402893 IN IP4 172.17.0.2",
        "s=-",
        "c=IN IP4 172.17.0.2",
        "t=0 0",
        "a=tool:baresip 1.0.0",
        "m=audio 42526 RTP/AVP 0 8 101",
        "b=AS:64",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-15",
        "a=sendrecv",
        "a=label:1",
        "a=ssrc:1528438425 cname:2f8c1e0b-52d8-4b42-9b4c-0d1b2a3c4d5e",
        "a=rtcp-rsize",
        "a=ptime:20",
    ])
}

fn linphone() -> String {
    crlf(&[
        "v=0",
        "o=alice 3617 1989 IN IP4 192.168.1.20",
        "s=Talk",
        "c=IN IP4 192.168.1.20",
        "t=0 0",
        "a=rtcp-xr:rcvr-rtt=all:10000 stat-summary=loss,dup,jitt,TTL voip-metrics",
        "m=audio 7078 RTP/AVP 96 97 98 0 8 18 101 99 100",
        "a=rtpmap:96 opus/48000/2",
        "a=fmtp:96 useinbandfec=1",
        "a=rtpmap:97 speex/16000",
        "a=fmtp:97 vbr=on",
        "a=rtpmap:98 speex/8000",
        "a=fmtp:98 vbr=on",
        "a=fmtp:18 annexb=yes",
        "a=rtpmap:101 telephone-event/48000",
        "a=rtpmap:99 telephone-event/16000",
        "a=rtpmap:100 telephone-event/8000",
        "a=rtcp:7079",
        "a=rtcp-fb:* trr-int 1000",
        "a=rtcp-fb:* ccm tmmbr",
        "m=video 9078 RTP/AVP 96",
        "a=rtpmap:96 VP8/90000",
        "a=rtcp-fb:* nack pli",
        "a=rtcp:9079",
    ])
}

fn sipp_uac() -> String {
    crlf(&[
        "v=0",
        "o=user1 53655765 2353687637 IN IP4 127.0.1.1",
        "s=-",
        "c=IN IP4 127.0.1.1",
        "t=0 0",
        "m=audio 6000 RTP/AVP 0",
        "a=rtpmap:0 PCMU/8000",
    ])
}

fn chrome_like() -> String {
    crlf(&[
        "v=0",
        "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1",
        "a=extmap-allow-mixed",
        "a=msid-semantic: WMS 5d7f8f4e",
        "a=ice-options:trickle",
        "m=audio 54400 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
        "c=IN IP4 203.0.113.7",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=candidate:842163049 1 udp 1677729535 203.0.113.7 54400 typ srflx raddr 10.0.0.2 rport 54400 generation 0",
        "a=candidate:1467250027 1 udp 2122260223 10.0.0.2 54400 typ host generation 0",
        "a=ice-ufrag:Xw3b",
        "a=ice-pwd:g2vEbl+lF0b2X2JPZl5oGx0y",
        "a=fingerprint:sha-256 6B:8B:5D:EA:59:04:20:23:29:C8:87:1C:CC:87:32:BE:DD:8C:66:A5:8E:50:55:EA:8C:D3:B6:5C:09:5E:D6:BC",
        "a=setup:actpass",
        "a=mid:0",
        "a=sendrecv",
        "a=msid:5d7f8f4e 3f0e2c1a",
        "a=rtcp-mux",
        "a=rtpmap:111 opus/48000/2",
        "a=rtcp-fb:111 transport-cc",
        "a=fmtp:111 minptime=10;useinbandfec=1",
        "a=rtpmap:63 red/48000/2",
        "a=fmtp:63 111/111",
        "a=rtpmap:9 G722/8000",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:13 CN/8000",
        "a=rtpmap:110 telephone-event/48000",
        "a=rtpmap:126 telephone-event/8000",
        "a=ssrc:1001 cname:abcdefgh",
        "m=video 54400 UDP/TLS/RTP/SAVPF 96 97",
        "c=IN IP4 203.0.113.7",
        "a=mid:1",
        "a=rtpmap:96 VP8/90000",
        "a=rtpmap:97 rtx/90000",
        "a=fmtp:97 apt=96",
    ])
}

#[test]
fn baresip_offer() {
    let sdp = Sdp::parse(&baresip()).unwrap();
    let audio = sdp.audio.as_ref().unwrap();
    assert_eq!(audio.port, 42526);
    assert_eq!(audio.proto, "RTP/AVP");
    assert_eq!(audio.payload_types, vec![0, 8, 101]);
    assert_eq!(audio.direction, Direction::SendRecv);
    assert_eq!(audio.ptime, Some(20));
    assert_eq!(audio.telephone_event_pt(), Some(101));
    assert_eq!(audio.fmtp(101).unwrap().params, "0-15");
    assert_eq!(audio.g711_payloads(), vec![0, 8]);
    assert_eq!(audio.codec(0), Codec::Pcmu);
    assert_eq!(audio.codec(8), Codec::Pcma);
    assert_eq!(audio.codec(101), Codec::TelephoneEvent);
    assert!(audio.connection.is_none());
    assert_eq!(sdp.connection.as_ref().unwrap().ip, Some(ip("172.17.0.2")));
    assert_eq!(sdp.audio_rtp_addr(), Some(sa("172.17.0.2:42526")));
    assert_eq!(sdp.audio_rtcp_addr(), Some(sa("172.17.0.2:42527")));
    assert_eq!(sdp.origin.as_ref().unwrap().session_version, 1749402893);
    assert_eq!(sdp.media.len(), 1);

    let out = rewrite(&baresip(), ip("127.0.0.1"), 30000, None).unwrap();
    let expected = baresip().replace("c=IN IP4 172.17.0.2", "c=IN IP4 127.0.0.1").replace("m=audio 42526 ", "m=audio 30000 ");
    assert_eq!(out, expected);
    // o= (and its address) untouched: only the media address moves.
    assert!(out.contains("o=- 1184961431 1749402893 IN IP4 172.17.0.2\r\n"));
}

#[test]
fn linphone_offer_with_video_and_codec_filter() {
    let sdp = Sdp::parse(&linphone()).unwrap();
    let audio = sdp.audio.as_ref().unwrap();
    assert_eq!(audio.payload_types, vec![96, 97, 98, 0, 8, 18, 101, 99, 100]);
    assert_eq!(audio.telephone_event_pt(), Some(100), "only telephone-event/8000 counts");
    assert_eq!(audio.codec(101), Codec::Other);
    assert_eq!(audio.codec(96), Codec::Other);
    assert_eq!(
        audio.rtpmap(96),
        Some(&RtpMap { payload_type: 96, encoding: "opus".into(), clock_rate: 48000, channels: Some(2) })
    );
    assert_eq!(audio.rtcp.as_ref().unwrap().port, 7079);
    assert_eq!(sdp.audio_rtcp_addr(), Some(sa("192.168.1.20:7079")));
    assert_eq!(sdp.media.len(), 2);
    assert_eq!(sdp.media[1].kind, "video");
    assert_eq!(sdp.media[1].port, 9078);

    let mut keep = audio.g711_payloads();
    keep.push(audio.telephone_event_pt().unwrap());
    let out = rewrite(&linphone(), ip("198.51.100.4"), 20000, Some(&keep)).unwrap();
    let expected = crlf(&[
        "v=0",
        "o=alice 3617 1989 IN IP4 192.168.1.20",
        "s=Talk",
        "c=IN IP4 198.51.100.4",
        "t=0 0",
        "a=rtcp-xr:rcvr-rtt=all:10000 stat-summary=loss,dup,jitt,TTL voip-metrics",
        "m=audio 20000 RTP/AVP 0 8 100",
        "a=rtpmap:100 telephone-event/8000",
        "a=rtcp:20001",
        "a=rtcp-fb:* trr-int 1000",
        "a=rtcp-fb:* ccm tmmbr",
        "m=video 0 RTP/AVP 96",
        "a=rtpmap:96 VP8/90000",
        "a=rtcp-fb:* nack pli",
        "a=rtcp:9079",
    ]);
    assert_eq!(out, expected);
    let again = Sdp::parse(&out).unwrap();
    assert_eq!(again.audio_rtp_addr(), Some(sa("198.51.100.4:20000")));
    assert_eq!(again.audio_rtcp_addr(), Some(sa("198.51.100.4:20001")));
    assert_eq!(again.media[1].port, 0);
}

#[test]
fn sipp_default_offer() {
    let sdp = Sdp::parse(&sipp_uac()).unwrap();
    assert_eq!(sdp.audio_rtp_addr(), Some(sa("127.0.1.1:6000")));
    assert_eq!(sdp.audio.as_ref().unwrap().telephone_event_pt(), None);
    let out = rewrite(&sipp_uac(), ip("10.20.30.40"), 16384, Some(&[0, 8])).unwrap();
    assert_eq!(
        out,
        crlf(&[
            "v=0",
            "o=user1 53655765 2353687637 IN IP4 127.0.1.1",
            "s=-",
            "c=IN IP4 10.20.30.40",
            "t=0 0",
            "m=audio 16384 RTP/AVP 0",
            "a=rtpmap:0 PCMU/8000",
        ])
    );
    assert_eq!(rewrite(&sipp_uac(), ip("10.20.30.40"), 16384, Some(&[8])), Err(SdpError::NoCommonCodec));
}

#[test]
fn chrome_like_offer() {
    let text = chrome_like();
    let sdp = Sdp::parse(&text).unwrap();
    let audio = sdp.audio.as_ref().unwrap();
    assert_eq!(audio.proto, "UDP/TLS/RTP/SAVPF");
    assert!(audio.rtcp_mux);
    assert_eq!(audio.telephone_event_pt(), Some(126));
    assert_eq!(audio.g711_payloads(), vec![0, 8]);
    assert!(audio.offers(Codec::Pcmu));
    assert_eq!(sdp.connection, None);
    assert_eq!(sdp.audio_rtp_addr(), Some(sa("203.0.113.7:54400")));
    // a=rtcp:9 IN IP4 0.0.0.0 is the "no RTCP address" placeholder.
    assert_eq!(sdp.audio_rtcp_addr(), None);

    let out = rewrite(&text, ip("192.0.2.10"), 40000, Some(&[0, 126])).unwrap();
    assert!(!out.contains("a=candidate"), "ICE candidates would bypass the relay:\n{out}");
    assert!(!out.contains("a=ice-"), "{out}");
    assert!(out.contains("m=audio 40000 UDP/TLS/RTP/SAVPF 0 126\r\nc=IN IP4 192.0.2.10\r\na=rtcp:40001 IN IP4 192.0.2.10\r\n"));
    assert!(out.contains("m=video 0 UDP/TLS/RTP/SAVPF 96 97\r\nc=IN IP4 203.0.113.7\r\n"));
    assert!(!out.contains("a=rtpmap:111"));
    assert!(!out.contains("a=rtcp-fb:111"));
    assert!(!out.contains("a=fmtp:63"));
    assert!(out.contains("a=rtpmap:0 PCMU/8000\r\n"));
    assert!(out.contains("a=fingerprint:sha-256"));
    assert!(out.contains("a=fmtp:97 apt=96\r\n"), "other media untouched");
    assert!(out.ends_with("\r\n"));
    assert!(!out.replace("\r\n", "").contains('\n'));
}

#[test]
fn ipv6_sdp() {
    let text = crlf(&[
        "v=0",
        "o=- 1 1 IN IP6 2001:db8::10",
        "s=-",
        "c=IN IP6 2001:db8::10",
        "t=0 0",
        "m=audio 5004 RTP/AVP 8 0 101",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-16",
        "a=ptime:30",
    ]);
    let sdp = Sdp::parse(&text).unwrap();
    assert_eq!(sdp.connection.as_ref().unwrap().addr_type, AddrType::Ip6);
    assert_eq!(sdp.audio_rtp_addr(), Some(sa("[2001:db8::10]:5004")));
    let a = sdp.audio.as_ref().unwrap();
    assert_eq!(a.g711_payloads(), vec![8, 0]);
    assert_eq!(a.ptime, Some(30));

    let out = rewrite(&text, ip("::1"), 31000, None).unwrap();
    assert!(out.contains("c=IN IP6 ::1\r\n"));
    assert!(out.contains("m=audio 31000 RTP/AVP 8 0 101\r\n"));
    // IPv4 SDP pointed at an IPv6 relay and back.
    let v4 = rewrite(&out, ip("127.0.0.1"), 31000, None).unwrap();
    assert!(v4.contains("c=IN IP4 127.0.0.1\r\n"));
    assert_eq!(Sdp::parse(&v4).unwrap().audio_rtp_addr(), Some(sa("127.0.0.1:31000")));
}

#[test]
fn media_level_connection_only_and_inserted_connection() {
    // Media-level c= only.
    let text = crlf(&["v=0", "o=- 1 1 IN IP4 h", "s=-", "t=0 0", "m=audio 4000 RTP/AVP 0", "c=IN IP4 10.0.0.9"]);
    let sdp = Sdp::parse(&text).unwrap();
    assert_eq!(sdp.audio_rtp_addr(), Some(sa("10.0.0.9:4000")));
    let out = rewrite(&text, ip("10.9.9.9"), 5000, None).unwrap();
    assert_eq!(out, text.replace("10.0.0.9", "10.9.9.9").replace("4000", "5000"));

    // No c= at all (invalid, but seen): one is inserted after m= and i=.
    let text = crlf(&["v=0", "o=- 1 1 IN IP4 h", "s=-", "t=0 0", "m=audio 4000 RTP/AVP 0", "i=voice", "a=sendonly"]);
    let sdp = Sdp::parse(&text).unwrap();
    assert_eq!(sdp.audio_rtp_addr(), None);
    assert_eq!(sdp.audio.as_ref().unwrap().direction, Direction::SendOnly);
    let out = rewrite(&text, ip("10.9.9.9"), 5000, None).unwrap();
    assert!(out.ends_with("m=audio 5000 RTP/AVP 0\r\ni=voice\r\nc=IN IP4 10.9.9.9\r\na=sendonly\r\n"), "{out}");
    let text = crlf(&["v=0", "o=- 1 1 IN IP4 h", "s=-", "t=0 0", "m=audio 4000 RTP/AVP 0"]);
    let out = rewrite(&text, ip("10.9.9.9"), 5000, None).unwrap();
    assert!(out.ends_with("m=audio 5000 RTP/AVP 0\r\nc=IN IP4 10.9.9.9\r\n"), "{out}");
}

#[test]
fn directions_and_hold() {
    let base = |extra: &[&str], media_extra: &[&str]| {
        let mut l = vec!["v=0", "o=- 1 1 IN IP4 10.0.0.1", "s=-", "c=IN IP4 10.0.0.1", "t=0 0"];
        l.extend_from_slice(extra);
        l.push("m=audio 4000 RTP/AVP 0");
        l.extend_from_slice(media_extra);
        crlf(&l)
    };
    let dir = |t: String| Sdp::parse(&t).unwrap().audio.unwrap().direction;
    assert_eq!(dir(base(&[], &[])), Direction::SendRecv);
    assert_eq!(dir(base(&["a=sendonly"], &[])), Direction::SendOnly);
    assert_eq!(dir(base(&["a=sendonly"], &["a=inactive"])), Direction::Inactive);
    assert_eq!(dir(base(&[], &["a=recvonly"])), Direction::RecvOnly);
    assert_eq!(Direction::SendOnly.reversed(), Direction::RecvOnly);
    assert_eq!(Direction::Inactive.to_string(), "inactive");
    // RFC 2543 hold.
    let hold = base(&[], &["a=sendonly"]).replace("c=IN IP4 10.0.0.1", "c=IN IP4 0.0.0.0");
    let sdp = Sdp::parse(&hold).unwrap();
    assert_eq!(sdp.audio_rtp_addr(), None);
    assert!(sdp.connection.as_ref().unwrap().ip.unwrap().is_unspecified());
}

#[test]
fn rejected_and_multiple_audio_streams() {
    let text = crlf(&[
        "v=0",
        "o=- 1 2 IN IP4 10.0.0.1",
        "s=-",
        "c=IN IP4 10.0.0.1",
        "t=0 0",
        "m=audio 0 RTP/AVP 0",
        "m=audio 4002 RTP/AVP 8",
        "m=audio 4004 RTP/AVP 0",
        "m=image 4006 udptl t38",
    ]);
    let sdp = Sdp::parse(&text).unwrap();
    let audio = sdp.audio.as_ref().unwrap();
    assert_eq!(audio.index, 1);
    assert_eq!(audio.port, 4002);
    let out = rewrite(&text, ip("10.1.1.1"), 6000, None).unwrap();
    assert!(
        out.contains("m=audio 0 RTP/AVP 0\r\nm=audio 6000 RTP/AVP 8\r\nm=audio 0 RTP/AVP 0\r\nm=image 0 udptl t38\r\n"),
        "{out}"
    );

    // All rejected: the first one is "the audio", with no address.
    let text = crlf(&["v=0", "o=- 1 2 IN IP4 10.0.0.1", "s=-", "c=IN IP4 10.0.0.1", "t=0 0", "m=audio 0 RTP/AVP 0"]);
    let sdp = Sdp::parse(&text).unwrap();
    assert_eq!(sdp.audio.as_ref().unwrap().port, 0);
    assert_eq!(sdp.audio_rtp_addr(), None);

    // Port count.
    let text = crlf(&["v=0", "o=- 1 2 IN IP4 10.0.0.1", "s=-", "c=IN IP4 10.0.0.1", "t=0 0", "m=audio 49170/2 RTP/AVP 0"]);
    assert_eq!(Sdp::parse(&text).unwrap().audio.unwrap().port, 49170);
    assert!(rewrite(&text, ip("10.1.1.1"), 6000, None).unwrap().contains("m=audio 6000 RTP/AVP 0\r\n"));

    // No audio at all.
    let text = crlf(&["v=0", "o=- 1 2 IN IP4 10.0.0.1", "s=-", "c=IN IP4 10.0.0.1", "t=0 0", "m=image 4006 udptl t38"]);
    assert_eq!(Sdp::parse(&text).unwrap().audio, None);
    assert_eq!(rewrite(&text, ip("10.1.1.1"), 6000, None), Err(SdpError::NoAudio));
}

#[test]
fn lf_only_input_gets_crlf() {
    let text = sipp_uac().replace("\r\n", "\n");
    let out = rewrite(&text, ip("127.0.0.1"), 7000, None).unwrap();
    assert_eq!(out.matches("\r\n").count(), 7);
    assert_eq!(out.matches('\n').count(), 7);
}

#[test]
fn codec_classification() {
    let map = |enc: &str, rate: u32, ch: Option<u16>| RtpMap {
        payload_type: 120,
        encoding: enc.into(),
        clock_rate: rate,
        channels: ch,
    };
    assert_eq!(Codec::classify(0, None), Codec::Pcmu);
    assert_eq!(Codec::classify(8, None), Codec::Pcma);
    assert_eq!(Codec::classify(18, None), Codec::Other);
    assert_eq!(Codec::classify(120, None), Codec::Other);
    assert_eq!(Codec::classify(120, Some(&map("pcmu", 8000, None))), Codec::Pcmu);
    assert_eq!(Codec::classify(120, Some(&map("PCMA", 8000, Some(1)))), Codec::Pcma);
    assert_eq!(Codec::classify(120, Some(&map("PCMA", 8000, Some(2)))), Codec::Other);
    assert_eq!(Codec::classify(120, Some(&map("Telephone-Event", 8000, None))), Codec::TelephoneEvent);
    assert_eq!(Codec::classify(120, Some(&map("telephone-event", 16000, None))), Codec::Other);
}

#[test]
fn host_name_connection() {
    let text = sipp_uac().replace("c=IN IP4 127.0.1.1", "c=IN IP4 media.example.com");
    let sdp = Sdp::parse(&text).unwrap();
    let c = sdp.connection.as_ref().unwrap();
    assert_eq!((c.address.as_str(), c.ip), ("media.example.com", None));
    assert_eq!(sdp.audio_rtp_addr(), None);
    assert!(rewrite(&text, ip("127.0.0.1"), 7000, None).unwrap().contains("c=IN IP4 127.0.0.1\r\n"));
}

#[test]
fn bump_version_increments_origin_only() {
    let out = bump_version(&sipp_uac()).unwrap();
    assert_eq!(out, sipp_uac().replace("53655765 2353687637", "53655765 2353687638"));
    let twice = bump_version(&out).unwrap();
    assert_eq!(Sdp::parse(&twice).unwrap().origin.unwrap().session_version, 2353687639);
    let max = sipp_uac().replace("2353687637", &u64::MAX.to_string());
    assert_eq!(bump_version(&max), Err(SdpError::VersionOverflow));
    assert_eq!(bump_version(""), Err(SdpError::Empty));
    let no_o = crlf(&["v=0", "s=-", "c=IN IP4 1.2.3.4", "t=0 0", "m=audio 1 RTP/AVP 0"]);
    assert_eq!(bump_version(&no_o), Err(SdpError::NoOrigin));
    let bad_o = sipp_uac().replace("2353687637", "v2");
    assert_eq!(bump_version(&bad_o), Err(SdpError::BadOrigin { line: 2 }));
}

#[test]
fn malformed_sdps_are_typed_errors() {
    let ok = sipp_uac();
    let cases: Vec<(String, SdpError)> = vec![
        (String::new(), SdpError::Empty),
        ("\r\n\r\n".into(), SdpError::Empty),
        ("hello".into(), SdpError::MissingVersion),
        ("v=1\r\n".into(), SdpError::MissingVersion),
        (ok.replace("s=-", "s-"), SdpError::MalformedLine { line: 3 }),
        (ok.replace("s=-", "S=-"), SdpError::MalformedLine { line: 3 }),
        (ok.replace("s=-", "="), SdpError::MalformedLine { line: 3 }),
        (ok.replace("o=user1 53655765 2353687637 IN IP4 127.0.1.1", "o=user1 1"), SdpError::BadOrigin { line: 2 }),
        (ok.replace("c=IN IP4 127.0.1.1", "c=IN IP4 999.1.1.1"), SdpError::BadConnection { line: 4 }),
        (ok.replace("c=IN IP4 127.0.1.1", "c=IN IP4 ::1"), SdpError::BadConnection { line: 4 }),
        (ok.replace("c=IN IP4 127.0.1.1", "c=IN IP6 127.0.0.1"), SdpError::BadConnection { line: 4 }),
        (ok.replace("c=IN IP4 127.0.1.1", "c=ATM NSAP 47.0005"), SdpError::BadConnection { line: 4 }),
        (ok.replace("c=IN IP4 127.0.1.1", "c=IN IP4"), SdpError::BadConnection { line: 4 }),
        (ok.replace("m=audio 6000 RTP/AVP 0", "m=audio 70000 RTP/AVP 0"), SdpError::BadMedia { line: 6 }),
        (ok.replace("m=audio 6000 RTP/AVP 0", "m=audio -1 RTP/AVP 0"), SdpError::BadMedia { line: 6 }),
        (ok.replace("m=audio 6000 RTP/AVP 0", "m=audio 6000 RTP/AVP"), SdpError::BadMedia { line: 6 }),
        (ok.replace("m=audio 6000 RTP/AVP 0", "m=audio 6000 RTP/AVP 0 200"), SdpError::BadMedia { line: 6 }),
        (ok.replace("m=audio 6000 RTP/AVP 0", "m=audio 6000 RTP/AVP PCMU"), SdpError::BadMedia { line: 6 }),
        (ok.replace("m=audio 6000 RTP/AVP 0", "m=audio 6000/x RTP/AVP 0"), SdpError::BadMedia { line: 6 }),
        (ok.replace("a=rtpmap:0 PCMU/8000", "a=rtpmap:x PCMU/8000"), SdpError::BadAttribute { line: 7, name: "rtpmap" }),
        (ok.replace("a=rtpmap:0 PCMU/8000", "a=rtpmap:0 PCMU"), SdpError::BadAttribute { line: 7, name: "rtpmap" }),
        (ok.replace("a=rtpmap:0 PCMU/8000", "a=rtpmap:0 PCMU/8000/1/2"), SdpError::BadAttribute { line: 7, name: "rtpmap" }),
        (ok.replace("a=rtpmap:0 PCMU/8000", "a=rtpmap"), SdpError::BadAttribute { line: 7, name: "rtpmap" }),
        (ok.replace("a=rtpmap:0 PCMU/8000", "a=fmtp:abc x"), SdpError::BadAttribute { line: 7, name: "fmtp" }),
        (ok.replace("a=rtpmap:0 PCMU/8000", "a=ptime:twenty"), SdpError::BadAttribute { line: 7, name: "ptime" }),
        (ok.replace("a=rtpmap:0 PCMU/8000", "a=rtcp:99999"), SdpError::BadAttribute { line: 7, name: "rtcp" }),
        (ok.replace("a=rtpmap:0 PCMU/8000", "a=rtcp:5000 IN IP4"), SdpError::BadAttribute { line: 7, name: "rtcp" }),
    ];
    for (text, want) in cases {
        assert_eq!(Sdp::parse(&text), Err(want.clone()), "{text:?}");
        // rewrite reports the same error.
        assert_eq!(rewrite(&text, ip("127.0.0.1"), 7000, None), Err(want), "{text:?}");
    }
    // Garbage in attributes we do not interpret, and in other media, is tolerated.
    let lenient =
        ok.replace("a=rtpmap:0 PCMU/8000", "a=x-weird:%%%\r\na=ptime:20.0") + "m=video 1 RTP/AVP vp8\r\na=rtpmap:zz\r\n";
    let sdp = Sdp::parse(&lenient).unwrap();
    assert_eq!(sdp.audio.unwrap().ptime, Some(20));
    assert_eq!(rewrite(&ok, ip("127.0.0.1"), 0, None), Err(SdpError::InvalidPort(0)));
    assert_eq!(rewrite(&ok, ip("127.0.0.1"), 65535, None), Err(SdpError::InvalidPort(65535)));
}

/// Deterministic mutation fuzzing: parse/rewrite/bump_version never panic.
#[test]
fn mutated_sdps_never_panic() {
    let seeds = [baresip(), linphone(), sipp_uac(), chrome_like()];
    let alphabet: &[u8] = b"v=0amc: /\r\nIN IP4 IP6 127.0.0.1 ::1 RTP/AVP rtpmap fmtp rtcp 65535 99999 -\xc3\xa9";
    let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for round in 0..4000 {
        let mut bytes = seeds[round % seeds.len()].clone().into_bytes();
        for _ in 0..(1 + next() % 8) {
            if bytes.is_empty() {
                break;
            }
            let pos = (next() as usize) % bytes.len();
            match next() % 4 {
                0 => {
                    bytes.remove(pos);
                }
                1 => bytes.insert(pos, alphabet[(next() as usize) % alphabet.len()]),
                2 => bytes[pos] = alphabet[(next() as usize) % alphabet.len()],
                _ => {
                    let end = (pos + (next() as usize) % 40).min(bytes.len());
                    bytes.drain(pos..end);
                }
            }
        }
        let text = String::from_utf8_lossy(&bytes);
        let parsed = Sdp::parse(&text);
        let rewritten = rewrite(&text, ip("127.0.0.1"), 30000, Some(&[0, 8, 101]));
        let _ = bump_version(&text);
        let _ = parsed.as_ref().map(|s| (s.audio_rtp_addr(), s.audio_rtcp_addr()));
        // Whatever rewrite produces must parse again and point at the relay.
        if let Ok(out) = rewritten {
            let again = Sdp::parse(&out).unwrap_or_else(|e| panic!("{e}: {out:?}"));
            assert_eq!(again.audio.as_ref().unwrap().port, 30000, "{out:?}");
        }
    }
}

/// The phone-side offer the WebRTC bridge sends (F1): byte for byte what it wrote by hand before
/// the builder, so desk phones see no change.
#[test]
fn audio_sdp_builds_the_bridge_offer_a_phone_parses() {
    use trunkline_media::g711::Law;
    use trunkline_media::sdp::AudioSdp;
    let sdp = AudioSdp::new(ip("192.0.2.7"), 20002).origin("trunkline", 42).law(Law::Mu).law(Law::A).telephone_event(101);
    let text = sdp.build().unwrap();
    assert_eq!(
        text,
        "v=0\r\no=trunkline 42 1 IN IP4 192.0.2.7\r\ns=Trunkline\r\nc=IN IP4 192.0.2.7\r\nt=0 0\r\n\
         m=audio 20002 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
    );
    let parsed = Sdp::parse(&text).unwrap();
    assert_eq!(parsed.audio_rtp_addr(), Some(sa("192.0.2.7:20002")));
    let audio = parsed.audio.unwrap();
    assert_eq!((audio.first_law(), audio.telephone_event_pt(), audio.ptime), (Some(Law::Mu), Some(101), Some(20)));
    assert_eq!(audio.fmtp(101).unwrap().params, "0-16");
}

#[test]
fn audio_sdp_answer_with_one_law_ipv6_no_events_and_a_direction() {
    use trunkline_media::g711::Law;
    use trunkline_media::sdp::AudioSdp;
    let text = AudioSdp::new(ip("2001:db8::5"), 30000)
        .origin("trunkline-echo", 3)
        .session_name("Echo test")
        .version(2)
        .law(Law::A)
        .law(Law::A)
        .ptime(None)
        .direction(Direction::RecvOnly)
        .build()
        .unwrap();
    assert!(
        text.starts_with("v=0\r\no=trunkline-echo 3 2 IN IP6 2001:db8::5\r\ns=Echo test\r\nc=IN IP6 2001:db8::5\r\n"),
        "{text}"
    );
    assert!(!text.contains("ptime") && !text.contains("telephone-event"), "{text}");
    let parsed = Sdp::parse(&text).unwrap();
    let audio = parsed.audio.as_ref().unwrap();
    assert_eq!((audio.payload_types.clone(), audio.direction, audio.first_law()), (vec![8], Direction::RecvOnly, Some(Law::A)));
    assert_eq!(parsed.audio_connection().unwrap().addr_type, AddrType::Ip6);
}

#[test]
fn audio_sdp_refuses_no_law_and_a_static_event_payload_type() {
    use trunkline_media::g711::Law;
    use trunkline_media::sdp::AudioSdp;
    assert_eq!(AudioSdp::new(ip("192.0.2.7"), 20002).build(), Err(SdpError::NoCommonCodec));
    let with = |pt| AudioSdp::new(ip("192.0.2.7"), 20002).law(Law::Mu).telephone_event(pt).build();
    assert_eq!(with(8), Err(SdpError::EventPayloadType(8)));
    assert_eq!(with(128), Err(SdpError::EventPayloadType(128)));
    assert!(with(96).is_ok() && with(127).is_ok());
}

#[test]
fn first_law_follows_preference_and_dynamic_rtpmaps() {
    use trunkline_media::g711::Law;
    let sdp = crlf(&[
        "v=0",
        "c=IN IP4 192.0.2.1",
        "m=audio 4000 RTP/AVP 96 101 0 8",
        "a=rtpmap:96 PCMA/8000",
        "a=rtpmap:101 telephone-event/8000",
    ]);
    let audio = Sdp::parse(&sdp).unwrap().audio.unwrap();
    assert_eq!(
        (audio.first_law(), audio.law(96), audio.law(101), audio.law(0)),
        (Some(Law::A), Some(Law::A), None, Some(Law::Mu))
    );
    let none = crlf(&["v=0", "c=IN IP4 192.0.2.1", "m=audio 4000 RTP/AVP 18 101", "a=rtpmap:101 telephone-event/8000"]);
    assert_eq!(Sdp::parse(&none).unwrap().audio.unwrap().first_law(), None);
}
