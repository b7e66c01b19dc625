// Trunkline softphone service worker: keeps the app shell available offline and shows an
// incoming-call notification for a Web Push message (the server wakes a browser that has no
// live WebSocket). Payload: {"type":"incoming","call_id","from","from_name"}.
'use strict';

const CACHE = 'trunkline-shell-v1';
const SHELL = ['/', '/manifest.webmanifest', '/icons/icon.svg', '/icons/icon-192.png', '/icons/icon-512.png'];
// Trunk names built files with a content hash: those never change, serve them from the cache.
const HASHED = /-[0-9a-f]{16,}(_bg)?\.(js|wasm|css)$/;
// How long a call rings at most (the server's steering.ring_timeout_ms default).
const RING_MS = 45000;
// Server endpoints are never cached.
const LIVE = /^\/(ws|api|healthz|metrics)(\/|$)/;

self.addEventListener('install', (event) => {
  event.waitUntil(
    caches.open(CACHE)
      .then((c) => c.addAll(SHELL))
      .catch(() => {})
      .then(() => self.skipWaiting()),
  );
});

self.addEventListener('activate', (event) => {
  event.waitUntil((async () => {
    for (const k of await caches.keys()) {
      if (k !== CACHE) await caches.delete(k);
    }
    await self.clients.claim();
  })());
});

self.addEventListener('fetch', (event) => {
  const req = event.request;
  if (req.method !== 'GET') return;
  const url = new URL(req.url);
  if (url.origin !== self.location.origin || LIVE.test(url.pathname)) return;

  if (HASHED.test(url.pathname)) {
    // Cache first: a hashed file's content never changes.
    event.respondWith((async () => {
      const hit = await caches.match(req);
      if (hit) return hit;
      const res = await fetch(req);
      if (res.ok) (await caches.open(CACHE)).put(req, res.clone());
      return res;
    })());
    return;
  }

  // Network first (a new build shows up at once), the cache when offline. Pages fall back to
  // the cached shell ("/"), since the app routes itself.
  event.respondWith((async () => {
    try {
      const res = await fetch(req);
      if (res.ok) {
        const c = await caches.open(CACHE);
        c.put(req.mode === 'navigate' ? '/' : req, res.clone());
      }
      return res;
    } catch (err) {
      const hit = await caches.match(req.mode === 'navigate' ? '/' : req);
      if (hit) return hit;
      throw err;
    }
  })());
});

function callTitle(data) {
  const from = data.from || 'unknown number';
  if (data.from_name && data.from_name !== data.from) return `Call from ${data.from_name} (${from})`;
  return `Call from ${from}`;
}

self.addEventListener('push', (event) => {
  let data = {};
  try {
    data = event.data ? event.data.json() : {};
  } catch (_) {
    data = {};
  }
  event.waitUntil((async () => {
    if (data.type !== 'incoming') {
      // userVisibleOnly: every push must show something.
      await self.registration.showNotification('Trunkline', { body: 'Open the app for news.', tag: 'trunkline' });
      return;
    }
    const windows = await self.clients.matchAll({ type: 'window', includeUncontrolled: true });
    // A window the user is looking at rings by itself (it gets the call over its WebSocket).
    const seen = windows.find((w) => w.focused && w.visibilityState === 'visible');
    if (seen) {
      console.info(`push: call ${data.call_id}: ${seen.url} is in front, it rings by itself`);
      return;
    }
    const callId = typeof data.call_id === 'string' ? data.call_id : '';
    console.info(`push: call ${callId}: showing the notification (${windows.length} windows open)`);
    const shown = self.registration.showNotification(callTitle(data), {
      body: 'Incoming call — tap to answer',
      tag: 'incoming-call',
      renotify: true,
      requireInteraction: true,
      icon: '/icons/icon-192.png',
      badge: '/icons/icon-192.png',
      vibrate: [400, 200, 400, 200, 400],
      // Opening /?answer=<call_id> signs the app in and answers that call when it arrives.
      data: { type: 'incoming', call_id: callId || null, from: data.from || null, url: callId ? `/?answer=${encodeURIComponent(callId)}` : '/' },
    });
    try {
      await shown;
    } catch (err) {
      console.warn(`push: call ${callId}: the notification failed: ${err}`);
      throw err;
    }
    console.info(`push: call ${callId}: notification shown`);
    // No push comes when the call ends: the notification goes away after the ring time.
    await new Promise((r) => setTimeout(r, RING_MS));
    for (const n of await self.registration.getNotifications({ tag: 'incoming-call' })) {
      if (n.data && n.data.call_id === (callId || null)) n.close();
    }
  })());
});

self.addEventListener('notificationclick', (event) => {
  event.notification.close();
  const url = (event.notification.data && event.notification.data.url) || '/';
  event.waitUntil((async () => {
    const windows = await self.clients.matchAll({ type: 'window', includeUncontrolled: true });
    for (const w of windows) {
      if (new URL(w.url).origin !== self.location.origin) continue;
      // An open app already has (or will get) the call over its WebSocket: bring it forward.
      if ('focus' in w) return w.focus();
    }
    // Opening the app signs it in again (stored session): the server then delivers the call.
    if (self.clients.openWindow) return self.clients.openWindow(url);
  })());
});
