#!/usr/bin/env python3
"""Small STUN/TURN probe used by natlab/selftest.sh (stdlib only, IPv4 only).

  server IP:PORT [IP:PORT...]      STUN Binding responder on each address. A datagram
                                   b"POKE" sent to the FIRST address makes the server send
                                   three unsolicited packets to the poker's public address:
                                   b"SAME" from the poked socket (an established flow: must
                                   pass a NAT), b"OTHERPORT" from a fresh port on the same
                                   IP and b"OTHERIP" from the second listener's socket
                                   (both must be filtered by a port-restricted cone NAT).
  mapped [--port P] SERVER...      Binding requests to each SERVER (ip:port) from ONE
                                   socket; prints the mapped ip:port seen by each, one per
                                   line ("timeout" when no answer).
  poke --port P S1 S2              the NAT-filtering test against a 'server S1 S2': map via
                                   S1, POKE, collect what arrives, then map via S2. Prints
                                   JSON {"m1":..., "got":[...], "m2":...}.
  allocate --transport udp|tcp|tls --user U --password P [--ca F] SERVER
                                   one TURN Allocate with long-term credentials; prints
                                   "OK relay=ip:port mapped=ip:port" (exit 0) or
                                   "ERROR <code> <reason>" (exit 1) or "TIMEOUT" (exit 2).
  tcp SERVER / tls --ca F SERVER   connect (and TLS-handshake, verifying the chain and the
                                   IP SAN against F); prints OK or the error.
  listen PORT SECS                 bind UDP PORT, print "ready", then every datagram received
                                   within SECS seconds as "got <text> from ip:port"
  send DEST [TEXT]                 send one UDP datagram (3 times, 50 ms apart)
  sinksend DEST...                 connected-UDP sends to each DEST; prints OK when no
                                   ICMP error / ENETUNREACH comes back (silent sink).
"""
import hashlib
import hmac
import json
import os
import select
import socket
import ssl
import struct
import sys
import threading
import time
import zlib

MAGIC = 0x2112A442
BINDING_REQ, BINDING_OK = 0x0001, 0x0101
ALLOCATE_REQ, ALLOCATE_OK, ALLOCATE_ERR = 0x0003, 0x0103, 0x0113
A_MAPPED, A_USERNAME, A_MI, A_ERROR, A_REALM, A_NONCE = 0x0001, 0x0006, 0x0008, 0x0009, 0x0014, 0x0015
A_XOR_RELAYED, A_REQ_TRANSPORT, A_XOR_MAPPED, A_FINGERPRINT = 0x0016, 0x0019, 0x0020, 0x8028


def hostport(s):
    h, p = s.rsplit(":", 1)
    return h, int(p)


def attr(t, v):
    pad = (4 - len(v) % 4) % 4
    return struct.pack("!HH", t, len(v)) + v + b"\0" * pad


def msg(mtype, tid, attrs=b""):
    return struct.pack("!HHI12s", mtype, len(attrs), MAGIC, tid) + attrs


def parse(data):
    """-> (type, tid, {attr_type: value}) or None for non-STUN data."""
    if len(data) < 20:
        return None
    mtype, length, magic, tid = struct.unpack("!HHI12s", data[:20])
    if magic != MAGIC or mtype & 0xC000:
        return None
    attrs, off = {}, 20
    while off + 4 <= 20 + length and off + 4 <= len(data):
        t, ln = struct.unpack("!HH", data[off:off + 4])
        attrs.setdefault(t, data[off + 4:off + 4 + ln])
        off += 4 + ln + (4 - ln % 4) % 4
    return mtype, tid, attrs


def xor_addr(v, tid=None):
    fam, port = struct.unpack("!xBH", v[:4])
    port ^= MAGIC >> 16
    ip = struct.unpack("!I", v[4:8])[0] ^ MAGIC
    return f"{socket.inet_ntoa(struct.pack('!I', ip))}:{port}"


def enc_xor_addr(ip, port):
    return struct.pack("!xBH", 1, port ^ (MAGIC >> 16)) + struct.pack(
        "!I", struct.unpack("!I", socket.inet_aton(ip))[0] ^ MAGIC)


