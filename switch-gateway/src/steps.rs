//! The patent steps this gateway took per cloud call (the core's `Output::Step`): logged
//! under `trunkline::trace`, like the signal server's, and kept for the most recent calls so
//! an operator's tooling or a test can ask which steps a call went through.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use trunkline_protocol::Step;

/// How many calls' steps are kept (the oldest are forgotten first).
const KEEP_CALLS: usize = 10_000;

/// Shared, cheap to clone; see [`crate::run_with_steps`].
#[derive(Clone, Default)]
pub struct Steps(Arc<Mutex<Inner>>);

#[derive(Default)]
struct Inner {
    by_call: HashMap<String, Vec<Step>>,
    order: VecDeque<String>,
}

impl Steps {
    pub(crate) fn record(&self, call_id: &str, step: Step, detail: &str) {
        tracing::info!(target: "trunkline::trace", %call_id, step = step.as_str(), "{detail}");
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if !g.by_call.contains_key(call_id) {
            if g.order.len() >= KEEP_CALLS
                && let Some(old) = g.order.pop_front()
            {
                g.by_call.remove(&old);
            }
            g.order.push_back(call_id.to_string());
        }
        g.by_call.entry(call_id.to_string()).or_default().push(step);
    }

    /// The steps of cloud call `call_id`, in order.
    pub fn of(&self, call_id: &str) -> Vec<Step> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).by_call.get(call_id).cloned().unwrap_or_default()
    }

    /// Every kept call with its steps, oldest first.
    pub fn all(&self) -> Vec<(String, Vec<Step>)> {
        let g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        g.order.iter().map(|c| (c.clone(), g.by_call.get(c).cloned().unwrap_or_default())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_kept_per_call_in_order_and_the_oldest_call_goes_first() {
        let s = Steps::default();
        s.record("c1", Step::C12, "queued");
        s.record("c2", Step::B1, "desk phone");
        s.record("c1", Step::C14, "key");
        assert_eq!(s.of("c1"), vec![Step::C12, Step::C14]);
        assert_eq!(s.all().len(), 2);
        for i in 0..KEEP_CALLS {
            s.record(&format!("x{i}"), Step::B2, "");
        }
        assert!(s.of("c1").is_empty(), "the oldest call is forgotten");
        assert_eq!(s.all().len(), KEEP_CALLS);
    }
}
