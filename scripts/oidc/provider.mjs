// Wardgate's test OpenID Provider: panva/oidc-provider (OpenID Certified) on 127.0.0.1.
// Clients, users and per-client claims come from config.json. Signing keys live in
// $OIDC_BASE/jwks.private.json; delete it and restart to rotate (new kids).
// Adds an RFC 8693 token-exchange grant so an agent can act for a signed-in human.
import Provider, { errors } from 'oidc-provider';
import { jwtVerify, createLocalJWKSet, SignJWT, importJWK } from 'jose';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

const HOST = '127.0.0.1';
const PORT = Number(process.env.OIDC_PORT || 9090);
const BASE = process.env.OIDC_BASE || path.dirname(new URL(import.meta.url).pathname);
const ISSUER = `http://${HOST}:${PORT}`;
const CFG = JSON.parse(fs.readFileSync(process.env.OIDC_CONFIG, 'utf8'));
const RESOURCE = CFG.resource;
const RS_SCOPES = CFG.resourceScopes;
const CLIENT_CLAIMS = CFG.clientClaims || {};
const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';

const jwksFile = path.join(BASE, 'jwks.private.json');
let jwks;
if (fs.existsSync(jwksFile)) {
  jwks = JSON.parse(fs.readFileSync(jwksFile, 'utf8'));
} else {
  const tag = crypto.randomBytes(4).toString('hex');
  const rsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
  const ec = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' });
  jwks = { keys: [{ ...rsa, kid: `rs256-${tag}`, use: 'sig', alg: 'RS256' }, { ...ec, kid: `es256-${tag}`, use: 'sig', alg: 'ES256' }] };
  fs.writeFileSync(jwksFile, JSON.stringify(jwks), { mode: 0o600 });
}
const publicJwks = { keys: jwks.keys.map(({ d, p, q, dp, dq, qi, ...pub }) => pub) };

const users = CFG.users;
const configuration = {
  clients: CFG.clients,
  jwks,
  cookies: { keys: [crypto.randomBytes(16).toString('hex')] },
  scopes: ['openid', 'offline_access', 'email', 'profile', 'groups', ...RS_SCOPES],
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name', 'preferred_username'], groups: ['groups'] },
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  async findAccount(ctx, id) {
    const u = users[id];
    if (!u) return undefined;
    return { accountId: id, claims: async () => ({ sub: id, ...u.claims }) };
  },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: async (ctx, client, oneOf) => oneOf || RESOURCE,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (ctx, resource) => {
        if (resource !== RESOURCE) throw new errors.InvalidTarget();
        return { scope: RS_SCOPES.join(' '), audience: RESOURCE, accessTokenTTL: 3600,
                 accessTokenFormat: 'jwt', jwt: { sign: { alg: 'ES256' } } };
      },
    },
  },
  async extraTokenClaims(ctx, token) {
    if (token.kind === 'ClientCredentials') return { ...(CLIENT_CLAIMS[token.clientId] || {}) };
    if (token.accountId && users[token.accountId]) {
      const c = users[token.accountId].claims;
      return { email: c.email, groups: c.groups, preferred_username: c.preferred_username };
    }
    return undefined;
  },
  async loadExistingGrant(ctx) {
    const { Grant } = ctx.oidc.provider;
    const grant = new Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope(['openid', 'offline_access', 'email', 'profile', 'groups', ...RS_SCOPES].join(' '));
    grant.addResourceScope(RESOURCE, RS_SCOPES.join(' '));
    await grant.save();
    return grant;
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  ttl: { AccessToken: 3600, ClientCredentials: 3600, IdToken: 3600, Interaction: 600, Session: 3600, Grant: 3600, RefreshToken: 86400, AuthorizationCode: 60 },
};

const provider = new Provider(ISSUER, configuration);

// RFC 8693: the authenticated client (an agent) presents a user's access token
// and receives a token for the gateway whose `sub` is the user and `act.sub` the agent.
const localKeys = createLocalJWKSet(publicJwks);
provider.registerGrantType(TOKEN_EXCHANGE, async (ctx) => {
  const { client, params } = ctx.oidc;
  if (params.subject_token_type !== ACCESS_TOKEN_TYPE) throw new errors.InvalidRequest('subject_token_type must be an access token');
  let subject;
  try {
    ({ payload: subject } = await jwtVerify(params.subject_token, localKeys, { issuer: ISSUER, audience: RESOURCE }));
  } catch (e) {
    throw new errors.InvalidGrant(`subject_token rejected: ${e.code || e.message}`);
  }
  if (subject.act) throw new errors.InvalidGrant('subject_token is already delegated');
  const key = jwks.keys.find((k) => k.alg === 'ES256');
  const now = Math.floor(Date.now() / 1000);
  const token = await new SignJWT({
    client_id: client.clientId, scope: subject.scope, act: { sub: client.clientId },
    ...(CLIENT_CLAIMS[client.clientId] || {}),
    email: subject.email, preferred_username: subject.preferred_username,
  })
    .setProtectedHeader({ alg: 'ES256', kid: key.kid, typ: 'at+jwt' })
    .setIssuer(ISSUER).setAudience(RESOURCE).setSubject(subject.sub)
    .setIssuedAt(now).setExpirationTime(now + 600).setJti(crypto.randomUUID())
    .sign(await importJWK(key, 'ES256'));
  ctx.body = { access_token: token, issued_token_type: ACCESS_TOKEN_TYPE, token_type: 'Bearer', expires_in: 600 };
}, ['subject_token', 'subject_token_type', 'audience', 'resource', 'scope']);

const readForm = (req) => new Promise((resolve, reject) => {
  let b = ''; req.on('data', (c) => { b += c; }); req.on('end', () => resolve(Object.fromEntries(new URLSearchParams(b)))); req.on('error', reject);
});
const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' }[c]));

// Sign-in UI: GET shows a form; POST login=<user>&password=<pw> (checked against the static users).
provider.use(async (ctx, next) => {
  const m = ctx.path.match(/^\/interaction\/([\w-]+)(\/login)?$/);
  if (!m) return next();
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  if (details.prompt.name === 'consent') {
    const grant = await configuration.loadExistingGrant({ oidc: { provider, client: { clientId: details.params.client_id }, session: { accountId: details.session.accountId } } });
    const to = await provider.interactionResult(ctx.req, ctx.res, { consent: { grantId: grant.jti } }, { mergeWithLastSubmission: true });
    ctx.status = 303; ctx.redirect(to);
    return undefined;
  }
  if (ctx.method === 'GET' && !m[2]) {
    ctx.type = 'html';
    ctx.body = `<!doctype html><title>Sign-in</title><form method="post" action="/interaction/${esc(details.uid)}/login">
<input name="login" placeholder="user"> <input name="password" type="password"> <button>Sign in</button></form>`;
    return undefined;
  }
  if (ctx.method === 'POST' && m[2]) {
    const { login, password } = await readForm(ctx.req);
    const u = users[login];
    if (!u || u.password !== password) { ctx.status = 401; ctx.type = 'text'; ctx.body = 'invalid credentials\n'; return undefined; }
    const to = await provider.interactionResult(ctx.req, ctx.res, { login: { accountId: login } }, { mergeWithLastSubmission: false });
    ctx.status = 303; ctx.redirect(to);
    return undefined;
  }
  return next();
});

const server = provider.listen(PORT, HOST, () => console.log(`oidc-provider listening on ${ISSUER}`));
const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop); process.on('SIGINT', stop);
