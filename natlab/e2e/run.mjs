// Browser calls across real NATs: the https softphone in headless Chromium at "home" behind
// cone / symmetric / UDP-blocking NATs, switch gateways and baresip desk phones on site LANs
// behind cone and symmetric NATs, the signal server (https, serving the built softphone) and
// coturn (use-auth-secret) on the lab's "Internet". Nothing is forwarded into any site.
// Audio is checked both ways by frequency and each call's selected ICE candidate pair is read
// from getStats(). Prints one line per test and, last, "N passed, N failed".
//
//   node natlab/e2e/run.mjs [name-filter]      (root; natlab/e2e/run.sh builds what it needs)
//   node natlab/e2e/run.mjs --bench [N]        dial → first audio for N calls per scenario
//                                              (key=value lines; NATLAB_BENCH_KV=file saves them)
//
// Env: TRUNKLINE_BIN_DIR (default target/debug), TRUNKLINE_WEB_ROOT (default dist),
//      CHROMIUM (default /usr/bin/chromium), KEEP=1 keeps the lab and its folder with every log,
//      NATLAB_ID (the lab's ID; default random `tlXXXX`), NATLAB_PCAP=1 (tcpdump in every gateway
//      and home namespace, files `<ns>.pcap` in the kept folder; with KEEP=1; needs tcpdump).
import fs from 'node:fs';
import os from 'node:os';
import net from 'node:net';
import path from 'node:path';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { dominantFrequency, lastSeconds } from '../../web/e2e/lib/audio.mjs';
import { Phone } from '../../web/e2e/lib/baresip.mjs';
import { waitFor, sleep, toneWav, PASSWORD } from '../../web/e2e/lib/stack.mjs';

const ROOT = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../..');
const BIN = process.env.TRUNKLINE_BIN_DIR || path.join(ROOT, 'target', 'debug');
const DIST = process.env.TRUNKLINE_WEB_ROOT || path.join(ROOT, 'dist');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const LAB = path.join(ROOT, 'natlab', 'lab.sh');
const { chromium } = createRequire(path.join(ROOT, 'web', 'e2e', 'package.json'))('playwright-core');

const filter = process.argv[2] && process.argv[2] !== '--bench' ? process.argv[2] : '';
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'trunkline-natlab-e2e-'));
const SECRET = 'natlab-e2e-turn-secret-0123456789';
const SIGNAL_PORT = 8443;

