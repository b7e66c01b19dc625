// The images, run the way a site and a cloud run them (started by deploy/test/run.sh, which
// builds them and makes two network namespaces: "cloud" and "site", one link between them).
// This script runs on the site (nsenter --net): its baresip desk phones and their control ports
// are on the site's loopback; podman starts the containers into the namespaces by path.
//
//  1. the images: under 25 MB, user 10001 (in their /etc/passwd), no shell, a HEALTHCHECK;
//  2. the signal server from its image in the cloud namespace (config read-only, state on a
//     volume, a key overridden by an environment variable), provisioned with its own admin CLI
//     (`podman exec`), healthy by its healthcheck command;
//  3. the gateway from its image in the site namespace (the same), online at the cloud;
//     both run as uid 10001 and have no shell to exec;
//  4. two baresip desk phones register; an F7 call carries audio both ways (by frequency);
//  5. an F1 call from the headless softphone (cloud side) to a desk phone carries audio both
//     ways; `podman stop` of the gateway mid-call: SIGTERM, a clean exit (0) in time, the phone
//     gets a BYE, the softphone's call ends `connected`, exactly one call record;
//  6. a new gateway container on the same volume: its phone list is there, it comes online, the
//     phones register again (nobody provisions anything) and an F7 call works again;
//  7. `podman stop` of the signal server: a clean exit (0).
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { Phone } from '../../web/e2e/lib/baresip.mjs';
import { dominantFrequency, lastSeconds, readWav } from '../../web/e2e/lib/audio.mjs';
import { freePort, toneWav, waitFor } from '../../web/e2e/lib/stack.mjs';

const { values: A } = parseArgs({
  options: {
    id: { type: 'string' }, tmp: { type: 'string' }, 'cloud-ns': { type: 'string' }, 'site-ns': { type: 'string' },
    'cloud-ip': { type: 'string' }, 'site-ip': { type: 'string' }, client: { type: 'string' },
  },
});
const ID = A.id;
const TMP = A.tmp;
const CLOUD_IP = A['cloud-ip'];
const SITE_IP = A['site-ip'];
const IMAGE = { signal: 'trunkline/signal-server:latest', gateway: 'trunkline/switch-gateway:latest' };
const BIN = { signal: 'signal-server', gateway: 'switch-gateway' };
const MAX_BYTES = 25 * 1000 * 1000;
const USER = '10001';
const SIGNAL = `${ID}-signal`;
const GATEWAY = `${ID}-gateway`;
const SIGNAL_CFG = '/etc/trunkline/signal-server.toml';
const PW = (n) => `image-test-${n}-pw`;

// ------------------------------------------------------------------ helpers

function podman(args, { input, ok = true } = {}) {
  const r = spawnSync('podman', args, { input, encoding: 'utf8', maxBuffer: 64 << 20 });
  if (ok && r.status !== 0) throw new Error(`podman ${args.join(' ')}: exit ${r.status}\n${r.stdout}${r.stderr}`);
  return r;
}

const inspect = (name, format) => podman(['inspect', '--format', format, name]).stdout.trim();
const adminCli = (args, input) => podman(['exec', ...(input ? ['-i'] : []), SIGNAL, BIN.signal, ...args, '--config', SIGNAL_CFG], { input }).stdout;
const calls = (number) => JSON.parse(adminCli(['calls', '--json', '--number', number]));
const switches = () => JSON.parse(adminCli(['switch', 'list', '--json']));

/** `podman healthcheck run`: the image's HEALTHCHECK command, run in the container. */
const healthy = (name) => podman(['healthcheck', 'run', name], { ok: false }).status === 0;

/** The container's main process runs as `USER` (real, effective, saved, fs ids). */
function assertRunsAsUser(name) {
  const pid = inspect(name, '{{.State.Pid}}');
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  for (const key of ['Uid', 'Gid']) {
    const ids = status.match(new RegExp(`^${key}:\\s+(.*)$`, 'm'))[1].trim().split(/\s+/);
    assert.deepEqual(ids, [USER, USER, USER, USER], `${name}: ${key} ${ids.join(' ')}`);
  }
}

