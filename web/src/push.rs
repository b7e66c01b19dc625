//! The service worker (`/sw.js`: app-shell cache, Web Push handler) and the push subscription
//! sent to the server as `push_subscribe`.

use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;

/// What `push_subscribe` carries.
pub struct Subscription {
    pub endpoint: String,
    pub p256dh: String,
    pub auth: String,
}

fn get(o: &JsValue, k: &str) -> JsValue {
    js_sys::Reflect::get(o, &k.into()).unwrap_or(JsValue::UNDEFINED)
}

fn call(o: &JsValue, method: &str, args: &[JsValue]) -> Result<JsValue, JsValue> {
    let f: js_sys::Function = get(o, method).dyn_into().map_err(|_| JsValue::from_str(&format!("no {method}")))?;
    let a = js_sys::Array::new();
    for x in args {
        a.push(x);
    }
    f.apply(o, &a)
}

async fn await_js(v: JsValue) -> Result<JsValue, JsValue> {
    JsFuture::from(js_sys::Promise::resolve(&v)).await
}

fn container() -> Option<web_sys::ServiceWorkerContainer> {
    let nav = web_sys::window()?.navigator();
    if get(&nav, "serviceWorker").is_undefined() {
        return None;
    }
    Some(nav.service_worker())
}

/// Register `/sw.js` (secure contexts only: https or localhost).
pub fn register_service_worker() {
    if let Some(c) = container() {
        let p = c.register("/sw.js");
        wasm_bindgen_futures::spawn_local(async move {
            if let Err(e) = JsFuture::from(p).await {
                web_sys::console::warn_2(&"service worker not registered:".into(), &e);
            }
        });
    }
}

/// `Notification.permission` ("granted", "denied", "default"), or "unsupported".
pub fn permission() -> String {
    let Some(w) = web_sys::window() else { return "unsupported".into() };
    let n = get(&w, "Notification");
    if n.is_undefined() || get(&w, "PushManager").is_undefined() || container().is_none() {
        return "unsupported".into();
    }
    get(&n, "permission").as_string().unwrap_or_else(|| "default".into())
}

/// base64url (padded or not) → bytes.
pub fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            b'=' => break,
            _ => return None,
        } as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Ask for permission if needed, subscribe with the server's VAPID key, return the fields of
/// `push_subscribe`. Err("denied") when the user said no.
pub async fn subscribe(vapid_key: &str) -> Result<Subscription, String> {
    let w = web_sys::window().ok_or("no window")?;
    let text = |e: JsValue| e.as_string().or_else(|| get(&e, "message").as_string()).unwrap_or_else(|| "failed".into());
    if permission() == "default" {
        let n = get(&w, "Notification");
        let r = await_js(call(&n, "requestPermission", &[]).map_err(text)?).await.map_err(text)?;
        if r.as_string().as_deref() != Some("granted") {
            return Err("denied".into());
        }
    } else if permission() != "granted" {
        return Err("denied".into());
    }
    let c = container().ok_or("no service worker")?;
    let reg = JsFuture::from(c.ready().map_err(text)?).await.map_err(text)?;
    let pm = get(&reg, "pushManager");
    let key = base64url_decode(vapid_key).ok_or("bad VAPID key")?;
    let mut sub = await_js(call(&pm, "getSubscription", &[]).map_err(text)?).await.map_err(text)?;
    if !(sub.is_null() || sub.is_undefined()) {
        // Made with another server key (the server's VAPID key changed): subscribe again.
        let old = get(&get(&sub, "options"), "applicationServerKey");
        let same = !old.is_null() && !old.is_undefined() && js_sys::Uint8Array::new(&old).to_vec() == key;
        if !same {
            let _ = await_js(call(&sub, "unsubscribe", &[]).map_err(text)?).await;
            sub = JsValue::NULL;
        }
    }
    if sub.is_null() || sub.is_undefined() {
        let opts = js_sys::Object::new();
        let _ = js_sys::Reflect::set(&opts, &"userVisibleOnly".into(), &true.into());
        let _ = js_sys::Reflect::set(&opts, &"applicationServerKey".into(), &js_sys::Uint8Array::from(&key[..]).into());
        sub = await_js(call(&pm, "subscribe", &[opts.into()]).map_err(text)?).await.map_err(text)?;
    }
    let json = call(&sub, "toJSON", &[]).map_err(text)?;
    let keys = get(&json, "keys");
    Ok(Subscription {
        endpoint: get(&json, "endpoint").as_string().ok_or("no endpoint")?,
        p256dh: get(&keys, "p256dh").as_string().ok_or("no p256dh")?,
        auth: get(&keys, "auth").as_string().ok_or("no auth")?,
    })
}

/// Drop this browser's push subscription (at sign-out).
pub fn unsubscribe() {
    let Some(c) = container() else { return };
    let Ok(ready) = c.ready() else { return };
    wasm_bindgen_futures::spawn_local(async move {
        let Ok(reg) = JsFuture::from(ready).await else { return };
        let Ok(p) = call(&get(&reg, "pushManager"), "getSubscription", &[]) else { return };
        if let Ok(sub) = await_js(p).await
            && !sub.is_null()
            && !sub.is_undefined()
            && let Ok(p) = call(&sub, "unsubscribe", &[])
        {
            let _ = await_js(p).await;
        }
    });
}

/// A notification for an incoming call while the page is hidden (shown by the service worker
/// so that clicking it focuses this window).
pub fn show_incoming(from: &str, from_name: &str) {
    if permission() != "granted" {
        return;
    }
    let Some(c) = container() else { return };
    let Ok(ready) = c.ready() else { return };
    let title = if from_name.is_empty() || from_name == from {
        format!("Call from {from}")
    } else {
        format!("Call from {from_name} ({from})")
    };
    wasm_bindgen_futures::spawn_local(async move {
        let Ok(reg) = JsFuture::from(ready).await else { return };
        let opts = js_sys::Object::new();
        let _ = js_sys::Reflect::set(&opts, &"body".into(), &"Incoming call — tap to answer".into());
        let _ = js_sys::Reflect::set(&opts, &"tag".into(), &"incoming-call".into());
        let _ = js_sys::Reflect::set(&opts, &"requireInteraction".into(), &true.into());
        let _ = js_sys::Reflect::set(&opts, &"icon".into(), &"/icons/icon-192.png".into());
        if let Ok(p) = call(&reg, "showNotification", &[title.into(), opts.into()]) {
            let _ = await_js(p).await;
        }
    });
}

/// Close the incoming-call notification (answered, declined or missed).
pub fn close_incoming() {
    if permission() != "granted" {
        return;
    }
    let Some(c) = container() else { return };
    let Ok(ready) = c.ready() else { return };
    wasm_bindgen_futures::spawn_local(async move {
        let Ok(reg) = JsFuture::from(ready).await else { return };
        let filter = js_sys::Object::new();
        let _ = js_sys::Reflect::set(&filter, &"tag".into(), &"incoming-call".into());
        let Ok(p) = call(&reg, "getNotifications", &[filter.into()]) else { return };
        if let Ok(list) = await_js(p).await {
            for n in js_sys::Array::from(&list).iter() {
                let _ = call(&n, "close", &[]);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64url() {
        assert_eq!(super::base64url_decode("AQID").unwrap(), vec![1, 2, 3]);
        assert_eq!(super::base64url_decode("_-8").unwrap(), vec![0xff, 0xef]);
        assert_eq!(super::base64url_decode("aGk=").unwrap(), b"hi");
        assert_eq!(super::base64url_decode("BPz7").unwrap().len(), 3);
        assert!(super::base64url_decode("a b").is_none());
    }
}