// ------------------------------------------------------------------ the lab
function lab(args, { input } = {}) {
  const r = spawnSync(LAB, args, { encoding: 'utf8', input });
  if (r.status !== 0) throw new Error(`lab.sh ${args.join(' ')}: exit ${r.status}\n${r.stdout}${r.stderr}`);
  return Object.fromEntries(r.stdout.split('\n').filter((l) => l.includes('=')).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
}
// NATLAB_ID: a lab ID of the caller's choosing (labs of parallel runs must not share one).
const ID = process.env.NATLAB_ID || `tl${Math.floor(Math.random() * 0xffff).toString(16).padStart(4, '0')}`;
// Sites: hq (cone) and br (symmetric) carry a gateway (host 1) and a desk phone (host 2); hq's
// host 3 is a browser on the gateway's LAN. Homes: cone, symmetric (two), UDP blocked.
const SITES = ['hq:cone:3', 'br:sym:2', 'hc:cone:1', 'hs:sym:1', 'hs2:sym:1', 'hu:noudp:1'];
let L = {};
const procs = [];
const cleanups = [];

function spawnIn(ns, name, cmd, args, env = {}) {
  const log = path.join(dir, `${name}.log`);
  const out = fs.openSync(log, 'a');
  const child = spawn('ip', ['netns', 'exec', ns, cmd, ...args], { stdio: ['ignore', out, out], env: { ...process.env, ...env } });
  fs.closeSync(out);
  const p = { name, child, log, alive: () => child.exitCode === null && child.signalCode === null, tail: () => fs.readFileSync(log, 'utf8').split('\n').slice(-30).join('\n') };
  p.exited = new Promise((r) => child.once('exit', r));
  p.stop = async () => {
    if (!p.alive()) return;
    child.kill('SIGTERM');
    const t = setTimeout(() => child.kill('SIGKILL'), 5000);
    await p.exited;
    clearTimeout(t);
  };
  procs.push(p);
  return p;
}
const inNs = (ns, cmd, args) => spawnSync('ip', ['netns', 'exec', ns, cmd, ...args], { encoding: 'utf8' });

// ------------------------------------------------------------------ the cloud
function run(bin, args, input) {
  const r = spawnSync(bin, args, { input, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${path.basename(bin)} ${args.join(' ')}: exit ${r.status}\n${r.stdout}${r.stderr}`);
  return r.stdout;
}

/** A CA and a certificate for the signal server's public address (browsers are told to ignore
 * certificate errors; the gateways trust the CA through cloud_ca_file). */
function pki() {
  const ca = path.join(dir, 'ca');
  fs.mkdirSync(ca, { recursive: true });
  const o = (args) => run('openssl', args);
  o(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', `${ca}/ca.key`, '-out', `${ca}/ca.pem`, '-days', '2', '-subj', '/CN=Trunkline lab CA', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign']);
  o(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', `${ca}/server.key`, '-out', `${ca}/server.csr`, '-subj', `/CN=${L.SIGNAL_IP}`]);
  fs.writeFileSync(`${ca}/ext.cnf`, `subjectAltName=IP:${L.SIGNAL_IP}\nextendedKeyUsage=serverAuth\n`);
  o(['x509', '-req', '-in', `${ca}/server.csr`, '-CA', `${ca}/ca.pem`, '-CAkey', `${ca}/ca.key`, '-CAcreateserial', '-out', `${ca}/server.pem`, '-days', '2', '-extfile', `${ca}/ext.cnf`]);
  return { ca: `${ca}/ca.pem`, cert: `${ca}/server.pem`, key: `${ca}/server.key` };
}

let cloud;
async function startCloud() {
  const bin = path.join(BIN, 'signal-server');
  const cfg = path.join(dir, 'signal-server.toml');
  const certs = pki();
  fs.writeFileSync(path.join(dir, 'turn.secret'), `${SECRET}\n`);
  const t = L.TURN_IP;
  fs.writeFileSync(cfg, [
    `listen = "${L.SIGNAL_IP}:${SIGNAL_PORT}"`,
    `database_url = "sqlite://${dir}/cloud.db"`,
    `web_root = "${DIST}"`,
    `public_url = "https://${L.SIGNAL_IP}:${SIGNAL_PORT}"`,
    '[tls]', `cert_file = "${certs.cert}"`, `key_file = "${certs.key}"`,
    '[auth]', 'password_hash_memory_kib = 64', 'password_hash_iterations = 1',
    '[steering]', 'ring_timeout_ms = 30000',
    '[ice]',
    `stun_urls = ["stun:${t}:3478"]`,
    `turn_urls = ["turn:${t}:3478?transport=udp", "turn:${t}:3478?transport=tcp", "turns:${t}:443?transport=tcp"]`,
    `turn_secret_file = "${dir}/turn.secret"`,
    '',
  ].join('\n'));
  const c = ['--config', cfg];
  for (const sw of ['hq', 'branch']) {
    fs.writeFileSync(path.join(dir, `${sw}.secret`), `${sw}-secret-0123456789abcdef\n`);
    run(bin, ['switch', 'add', '--id', sw, '--secret-file', path.join(dir, `${sw}.secret`), ...c]);
  }
  for (const n of ['2001', '2002']) run(bin, ['account', 'add', '--number', n, '--name', `User ${n}`, '--password-file', '-', ...c], PASSWORD(n));
  run(bin, ['account', 'add', '--number', '1001', '--name', 'Reception', '--switch', 'hq', '--password-file', '-', ...c], PASSWORD('1001'));
  run(bin, ['account', 'add', '--number', '3001', '--name', 'Branch desk', '--switch', 'branch', '--password-file', '-', ...c], PASSWORD('3001'));
  const proc = spawnIn(L.PUB_NS, 'signal-server', bin, ['run', ...c], { RUST_LOG: process.env.RUST_LOG || 'info,turn_client_proto=warn,stun_proto=warn' });
  const url = `https://${L.SIGNAL_IP}:${SIGNAL_PORT}`;
  await waitFor('the signal server (https)', () => {
    if (!proc.alive()) throw new Error(`signal-server exited:\n${proc.tail()}`);
    return inNs(L.PUB_NS, 'curl', ['-sk', '--max-time', '1', `${url}/healthz`]).stdout.includes('ok');
  }, 20000, 200);
  cloud = { proc, url, cfg, bin, ca: certs.ca, calls: () => JSON.parse(run(bin, ['calls', '--json', ...c])) };
}

async function startGateway(id, site) {
  const ip = L[`SITE_${site}_HOST1`];
  const cfg = path.join(dir, `${id}.toml`);
  fs.writeFileSync(cfg, [
    `id = "${id}"`,
    `secret_file = "${dir}/${id}.secret"`,
    `cloud_url = "wss://${L.SIGNAL_IP}:${SIGNAL_PORT}/ws"`,
    `cloud_ca_file = "${cloud.ca}"`,
    `sip_listen = "${ip}:5060"`,
    'rtp_ports = "40000-40199"',
    'ring_timeout_secs = 30',
    `state_dir = "${dir}/${id}-state"`,
    '',
  ].join('\n'));
  const proc = spawnIn(L[`SITE_${site}_HOST1_NS`], id, path.join(BIN, 'switch-gateway'), ['run', '--config', cfg], { RUST_LOG: process.env.RUST_LOG || 'info,turn_client_proto=warn,stun_proto=warn' });
  await waitFor(`gateway ${id} online`, () => {
    if (!proc.alive()) throw new Error(`switch-gateway ${id} exited:\n${proc.tail()}`);
    const f = path.join(dir, `${id}-state`, 'phones.json');
    return fs.existsSync(f) && fs.readFileSync(f, 'utf8').length > 2;
  }, 20000, 200);
  return { proc, sip: `${ip}:5060` };
}

/** baresip in a site's namespace, its ctrl_tcp reached through a unix socket (socat). */
async function startPhone(site, host, number, gw, wav) {
  const ns = L[`SITE_${site}_HOST${host}_NS`];
  const ip = L[`SITE_${site}_HOST${host}`];
  const conf = path.join(dir, `baresip-${number}`);
  const rec = path.join(conf, 'rec');
  fs.mkdirSync(rec, { recursive: true });
  fs.writeFileSync(path.join(conf, 'config'), [
    'poll_method epoll', `sip_listen ${ip}:5062`, 'call_local_timeout 120', 'audio_buffer 200',
    `audio_source aufile,${wav}`, `audio_player aubridge,out${number}`, `audio_alert aubridge,out${number}`,
    'rtp_ports 41000-41099', 'jitter_buffer_delay 5-10', 'module_path /usr/lib/baresip/modules',
    'module g711.so', 'module sndfile.so', 'module aufile.so', 'module aubridge.so',
    'module_tmp account.so', 'module_app menu.so', 'module_app ctrl_tcp.so', 'ctrl_tcp_listen 127.0.0.1:4444',
    `snd_path ${rec}`, '',
  ].join('\n'));
  fs.writeFileSync(path.join(conf, 'accounts'), `<sip:${number}@${gw};transport=udp>;auth_pass=${PASSWORD(number)};regint=300;answermode=auto\n`);
  fs.writeFileSync(path.join(conf, 'contacts'), '');
  const child = spawnIn(ns, `baresip-${number}`, 'baresip', ['-f', conf]);
  const sock = path.join(dir, `ctrl-${number}.sock`);
  spawnIn(ns, `socat-${number}`, 'socat', [`UNIX-LISTEN:${sock},fork`, 'TCP:127.0.0.1:4444']);
  const phone = new Phone(number, child.child, child.log, rec);
  phone.sock = await waitFor(`baresip ${number} control`, () => new Promise((resolve) => {
    if (!fs.existsSync(sock)) return resolve(null);
    const s = net.connect(sock);
    s.once('connect', () => resolve(s));
    s.once('error', () => resolve(null));
  }), 15000, 100);
  // A connect can succeed before baresip listens (socat accepts, then fails): check with a command.
  phone.sock.on('data', (d) => phone.onData(d));
  await phone.registered();
  return phone;
}

// ------------------------------------------------------------------ browsers
/** Chromium run inside network namespace `ns` (a wrapper script as its executable). */
async function browserIn(site, host, micWav, { beforeLoad } = {}) {
  const ns = L[`SITE_${site}_HOST${host}_NS`];
  const wrapper = path.join(dir, `chromium-${ns}.sh`);
  fs.writeFileSync(wrapper, `#!/bin/sh\nexec ip netns exec ${ns} ${CHROMIUM} "$@"\n`, { mode: 0o755 });
  const browser = await chromium.launch({
    executablePath: wrapper,
    headless: true,
    ignoreDefaultArgs: ['--mute-audio'],
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
      `--use-file-for-fake-audio-capture=${micWav}`, '--autoplay-policy=no-user-gesture-required',
      // The lab's own CA signs the page and the TURN/TLS server.
      '--ignore-certificate-errors',
      // A public page talking to a private host candidate would ask for the local-network
      // permission, which headless Chromium cannot grant; srflx/relay paths do not need it.
      '--disable-features=LocalNetworkAccessChecks,LocalNetworkAccessChecksWebSockets',
    ],
  });
  cleanups.push(() => browser.close().catch(() => {}));
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  await context.grantPermissions(['microphone'], { origin: cloud.url });
  const page = await context.newPage();
  page.logs = [];
  page.webSockets = [];
  page.on('console', (m) => page.logs.push(`[${m.type()}] ${m.text()}`));
  page.on('websocket', (ws) => page.webSockets.push(ws.url()));
  if (beforeLoad) await beforeLoad(page);
  await page.goto(cloud.url);
  return page;
}

const byId = (page, id) => page.locator(`[data-testid="${id}"]`);
async function signIn(page, number) {
  await byId(page, 'login-number').fill(number);
  await byId(page, 'login-password').fill(PASSWORD(number));
  await byId(page, 'login-submit').click();
  await page.waitForSelector('[data-testid="conn-state"][data-state="connected"]', { timeout: 20000 });
}
async function dial(page, number) {
  await byId(page, 'dial-input').fill(number);
  await byId(page, 'dial-call').click();
}
const callState = (page, state, ms = 30000) => page.waitForSelector(`[data-testid="call-state"][data-state="${state}"]`, { timeout: ms });

/** The selected candidate pair: local/remote candidate types and the relay protocol. */
async function selectedPair(page) {
  return page.evaluate(async () => {
    const stats = await window.trunkline.pc.getStats();
    const byId = new Map();
    stats.forEach((s) => byId.set(s.id, s));
    let pair = null;
    stats.forEach((s) => {
      if (s.type === 'transport' && s.selectedCandidatePairId) pair = byId.get(s.selectedCandidatePairId);
    });
    if (!pair) stats.forEach((s) => { if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s; });
    if (!pair) return null;
    const l = byId.get(pair.localCandidateId) || {};
    const r = byId.get(pair.remoteCandidateId) || {};
    return { local: l.candidateType, remote: r.candidateType, relayProtocol: l.relayProtocol || null, localAddr: `${l.address}:${l.port}`, remoteAddr: `${r.address}:${r.port}` };
  });
}

async function inbound(page) {
  return page.evaluate(async () => {
    const pc = window.trunkline && window.trunkline.pc;
    if (!pc) return null;
    let out = null;
    (await pc.getStats()).forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'audio') out = { packets: s.packetsReceived || 0, energy: s.totalAudioEnergy || 0 };
    });
    return out;
  });
}
const audioArrives = (page, who) => waitFor(`${who}: inbound audio`, async () => {
  const s = await inbound(page);
  return s && s.packets > 50 && s.energy > 0 ? s : null;
}, 30000, 250);

