// Audio checks: read a 16-bit PCM WAV (also one still being written, whose header sizes are not
// patched yet) and find its dominant frequency (Goertzel sweep), as the Rust tests do.
import fs from 'node:fs';

export function readWav(file) {
  const b = fs.readFileSync(file);
  if (b.toString('ascii', 0, 4) !== 'RIFF' || b.toString('ascii', 8, 12) !== 'WAVE') throw new Error(`${file}: not a WAV`);
  let off = 12;
  let rate = 8000;
  let channels = 1;
  let bits = 16;
  while (off + 8 <= b.length) {
    const id = b.toString('ascii', off, off + 4);
    const size = b.readUInt32LE(off + 4);
    if (id === 'fmt ') {
      channels = b.readUInt16LE(off + 10);
      rate = b.readUInt32LE(off + 12);
      bits = b.readUInt16LE(off + 22);
    } else if (id === 'data') {
      if (bits !== 16) throw new Error(`${file}: ${bits}-bit audio`);
      const start = off + 8;
      const end = size > 0 && start + size <= b.length ? start + size : b.length;
      const frames = Math.floor((end - start) / (2 * channels));
      const samples = new Float32Array(frames);
      for (let i = 0; i < frames; i++) samples[i] = b.readInt16LE(start + i * 2 * channels) / 32768;
      return { rate, samples };
    }
    off += 8 + size + (size & 1);
  }
  throw new Error(`${file}: no data chunk`);
}

function goertzel(x, rate, f) {
  const k = 2 * Math.cos((2 * Math.PI * f) / rate);
  let s1 = 0;
  let s2 = 0;
  for (let i = 0; i < x.length; i++) {
    const s = x[i] + k * s1 - s2;
    s2 = s1;
    s1 = s;
  }
  return s1 * s1 + s2 * s2 - k * s1 * s2;
}

/** Dominant frequency of `samples` between 100 and 3500 Hz (10 Hz steps), and the rms. */
export function dominantFrequency({ rate, samples }) {
  let best = 0;
  let bestF = 0;
  for (let f = 100; f <= Math.min(3500, rate / 2 - 50); f += 10) {
    const p = goertzel(samples, rate, f);
    if (p > best) {
      best = p;
      bestF = f;
    }
  }
  let sum = 0;
  for (const v of samples) sum += v * v;
  return { freq: bestF, rms: Math.sqrt(sum / Math.max(1, samples.length)) };
}

/** The last `secs` seconds of a recording. */
export function lastSeconds(pcm, secs) {
  const n = Math.floor(secs * pcm.rate);
  return { rate: pcm.rate, samples: pcm.samples.subarray(Math.max(0, pcm.samples.length - n)) };
}
