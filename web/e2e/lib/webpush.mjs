// A stand-in push service for the Web Push test: a local HTTP endpoint that receives the signal
// server's push requests and decrypts them (RFC 8291 aes128gcm) with the browser-side keys it
// made, so the test sees exactly what a real push service would deliver to the service worker.
import crypto from 'node:crypto';
import http from 'node:http';

const b64u = (b) => Buffer.from(b).toString('base64url');
const hmac = (key, data) => crypto.createHmac('sha256', key).update(data).digest();

export async function startPushService() {
  const ecdh = crypto.createECDH('prime256v1');
  ecdh.generateKeys();
  const auth = crypto.randomBytes(16);
  const received = [];
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      let payload = null;
      let error = null;
      try {
        payload = JSON.parse(decrypt(body, ecdh, auth).toString('utf8'));
      } catch (e) {
        error = e.message;
      }
      received.push({ path: req.url, headers: req.headers, payload, error });
      res.writeHead(201).end();
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const endpoint = `http://127.0.0.1:${server.address().port}/push/2002`;
  return {
    endpoint,
    p256dh: b64u(ecdh.getPublicKey()),
    auth: b64u(auth),
    received,
    close: () => new Promise((r) => server.close(r)),
  };
}

/** RFC 8291 / RFC 8188: salt(16) rs(4) idlen(1) keyid(sender public key) | AES-128-GCM record. */
function decrypt(body, ecdh, auth) {
  const salt = body.subarray(0, 16);
  const idlen = body[20];
  const asPublic = body.subarray(21, 21 + idlen);
  const record = body.subarray(21 + idlen);
  const uaPublic = ecdh.getPublicKey();
  const ecdhSecret = ecdh.computeSecret(asPublic);
  const prkKey = hmac(auth, ecdhSecret);
  const keyInfo = Buffer.concat([Buffer.from('WebPush: info\0'), uaPublic, asPublic, Buffer.from([1])]);
  const ikm = hmac(prkKey, keyInfo);
  const prk = hmac(salt, ikm);
  const cek = hmac(prk, Buffer.from('Content-Encoding: aes128gcm\0\x01', 'binary')).subarray(0, 16);
  const nonce = hmac(prk, Buffer.from('Content-Encoding: nonce\0\x01', 'binary')).subarray(0, 12);
  const d = crypto.createDecipheriv('aes-128-gcm', cek, nonce);
  d.setAuthTag(record.subarray(record.length - 16));
  const plain = Buffer.concat([d.update(record.subarray(0, record.length - 16)), d.final()]);
  // Strip the padding: the last record ends with 0x02 then zeros.
  let end = plain.length - 1;
  while (end >= 0 && plain[end] === 0) end--;
  if (plain[end] !== 2) throw new Error('bad padding delimiter');
  return plain.subarray(0, end);
}

/** A page init script that makes pushManager hand out a subscription to `svc`. */
export function fakePushManagerScript(svc) {
  return `(() => {
    const svc = ${JSON.stringify({ endpoint: svc.endpoint, p256dh: svc.p256dh, auth: svc.auth })};
    let current = null;
    const make = (options) => ({
      endpoint: svc.endpoint,
      options: { userVisibleOnly: !!options.userVisibleOnly, applicationServerKey: options.applicationServerKey && options.applicationServerKey.buffer ? options.applicationServerKey.buffer : options.applicationServerKey },
      toJSON() { return { endpoint: svc.endpoint, expirationTime: null, keys: { p256dh: svc.p256dh, auth: svc.auth } }; },
      unsubscribe() { current = null; window.__pushUnsubscribed = true; return Promise.resolve(true); },
    });
    PushManager.prototype.subscribe = function (options) {
      window.__pushSubscribeOptions = { userVisibleOnly: options.userVisibleOnly, keyLength: new Uint8Array(options.applicationServerKey).length };
      current = make(options);
      return Promise.resolve(current);
    };
    PushManager.prototype.getSubscription = function () { return Promise.resolve(current); };
  })();`;
}