async function remoteFrequency(page, ms = 1500) {
  return page.evaluate(async (ms) => {
    const stream = window.trunkline && window.trunkline.remote;
    if (!stream) return null;
    const ctx = new AudioContext();
    await ctx.resume();
    const an = ctx.createAnalyser();
    an.fftSize = 8192;
    ctx.createMediaStreamSource(stream).connect(an);
    await new Promise((r) => setTimeout(r, ms));
    const bins = new Float32Array(an.frequencyBinCount);
    an.getFloatFrequencyData(bins);
    let best = -Infinity, idx = 0;
    for (let i = 2; i < bins.length; i++) if (bins[i] > best) { best = bins[i]; idx = i; }
    return (idx * ctx.sampleRate) / an.fftSize;
  }, ms);
}
const near = (f, want, tol = 25) => f !== null && Math.abs(f - want) < tol;

function noInsecureSockets(page) {
  for (const u of page.webSockets) assert.ok(u.startsWith(`wss://${L.SIGNAL_IP}:${SIGNAL_PORT}/`), `the https page opened ${u}`);
}

// ------------------------------------------------------------------ tests
const tests = [];
const test = (name, fn) => tests.push({ name, fn });
const MIC_2001 = toneWav(path.join(dir, 'tone1000.wav'), 1000, 60);
const MIC_2002 = toneWav(path.join(dir, 'tone500.wav'), 500, 60);
const WAV_1001 = toneWav(path.join(dir, 'tone440.wav'), 440, 120, 8000);
const WAV_3001 = toneWav(path.join(dir, 'tone660.wav'), 660, 120, 8000);
let phones = {};

