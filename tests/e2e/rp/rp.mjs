// A relying party built on panva's openid-client (a certified OpenID Connect RP library,
// not built on Authlib), driven by tests/e2e/test_oidc_rp.py in two steps:
//   node rp.mjs start  '<json>'  -> {url, verifier, nonce, state}
//   node rp.mjs finish '<json>'  -> the validated ID Token claims, UserInfo, the refresh's
//                                   ID Token claims, the RP-initiated logout URL
// Every check is the library's own: discovery, the `iss` authorization response
// parameter, state, PKCE, the ID Token's signature against the JWKS, iss/aud/exp/nonce.
import * as client from "openid-client";

const [mode, raw] = process.argv.slice(2);
const args = JSON.parse(raw);

async function configuration() {
  const metadata = { client_id: args.client_id };
  if (args.alg) metadata.id_token_signed_response_alg = args.alg;
  return client.discovery(
    new URL(args.issuer),
    args.client_id,
    metadata,
    client.ClientSecretBasic(args.client_secret),
    { execute: [client.allowInsecureRequests] },
  );
}

async function start() {
  const config = await configuration();
  const verifier = client.randomPKCECodeVerifier();
  const nonce = client.randomNonce();
  const state = client.randomState();
  const url = client.buildAuthorizationUrl(config, {
    redirect_uri: args.redirect_uri,
    scope: args.scope,
    code_challenge: await client.calculatePKCECodeChallenge(verifier),
    code_challenge_method: "S256",
    nonce,
    state,
  });
  return { url: url.href, verifier, nonce, state };
}

async function finish() {
  const config = await configuration();
  const tokens = await client.authorizationCodeGrant(config, new URL(args.callback), {
    pkceCodeVerifier: args.verifier,
    expectedNonce: args.nonce,
    expectedState: args.state,
    idTokenExpected: true,
  });
  const claims = tokens.claims();
  const userinfo = await client.fetchUserInfo(config, tokens.access_token, claims.sub);
  const refreshed = await client.refreshTokenGrant(config, tokens.refresh_token);
  const logout = client.buildEndSessionUrl(config, {
    id_token_hint: refreshed.id_token ?? tokens.id_token,
    post_logout_redirect_uri: args.post_logout_redirect_uri,
    state: "bye-" + args.state,
  });
  return {
    claims,
    header: JSON.parse(Buffer.from(tokens.id_token.split(".")[0], "base64url")),
    userinfo,
    refreshed_claims: refreshed.claims() ?? null,
    refreshed_access_token: Boolean(refreshed.access_token),
    logout_url: logout.href,
  };
}

try {
  const result = mode === "start" ? await start() : await finish();
  process.stdout.write(JSON.stringify(result));
} catch (error) {
  process.stdout.write(
    JSON.stringify({ error: error.name, code: error.code, message: error.message }),
  );
  process.exitCode = 1;
}
