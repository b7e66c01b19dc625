//! G.711 companding (ITU-T G.711): μ-law (PCMU, RTP payload type 0) and A-law (PCMA, 8).
//!
//! One 16-bit linear sample ⇄ one 8-bit code. μ-law works on a 14-bit magnitude with a bias of
//! 132 and clips at 32635; A-law on a 13-bit magnitude, with its even bits inverted on the wire.
//! Decoding returns the middle of each quantisation step.

/// μ-law: bias added to the magnitude before finding the segment.
const MULAW_BIAS: i32 = 0x84;
/// μ-law: largest magnitude that can be biased without overflowing 15 bits.
const MULAW_CLIP: i32 = 32635;

/// Encode one linear sample as μ-law (PCMU).
pub fn mulaw_encode(sample: i16) -> u8 {
    let mut magnitude = i32::from(sample);
    let sign: u8 = if magnitude < 0 {
        magnitude = -magnitude;
        0x80
    } else {
        0
    };
    let biased = magnitude.min(MULAW_CLIP) + MULAW_BIAS;
    // biased is in 132..=32767, so biased >> 7 is in 1..=255: the segment is its top bit.
    let segment = 31 - ((biased >> 7) as u32).leading_zeros();
    let mantissa = ((biased >> (segment + 3)) & 0x0F) as u8;
    !(sign | ((segment as u8) << 4) | mantissa)
}

/// Decode one μ-law (PCMU) code to a linear sample.
pub fn mulaw_decode(code: u8) -> i16 {
    let code = !code;
    let segment = (code >> 4) & 0x07;
    let mantissa = i32::from(code & 0x0F);
    let magnitude = (((mantissa << 3) + MULAW_BIAS) << segment) - MULAW_BIAS;
    (if code & 0x80 != 0 { -magnitude } else { magnitude }) as i16
}

/// Encode one linear sample as A-law (PCMA).
pub fn alaw_encode(sample: i16) -> u8 {
    let value = i32::from(sample) >> 3; // 13-bit
    let (sign, magnitude) = if value >= 0 { (0x80u8, value) } else { (0x00u8, -value - 1) };
    let magnitude = magnitude.min(0x0FFF);
    let (segment, mantissa) = if magnitude < 32 {
        (0u32, magnitude >> 1)
    } else {
        // magnitude in 32..=4095: segment 1..=7, step 2^segment.
        let segment = (31 - (magnitude as u32).leading_zeros()) - 4;
        (segment, (magnitude >> segment) & 0x0F)
    };
    (sign | ((segment as u8) << 4) | mantissa as u8) ^ 0x55
}

/// Decode one A-law (PCMA) code to a linear sample.
pub fn alaw_decode(code: u8) -> i16 {
    let code = code ^ 0x55;
    let segment = u32::from((code >> 4) & 0x07);
    let mantissa = i32::from(code & 0x0F);
    let magnitude13 = if segment == 0 { (mantissa << 1) | 1 } else { (((mantissa | 0x10) << 1) | 1) << (segment - 1) };
    let magnitude = magnitude13 << 3;
    (if code & 0x80 != 0 { magnitude } else { -magnitude }) as i16
}

/// The two G.711 laws, as negotiated in SDP (`PCMU/8000`, `PCMA/8000`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Law {
    /// μ-law, RTP payload type 0.
    Mu,
    /// A-law, RTP payload type 8.
    A,
}

impl Law {
    pub fn encode(self, sample: i16) -> u8 {
        match self {
            Law::Mu => mulaw_encode(sample),
            Law::A => alaw_encode(sample),
        }
    }

    pub fn decode(self, code: u8) -> i16 {
        match self {
            Law::Mu => mulaw_decode(code),
            Law::A => alaw_decode(code),
        }
    }

    /// Encode a frame of samples (one byte each).
    pub fn encode_frame(self, samples: &[i16]) -> Vec<u8> {
        samples.iter().map(|&s| self.encode(s)).collect()
    }