async function f1(home, host, callee, phoneFreq) {
  const page = await browserIn(home, host, MIC_2001);
  await signIn(page, '2001');
  await dial(page, callee);
  await callState(page, 'connected');
  await audioArrives(page, '2001');
  const heard = await remoteFrequency(page);
  assert.ok(near(heard, phoneFreq), `the browser heard ${heard} Hz, expected ${phoneFreq}`);
  // The phone records from the start of the call: wait for 2 s more than it has now.
  const have = phones[callee].received();
  const secs = (have ? have.samples.length / have.rate : 0) + 2;
  const rec = await phones[callee].waitReceived(secs, 20000);
  const { freq } = dominantFrequency(lastSeconds(rec, 1));
  assert.ok(near(freq, 1000), `desk phone ${callee} heard ${freq} Hz, expected the browser's 1000`);
  noInsecureSockets(page);
  return page;
}

async function hangup(page) {
  await byId(page, 'call-hangup').click();
  await callState(page, 'ended');
}

test('F1 https softphone behind a cone NAT → desk phone at a site behind a cone NAT: direct, no relay', async () => {
  const page = await f1('hc', 1, '1001', 440);
  const pair = await selectedPair(page);
  assert.ok(pair && pair.local !== 'relay' && pair.remote !== 'relay', `direct pair expected: ${JSON.stringify(pair)}`);
  await hangup(page);
});