/** There is no shell to exec, under any usual name. */
function assertNoShell(name) {
  for (const sh of ['/bin/sh', 'sh', '/bin/bash', '/bin/busybox']) {
    const r = podman(['exec', name, sh, '-c', 'true'], { ok: false });
    assert.notEqual(r.status, 0, `${name}: \`${sh} -c true\` ran`);
  }
}

/** Every path in an image (its files as built, not a container's): "path mode uid" lines. */
function imageFiles(image) {
  const root = podman(['image', 'mount', image]).stdout.trim();
  try {
    const out = [];
    const walk = (dir) => {
      for (const name of fs.readdirSync(path.join(root, dir)).sort()) {
        const rel = path.join(dir, name);
        const st = fs.lstatSync(path.join(root, rel));
        out.push({ path: rel, mode: st.mode, uid: st.uid, dir: st.isDirectory(), file: st.isFile() });
        if (st.isDirectory()) walk(rel);
      }
    };
    walk('');
    const passwd = fs.readFileSync(path.join(root, 'etc/passwd'), 'utf8');
    return { files: out, passwd };
  } finally {
    podman(['image', 'unmount', image], { ok: false });
  }
}

function assertImage(kind) {
  const bytes = Number(podman(['image', 'inspect', '--format', '{{.Size}}', IMAGE[kind]]).stdout.trim());
  console.log(`#   ${IMAGE[kind]}: ${(bytes / 1e6).toFixed(1)} MB`);
  assert.ok(bytes < MAX_BYTES, `${IMAGE[kind]} is ${bytes} bytes (limit ${MAX_BYTES})`);
  assert.equal(podman(['image', 'inspect', '--format', '{{.Config.User}}', IMAGE[kind]]).stdout.trim(), `${USER}:${USER}`);
  const hc = podman(['image', 'inspect', '--format', '{{json .HealthCheck}}', IMAGE[kind]]).stdout;
  assert.ok(hc.includes(`"/usr/local/bin/${BIN[kind]}","healthcheck"`), `${IMAGE[kind]} HEALTHCHECK: ${hc}`);
  const { files, passwd } = imageFiles(IMAGE[kind]);
  // Regular files with an execute bit: the one binary (and for a glibc build its loader),
  // nothing else (no shell, no busybox).
  const executables = files.filter((f) => f.file && f.mode & 0o111 && !/^lib(64)?\/ld-linux[^/]*\.so\.\d+$/.test(f.path)).map((f) => f.path);
  assert.deepEqual(executables, [`usr/local/bin/${BIN[kind]}`], `executables in ${IMAGE[kind]}: ${executables}`);
  for (const sh of ['sh', 'bash', 'dash', 'ash', 'busybox', 'toybox']) {
    assert.ok(!files.some((f) => path.basename(f.path) === sh), `${sh} in ${IMAGE[kind]}`);
  }
  // Owned by root, except the state folder (the user's, private).
  const owned = files.filter((f) => f.uid !== 0).map((f) => `${f.path} ${f.uid} ${(f.mode & 0o7777).toString(8)}`);
  assert.deepEqual(owned, [`var/lib/trunkline ${USER} 700`], `files not owned by root in ${IMAGE[kind]}`);
  console.log(`#   ${IMAGE[kind]}: ${files.filter((f) => f.file).length} files: ${files.filter((f) => f.file && !f.path.startsWith('usr/share/')).map((f) => f.path).join(' ')}${files.some((f) => f.path.startsWith('usr/share/')) ? ' + the softphone in usr/share/trunkline/web' : ''}`);
  assert.match(passwd, new RegExp(`^trunkline:x:${USER}:${USER}:`, 'm'), `/etc/passwd of ${IMAGE[kind]}:\n${passwd}`);
}

/** Recordings of `phone` (baresip's sndfile dumps of what it received). */
const dumps = (phone) => new Set(fs.readdirSync(phone.rec).filter((f) => f.endsWith('-dec.wav')));

/** A recording `phone` starts after `before` (a `dumps` result), once it holds `secs` seconds. */
async function newRecording(phone, before, secs, ms = 20000) {
  return waitFor(`${phone.number} to record ${secs} s of a new call`, () => {
    const fresh = [...dumps(phone)].filter((f) => !before.has(f)).sort();
    if (!fresh.length) return null;
    try {
      const pcm = readWav(path.join(phone.rec, fresh[fresh.length - 1]));
      return pcm.samples.length / pcm.rate >= secs ? pcm : null;
    } catch {
      return null;
    }
  }, ms, 100);
}