# ---------------------------------------------------------------- server
def serve(addrs):
    socks = []
    for a in addrs:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(hostport(a))
        socks.append(s)
    print("ready", flush=True)
    while True:
        r, _, _ = select.select(socks, [], [])
        for s in r:
            data, peer = s.recvfrom(2048)
            if data == b"POKE" and s is socks[0]:
                s.sendto(b"SAME", peer)
                f = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                f.bind((s.getsockname()[0], 0))
                f.sendto(b"OTHERPORT", peer)
                f.close()
                if len(socks) > 1:
                    socks[1].sendto(b"OTHERIP", peer)
                continue
            m = parse(data)
            if m and m[0] == BINDING_REQ:
                s.sendto(msg(BINDING_OK, m[1], attr(A_XOR_MAPPED, enc_xor_addr(*peer))), peer)


# ---------------------------------------------------------------- client helpers
def udp_socket(port=0):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    return s


def binding(s, server, timeout=1.0, tries=3):
    for _ in range(tries):
        tid = os.urandom(12)
        s.sendto(msg(BINDING_REQ, tid), hostport(server))
        end = time.time() + timeout
        while time.time() < end:
            s.settimeout(max(0.01, end - time.time()))
            try:
                data, _ = s.recvfrom(2048)
            except socket.timeout:
                break
            m = parse(data)
            if m and m[1] == tid and A_XOR_MAPPED in m[2]:
                return xor_addr(m[2][A_XOR_MAPPED])
    return "timeout"


def cmd_mapped(args):
    port = 0
    if args[:1] == ["--port"]:
        port, args = int(args[1]), args[2:]
    s = udp_socket(port)
    for srv in args:
        print(binding(s, srv))


def cmd_poke(args):
    assert args[0] == "--port"
    port, s1, s2 = int(args[1]), args[2], args[3]
    s = udp_socket(port)
    m1 = binding(s, s1)
    s.sendto(b"POKE", hostport(s1))
    got, end = [], time.time() + 1.5
    while time.time() < end:
        s.settimeout(max(0.01, end - time.time()))
        try:
            data, _ = s.recvfrom(2048)
        except socket.timeout:
            break
        if parse(data) is None:
            got.append(data.decode())
    m2 = binding(s, s2)
    print(json.dumps({"m1": m1, "got": sorted(got), "m2": m2}))


class Stream:
    """STUN over a TCP/TLS stream: messages are self-delimiting (20-byte header + length)."""

    def __init__(self, sock):
        self.s, self.buf = sock, b""

    def send(self, data):
        self.s.sendall(data)

    def recv(self):
        while True:
            if len(self.buf) >= 20:
                n = 20 + struct.unpack("!H", self.buf[2:4])[0]
                if len(self.buf) >= n:
                    m, self.buf = self.buf[:n], self.buf[n:]
                    return m
            chunk = self.s.recv(4096)
            if not chunk:
                raise ConnectionError("connection closed")
            self.buf += chunk


class Dgram:
    def __init__(self, sock, server):
        self.s, self.server = sock, server

    def send(self, data):
        self.s.sendto(data, self.server)

    def recv(self):
        return self.s.recvfrom(4096)[0]


def connect(transport, server, ca=None, timeout=3.0):
    addr = hostport(server)
    if transport == "udp":
        s = udp_socket()
        s.settimeout(timeout)
        return Dgram(s, addr)
    s = socket.create_connection(addr, timeout=timeout)
    if transport == "tls":
        ctx = ssl.create_default_context(cafile=ca) if ca else ssl._create_unverified_context()
        s = ctx.wrap_socket(s, server_hostname=addr[0])   # an IP literal checks the IP SAN
    return Stream(s)


def with_integrity(mtype, tid, attrs, key):
    # MESSAGE-INTEGRITY covers the header with a length that already counts the MI
    # attribute (24 bytes); FINGERPRINT (CRC32 ^ 0x5354554e) is appended after it.
    head = struct.pack("!HHI12s", mtype, len(attrs) + 24, MAGIC, tid)
    mi = hmac.new(key, head + attrs, hashlib.sha1).digest()
    attrs += attr(A_MI, mi)
    head = struct.pack("!HHI12s", mtype, len(attrs) + 8, MAGIC, tid)
    fp = (zlib.crc32(head + attrs) & 0xFFFFFFFF) ^ 0x5354554E
    return head + attrs + attr(A_FINGERPRINT, struct.pack("!I", fp))