test('F1 softphone behind a symmetric NAT → site behind a symmetric NAT: relayed, audio both ways; audio continues with the signal server stopped', async () => {
  const page = await f1('hs', 1, '3001', 660);
  const pair = await selectedPair(page);
  assert.ok(pair && (pair.local === 'relay' || pair.remote === 'relay'), `relayed pair expected: ${JSON.stringify(pair)}`);
  // The cloud goes away mid-call: the media path does not go through it.
  await cloud.proc.stop();
  try {
    const before = (await inbound(page)).packets;
    await waitFor('audio after the signal server stopped', async () => ((await inbound(page)) || { packets: 0 }).packets > before + 100, 15000, 250);
  } finally {
    await cloud.restart();
  }
  // Hang up over the DataChannel (no cloud needed). Closing the browser instead leaves the
  // gateway to notice the silence (30 s), and 3001 would still be busy for the next case.
  await hangup(page);
});

test('F1 from a home network that drops all outgoing UDP: TURN over TCP/TLS, audio both ways', async () => {
  const page = await f1('hu', 1, '1001', 440);
  const pair = await selectedPair(page);
  assert.ok(pair && pair.local === 'relay' && ['tcp', 'tls'].includes(pair.relayProtocol), `a relay over TCP/TLS expected: ${JSON.stringify(pair)}`);
  await hangup(page);
});

test('F1 browser on the gateway\'s own LAN: host pair, media never leaves the LAN', async () => {
  const page = await f1('hq', 3, '1001', 440);
  const pair = await selectedPair(page);
  assert.ok(pair && pair.local === 'host' && pair.remote === 'host', `host pair expected: ${JSON.stringify(pair)}`);
  await hangup(page);
});

test('F3 desk phone at a site behind a symmetric NAT → switchless browser behind a symmetric NAT: relayed, audio both ways', async () => {
  const page = await browserIn('hs2', 1, MIC_2002);
  await signIn(page, '2002');
  await phones['3001'].dial(`sip:2002@${L.SITE_br_HOST1}:5060`);
  await byId(page, 'incoming-answer').click({ timeout: 20000 });
  await callState(page, 'connected');
  await audioArrives(page, '2002');
  const heard = await remoteFrequency(page);
  assert.ok(near(heard, 660), `the browser heard ${heard} Hz, expected 3001's 660`);
  const have = phones['3001'].received();
  const rec = await phones['3001'].waitReceived((have ? have.samples.length / have.rate : 0) + 2, 20000);
  const { freq } = dominantFrequency(lastSeconds(rec, 1));
  assert.ok(near(freq, 500), `3001 heard ${freq} Hz, expected the browser's 500`);
  const pair = await selectedPair(page);
  assert.ok(pair && (pair.local === 'relay' || pair.remote === 'relay'), `relayed pair expected: ${JSON.stringify(pair)}`);
  noInsecureSockets(page);
  await hangup(page);
});

/** A credential that is certainly not `c`: its first character changed. (Overwriting it with a
 * fixed "x" left one credential in 64 intact, a base64 HMAC that already began with "x": that
 * browser then got a working relay, and the F4 case below could connect instead of failing.) */
