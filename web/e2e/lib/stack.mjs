// The real system for the browser tests: the cargo-built `signal-server` (temp SQLite,
// provisioned through its CLI, serving dist/ as web_root) and `switch-gateway` binaries, on
// free loopback ports.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import dgram from 'node:dgram';

export const ROOT = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../../..');
export const BIN = process.env.TRUNKLINE_BIN_DIR || path.join(ROOT, 'target', 'debug');
export const DIST = process.env.TRUNKLINE_WEB_ROOT || path.join(ROOT, 'dist');

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A free TCP port on 127.0.0.1 (also free for UDP when `udp`). */
export async function freePort({ udp = false } = {}) {
  for (let i = 0; i < 100; i++) {
    const port = await new Promise((resolve, reject) => {
      const s = net.createServer();
      s.once('error', reject);
      s.listen(0, '127.0.0.1', () => {
        const p = s.address().port;
        s.close(() => resolve(p));
      });
    });
    if (!udp) return port;
    const ok = await new Promise((resolve) => {
      const u = dgram.createSocket('udp4');
      u.once('error', () => resolve(false));
      u.bind(port, '127.0.0.1', () => u.close(() => resolve(true)));
    });
    if (ok) return port;
  }
  throw new Error('no free port');
}

/** Poll `cond` until it returns a truthy value or `ms` pass. */
export async function waitFor(what, cond, ms = 15000, step = 100) {
  const end = Date.now() + ms;
  let last;
  for (;;) {
    try {
      const v = await cond();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}${last ? `: ${last.message}` : ''}`);
    await sleep(step);
  }
}

function run(bin, args, input) {
  const r = spawnSync(bin, args, { input, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${path.basename(bin)} ${args.join(' ')}: exit ${r.status}\n${r.stdout}${r.stderr}`);
  return r.stdout;
}

/** A child process whose output goes to a log file; `stop()` ends it (SIGTERM, then SIGKILL). */
class Proc {
  constructor(name, bin, args, log, opts = {}) {
    this.name = name;
    this.log = log;
    const out = fs.openSync(log, 'a');
    this.child = spawn(bin, args, { stdio: ['ignore', out, out], ...opts });
    fs.closeSync(out);
    this.exited = new Promise((resolve) => this.child.once('exit', (code, sig) => resolve({ code, sig })));
  }
  get alive() { return this.child.exitCode === null && this.child.signalCode === null; }
  async stop() {
    if (!this.alive) return;
    this.child.kill('SIGTERM');
    const t = setTimeout(() => this.child.kill('SIGKILL'), 5000);
    await this.exited;
    clearTimeout(t);
  }
  tail(n = 40) {
    try {
      return fs.readFileSync(this.log, 'utf8').split('\n').slice(-n).join('\n');
    } catch {
      return '';
    }
  }
}

export const PASSWORD = (n) => `pw-${n}-secret`;

/**
 * The signal server with accounts: browsers 2001 (Alice), 2002 (Bob); desk phone 1001 on
 * switch hq (and its switch secret, for a gateway).
 */
export async function startCloud(dir, { port = 0, reuse = false } = {}) {
  const bin = path.join(BIN, 'signal-server');
  if (!fs.existsSync(bin)) throw new Error(`${bin} is missing: cargo build -p trunkline-signal-server`);
  if (!fs.existsSync(path.join(DIST, 'index.html'))) throw new Error(`${DIST}/index.html is missing: run web/build.sh`);
  port = port || (await freePort());
  const cfg = path.join(dir, 'signal-server.toml');
  const secretFile = path.join(dir, 'hq.secret');
  const c = ['--config', cfg];
  if (!reuse) provision(dir, bin, cfg, port, secretFile);
  const proc = new Proc('signal-server', bin, ['run', ...c], path.join(dir, 'signal-server.log'), {
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info' },
  });
  const url = `http://127.0.0.1:${port}`;
  await waitFor('the signal server', async () => {
    if (!proc.alive) throw new Error(`signal-server exited:\n${proc.tail()}`);
    const r = await fetch(`${url}/healthz`);
    return r.ok;
  });
  return { proc, url, port, cfg, bin, secretFile, calls: () => JSON.parse(run(bin, ['calls', '--json', ...c])), stop: () => proc.stop() };
}

