#!/usr/bin/env python3
"""Seed fuzz/corpus/<target>/ from real inputs in the repository (run from anywhere; idempotent).

sip_message: the RFC 4475 torture messages (/work/shared/testdata or sip/tests/rfc4475).
sip_digest:  Authorization header values found in those messages and in the tests.
sdp:         SDP bodies of the torture messages and SDP literals from media/src/sdp/ tests.
protocol:    every {"type":...} JSON example in docs/protocol.md and the protocol crate's tests.
stun:        STUN/TURN messages built here byte by byte (RFC 8489 / RFC 8656 layouts).
rtp_rtcp:    RTP and RTCP packets built here (RFC 3550 layouts).
Files are named by content hash, as libFuzzer names them.
"""
import hashlib, os, re, struct, sys, glob

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")


def put(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, hashlib.sha1(data).hexdigest()), "wb") as f:
        f.write(data)


def rust_unescape(s):
    return s.encode().decode("unicode_escape").encode("latin-1", "replace").decode("utf-8", "replace")


# --- SIP ---------------------------------------------------------------------------------
torture = sorted(glob.glob(os.path.join(ROOT, "sip/tests/rfc4475/*.dat")))
for p in torture:
    data = open(p, "rb").read()
    put("sip_message", data)
    for m in re.finditer(rb"(?im)^(?:Proxy-)?Authorization:[ \t]*(.*(?:\r?\n[ \t]+.*)*)", data):
        put("sip_digest", m.group(1).rstrip(b"\r\n"))
    if b"\r\n\r\n" in data:
        body = data.split(b"\r\n\r\n", 1)[1]
        if body.startswith(b"v=0"):
            put("sdp", body)
for p in glob.glob(os.path.join(ROOT, "sip/tests/*.rs")) + glob.glob(os.path.join(ROOT, "sip/src/*.rs")):
    text = open(p, encoding="utf-8").read()
    for m in re.finditer(r'"((?:Proxy-)?Authorization: (Digest [^"\\]*(?:\\.[^"\\]*)*?))\\r\\n', text):
        put("sip_digest", rust_unescape(m.group(2)))
    for m in re.finditer(r'parse_authorization\(\s*r#"(.*?)"#', text, re.S):
        put("sip_digest", m.group(1))
    for m in re.finditer(r'parse_authorization\(\s*"((?:[^"\\]|\\.)*)"', text):
        put("sip_digest", rust_unescape(m.group(1)))
put("sip_digest", 'Digest username="1001", realm="trunkline", nonce="' + "0" * 64 + '", uri="sip:hq", response="' + "a" * 64 + '", algorithm=SHA-256, qop=auth, nc=00000001, cnonce="x", opaque="o"')
put("sip_digest", "00000000690f3c4f000000000000000159d4b4b1a1e1c27e28b2a6f2bc9d0e5f")  # nonce-shaped

# --- SDP ---------------------------------------------------------------------------------
sdp_dir = os.path.join(ROOT, "media/src/sdp")
text = "".join(open(os.path.join(sdp_dir, f), encoding="utf-8").read() for f in sorted(os.listdir(sdp_dir)) if f.endswith(".rs"))
for m in re.finditer(r'"(v=0(?:[^"\\]|\\.)*)"', text):
    s = m.group(1)
    s = re.sub(r"\\\n\s*", "", s)  # Rust line continuations
    put("sdp", rust_unescape(s))
for m in re.finditer(r'r#?"(v=0.*?)"#?', text, re.S):
    put("sdp", m.group(1))
