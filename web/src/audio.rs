//! Sounds made with WebAudio: the ringtone of an incoming call and a short key tone for DTMF.
//! One AudioContext for the app, resumed at the first click or key press (autoplay rules).

use std::cell::RefCell;

use web_sys::{AudioContext, GainNode, OscillatorNode};

thread_local! {
    static CTX: RefCell<Option<AudioContext>> = const { RefCell::new(None) };
}

fn context() -> Option<AudioContext> {
    CTX.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = AudioContext::new().ok();
        }
        c.clone()
    })
}

/// Call from a user gesture: browsers start audio (an AudioContext, a media element that was
/// refused autoplay) only after one.
pub fn unlock() {
    if let Some(ctx) = context() {
        let _ = ctx.resume();
    }
    let remote = web_sys::window()
        .and_then(|w| w.document())
        .and_then(|d| d.query_selector("audio[data-testid=remote-audio]").ok().flatten());
    if let Some(el) = remote {
        let a: web_sys::HtmlMediaElement = wasm_bindgen::JsCast::unchecked_into(el);
        if a.paused() {
            let _ = a.play();
        }
    }
}

/// The DTMF pair of a key (Hz).
pub fn dtmf_pair(d: char) -> Option<(f32, f32)> {
    let row = match d {
        '1' | '2' | '3' => 697.0,
        '4' | '5' | '6' => 770.0,
        '7' | '8' | '9' => 852.0,
        '*' | '0' | '#' => 941.0,
        _ => return None,
    };
    let col = match d {
        '1' | '4' | '7' | '*' => 1209.0,
        '2' | '5' | '8' | '0' => 1336.0,
        _ => 1477.0,
    };
    Some((row, col))
}

fn tone(ctx: &AudioContext, freqs: &[f32], gain: &GainNode, start: f64, stop: Option<f64>) -> Vec<OscillatorNode> {
    let mut out = Vec::new();
    for f in freqs {
        let Ok(o) = ctx.create_oscillator() else { continue };
        o.frequency().set_value(*f);
        let _ = o.connect_with_audio_node(gain);
        let _ = o.start_with_when(start);
        if let Some(t) = stop {
            let _ = o.stop_with_when(t);
        }
        out.push(o);
    }
    out
}

/// A short local key tone while sending a DTMF digit.
pub fn key_click(d: char) {
    let (Some(ctx), Some((a, b))) = (context(), dtmf_pair(d)) else { return };
    let Ok(g) = ctx.create_gain() else { return };
    g.gain().set_value(0.05);
    let _ = g.connect_with_audio_node(&ctx.destination());
    let t = ctx.current_time();
    tone(&ctx, &[a, b], &g, t, Some(t + 0.12));
}

/// A ringing cadence (for up to two minutes): the ringtone (440 + 480 Hz, 2 s on / 4 s off)
/// or the ringback.
pub struct Ringtone {
    oscillators: Vec<OscillatorNode>,
    gain: GainNode,
}

impl Ringtone {
    /// An incoming call ringing here.
    pub fn start() -> Option<Ringtone> {
        Self::cadence(&[440.0, 480.0], 2.0, 6.0, 0.12)
    }

    /// Ringback while the far end rings (425 Hz, 1 s on / 4 s off), quieter.
    pub fn ringback() -> Option<Ringtone> {
        Self::cadence(&[425.0], 1.0, 5.0, 0.05)
    }

    fn cadence(freqs: &[f32], on: f64, period: f64, level: f32) -> Option<Ringtone> {
        let ctx = context()?;
        let _ = ctx.resume();
        let gain = ctx.create_gain().ok()?;
        let _ = gain.connect_with_audio_node(&ctx.destination());
        let t0 = ctx.current_time() + 0.05;
        let g = gain.gain();
        g.set_value(0.0);
        let mut t = t0;
        while t < t0 + 120.0 {
            let _ = g.set_value_at_time(level, t);
            let _ = g.set_value_at_time(0.0, t + on);
            t += period;
        }
        let oscillators = tone(&ctx, freqs, &gain, t0, None);
        Some(Ringtone { oscillators, gain })
    }

    pub fn stop(self) {
        for o in &self.oscillators {
            let _ = o.stop();
        }
        let _ = self.gain.disconnect();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn dtmf_pairs() {
        assert_eq!(super::dtmf_pair('1'), Some((697.0, 1209.0)));
        assert_eq!(super::dtmf_pair('0'), Some((941.0, 1336.0)));
        assert_eq!(super::dtmf_pair('#'), Some((941.0, 1477.0)));
        assert_eq!(super::dtmf_pair('x'), None);
    }
}