function assertTone(pcm, hz, who) {
  const { freq, rms } = dominantFrequency(lastSeconds(pcm, 1.5));
  assert.ok(Math.abs(freq - hz) <= 20 && rms > 0.01, `${who} heard ${freq} Hz (rms ${rms.toFixed(3)}), expected ${hz} Hz`);
}

/** Events of `type` seen by `phone` after the first `from` events. */
const eventsSince = (phone, from, type) => phone.events.slice(from).filter((e) => e.type === type);

// ------------------------------------------------------------------ the stack

const cloudPort = 20000 + Math.floor(Math.random() * 20000);
const sipPort = await freePort({ udp: true }); // on the site: this process runs there
const cloudDir = path.join(TMP, 'cloud');
const siteDir = path.join(TMP, 'site');
fs.mkdirSync(cloudDir, { recursive: true });
fs.mkdirSync(siteDir, { recursive: true });

// Both files name a wrong address that an environment variable overrides: the containers
// only work if variables override keys of the read-only file, as they do outside.
fs.writeFileSync(path.join(cloudDir, 'signal-server.toml'), [
  'listen = "127.0.0.1:1"                     # TRUNKLINE_SIGNAL_LISTEN overrides it',
  'database_url = "sqlite:///var/lib/trunkline/signal.db"',
  'web_root = "/usr/share/trunkline/web"',
  `public_url = "http://${CLOUD_IP}:${cloudPort}"`,
  '[auth]',
  'password_hash_memory_kib = 64',
  'password_hash_iterations = 1',
  '',
].join('\n'));
fs.writeFileSync(path.join(siteDir, 'gateway.toml'), [
  'id = "hq"',
  'secret_file = "/etc/trunkline/switch.secret"',
  'cloud_url = "ws://192.0.2.1:1/ws"           # TRUNKLINE_GATEWAY_CLOUD_URL overrides it',
  `sip_listen = "0.0.0.0:${sipPort}"`,
  `sip_advertise = "${SITE_IP}"`,
  'rtp_ports = "30000-30199"',
  'state_dir = "/var/lib/trunkline"',
  // Phones refresh their registration every few seconds: after the gateway's restart they
  // register again on their own, as real phones do at their interval.
  'min_expires_secs = 5',
  'max_expires_secs = 8',
  '',
].join('\n'));
const secret = path.join(siteDir, 'hq.secret');
fs.writeFileSync(secret, `image-test-switch-secret-${ID}\n`, { mode: 0o400 });
fs.chownSync(secret, Number(USER), Number(USER)); // readable by the container's user only
const alicePw = path.join(TMP, 'alice.pw');
fs.writeFileSync(alicePw, PW('2001'), { mode: 0o600 });

const hardening = ['--read-only', '--cap-drop', 'all', '--security-opt', 'no-new-privileges', '--health-interval', 'disable'];

function runSignal() {
  podman(['run', '-d', '--name', SIGNAL, '--network', `ns:/run/netns/${A['cloud-ns']}`, ...hardening,
    '--env', `TRUNKLINE_SIGNAL_LISTEN=0.0.0.0:${cloudPort}`,
    '--volume', `${path.join(cloudDir, 'signal-server.toml')}:${SIGNAL_CFG}:ro`,
    '--volume', `${ID}-cloud-state:/var/lib/trunkline`,
    IMAGE.signal]);
}

function runGateway() {
  podman(['run', '-d', '--name', GATEWAY, '--network', `ns:/run/netns/${A['site-ns']}`, ...hardening,
    '--env', `TRUNKLINE_GATEWAY_CLOUD_URL=ws://${CLOUD_IP}:${cloudPort}/ws`,
    '--volume', `${path.join(siteDir, 'gateway.toml')}:/etc/trunkline/gateway.toml:ro`,
    '--volume', `${secret}:/etc/trunkline/switch.secret:ro`,
    '--volume', `${ID}-site-state:/var/lib/trunkline`,
    IMAGE.gateway]);
}

