// Test helper: sign arbitrary claims with a running test provider's own keys, to
// produce the edge-case tokens a real provider would never issue (expired, wrong
// audience, alg none, HS256 keyed with the RSA public key, ...).
// Usage: node mint.mjs OIDC_BASE '{"claims":{...},"alg":"ES256","kid":"...","mode":"sign|none|hs256-public|bad-signature"}'
import { SignJWT, importJWK } from 'jose';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

const [base, specJson] = process.argv.slice(2);
const spec = JSON.parse(specJson);
const { keys } = JSON.parse(fs.readFileSync(path.join(base, 'jwks.private.json'), 'utf8'));
const alg = spec.alg || 'ES256';
const key = keys.find((k) => k.alg === (alg === 'HS256' ? 'RS256' : alg));
const b64 = (v) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');
const header = { alg, kid: spec.kid ?? key.kid, typ: 'at+jwt' };
let token;
if (spec.mode === 'none') {
  token = `${b64({ alg: 'none', typ: 'at+jwt' })}.${b64(spec.claims)}.`;
} else if (spec.mode === 'hs256-public') {
  const { d, p, q, dp, dq, qi, ...pub } = key;
  const pem = crypto.createPublicKey({ key: pub, format: 'jwk' }).export({ type: 'spki', format: 'pem' });
  const input = `${b64({ alg: 'HS256', kid: key.kid, typ: 'at+jwt' })}.${b64(spec.claims)}`;
  token = `${input}.${crypto.createHmac('sha256', pem).update(input).digest('base64url')}`;
} else {
  token = await new SignJWT(spec.claims).setProtectedHeader(header).sign(await importJWK(key, alg));
  if (spec.mode === 'bad-signature') {
    const [h, p, s] = token.split('.');
    const sig = Buffer.from(s, 'base64url'); sig[sig.length - 5] ^= 0x55;
    token = `${h}.${p}.${sig.toString('base64url')}`;
  }
}
process.stdout.write(token);
