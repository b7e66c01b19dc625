//! Audio files and test signals: read a WAV as mono 8 kHz 16-bit samples (converting other
//! formats), write recordings, generate tones, and measure the dominant frequency of what
//! arrived (a 1 kHz tone in must come out at ≈1 kHz).

use std::path::Path;

/// The G.711 sample rate: everything in this crate is mono 8 kHz.
pub const RATE: u32 = 8000;

#[derive(Debug, thiserror::Error)]
pub enum WavError {
    #[error("{path}: {source}")]
    Read { path: String, source: hound::Error },
    #[error("{path}: {source}")]
    Write { path: String, source: hound::Error },
    #[error("{path}: unsupported WAV format: {why}")]
    Unsupported { path: String, why: String },
    #[error("{path}: the file has no audio samples")]
    Empty { path: String },
}

/// Read a WAV file as mono samples at [`RATE`] Hz.
///
/// Mono 8 kHz 16-bit PCM is taken as is. Other PCM layouts are converted: channels are averaged,
/// 8/24/32-bit integer and 32-bit float samples are scaled to 16 bits, and other sample rates are
/// resampled by linear interpolation after a short moving-average low-pass (good enough for test
/// tones and speech prompts; not a studio resampler). Anything hound cannot read is an error.
pub fn read_wav(path: impl AsRef<Path>) -> Result<Vec<i16>, WavError> {
    let path = path.as_ref();
    let name = path.display().to_string();
    let mut reader = hound::WavReader::open(path).map_err(|source| WavError::Read { path: name.clone(), source })?;
    let spec = reader.spec();
    if spec.channels == 0 || spec.sample_rate == 0 {
        return Err(WavError::Unsupported { path: name, why: "zero channels or sample rate".into() });
    }
    let read_err = |source| WavError::Read { path: name.clone(), source };
    let interleaved: Vec<f32> = match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Int, bits @ 1..=32) => {
            let scale = 1.0 / (1u64 << (bits - 1)) as f32;
            reader.samples::<i32>().map(|s| s.map(|v| v as f32 * scale)).collect::<Result<_, _>>().map_err(read_err)?
        }
        (hound::SampleFormat::Float, 32) => reader.samples::<f32>().collect::<Result<_, _>>().map_err(read_err)?,
        (format, bits) => {
            return Err(WavError::Unsupported { path: name, why: format!("{bits}-bit {format:?} samples") });
        }
    };
    let channels = usize::from(spec.channels);
    let mono: Vec<f32> = interleaved.chunks_exact(channels).map(|frame| frame.iter().sum::<f32>() / channels as f32).collect();
    if mono.is_empty() {
        return Err(WavError::Empty { path: name });
    }
    let mono = if spec.sample_rate == RATE { mono } else { resample(&mono, spec.sample_rate, RATE) };
    Ok(mono.into_iter().map(to_i16).collect())
}