const forged = (c) => `${c[0] === 'x' ? 'y' : 'x'}${c.slice(1)}`;

/** Forge every TURN credential the page gets (welcome / ice_servers): coturn answers 401. */
const forgeTurn = (p) => p.routeWebSocket(/\/ws$/, (ws) => {
  const server = ws.connectToServer();
  ws.onMessage((m) => server.send(m));
  server.onMessage((m) => {
    const msg = typeof m === 'string' ? JSON.parse(m) : null;
    if (msg && (msg.type === 'welcome' || msg.type === 'ice_servers')) {
      for (const s of msg.ice_servers || []) if (s.credential) s.credential = forged(s.credential);
      return ws.send(JSON.stringify(msg));
    }
    ws.send(m);
  });
});

test('F1 with forged TURN credentials in the browser, symmetric NATs both sides: the gateway\'s own relay still carries the call', async () => {
  const page = await browserIn('hs', 1, MIC_2001, { beforeLoad: forgeTurn });
  await signIn(page, '2001');
  await dial(page, '3001');
  await callState(page, 'connected');
  await audioArrives(page, '2001');
  const pair = await selectedPair(page);
  assert.ok(pair && pair.local !== 'relay' && pair.remote === 'relay', `the gateway's relay expected: ${JSON.stringify(pair)}`);
  assert.match(fs.readFileSync(L.TURN_LOG, 'utf8'), /401/, 'coturn refused the forged credential');
  await hangup(page);
});

test('F4 with forged TURN credentials, both browsers behind symmetric NATs: "Could not connect — network" within seconds, recorded connect_failed', async () => {
  const a = await browserIn('hs', 1, MIC_2001, { beforeLoad: forgeTurn });
  const b = await browserIn('hs2', 1, MIC_2002, { beforeLoad: forgeTurn });
  await signIn(a, '2001');
  await signIn(b, '2002');
  const t0 = Date.now();
  await dial(a, '2002');
  await byId(b, 'incoming-answer').click({ timeout: 20000 });
  await callState(a, 'ended', 40000);
  const took = Date.now() - t0;
  assert.equal((await byId(a, 'call-outcome').textContent()).trim(), 'Could not connect — network');
  assert.ok(took < 30000, `an outcome within seconds, not a hang (${took} ms)`);
  await waitFor('a connect_failed call record', () => cloud.calls().find((c) => c.caller === '2001' && c.callee === '2002' && c.outcome === 'connect_failed'), 15000, 250);
});

test('F4 two browsers behind symmetric NATs: relayed, audio both ways', async () => {
  const a = await browserIn('hs', 1, MIC_2001);
  const b = await browserIn('hs2', 1, MIC_2002);
  await signIn(a, '2001');
  await signIn(b, '2002');
  await dial(a, '2002');
  await byId(b, 'incoming-answer').click({ timeout: 20000 });
  await audioArrives(a, '2001');
  await audioArrives(b, '2002');
  assert.ok(near(await remoteFrequency(a), 500), '2001 hears 2002');
  assert.ok(near(await remoteFrequency(b), 1000), '2002 hears 2001');
  const pair = await selectedPair(a);
  assert.ok(pair && (pair.local === 'relay' || pair.remote === 'relay'), `relayed pair expected: ${JSON.stringify(pair)}`);
  await hangup(a);
});

test('F4 two browsers behind cone NATs: direct', async () => {
  const a = await browserIn('hc', 1, MIC_2001);
  const b = await browserIn('hq', 3, MIC_2002);
  await signIn(a, '2001');
  await signIn(b, '2002');
  await dial(a, '2002');
  await byId(b, 'incoming-answer').click({ timeout: 20000 });
  await audioArrives(a, '2001');
  await audioArrives(b, '2002');
  const pair = await selectedPair(a);
  assert.ok(pair && pair.local !== 'relay' && pair.remote !== 'relay', `direct pair expected: ${JSON.stringify(pair)}`);
  await hangup(a);
});

// ------------------------------------------------------------------ benchmark
/** CPU time (µs) a process has used, from /proc (utime + stime, in clock ticks of 10 ms). */
function cpuMicros(pid) {
  const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) * 10000;
}

const pct = (xs, p) => {
  const v = [...xs].sort((a, b) => a - b);
  return v[Math.min(v.length - 1, Math.floor((p / 100) * v.length))];
};

/** Marks, in the page, when the call button is clicked (`__dialAt`: typing the number is not
 * dialling) and when the first audio packet arrives (`__audioAt`: Chromium creates a remote track
 * muted and unmutes it on its first RTP packet), both in `performance.now()` time. */