def transact(conn, data, tid):
    conn.send(data)
    while True:
        m = parse(conn.recv())
        if m and m[1] == tid:
            return m


def cmd_allocate(args):
    opts, server = {}, args[-1]
    for k, v in zip(args[:-1:2], args[1:-1:2]):
        opts[k.lstrip("-")] = v
    try:
        conn = connect(opts.get("transport", "udp"), server, opts.get("ca"))
        req_tr = attr(A_REQ_TRANSPORT, bytes([17, 0, 0, 0]))
        tid = os.urandom(12)
        mtype, _, a = transact(conn, msg(ALLOCATE_REQ, tid, req_tr), tid)
        if mtype == ALLOCATE_ERR and A_REALM in a and A_NONCE in a:
            realm, nonce = a[A_REALM], a[A_NONCE]
            key = hashlib.md5(f"{opts['user']}:{realm.decode()}:{opts['password']}".encode()).digest()
            body = (req_tr + attr(A_USERNAME, opts["user"].encode()) + attr(A_REALM, realm)
                    + attr(A_NONCE, nonce))
            tid = os.urandom(12)
            mtype, _, a = transact(conn, with_integrity(ALLOCATE_REQ, tid, body, key), tid)
    except (socket.timeout, TimeoutError):
        print("TIMEOUT")
        return 2
    except (OSError, ConnectionError) as e:
        print(f"ERROR conn {e}")
        return 1
    if mtype == ALLOCATE_OK:
        print(f"OK relay={xor_addr(a[A_XOR_RELAYED])} mapped={xor_addr(a[A_XOR_MAPPED])}")
        return 0
    err = a.get(A_ERROR, b"\0\0\0\0")
    print(f"ERROR {err[2] * 100 + err[3]} {err[4:].decode(errors='replace')}")
    return 1


def cmd_connect(kind, args):
    ca = None
    if args[:1] == ["--ca"]:
        ca, args = args[1], args[2:]
    try:
        c = connect(kind, args[0], ca)
        extra = f" {c.s.version()}" if kind == "tls" else ""
        c.s.close()
        print("OK" + extra)
        return 0
    except Exception as e:  # noqa: BLE001 - report any failure as text
        print(f"ERROR {type(e).__name__}: {e}")
        return 1


def cmd_sinksend(args):
    rc = 0
    for d in args:
        s = udp_socket()
        # IP_RECVERR: report every ICMP error (without it Linux hides "net/host
        # unreachable" from UDP sockets as soft errors).
        s.setsockopt(socket.IPPROTO_IP, getattr(socket, "IP_RECVERR", 11), 1)
        try:
            s.connect(hostport(d))
            for _ in range(3):
                s.send(b"into the void")
                time.sleep(0.2)
            # An ICMP error for a connected UDP socket surfaces on the next call.
            s.settimeout(0.5)
            try:
                s.recv(100)
                print(f"{d} ANSWERED")
                rc = 1
            except socket.timeout:
                print(f"{d} OK")
        except OSError as e:
            print(f"{d} ERROR {e.strerror or e}")
            rc = 1
        finally:
            s.close()
    return rc


def cmd_listen(args):
    s = udp_socket(int(args[0]))
    print("ready", flush=True)
    end = time.time() + float(args[1])
    while time.time() < end:
        s.settimeout(max(0.01, end - time.time()))
        try:
            data, peer = s.recvfrom(2048)
        except socket.timeout:
            break
        print(f"got {data.decode(errors='replace')} from {peer[0]}:{peer[1]}", flush=True)
    print("done", flush=True)


def cmd_send(args):
    s = udp_socket()
    for _ in range(3):
        s.sendto((args[1] if len(args) > 1 else "hello").encode(), hostport(args[0]))
        time.sleep(0.05)


def main(argv):
    if not argv:
        print(__doc__)
        return 2
    cmd, args = argv[0], argv[1:]
    if cmd == "server":
        serve(args)
    elif cmd == "mapped":
        cmd_mapped(args)
    elif cmd == "poke":
        cmd_poke(args)
    elif cmd == "allocate":
        return cmd_allocate(args)
    elif cmd in ("tcp", "tls"):
        return cmd_connect(cmd, args)
    elif cmd == "listen":
        cmd_listen(args)
    elif cmd == "send":
        cmd_send(args)
    elif cmd == "sinksend":
        return cmd_sinksend(args)
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