/// Write mono 16-bit samples at `rate` Hz to a WAV file.
pub fn write_wav(path: impl AsRef<Path>, samples: &[i16], rate: u32) -> Result<(), WavError> {
    let path = path.as_ref();
    let name = path.display().to_string();
    let spec = hound::WavSpec { channels: 1, sample_rate: rate, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    let err = |source| WavError::Write { path: name.clone(), source };
    let mut w = hound::WavWriter::create(path, spec).map_err(err)?;
    for &s in samples {
        w.write_sample(s).map_err(err)?;
    }
    w.finalize().map_err(err)
}

fn to_i16(v: f32) -> i16 {
    (v * 32768.0).round().clamp(-32768.0, 32767.0) as i16
}

/// Linear-interpolation resampler; when going down, a moving average over one output period
/// first takes off most of what would alias.
fn resample(input: &[f32], from: u32, to: u32) -> Vec<f32> {
    let ratio = f64::from(from) / f64::from(to);
    let smoothed: Vec<f32> = if ratio > 1.0 {
        let width = ratio.round().max(1.0) as usize;
        let mut out = Vec::with_capacity(input.len());
        let mut acc = 0.0f32;
        for i in 0..input.len() {
            acc += input[i];
            if i >= width {
                acc -= input[i - width];
            }
            out.push(acc / (i + 1).min(width) as f32);
        }
        // The moving average delays by (width-1)/2 samples; shift it back.
        let shift = (width - 1) / 2;
        out.drain(..shift.min(out.len()));
        out
    } else {
        input.to_vec()
    };
    let n_out = ((smoothed.len() as f64) / ratio).floor() as usize;
    (0..n_out)
        .map(|i| {
            let pos = i as f64 * ratio;
            let j = pos.floor() as usize;
            let frac = (pos - j as f64) as f32;
            let a = smoothed[j.min(smoothed.len() - 1)];
            let b = smoothed[(j + 1).min(smoothed.len() - 1)];
            a + (b - a) * frac
        })
        .collect()
}

/// A sine tone at half of full scale (-6 dBFS).
pub fn tone(freq: f32, secs: f32, rate: u32) -> Vec<i16> {
    tone_with_amplitude(freq, secs, rate, 0.5)
}

/// A sine tone with a peak `amplitude` in 0..=1 of full scale.
pub fn tone_with_amplitude(freq: f32, secs: f32, rate: u32, amplitude: f32) -> Vec<i16> {
    let n = (secs.max(0.0) * rate as f32).round() as usize;
    let w = 2.0 * std::f64::consts::PI * f64::from(freq) / f64::from(rate);
    let amp = f64::from(amplitude.clamp(0.0, 1.0)) * 32767.0;
    (0..n).map(|i| ((w * i as f64).sin() * amp).round() as i16).collect()
}

/// Root-mean-square level of the samples, 0..=32768.
pub fn rms(samples: &[i16]) -> f32 {
    if samples.is_empty() {
        return 0.0;
    }
    let sum: f64 = samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    (sum / samples.len() as f64).sqrt() as f32
}

/// Goertzel power of `freq` in Hann-windowed samples.
fn goertzel_power(windowed: &[f32], freq: f32, rate: u32) -> f32 {
    let w = 2.0 * std::f32::consts::PI * freq / rate as f32;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f32, 0.0f32);
    for &x in windowed {
        let s0 = x + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    s1 * s1 + s2 * s2 - coeff * s1 * s2
}

/// The frequency (Hz) with the most energy in `samples`, found by a Goertzel sweep: 5 Hz steps
/// from 20 Hz to Nyquist, then 0.25 Hz steps around the best. Analyses up to one second from the
/// middle of the signal (the loudest stretch is not sought out: play a steady tone). Returns 0
/// for silence or fewer than 64 samples.
pub fn dominant_frequency(samples: &[i16], rate: u32) -> f32 {
    if samples.len() < 64 || rate == 0 || rms(samples) < 1.0 {
        return 0.0;
    }
    let n = samples.len().min(rate as usize);
    let start = (samples.len() - n) / 2;
    let chunk = &samples[start..start + n];
    let mean = chunk.iter().map(|&s| f32::from(s)).sum::<f32>() / n as f32;
    let windowed: Vec<f32> = chunk
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            let hann = 0.5 - 0.5 * (2.0 * std::f32::consts::PI * i as f32 / (n - 1) as f32).cos();
            (f32::from(s) - mean) * hann / 32768.0
        })
        .collect();
    let nyquist = rate as f32 / 2.0;
    let best_in = |from: f32, to: f32, step: f32| {
        let mut best = (from, f32::MIN);
        let mut f = from;
        while f <= to {
            let p = goertzel_power(&windowed, f, rate);
            if p > best.1 {
                best = (f, p);
            }
            f += step;
        }
        best.0
    };
    let coarse = best_in(20.0, nyquist - 5.0, 5.0);
    best_in((coarse - 6.0).max(1.0), (coarse + 6.0).min(nyquist), 0.25)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tone_has_its_frequency() {
        for f in [300.0, 440.0, 1000.0, 2600.0, 3400.0] {
            let t = tone(f, 1.0, RATE);
            assert_eq!(t.len(), 8000);
            let d = dominant_frequency(&t, RATE);
            assert!((d - f).abs() < 1.0, "{f} Hz measured as {d}");
        }
        // Short and odd-length signals still resolve to within a few Hz.
        let d = dominant_frequency(&tone(1000.0, 0.1, RATE), RATE);
        assert!((d - 1000.0).abs() < 5.0, "{d}");
    }

    #[test]
    fn tone_level() {
        let t = tone(1000.0, 1.0, RATE);
        assert!(t.iter().all(|&s| s.abs() <= 16384));
        let r = rms(&t);
        assert!((r - 16384.0 / 2f32.sqrt()).abs() < 50.0, "{r}");
        assert_eq!(rms(&[]), 0.0);
        assert_eq!(tone(1000.0, 0.0, RATE).len(), 0);
    }

    #[test]
    fn silence_and_tiny_inputs_have_no_frequency() {
        assert_eq!(dominant_frequency(&[0; 8000], RATE), 0.0);
        assert_eq!(dominant_frequency(&[1000; 10], RATE), 0.0);
    }

    #[test]
    fn dominant_survives_noise_and_a_weaker_tone_and_g711() {
        let strong = tone_with_amplitude(1000.0, 1.0, RATE, 0.5);
        let weak = tone_with_amplitude(440.0, 1.0, RATE, 0.1);
        let mut seed = 1u32;
        let mixed: Vec<i16> = strong
            .iter()
            .zip(&weak)
            .map(|(&a, &b)| {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let noise = ((seed >> 16) as i32 % 2000) - 1000;
                (i32::from(a) + i32::from(b) + noise).clamp(-32768, 32767) as i16
            })
            .map(|s| trunkline_media::g711::mulaw_decode(trunkline_media::g711::mulaw_encode(s)))
            .collect();
        let d = dominant_frequency(&mixed, RATE);
        assert!((d - 1000.0).abs() < 2.0, "{d}");
    }

    #[test]
    fn wav_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.wav");
        let t = tone(440.0, 0.5, RATE);
        write_wav(&p, &t, RATE).unwrap();
        assert_eq!(read_wav(&p).unwrap(), t);
    }

    #[test]
    fn other_formats_are_converted() {
        let dir = tempfile::tempdir().unwrap();
        // 44.1 kHz stereo 16-bit: left 1 kHz, right 1 kHz too (so the average keeps the tone).
        let p = dir.path().join("stereo44k.wav");
        let spec =
            hound::WavSpec { channels: 2, sample_rate: 44_100, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
        let mut w = hound::WavWriter::create(&p, spec).unwrap();
        for s in tone(1000.0, 1.0, 44_100) {
            w.write_sample(s).unwrap();
            w.write_sample(s).unwrap();
        }
        w.finalize().unwrap();
        let got = read_wav(&p).unwrap();
        assert!((got.len() as i64 - 8000).abs() <= 1, "{}", got.len());
        let d = dominant_frequency(&got, RATE);
        assert!((d - 1000.0).abs() < 2.0, "{d}");
        assert!(rms(&got) > 8000.0, "level kept: {}", rms(&got));

        // 16 kHz float mono.
        let p = dir.path().join("float16k.wav");
        let spec =
            hound::WavSpec { channels: 1, sample_rate: 16_000, bits_per_sample: 32, sample_format: hound::SampleFormat::Float };
        let mut w = hound::WavWriter::create(&p, spec).unwrap();
        for s in tone(440.0, 0.5, 16_000) {
            w.write_sample(f32::from(s) / 32768.0).unwrap();
        }
        w.finalize().unwrap();
        let got = read_wav(&p).unwrap();
        assert_eq!(got.len(), 4000);
        let d = dominant_frequency(&got, RATE);
        assert!((d - 440.0).abs() < 2.0, "{d}");

        // 8-bit unsigned at 8 kHz.
        let p = dir.path().join("u8.wav");
        let spec = hound::WavSpec { channels: 1, sample_rate: 8000, bits_per_sample: 8, sample_format: hound::SampleFormat::Int };
        let mut w = hound::WavWriter::create(&p, spec).unwrap();
        for s in tone(700.0, 0.5, 8000) {
            w.write_sample((s >> 8) as i8).unwrap();
        }
        w.finalize().unwrap();
        let d = dominant_frequency(&read_wav(&p).unwrap(), RATE);
        assert!((d - 700.0).abs() < 2.0, "{d}");
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = read_wav(dir.path().join("nope.wav")).unwrap_err();
        assert!(missing.to_string().contains("nope.wav"), "{missing}");
        let p = dir.path().join("junk.wav");
        std::fs::write(&p, b"this is not a wav file at all").unwrap();
        let junk = read_wav(&p).unwrap_err();
        assert!(matches!(junk, WavError::Read { .. }), "{junk}");
        let p = dir.path().join("empty.wav");
        write_wav(&p, &[], RATE).unwrap();
        assert!(matches!(read_wav(&p).unwrap_err(), WavError::Empty { .. }));
    }
}