const firstAudioMarks = (page) => page.addInitScript(() => {
  document.addEventListener('click', (e) => {
    if (e.target instanceof Element && e.target.closest('[data-testid="dial-call"]')) {
      window.__dialAt = performance.now();
      window.__audioAt = null;
    }
  }, true);
  const Pc = window.RTCPeerConnection;
  window.RTCPeerConnection = class extends Pc {
    constructor(...args) {
      super(...args);
      this.addEventListener('track', (ev) => {
        if (ev.track.kind !== 'audio' || !ev.track.muted) return;
        ev.track.addEventListener('unmute', () => { window.__audioAt ??= performance.now(); }, { once: true });
      });
    }
  };
});

/** `n` F1 calls from `home` to `callee`, each timed from the click on the call button to the
 * first audio packet the page receives (the remote track's `unmute`; `getStats()` polled every
 * 5 ms as a fallback, whichever says so first), hung up at once. */
async function dialToFirstAudio(home, callee, n) {
  const page = await browserIn(home, 1, MIC_2001, { beforeLoad: firstAudioMarks });
  await signIn(page, '2001');
  const times = [];
  const vias = {};
  for (let i = 0; i < n; i++) {
    await dial(page, callee);
    const { ms, via } = await page.evaluate(() => new Promise((resolve, reject) => {
      const end = performance.now() + 20000;
      const tick = async () => {
        if (window.__audioAt != null) return resolve({ ms: window.__audioAt - window.__dialAt, via: 'unmute' });
        const pc = window.trunkline && window.trunkline.pc;
        if (pc) {
          let got = 0;
          (await pc.getStats()).forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'audio') got = s.packetsReceived || 0; });
          if (window.__audioAt != null) return resolve({ ms: window.__audioAt - window.__dialAt, via: 'unmute' });
          if (got > 0) return resolve({ ms: performance.now() - window.__dialAt, via: 'getStats' });
        }
        if (performance.now() > end) return reject(new Error('no audio within 20 s'));
        setTimeout(tick, 5);
      };
      tick();
    }));
    times.push(ms);
    vias[via] = (vias[via] || 0) + 1;
    if (process.env.KEEP === '1') {
      const at = await page.evaluate(() => performance.timeOrigin + window.__dialAt);
      console.log(`# ${home} call ${i + 1} dialled at ${new Date(at).toISOString()}: first audio after ${ms.toFixed(1)} ms`);
    }
    await hangup(page);
    // The ended call stays on screen until the next dial (it never detaches, so waiting for that
    // only cost 10 s a call): a fixed gap instead, so that one call's teardown (DTLS close, TURN
    // deletes) does not overlap the next one's set-up.
    await sleep(1500);
  }
  for (const c of cleanups.splice(0)) await c();
  console.log(`# ${home} → ${callee}: ${times.map((t) => t.toFixed(0)).join(' ')} ms (first audio seen by ${JSON.stringify(vias)})`);
  return { p50: pct(times, 50), p99: pct(times, 99), n };
}

async function bench(n, gateways) {
  const kv = {};
  const cpu0 = cpuMicros(gateways.hq.proc.child.pid);
  const s1 = await dialToFirstAudio('hc', '1001', n);
  const cpu1 = cpuMicros(gateways.hq.proc.child.pid);
  const s2 = await dialToFirstAudio('hs', '3001', n);
  const s3 = await dialToFirstAudio('hu', '1001', n);
  Object.assign(kv, {
    calls: n,
    s1_p50: s1.p50.toFixed(1), s1_p99: s1.p99.toFixed(1),
    s2_p50: s2.p50.toFixed(1), s2_p99: s2.p99.toFixed(1),
    s3_p50: s3.p50.toFixed(1), s3_p99: s3.p99.toFixed(1),
    gw_cpu_us_per_call: Math.round((cpu1 - cpu0) / n),
  });
  const text = Object.entries(kv).map(([k, v]) => `${k}=${v}`).join('\n') + '\n';
  if (process.env.NATLAB_BENCH_KV) fs.writeFileSync(process.env.NATLAB_BENCH_KV, text);
  console.log(text.trim());
}