function provision(dir, bin, cfg, port, secretFile) {
  fs.writeFileSync(cfg, [
    `listen = "127.0.0.1:${port}"`,
    `database_url = "sqlite://${dir}/cloud.db"`,
    `web_root = "${DIST}"`,
    `public_url = "http://127.0.0.1:${port}"`,
    '[auth]',
    // Cheap hashes: the tests sign in often.
    'password_hash_memory_kib = 64',
    'password_hash_iterations = 1',
    '[steering]',
    'ring_timeout_ms = 30000',
    '[push]',
    // The Web Push test's stand-in push service listens on 127.0.0.1.
    'allow_loopback_endpoints = true',
    '',
  ].join('\n'));
  fs.writeFileSync(secretFile, 'hq-secret-0123456789abcdef\n');
  const c = ['--config', cfg];
  run(bin, ['switch', 'add', '--id', 'hq', '--secret-file', secretFile, ...c]);
  for (const [n, name] of [['2001', 'Alice'], ['2002', 'Bob']]) {
    run(bin, ['account', 'add', '--number', n, '--name', name, '--password-file', '-', ...c], PASSWORD(n));
  }
  run(bin, ['account', 'add', '--number', '1001', '--name', 'Reception', '--switch', 'hq', '--password-file', '-', ...c], PASSWORD('1001'));
}

/** Switch gateway `hq` linked to `cloud`. */
export async function startGateway(dir, cloud) {
  const bin = path.join(BIN, 'switch-gateway');
  if (!fs.existsSync(bin)) throw new Error(`${bin} is missing: cargo build -p trunkline-switch-gateway`);
  // SIP for desk phones is all it listens on: the softphone reaches it over WebRTC through
  // the signal server.
  const sip = await freePort({ udp: true });
  const rtpBase = 30000 + 2 * Math.floor(Math.random() * 4000);
  const cfg = path.join(dir, 'hq.toml');
  fs.writeFileSync(cfg, [
    'id = "hq"',
    `secret_file = "${cloud.secretFile}"`,
    `cloud_url = "ws://127.0.0.1:${cloud.port}/ws"`,
    `sip_listen = "127.0.0.1:${sip}"`,
    `rtp_ports = "${rtpBase}-${rtpBase + 99}"`,
    'ring_timeout_secs = 30',
    `state_dir = "${dir}/hq-state"`,
    '',
  ].join('\n'));
  const proc = new Proc('switch-gateway', bin, ['run', '--config', cfg], path.join(dir, 'hq.log'), {
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info' },
  });
  // Online at the cloud once it has written the phone list the cloud sent it.
  await waitFor('the gateway to be online', async () => {
    if (!proc.alive) throw new Error(`switch-gateway exited:\n${proc.tail()}`);
    const f = path.join(dir, 'hq-state', 'phones.json');
    return fs.existsSync(f) && fs.readFileSync(f, 'utf8').includes('"1001"');
  });
  return { proc, sip: `127.0.0.1:${sip}`, rtpPorts: [rtpBase, rtpBase + 99], stop: () => proc.stop() };
}

/** A mono 16-bit WAV of a sine (`rate` Hz sample rate). */
export function toneWav(file, freq, secs, rate = 48000) {
  const r = spawnSync('sox', ['-n', '-r', String(rate), '-c', '1', '-b', '16', file, 'synth', String(secs), 'sine', String(freq), 'vol', '0.5']);
  if (r.status !== 0) throw new Error(`sox: ${r.stderr}`);
  return file;
}
