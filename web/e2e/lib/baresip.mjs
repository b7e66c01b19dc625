// baresip 1.0 as a real desk phone (the same setup as switch-gateway/tests/common/baresip.rs):
// its own config folder, free SIP/RTP/control ports, a WAV file as microphone
// (`audio_source aufile`), what it receives recorded by `sndfile` (dump-*-dec.wav), and control
// over `ctrl_tcp` (JSON in netstrings: commands, responses and every UA event).
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { freePort, sleep, waitFor } from './stack.mjs';
import { readWav } from './audio.mjs';

const MODULES = '/usr/lib/baresip/modules';

async function freeRtpRange() {
  for (let i = 0; i < 50; i++) {
    const base = (15000 + Math.floor(Math.random() * 4900)) & ~1;
    const ok = await new Promise((resolve) => {
      const s = net.createServer();
      s.once('error', () => resolve(false));
      s.listen(base, '127.0.0.1', () => s.close(() => resolve(true)));
    });
    if (ok) return [base, base + 19];
  }
  throw new Error('no free RTP range');
}

/** A SIP port p with p + 1 free too (baresip's TLS transport binds p + 1). */
async function freeSipPort() {
  for (let i = 0; i < 50; i++) {
    const p = await freePort({ udp: true });
    if (p >= 65000) continue;
    const ok = await new Promise((resolve) => {
      const s = net.createServer();
      s.once('error', () => resolve(false));
      s.listen(p + 1, '127.0.0.1', () => s.close(() => resolve(true)));
    });
    if (ok) return p;
  }
  throw new Error('no free SIP port pair');
}

export class Phone {
  /** Start baresip for `number` registered at gateway `gw` ("127.0.0.1:port"), `wav` as mic. */
  static async start(dir, number, password, gw, wav, { autoAnswer = false } = {}) {
    const conf = path.join(dir, `baresip-${number}`);
    const rec = path.join(conf, 'rec');
    fs.mkdirSync(rec, { recursive: true });
    const sip = await freeSipPort();
    const ctrlPort = await freePort();
    const [r0, r1] = await freeRtpRange();
    fs.writeFileSync(path.join(conf, 'config'), [
      'poll_method epoll',
      `sip_listen 127.0.0.1:${sip}`,
      'call_local_timeout 120',
      'call_max_calls 4',
      'audio_buffer 200',
      `audio_source aufile,${wav}`,
      `audio_player aubridge,out${number}`,
      `audio_alert aubridge,out${number}`,
      `rtp_ports ${r0}-${r1}`,
      'jitter_buffer_delay 5-10',
      `module_path ${MODULES}`,
      'module g711.so',
      'module sndfile.so',
      'module aufile.so',
      'module aubridge.so',
      'module_tmp account.so',
      'module_app menu.so',
      'module_app ctrl_tcp.so',
      `ctrl_tcp_listen 127.0.0.1:${ctrlPort}`,
      `snd_path ${rec}`,
      '',
    ].join('\n'));
    const answer = autoAnswer ? ';answermode=auto' : '';
    fs.writeFileSync(path.join(conf, 'accounts'), `<sip:${number}@${gw};transport=udp>;auth_pass=${password};regint=300${answer}\n`);
    fs.writeFileSync(path.join(conf, 'contacts'), '');
    const log = path.join(conf, 'baresip.log');
    const out = fs.openSync(log, 'a');
    const child = spawn('baresip', ['-f', conf], { stdio: ['ignore', out, out] });
    fs.closeSync(out);
    const phone = new Phone(number, child, log, rec);
    await phone.connect(ctrlPort);
    return phone;
  }

  constructor(number, child, log, rec) {
    this.number = number;
    this.child = child;
    this.log = log;
    this.rec = rec;
    this.events = [];
    this.buf = Buffer.alloc(0);
    this.waiters = [];
    this.token = 1;
    this.exited = new Promise((r) => child.once('exit', r));
  }

  async connect(port) {
    this.sock = await waitFor(`baresip ${this.number} ctrl_tcp`, () => new Promise((resolve) => {
      const s = net.connect(port, '127.0.0.1');
      s.once('connect', () => resolve(s));
      s.once('error', () => resolve(null));
    }), 15000, 100);
    this.sock.on('data', (d) => this.onData(d));
  }

  onData(d) {
    this.buf = Buffer.concat([this.buf, d]);
    for (;;) {
      const colon = this.buf.indexOf(0x3a);
      if (colon < 0) return;
      const len = Number(this.buf.subarray(0, colon).toString());
      if (this.buf.length < colon + 1 + len + 1) return;
      const json = JSON.parse(this.buf.subarray(colon + 1, colon + 1 + len).toString());
      this.buf = this.buf.subarray(colon + len + 2);
      if (json.event) this.events.push(json);
      for (const w of [...this.waiters]) w(json);
    }
  }

  /** Run a ctrl_tcp command; resolves with its response data (rejects when not ok). */
  command(command, params = '') {
    const token = `t${this.token++}`;
    const body = JSON.stringify({ command, params, token });
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => { done(); reject(new Error(`baresip ${this.number}: no response to ${command}`)); }, 10000);
      const w = (m) => {
        if (m.response && m.token === token) {
          done();
          if (m.ok) resolve(m.data || ''); else reject(new Error(`baresip ${command}: ${m.data}`));
        }
      };
      const done = () => { clearTimeout(timer); this.waiters = this.waiters.filter((x) => x !== w); };
      this.waiters.push(w);
      this.sock.write(`${Buffer.byteLength(body)}:${body},`);
    });
  }

  async registered() {
    await waitFor(`baresip ${this.number} registration`, async () => {
      const info = await this.command('reginfo');
      if (/ERR/.test(info)) throw new Error(`${this.number} could not register: ${info}`);
      return /OK/.test(info);
    }, 15000, 200);
  }

  /** Wait for an event of `type` (seen ones count). */
  async event(type, ms = 15000) {
    return waitFor(`baresip ${this.number} event ${type} (seen: ${this.events.map((e) => e.type).join(',')})`, () => this.events.find((e) => e.type === type), ms, 50);
  }

  saw(type) { return this.events.some((e) => e.type === type); }
  dtmf() { return this.events.filter((e) => e.type === 'CALL_DTMF_START').map((e) => e.param).join(''); }
  dial(uri) { return this.command('dial', uri); }
  hangup() { return this.command('hangup'); }
  answer() { return this.command('accept'); }

  /** What it received so far (the recording may still be open). */
  received() {
    const files = fs.readdirSync(this.rec).filter((f) => f.endsWith('-dec.wav')).sort();
    if (files.length === 0) return null;
    try {
      return readWav(path.join(this.rec, files[files.length - 1]));
    } catch {
      return null;
    }
  }

  async waitReceived(secs, ms = 15000) {
    return waitFor(`baresip ${this.number} to record ${secs} s`, () => {
      const p = this.received();
      return p && p.samples.length / p.rate >= secs ? p : null;
    }, ms, 100);
  }

  logText() { try { return fs.readFileSync(this.log, 'utf8'); } catch { return ''; } }

  async quit() {
    try { await this.command('quit'); } catch { /* gone */ }
    const t = setTimeout(() => this.child.kill('SIGKILL'), 5000);
    await Promise.race([this.exited, sleep(6000)]);
    clearTimeout(t);
    this.sock?.destroy();
  }
}