    /// Decode a payload, appending to `out`.
    pub fn decode_into(self, payload: &[u8], out: &mut Vec<i16>) {
        out.extend(payload.iter().map(|&c| self.decode(c)));
    }

    /// The code for digital silence.
    pub fn silence(self) -> u8 {
        self.encode(0)
    }

    /// The SDP encoding name.
    pub fn name(self) -> &'static str {
        match self {
            Law::Mu => "PCMU",
            Law::A => "PCMA",
        }
    }

    /// The static RTP payload type (RFC 3551 table 4): 0 for PCMU, 8 for PCMA.
    pub fn payload_type(self) -> u8 {
        match self {
            Law::Mu => 0,
            Law::A => 8,
        }
    }

    /// The law of a static RTP payload type; `None` for anything but 0 and 8.
    pub fn from_payload_type(pt: u8) -> Option<Law> {
        match pt {
            0 => Some(Law::Mu),
            8 => Some(Law::A),
            _ => None,
        }
    }

    /// The other law.
    pub fn other(self) -> Law {
        match self {
            Law::Mu => Law::A,
            Law::A => Law::Mu,
        }
    }

    /// Re-code a payload of this law into `to`, sample by sample (a copy when the laws agree).
    pub fn transcode(self, payload: &[u8], to: Law) -> Vec<u8> {
        if self == to { payload.to_vec() } else { payload.iter().map(|&c| to.encode(self.decode(c))).collect() }
    }
}

impl std::fmt::Display for Law {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_is_the_silence_code() {
        assert_eq!(mulaw_encode(0), 0xFF);
        assert_eq!(alaw_encode(0), 0xD5);
        assert_eq!(mulaw_decode(0xFF), 0);
        assert_eq!(mulaw_decode(0x7F), 0); // "negative zero"
        assert_eq!(alaw_decode(0xD5), 8);
        assert_eq!(alaw_decode(0x55), -8);
        assert_eq!(Law::Mu.silence(), 0xFF);
        assert_eq!(Law::A.silence(), 0xD5);
    }

    #[test]
    fn full_scale() {
        assert_eq!(mulaw_encode(i16::MAX), 0x80);
        assert_eq!(mulaw_encode(i16::MIN), 0x00);
        assert_eq!(mulaw_encode(-32767), 0x00);
        assert_eq!(mulaw_decode(0x80), 32124);
        assert_eq!(mulaw_decode(0x00), -32124);
        assert_eq!(alaw_encode(i16::MAX), 0xAA);
        assert_eq!(alaw_encode(i16::MIN), 0x2A);
        assert_eq!(alaw_decode(0xAA), 32256);
        assert_eq!(alaw_decode(0x2A), -32256);
    }

    #[test]
    fn known_codes() {
        // Segment boundaries of μ-law: -1 → 0x7F, small positives stay in segment 0.
        assert_eq!(mulaw_encode(-1), 0x7F);
        assert_eq!(mulaw_encode(8), 0xFE);
        assert_eq!(mulaw_decode(0xFE), 8);
        assert_eq!(mulaw_encode(1000), 0xCE);
        assert_eq!(mulaw_decode(0xCE), 988);
        assert_eq!(mulaw_encode(-1000), 0x4E);
        // A-law: 1000 is in segment 4 (step 16 on 13 bits).
        assert_eq!(alaw_encode(1000), 0xFA);
        assert_eq!(alaw_decode(0xFA), 1008);
        assert_eq!(alaw_encode(-1000), 0x7A);
        assert_eq!(alaw_decode(0x7A), -1008);
    }

    #[test]
    fn every_code_round_trips_exactly() {
        // Decoding then re-encoding any code gives the same code (except μ-law's two zeros).
        for code in 0..=255u8 {
            let back = mulaw_encode(mulaw_decode(code));
            if code == 0x7F {
                assert_eq!(back, 0xFF);
            } else {
                assert_eq!(back, code, "μ-law {code:#04x}");
            }
            assert_eq!(alaw_encode(alaw_decode(code)), code, "A-law {code:#04x}");
        }
    }

