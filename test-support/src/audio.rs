//! Audio checks for the real-phone tests: read a PCM WAV file and find its dominant frequency
//! (Goertzel scan), so "a 1 kHz tone in must come out at 1 kHz" can be asserted in Rust.
//! (`media` has G.711 but no tone detection; this works on what a phone recorded, any rate.)

use std::path::Path;

/// Mono samples in [-1, 1] and the sample rate.
pub struct Pcm {
    pub rate: u32,
    pub samples: Vec<f32>,
}

impl Pcm {
    pub fn seconds(&self) -> f64 {
        self.samples.len() as f64 / self.rate as f64
    }

    /// Root mean square level of the whole recording.
    pub fn rms(&self) -> f64 {
        if self.samples.is_empty() {
            return 0.0;
        }
        (self.samples.iter().map(|s| (*s as f64) * (*s as f64)).sum::<f64>() / self.samples.len() as f64).sqrt()
    }

    /// Seconds of audio in 20 ms frames whose RMS is above `level` (how much signal arrived).
    pub fn seconds_above(&self, level: f64) -> f64 {
        let frame = (self.rate / 50).max(1) as usize;
        let loud = self
            .samples
            .chunks(frame)
            .filter(|c| (c.iter().map(|s| (*s as f64).powi(2)).sum::<f64>() / c.len() as f64).sqrt() > level)
            .count();
        loud as f64 * frame as f64 / self.rate as f64
    }
}

/// Read a 16-bit PCM WAV (any rate, channels averaged). A data chunk whose size was never
/// patched (writer still open) is taken to run to the end of the file.
pub fn read_wav(path: &Path) -> Result<Pcm, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(format!("{}: not a RIFF/WAVE file", path.display()));
    }
    let (mut rate, mut channels, mut bits, mut format) = (0u32, 0u16, 0u16, 0u16);
    let mut pos = 12;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let size = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().unwrap()) as usize;
        let body = pos + 8;
        if id == b"fmt " {
            if body + 16 > bytes.len() {
                return Err("short fmt chunk".into());
            }
            format = u16::from_le_bytes([bytes[body], bytes[body + 1]]);
            channels = u16::from_le_bytes([bytes[body + 2], bytes[body + 3]]);
            rate = u32::from_le_bytes(bytes[body + 4..body + 8].try_into().unwrap());
            bits = u16::from_le_bytes([bytes[body + 14], bytes[body + 15]]);
        } else if id == b"data" {
            if rate == 0 || channels == 0 {
                return Err("data before fmt".into());
            }
            // PCM (1) or WAVE_FORMAT_EXTENSIBLE (0xFFFE) holding PCM.
            if bits != 16 || !(format == 1 || format == 0xFFFE) {
                return Err(format!("{}: only 16-bit PCM is read (format {format}, {bits} bits)", path.display()));
            }
            let end = if size == 0 || body + size > bytes.len() { bytes.len() } else { body + size };
            let frame = 2 * channels as usize;
            let samples = bytes[body..end]
                .chunks_exact(frame)
                .map(|f| {
                    let sum: f32 = f.chunks_exact(2).map(|s| i16::from_le_bytes([s[0], s[1]]) as f32 / 32768.0).sum();
                    sum / channels as f32
                })
                .collect();
            return Ok(Pcm { rate, samples });
        }
        pos = body + size + (size & 1);
    }
    Err(format!("{}: no data chunk", path.display()))
}

/// The samples of `pcm` from second `from` on.
pub fn since(pcm: &Pcm, from: f64) -> Pcm {
    let start = ((from.max(0.0) * pcm.rate as f64) as usize).min(pcm.samples.len());
    Pcm { rate: pcm.rate, samples: pcm.samples[start..].to_vec() }
}

/// Goertzel power of `freq` over `x`.
fn goertzel(x: &[f32], rate: u32, freq: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq / rate as f64;
    let c = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &v in x {
        let s0 = v as f64 + c * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    s1 * s1 + s2 * s2 - c * s1 * s2
}

/// The dominant frequency (Hz) between 50 Hz and just below Nyquist, and how much of the
/// signal's energy sits there (≈1 for a pure tone, small for noise or silence).
pub fn dominant_frequency(pcm: &Pcm) -> (f64, f64) {
    let x = &pcm.samples;
    if x.is_empty() {
        return (0.0, 0.0);
    }
    let nyquist = pcm.rate as f64 / 2.0;
    let scan = |from: f64, to: f64, step: f64| {
        let mut best = (from, -1.0);
        let mut f = from;
        while f <= to {
            let p = goertzel(x, pcm.rate, f);
            if p > best.1 {
                best = (f, p);
            }
            f += step;
        }
        best
    };
    let coarse = scan(50.0, nyquist - 50.0, 5.0);
    let (freq, power) = scan((coarse.0 - 5.0).max(50.0), coarse.0 + 5.0, 0.5);
    let energy: f64 = x.iter().map(|v| (*v as f64).powi(2)).sum();
    let share = if energy > 0.0 { 2.0 * power / (x.len() as f64 * energy) } else { 0.0 };
    (freq, share)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(freq: f64, rate: u32, secs: f64, amp: f32) -> Pcm {
        let n = (rate as f64 * secs) as usize;
        let samples = (0..n).map(|i| amp * (2.0 * std::f64::consts::PI * freq * i as f64 / rate as f64).sin() as f32).collect();
        Pcm { rate, samples }
    }

    #[test]
    fn the_dominant_frequency_is_the_tone_and_silence_has_none() {
        let (f, share) = dominant_frequency(&tone(1000.0, 8000, 1.0, 0.5));
        assert!((f - 1000.0).abs() < 2.0 && share > 0.9, "{f} {share}");
        let (f, _) = dominant_frequency(&tone(440.0, 16000, 0.5, 0.1));
        assert!((f - 440.0).abs() < 2.0, "{f}");
        let silent = Pcm { rate: 8000, samples: vec![0.0; 8000] };
        assert_eq!(dominant_frequency(&silent).1, 0.0);
        assert!(tone(1000.0, 8000, 2.0, 0.5).seconds_above(0.1) > 1.9);
    }
}