put("sdp", "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 0 8 126\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\na=ice-ufrag:abcd\r\n"
    "a=ice-pwd:0123456789abcdef012345\r\na=fingerprint:sha-256 AA:BB\r\na=setup:actpass\r\na=mid:0\r\na=sendrecv\r\n"
    "a=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\na=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:8 PCMA/8000\r\na=rtpmap:126 telephone-event/8000\r\na=candidate:1 1 udp 2122260223 192.168.1.10 50000 typ host\r\n"
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=sctp-port:5000\r\n")
put("sdp", "v=0\r\no=user 1 1 IN IP6 2001:db8::1\r\ns=-\r\nc=IN IP6 2001:db8::1\r\nt=0 0\r\nm=audio 4000/2 RTP/AVP 0 101\r\n"
    "a=rtcp:4001 IN IP6 2001:db8::2\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=maxptime:40\r\na=recvonly\r\n")

# --- protocol ----------------------------------------------------------------------------
def json_objects(text):
    i = 0
    while True:
        i = text.find('{"type"', i)
        if i < 0:
            return
        depth, j, in_str, esc = 0, i, False, False
        while j < len(text):
            c = text[j]
            if in_str:
                if esc: esc = False
                elif c == "\\": esc = True
                elif c == '"': in_str = False
            elif c == '"': in_str = True
            elif c in "{[": depth += 1
            elif c in "}]":
                depth -= 1
                if depth == 0:
                    yield text[i:j + 1]
                    break
            elif c == "\n":
                break
            j += 1
        i += 1

for p in [os.path.join(ROOT, "docs/protocol.md")] + glob.glob(os.path.join(ROOT, "protocol/src/*.rs")):
    text = open(p, encoding="utf-8").read()
    for obj in json_objects(text):
        put("protocol", obj)
        # The docs elide values with "…"; a concrete variant reaches the validators further.
        if "…" in obj:
            put("protocol", obj.replace(",…", "").replace("…", "x"))

# --- STUN / TURN -------------------------------------------------------------------------
COOKIE = 0x2112A442
TXID = bytes(range(1, 13))


def attr(t, v):
    pad = (4 - len(v) % 4) % 4
    return struct.pack("!HH", t, len(v)) + v + b"\0" * pad


def msg(mtype, attrs=b"", txid=TXID):
    return struct.pack("!HHI", mtype, len(attrs), COOKIE) + txid + attrs


def xaddr(ip, port):
    x = bytes(a ^ b for a, b in zip(bytes(map(int, ip.split("."))), struct.pack("!I", COOKIE)))
    return struct.pack("!BBH", 0, 1, port ^ (COOKIE >> 16)) + x


put("stun", msg(0x0101, attr(0x0020, xaddr("198.51.100.20", 40000))))               # Binding success
put("stun", msg(0x0101, attr(0x0001, struct.pack("!BBH", 0, 1, 40000) + bytes([198, 51, 100, 20]))))  # MAPPED-ADDRESS only
put("stun", msg(0x0111, attr(0x0009, struct.pack("!HBB", 0, 4, 0) + b"Bad Request")))  # Binding error 400
put("stun", msg(0x0001))                                                                # Binding request
put("stun", msg(0x0113, attr(0x0009, struct.pack("!HBB", 0, 4, 1) + b"Unauthorized")
                + attr(0x0014, b"turn.test") + attr(0x0015, b"nonce-0123456789")))   # Allocate 401
put("stun", msg(0x0103, attr(0x0016, xaddr("203.0.113.10", 49160)) + attr(0x0020, xaddr("198.51.100.20", 40000))
                + attr(0x000D, struct.pack("!I", 600)) + attr(0x0008, b"\0" * 20)))  # Allocate success (bad integrity)
put("stun", msg(0x0117, attr(0x0012, xaddr("203.0.113.101", 40000)) + attr(0x0013, b"\x80\0\0\x00payload")))  # Data indication
put("stun", struct.pack("!HH", 0x4000, 8) + b"\x80\x00\x00\x01RTP!")                  # ChannelData
rec = lambda b: bytes([len(b)]) + b
put("stun", rec(msg(0x0113, attr(0x0009, struct.pack("!HBB", 0, 4, 1) + b"Unauthorized") + attr(0x0014, b"turn.test")
                    + attr(0x0015, b"nonce-0123456789"))) + rec(msg(0x0103, attr(0x0016, xaddr("203.0.113.10", 49160)))))

# --- RTP / RTCP --------------------------------------------------------------------------
put("rtp_rtcp", struct.pack("!BBHII", 0x80, 0, 1, 160, 0x11223344) + b"\xff" * 160)          # PCMU
put("rtp_rtcp", struct.pack("!BBHII", 0x80, 0x80 | 101, 2, 320, 0x11223344) + b"\x01\x8a\x03\x20")  # DTMF end, marker
put("rtp_rtcp", struct.pack("!BBHII", 0x92, 8, 3, 480, 1) + struct.pack("!II", 7, 8)
    + struct.pack("!HH", 0xBEDE, 1) + b"\x10\xaa\0\0" + b"\xd5" * 10 + b"\0\0\x03")              # CSRCs, ext, padding
sr = struct.pack("!BBHI", 0x81, 200, 12, 0x11223344) + struct.pack("!IIII I", 1, 2, 3, 4, 5) \
    + struct.pack("!I B3s I I I I", 0x55667788, 0, b"\0\0\x01", 100, 0, 0, 0)
sdes = struct.pack("!BBHI", 0x81, 202, 3, 0x11223344) + b"\x01\x04host\0\0"
bye = struct.pack("!BBHI", 0x81, 203, 1, 0x11223344)
put("rtp_rtcp", sr + sdes)
put("rtp_rtcp", struct.pack("!BBHI", 0x80, 201, 1, 0x11223344) + sdes + bye)
print("corpus:", {t: len(os.listdir(os.path.join(CORPUS, t))) for t in sorted(os.listdir(CORPUS))})
