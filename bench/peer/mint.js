// `node mint.js <refresh count> <refresh file>`: the peer's fixtures, written through
// oidc-provider's own models (the counterpart of the bench's Fixtures.live_token and
// refresh_pool): the account, an access token for introspection (scope of our bench's
// tokens), one for UserInfo (openid profile email), and <refresh count> refresh tokens,
// each of a grant of its own, one a line in <refresh file>. Prints the two access tokens
// as JSON.
import { writeFileSync } from 'node:fs';

import { PEER, accountKey, makeProvider, signingJwks } from './provider.js';

const [count, file] = [Number(process.argv[2] || 0), process.argv[3]];
const port = Number(process.env.PEER_PORT || 1);
const { provider, redis } = makeProvider({
  issuer: `http://127.0.0.1:${port}`,
  redisUrl: process.env.PEER_REDIS_URL,
  jwks: signingJwks(),
});
const { account, scopes } = PEER;
const client = await provider.Client.find(PEER.client.client_id);
await redis.set(accountKey(account.sub), JSON.stringify(account));

async function grantFor(scope) {
  const grant = new provider.Grant({ accountId: account.sub, clientId: client.clientId });
  grant.addOIDCScope(scope);
  return grant.save();
}

async function accessToken(scope) {
  const grantId = await grantFor(scope);
  const token = new provider.AccessToken({
    accountId: account.sub, client, grantId, scope, gty: 'authorization_code',
  });
  return token.save();
}

async function refreshToken(scope) {
  const grantId = await grantFor(scope);
  const token = new provider.RefreshToken({
    accountId: account.sub, client, grantId, scope, gty: 'authorization_code',
  });
  return token.save();
}

const out = {
  access: await accessToken(scopes.token),
  userinfo_access: await accessToken(scopes.userinfo),
};
if (count && file) {
  const tokens = new Array(count);
  let next = 0;
  const worker = async () => {
    while (next < count) {
      const i = next;
      next += 1;
      tokens[i] = await refreshToken(scopes.token);
    }
  };
  await Promise.all(Array.from({ length: 64 }, worker));
  writeFileSync(file, `${tokens.join('\n')}\n`);
  out.refresh = count;
}
console.log(JSON.stringify(out));
await redis.quit();