async function gatewayUp(what) {
  await waitFor(`${what}: the gateway's healthcheck`, () => {
    assert.equal(inspect(GATEWAY, '{{.State.Running}}'), 'true', `gateway exited:\n${podman(['logs', GATEWAY], { ok: false }).stderr}`);
    return healthy(GATEWAY);
  }, 20000, 200);
  await waitFor(`${what}: switch hq online at the cloud`, () => switches().some((s) => s.id === 'hq' && s.online), 20000, 250);
}

/** `podman stop`: SIGTERM, then the exit status and how long it took. */
function stop(name) {
  const t = Date.now();
  podman(['stop', '--time', '10', name]);
  const secs = (Date.now() - t) / 1000;
  return { secs, code: Number(inspect(name, '{{.State.ExitCode}}')) };
}

// ------------------------------------------------------------------ the checks

const results = [];
const phones = {};
async function check(name, fn) {
  const t = Date.now();
  try {
    await fn();
    results.push([name, true]);
    console.log(`ok - ${name} (${((Date.now() - t) / 1000).toFixed(1)} s)`);
  } catch (e) {
    results.push([name, false]);
    console.log(`not ok - ${name}\n  ${String(e.stack || e).split('\n').join('\n  ')}`);
    throw e;
  }
}

let client;
try {
  await check('the signal server runs from its image (env overrides the read-only config), healthy, provisioned by its own CLI', async () => {
    runSignal();
    await waitFor('the signal server healthcheck', () => {
      assert.equal(inspect(SIGNAL, '{{.State.Running}}'), 'true', `signal server exited:\n${podman(['logs', SIGNAL], { ok: false }).stderr}`);
      return healthy(SIGNAL);
    }, 20000, 200);
    adminCli(['switch', 'add', '--id', 'hq', '--secret-file', '-'], fs.readFileSync(secret, 'utf8'));
    adminCli(['account', 'add', '--number', '1001', '--name', 'Reception', '--switch', 'hq', '--password-file', '-'], PW('1001'));
    adminCli(['account', 'add', '--number', '1002', '--name', 'Warehouse', '--switch', 'hq', '--password-file', '-'], PW('1002'));
    adminCli(['account', 'add', '--number', '2001', '--name', 'Alice', '--password-file', '-'], PW('2001'));
    // Reached from the site over the link: /healthz and the softphone at /.
    const health = await fetch(`http://${CLOUD_IP}:${cloudPort}/healthz`);
    assert.equal(health.status, 200);
    const page = await fetch(`http://${CLOUD_IP}:${cloudPort}/`);
    assert.equal(page.status, 200);
    console.log(`#   GET / from the site: ${page.status} ${(await page.text()).includes('<html') ? '(the softphone)' : '(no softphone built in)'}`);
  });

  await check('the gateway runs from its image on the site (no inbound port), healthy, online at the cloud', async () => {
    runGateway();
    await gatewayUp('first start');
    // What listens on the site (nothing else runs there yet): the gateway's SIP, for its desk
    // phones, and nothing for callers from outside (they come over WebRTC through the cloud).
    // Media sockets in rtp_ports (30000-30199) are bound ahead of calls (up to 32 pairs, so the
    // core never binds one mid-call); they are UDP only, carry no signalling, and what reaches
    // an idle one is discarded. Every other port must be the SIP one.
    const ss = spawnSync('ss', ['-Hlntu'], { encoding: 'utf8' }).stdout.trim().split('\n').filter(Boolean);
    const media = (l) => { const [proto, , , , local] = l.split(/\s+/); const p = Number(local.split(':').pop()); return proto === 'udp' && p >= 30000 && p <= 30199; };
    const ports = [...new Set(ss.filter((l) => !media(l)).map((l) => l.split(/\s+/)[4].split(':').pop()))];
    assert.deepEqual(ports, [String(sipPort)], `listening on the site:\n${ss.join('\n')}`);
    assert.ok(ss.filter(media).length <= 64, `at most 32 RTP/RTCP pairs bound ahead of calls:\n${ss.join('\n')}`);
  });

  await check('both images: under 25 MB, user 10001 in /etc/passwd, a HEALTHCHECK, no shell; both run as uid/gid 10001', () => {
    for (const [kind, name] of [['signal', SIGNAL], ['gateway', GATEWAY]]) {
      assertImage(kind);
      assertRunsAsUser(name);
      assertNoShell(name);
    }
  });

  const wav = (hz) => toneWav(path.join(TMP, `tone${hz}.wav`), hz, 120, 8000);
  await check('two baresip desk phones register with the gateway', async () => {
    const gw = `127.0.0.1:${sipPort}`;
    phones['1001'] = await Phone.start(TMP, '1001', PW('1001'), gw, wav(440));
    phones['1002'] = await Phone.start(TMP, '1002', PW('1002'), gw, wav(660), { autoAnswer: true });
    await phones['1001'].registered();
    await phones['1002'].registered();
  });

  async function f7(label) {
    const [p1, p2] = [phones['1001'], phones['1002']];
    const before = [dumps(p1), dumps(p2)];
    const seen = [p1.events.length, p2.events.length];
    await p1.dial(`sip:1002@127.0.0.1:${sipPort}`);
    await waitFor(`${label}: both phones in the call`, () => eventsSince(p1, seen[0], 'CALL_ESTABLISHED').length && eventsSince(p2, seen[1], 'CALL_ESTABLISHED').length, 15000, 50);
    assertTone(await newRecording(p1, before[0], 2.5), 660, `${label}: 1001`);
    assertTone(await newRecording(p2, before[1], 2.5), 440, `${label}: 1002`);
    await p1.hangup();
    await waitFor(`${label}: both phones hung up`, () => eventsSince(p1, seen[0], 'CALL_CLOSED').length && eventsSince(p2, seen[1], 'CALL_CLOSED').length, 10000, 50);
  }

  await check('F7: desk phone to desk phone through the gateway, audio both ways (440 Hz / 660 Hz)', () => f7('F7'));

  await check('F1: the headless softphone calls a desk phone, audio both ways; `podman stop` of the gateway mid-call ends it cleanly with one record', async () => {
    const p2 = phones['1002'];
    const before = dumps(p2);
    const seen = p2.events.length;
    const rec = path.join(TMP, 'alice-heard.wav');
    const log = path.join(TMP, 'alice.log');
    const out = fs.openSync(log, 'a');
    // The softphone is on the cloud side ("the Internet"): it reaches the gateway only by C14
    // over WebRTC, with the offer and answer relayed by the signal server.
    client = spawn('nsenter', [`--net=/run/netns/${A['cloud-ns']}`, A.client,
      '--server', `ws://${CLOUD_IP}:${cloudPort}/ws`, '--number', '2001', '--password-file', alicePw,
      'call', '1002', '--play', 'tone:1000', '--record', rec, '--seconds', '120'], { stdio: ['ignore', out, out] });
    fs.closeSync(out);
    const exited = new Promise((resolve) => client.once('exit', (code) => resolve(code)));
    const clientLog = () => fs.readFileSync(log, 'utf8');
    await waitFor('the softphone: media connected', () => {
      assert.equal(client.exitCode, null, `trunkline-client exited:\n${clientLog()}`);
      return clientLog().includes('media connected');
    }, 20000, 100);
    await waitFor('1002 in the call', () => eventsSince(p2, seen, 'CALL_ESTABLISHED').length, 10000, 50);
    assertTone(await newRecording(p2, before, 3), 1000, 'F1: 1002');

    const { secs, code } = stop(GATEWAY);
    console.log(`#   podman stop ${GATEWAY}: ${secs.toFixed(1)} s, exit status ${code}`);
    assert.equal(code, 0, `the gateway did not exit cleanly on SIGTERM:\n${podman(['logs', '--tail', '30', GATEWAY], { ok: false }).stderr}`);
    assert.ok(secs < 9, `the gateway took ${secs} s to stop (SIGKILL comes at 10 s)`);
    const gwLog = podman(['logs', GATEWAY], { ok: false }).stderr;
    assert.match(gwLog, /ending every call: the gateway is stopping calls=1/, 'the gateway ended its call at SIGTERM');
    assert.match(gwLog, /cloud link closed/, 'the gateway closed its cloud link after sending the call\'s end');
    await waitFor('1002 hung up by the gateway (BYE)', () => eventsSince(p2, seen, 'CALL_CLOSED').length, 5000, 50);
    const status = await Promise.race([exited, new Promise((r) => setTimeout(() => r('timeout'), 20000))]);
    assert.notEqual(status, 'timeout', `the softphone's call did not end:\n${clientLog()}`);
    const outcome = clientLog().match(/^.*OUTCOME (.*)$/m)?.[1];
    assert.match(outcome || '', /^connected duration_ms=\d+/, `softphone: ${clientLog()}`);
    assert.equal(status, 0, `trunkline-client exit ${status}:\n${clientLog()}`);
    assertTone(readWav(rec), 660, 'F1: the softphone');

    await waitFor('the call record', () => calls('2001').length > 0, 10000, 200);
    const records = calls('2001');
    assert.equal(records.length, 1, `records: ${JSON.stringify(records, null, 1)}`);
    const [r] = records;
    assert.equal(r.caller, '2001');
    assert.equal(r.callee, '1002');
    assert.equal(r.outcome, 'connected');
    assert.equal(r.switch_id, 'hq');
    assert.ok(r.duration_ms >= 2000, `duration ${r.duration_ms}`);
    assert.ok(r.trace.includes('C14') && r.trace.includes('C15'), `trace ${r.trace}`);
    console.log(`#   record: ${r.caller} → ${r.callee} ${r.outcome} ${r.duration_ms} ms, trace ${r.trace.join(',')}`);
  });

  await check('a new gateway container on the same volume: phone list kept, online again, the phones register again without provisioning', async () => {
    const mount = podman(['volume', 'inspect', '--format', '{{.Mountpoint}}', `${ID}-site-state`]).stdout.trim();
    const list = fs.readFileSync(path.join(mount, 'phones.json'), 'utf8');
    assert.ok(list.includes('"1001"') && list.includes('"1002"'), `phones.json in the volume: ${list}`);
    // Saved at the stop: the new container reaches the phones before they register again.
    const regs = fs.readFileSync(path.join(mount, 'registrations.json'), 'utf8');
    assert.ok(regs.includes('"number":"1001"') && regs.includes('"number":"1002"'), `registrations.json in the volume: ${regs}`);
    const st = fs.statSync(mount);
    assert.equal(`${st.uid}`, USER, 'the state volume belongs to the image user');
    const seen = [phones['1001'].events.length, phones['1002'].events.length];
    podman(['rm', GATEWAY]);
    runGateway();
    await gatewayUp('after the restart');
    await waitFor('both phones registered again', () => eventsSince(phones['1001'], seen[0], 'REGISTER_OK').length && eventsSince(phones['1002'], seen[1], 'REGISTER_OK').length, 30000, 100);
    await f7('F7 after the restart');
    assert.equal(calls('2001').length, 1, 'still exactly one record for the F1 call');
  });

  await check('`podman stop` of the signal server: SIGTERM, a clean exit', () => {
    const { secs, code } = stop(SIGNAL);
    console.log(`#   podman stop ${SIGNAL}: ${secs.toFixed(1)} s, exit status ${code}`);
    assert.equal(code, 0, podman(['logs', '--tail', '30', SIGNAL], { ok: false }).stderr);
    assert.ok(secs < 9, `took ${secs} s`);
  });
} catch {
  for (const name of [SIGNAL, GATEWAY]) {
    const logs = podman(['logs', '--tail', '40', name], { ok: false });
    console.log(`# --- podman logs ${name} (last 40 lines)\n${(logs.stdout + logs.stderr).replace(/^/gm, '# ')}`);
  }
  for (const p of Object.values(phones)) console.log(`# --- baresip ${p.number}\n${p.logText().split('\n').slice(-25).join('\n').replace(/^/gm, '# ')}`);
} finally {
  if (client && client.exitCode === null) client.kill('SIGKILL');
  await Promise.all(Object.values(phones).map((p) => p.quit()));
}

const passed = results.filter(([, ok]) => ok).length;
const failed = results.length - passed;
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed || passed < 8 ? 1 : 0);