// ------------------------------------------------------------------ runner
async function main() {
  L = lab(['up', ID, ...SITES]);
  Object.assign(L, lab(['coturn', ID, SECRET]));
  if (process.env.NATLAB_PCAP === '1') {
    for (const site of ['hq', 'br', 'hc', 'hs', 'hu']) {
      const ns = L[`SITE_${site}_HOST1_NS`];
      spawnIn(ns, `tcpdump-${site}`, 'tcpdump', ['-i', 'any', '-n', '-U', '-s', '256', '-w', path.join(dir, `${ns}.pcap`), 'not', 'port', String(SIGNAL_PORT)]);
    }
    await sleep(500);
  }
  await startCloud();
  cloud.restart = async () => {
    const c = ['--config', cloud.cfg];
    const log = path.join(dir, 'signal-server-2.log');
    const from = fs.existsSync(log) ? fs.statSync(log).size : 0;
    cloud.proc = spawnIn(L.PUB_NS, 'signal-server-2', cloud.bin, ['run', ...c], { RUST_LOG: process.env.RUST_LOG || 'info,turn_client_proto=warn,stun_proto=warn' });
    await waitFor('the signal server again', () => inNs(L.PUB_NS, 'curl', ['-sk', '--max-time', '1', `${cloud.url}/healthz`]).stdout.includes('ok'), 20000, 200);
    // The gateways come back on their own reconnect backoff (up to ≈ 3 s after a short outage).
    // Until then a call to their phones ends `switch_unavailable`: the case after this one
    // (TURN over TCP/TLS, which dials hq's 1001) used to dial before hq was back, about one run
    // in six, and then waited its whole 30 s for `connected`.
    await waitFor('both gateways signed in again', () => {
      const text = fs.readFileSync(log).subarray(from).toString('utf8');
      return ['hq', 'branch'].every((id) => new RegExp(`switch signed in.*switch_id=${id}\\b`).test(text));
    }, 20000, 200);
  };
  const hq = await startGateway('hq', 'hq');
  const br = await startGateway('branch', 'br');
  phones['1001'] = await startPhone('hq', 2, '1001', hq.sip, WAV_1001);
  phones['3001'] = await startPhone('br', 2, '3001', br.sip, WAV_3001);
  if (process.argv[2] === '--bench') {
    await bench(Number(process.argv[3] || 20), { hq, br });
    return 0;
  }
  let passed = 0, failed = 0;
  for (const t of tests.filter((t) => t.name.includes(filter))) {
    // One retry, said out loud: a case that needed it is printed as passed "on its retry".
    // (The UDP-blocked home's call over TURN/TCP needed it about one run in six, until the
    // restart above waited for the gateways to sign in again.) A case that fails twice fails.
    for (let attempt = 1; attempt <= 2; attempt++) {
      const started = Date.now();
      let error = null;
      try {
        await t.fn();
      } catch (e) {
        error = e;
      }
      for (const c of cleanups.splice(0)) await c();
      for (const p of Object.values(phones)) p.events.length = 0;
      const secs = ((Date.now() - started) / 1000).toFixed(1);
      if (!error) {
        passed++;
        console.log(`ok   ${t.name} (${secs} s)${attempt > 1 ? ' — on its retry' : ''}`);
        break;
      }
      if (attempt === 2) {
        failed++;
        console.log(`FAIL ${t.name}: ${error.stack || error}`);
        // What the parts said last: a run without KEEP=1 (CI) deletes the lab folder.
        for (const p of procs) console.log(`--- ${p.name}${p.alive() ? '' : ' (exited)'}, last lines\n${p.tail()}`);
        if (L.TURN_LOG && fs.existsSync(L.TURN_LOG)) {
          console.log(`--- coturn, last lines\n${fs.readFileSync(L.TURN_LOG, 'utf8').split('\n').slice(-30).join('\n')}`);
        }
      } else {
        console.log(`retry ${t.name} after: ${String(error.message || error).split('\n')[0]}`);
      }
    }
  }
  console.log(`${passed} passed, ${failed} failed`);
  return failed;
}

let code = 1;
try {
  code = (await main()) ? 1 : 0;
} catch (e) {
  console.log(`FAIL setup: ${e.stack || e}`);
  for (const p of procs) if (!p.alive()) console.log(`--- ${p.name} (exited)\n${p.tail()}`);
  console.log('0 passed, 1 failed');
} finally {
  for (const c of cleanups.splice(0)) await c();
  for (const p of procs) await p.stop();
  if (process.env.KEEP !== '1') {
    spawnSync(LAB, ['down', ID]);
    fs.rmSync(dir, { recursive: true, force: true });
  } else {
    console.log(`kept: lab ${ID}, folder ${dir}`);
  }
}
process.exit(code);
