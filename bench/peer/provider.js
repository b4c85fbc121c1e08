// The peer's provider: node-oidc-provider configured like our bench's server (see
// peer.json): one confidential client (client_secret_basic) allowed client credentials,
// refresh tokens (rotated on every use, as ours are) and the code grant; introspection;
// UserInfo with opaque access tokens; accounts read from Redis (our UserInfo reads the
// users table); no development interactions.
import { readFileSync } from 'node:fs';
import { generateKeyPairSync } from 'node:crypto';

import Provider from 'oidc-provider';

import { adapterFor, redisClient } from './adapter.js';

export const PEER = JSON.parse(readFileSync(new URL('./peer.json', import.meta.url), 'utf8'));

/** A fresh RS256 signing key (JWK), shared by the workers through the environment. */
export function signingJwks() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { keys: [{ ...privateKey.export({ format: 'jwk' }), alg: 'RS256', use: 'sig', kid: 'bench' }] };
}

export function accountKey(sub) {
  return `account:${sub}`;
}

export function makeProvider({ issuer, redisUrl, jwks }) {
  const redis = redisClient(redisUrl);
  const { client, scopes, ttl } = PEER;
  const configuration = {
    adapter: adapterFor(redis),
    clients: [{
      client_id: client.client_id,
      client_secret: client.client_secret,
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: ['authorization_code', 'refresh_token', 'client_credentials'],
      response_types: ['code'],
      redirect_uris: client.redirect_uris,
      scope: [...new Set(`${scopes.token} ${scopes.userinfo} offline_access`.split(' '))].join(' '),
    }],
    scopes: ['openid', 'offline_access', ...scopes.token.split(' ')],
    claims: {
      openid: ['sub'],
      profile: ['name'],
      email: ['email'],
    },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      // As ours: a client reads only the tokens issued to it (others read as inactive).
      introspection: {
        enabled: true,
        allowedPolicy: (_ctx, caller, token) => token.clientId === caller.clientId,
      },
      revocation: { enabled: true },
      userinfo: { enabled: true },
    },
    rotateRefreshToken: true,
    ttl: { ...ttl },
    jwks,
    cookies: { keys: ['bench-peer-cookie-key-not-a-secret-0123456789'] },
    async findAccount(_ctx, sub) {
      const stored = await redis.get(accountKey(sub));
      if (!stored) return undefined;
      const claims = JSON.parse(stored);
      return {
        accountId: sub,
        async claims() {
          return claims;
        },
      };
    },
  };
  const provider = new Provider(issuer, configuration);
  provider.on('server_error', (ctx, err) => {
    console.error(`[ERROR] server_error ${ctx.method} ${ctx.path}: ${err.stack || err}`);
  });
  return { provider, redis };
}
