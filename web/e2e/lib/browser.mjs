// Headless Debian Chromium driven by playwright-core (never a downloaded browser). One browser
// per softphone user, each with its own fake microphone (a WAV file it loops).
import { chromium } from 'playwright-core';
import { PASSWORD } from './stack.mjs';

export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

export async function launch(micWav) {
  // Playwright gives every launch a fresh profile (its own --user-data-dir).
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // Playwright mutes audio by default; remote audio stats stay 0 unless it is played.
    ignoreDefaultArgs: ['--mute-audio'],
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
      `--use-file-for-fake-audio-capture=${micWav}`,
      '--autoplay-policy=no-user-gesture-required',
      '--allow-loopback-in-peer-connection',
    ],
  });
  const close = async () => {
    await browser.close().catch(() => {});
  };
  return { browser, close };
}

/**
 * A phone-sized page of the app. `page.webSockets` lists the URL of every WebSocket the page
 * opened (CDP `Network.webSocketCreated`, through playwright's `websocket` event). `beforeLoad`
 * runs on the page before the app loads (e.g. `page.routeWebSocket`).
 */
export async function openApp(browser, url, { beforeLoad } = {}) {
  const context = await browser.newContext({ viewport: { width: 390, height: 844 }, hasTouch: true });
  await context.grantPermissions(['microphone', 'notifications'], { origin: url });
  const page = await context.newPage();
  page.logs = [];
  page.webSockets = [];
  page.on('console', (m) => page.logs.push(`[${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => page.logs.push(`[pageerror] ${e.message}`));
  page.on('websocket', (ws) => page.webSockets.push(ws.url()));
  if (beforeLoad) await beforeLoad(page);
  await page.goto(url);
  return { context, page };
}

export const byId = (page, id) => page.locator(`[data-testid="${id}"]`);

export async function connState(page) {
  return byId(page, 'conn-state').getAttribute('data-state');
}

export async function waitConnected(page, ms = 15000) {
  await page.waitForSelector('[data-testid="conn-state"][data-state="connected"]', { timeout: ms });
}

export async function signIn(page, number, password = PASSWORD(number)) {
  await byId(page, 'login-number').fill(number);
  await byId(page, 'login-password').fill(password);
  await byId(page, 'login-submit').click();
  await waitConnected(page);
}

export async function dial(page, number) {
  await byId(page, 'dial-input').fill(number);
  await byId(page, 'dial-call').click();
}

export async function waitCallState(page, state, ms = 20000) {
  await page.waitForSelector(`[data-testid="call-state"][data-state="${state}"]`, { timeout: ms });
}

/** inbound-rtp audio stats of the current call (`window.trunkline.pc`). */
export async function inboundAudio(page) {
  return page.evaluate(async () => {
    const pc = window.trunkline && window.trunkline.pc;
    if (!pc) return null;
    const stats = await pc.getStats();
    let out = null;
    stats.forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'audio') {
        out = { packetsReceived: s.packetsReceived || 0, totalAudioEnergy: s.totalAudioEnergy || 0, audioLevel: s.audioLevel || 0 };
      }
    });
    return out;
  });
}

/** Dominant frequency (Hz) of the far end's audio, measured with an AnalyserNode for `ms`. */
export async function remoteDominantFrequency(page, ms = 1500) {
  return page.evaluate(async (ms) => {
    const stream = window.trunkline && window.trunkline.remote;
    if (!stream) return null;
    const ctx = new AudioContext();
    await ctx.resume();
    const src = ctx.createMediaStreamSource(stream);
    const an = ctx.createAnalyser();
    an.fftSize = 8192;
    an.smoothingTimeConstant = 0.5;
    src.connect(an);
    await new Promise((r) => setTimeout(r, ms));
    const bins = new Float32Array(an.frequencyBinCount);
    an.getFloatFrequencyData(bins);
    let best = -Infinity;
    let idx = 0;
    for (let i = 2; i < bins.length; i++) {
      if (bins[i] > best) {
        best = bins[i];
        idx = i;
      }
    }
    await ctx.close();
    return { freq: (idx * ctx.sampleRate) / an.fftSize, db: best };
  }, ms);
}