    #[test]
    fn round_trip_error_is_within_half_a_step() {
        for s in i16::MIN..=i16::MAX {
            let x = i32::from(s);
            let mu = i32::from(mulaw_decode(mulaw_encode(s)));
            // μ-law steps are 2^(segment+3) ≤ (|x|+132)/16: half a step is ≤ (|x|+132)/32;
            // above the clip level the error grows by the clipped amount.
            let clipped = (x.abs() - MULAW_CLIP).max(0);
            let bound = (x.abs() + MULAW_BIAS) / 32 + 1 + clipped + 512 * i32::from(clipped > 0);
            assert!((mu - x).abs() <= bound, "μ-law {s}: {mu} (bound {bound})");
            let a = i32::from(alaw_decode(alaw_encode(s)));
            // A-law steps are 16 (×8 for 16 bits) below 256 and |x|/16 above: half a step ≤ max(8, |x|/32) + rounding.
            let bound = (x.abs() / 32).max(8) + 8;
            assert!((a - x).abs() <= bound, "A-law {s}: {a} (bound {bound})");
            // Sign is preserved for anything that is not tiny.
            if x.abs() > 16 {
                assert_eq!(mu.signum(), x.signum());
                assert_eq!(a.signum(), x.signum());
            }
        }
    }

    #[test]
    fn monotonic() {
        let mut last_mu = i16::MIN;
        let mut last_a = i16::MIN;
        for s in (i16::MIN..=i16::MAX).step_by(7) {
            let mu = mulaw_decode(mulaw_encode(s));
            let a = alaw_decode(alaw_encode(s));
            assert!(mu >= last_mu && a >= last_a, "at {s}");
            last_mu = mu;
            last_a = a;
        }
    }

    #[test]
    fn frames() {
        let samples = [0i16, 1000, -1000, i16::MAX];
        let enc = Law::Mu.encode_frame(&samples);
        assert_eq!(enc, vec![0xFF, 0xCE, 0x4E, 0x80]);
        let mut dec = vec![];
        Law::Mu.decode_into(&enc, &mut dec);
        assert_eq!(dec, vec![0, 988, -988, 32124]);
        assert_eq!(Law::A.to_string(), "PCMA");
    }

    #[test]
    fn static_payload_types_name_the_law() {
        for law in [Law::Mu, Law::A] {
            assert_eq!(Law::from_payload_type(law.payload_type()), Some(law));
            assert_eq!(law.other().other(), law);
        }
        assert_eq!((Law::Mu.payload_type(), Law::A.payload_type()), (0, 8));
        assert_eq!(Law::from_payload_type(101), None);
        assert_eq!(Law::from_payload_type(18), None, "G.729 is not G.711");
    }

    #[test]
    fn transcoding_keeps_the_sample_within_a_step() {
        // 1000 in μ-law is 0xCE (988); A-law codes 988 as 0xFB (976, the step below 1008);
        // μ-law silence becomes A-law silence.
        assert_eq!(Law::Mu.transcode(&[0xCE, 0xFF], Law::A), vec![0xFB, 0xD5]);
        assert_eq!(alaw_decode(0xFB), 976);
        // A-law 0xFA (1008) is μ-law 0xCE's neighbour above: 1008 codes as 0xCE (988) too.
        assert_eq!(Law::A.transcode(&[0xFA], Law::Mu), vec![0xCE]);
        // Every code survives a trip through the other law within one step of either law.
        for code in 0..=255u8 {
            let (x, back) = (i32::from(mulaw_decode(code)), Law::Mu.transcode(&[code], Law::A)[0]);
            let y = i32::from(alaw_decode(back));
            assert!((x - y).abs() <= (x.abs() / 16).max(16), "μ {code:#04x}: {x} → A {back:#04x}: {y}");
        }
        // Same law: untouched, including μ-law's negative zero.
        assert_eq!(Law::Mu.transcode(&[0x7F, 0x00], Law::Mu), vec![0x7F, 0x00]);
    }
}
