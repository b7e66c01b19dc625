//! Reading sipp's `-trace_msg` log and small SIP text helpers for the wire-level tests.
//! Included with `#[path = "common/sipcheck.rs"] mod sipcheck;` (kept apart from `mod.rs`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

/// One message from a sipp trace.
#[derive(Clone, Debug)]
pub struct TraceMsg {
    /// Sent by sipp (else received).
    pub sent: bool,
    /// "UDP" or "TCP".
    pub transport: String,
    /// The SIP message text (start line, headers, body).
    pub text: String,
}

impl TraceMsg {
    pub fn start_line(&self) -> &str {
        self.text.lines().next().unwrap_or("").trim_end()
    }

    /// Status code, for a response.
    pub fn status(&self) -> Option<u16> {
        status_of(&self.text)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.text, name)
    }

    pub fn headers(&self, name: &str) -> Vec<&str> {
        headers(&self.text, name)
    }

    pub fn cseq_method(&self) -> Option<&str> {
        self.header("CSeq").and_then(|c| c.split_whitespace().nth(1))
    }

    pub fn is_request(&self, method: &str) -> bool {
        self.start_line().starts_with(&format!("{method} "))
    }
}

/// Split a sipp `_messages.log` into messages, in order.
pub fn trace(log: &str) -> Vec<TraceMsg> {
    let mut out = Vec::new();
    for block in log.split("----------------------------------------------- ").skip(1) {
        // "<date>\nUDP message sent (398 bytes):\n\n<message>" or
        // "<date>\nUDP message received [512] bytes :\n\n<message>"
        let mut parts = block.splitn(3, '\n');
        let _date = parts.next();
        let Some(what) = parts.next() else { continue };
        let Some(rest) = parts.next() else { continue };
        let sent = what.contains("message sent");
        let received = what.contains("message received");
        if !sent && !received {
            continue;
        }
        let transport = what.split_whitespace().next().unwrap_or("").to_string();
        let text = rest.trim_start_matches(['\r', '\n']).replace("\r\n", "\n").trim_end().to_string();
        out.push(TraceMsg { sent, transport, text });
    }
    out
}

/// The responses sipp received, in order.
pub fn received_responses(log: &str) -> Vec<TraceMsg> {
    trace(log).into_iter().filter(|m| !m.sent && m.text.starts_with("SIP/2.0 ")).collect()
}

/// The requests sipp received, in order.
pub fn received_requests(log: &str) -> Vec<TraceMsg> {
    trace(log).into_iter().filter(|m| !m.sent && !m.text.starts_with("SIP/2.0 ")).collect()
}

/// Status codes sipp received for requests with CSeq method `method`, in order.
pub fn statuses_for(log: &str, method: &str) -> Vec<u16> {
    received_responses(log).iter().filter(|m| m.cseq_method() == Some(method)).filter_map(|m| m.status()).collect()
}

pub fn status_of(text: &str) -> Option<u16> {
    let line = text.lines().next()?;
    let rest = line.strip_prefix("SIP/2.0 ")?;
    rest.get(..3)?.parse().ok()
}

/// Long and compact header names (RFC 3261 §7.3.3).
fn names_of(name: &str) -> Vec<String> {
    let compact = match name.to_ascii_lowercase().as_str() {
        "call-id" => Some("i"),
        "contact" => Some("m"),
        "content-length" => Some("l"),
        "content-type" => Some("c"),
        "from" => Some("f"),
        "to" => Some("t"),
        "via" => Some("v"),
        "subject" => Some("s"),
        "supported" => Some("k"),
        _ => None,
    };
    let mut v = vec![name.to_ascii_lowercase()];
    v.extend(compact.map(str::to_string));
    v
}

/// Every value of header `name` in the head of `text` (no folding: our peers do not fold).
pub fn headers<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    let names = names_of(name);
    let head = text.split("\n\n").next().unwrap_or(text);
    let head = head.split("\r\n\r\n").next().unwrap_or(head);
    head.lines()
        .skip(1)
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            names.contains(&n.trim().to_ascii_lowercase()).then_some(v.trim())
        })
        .collect()
}

pub fn header<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    headers(text, name).into_iter().next()
}

/// Header names present in a message's head (lower case, in order, repeated as often as they occur).
pub fn header_names(text: &str) -> Vec<String> {
    let head = text.split("\n\n").next().unwrap_or(text);
    let head = head.split("\r\n\r\n").next().unwrap_or(head);
    head.lines().skip(1).filter_map(|l| l.split_once(':').map(|(n, _)| n.trim().to_ascii_lowercase())).collect()
}

/// The message body (after the blank line).
pub fn body(text: &str) -> &str {
    if let Some((_, b)) = text.split_once("\r\n\r\n") {
        return b;
    }
    text.split_once("\n\n").map(|(_, b)| b).unwrap_or("")
}

/// Wait until the gateway with state in `state_dir` has its phone list from the cloud (it saves
/// the list, atomically, as it takes it in), holding every number in `numbers`.
pub async fn wait_phone_list(state_dir: &Path, numbers: &[&str]) {
    let file = state_dir.join("phones.json");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(text) = std::fs::read_to_string(&file)
            && numbers.iter().all(|n| text.contains(&format!("\"{n}\"")))
        {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "the gateway never received its phone list ({})", file.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Files named `name` anywhere below `dir` (sipp work dirs are temp subfolders).
pub fn find_files(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == name) {
                out.push(p);
            }
        }
    }
    out
}

/// Fail with a clear message if a tool the test needs is missing.
pub fn require_tool(tool: &str, package: &str) {
    let found =
        std::env::var_os("PATH").map(|paths| std::env::split_paths(&paths).any(|p| p.join(tool).is_file())).unwrap_or(false);
    assert!(found, "`{tool}` is not installed: this test needs it (Debian package `{package}`)");
}

/// A readable dump of a sipp run for assertion messages.
pub fn dump(run: &super::common::SippRun) -> String {
    format!(
        "sipp success={}\n--- stdout (tail)\n{}\n--- stderr\n{}\n--- messages\n{}",
        run.success,
        tail(&run.stdout, 3000),
        tail(&run.stderr, 3000),
        tail(&run.messages, 12000)
    )
}

fn tail(s: &str, n: usize) -> &str {
    if s.len() <= n {
        return s;
    }
    let mut i = s.len() - n;
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}
