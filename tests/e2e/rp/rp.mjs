// A relying party built on panva's openid-client (a certified OpenID Connect RP library,
// not built on Authlib), driven by tests/e2e/test_oidc_rp.py in two steps:
//   node rp.mjs start  '<json>'  -> {url, verifier, nonce, state}
//   node rp.mjs finish '<json>'  -> the validated ID Token claims, UserInfo, the refresh's
//                                   ID Token claims, the RP-initiated logout URL
// Every check is the library's own: discovery, the `iss` authorization response
// parameter, state, PKCE, the ID Token's signature against the JWKS, iss/aud/exp/nonce.
//
// DPoP (RFC 9449), driven by tests/e2e/test_dpop_rp.py, with the library's own proofs
// (oauth4webapi's DPoP handle: proof per request, `ath`, the `use_dpop_nonce` retry):
//   node rp.mjs dpop-start  '<json>' -> as start, plus the DPoP key pair (JWK) and the
//                                       authorization request's `dpop_jkt`
//   node rp.mjs dpop-finish '<json>' -> the token responses, UserInfo, /api/profile, a
//                                       refresh, and every HTTP exchange the library made
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
    args.client_secret ? client.ClientSecretBasic(args.client_secret) : client.None(),
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

// -- DPoP ---------------------------------------------------------------------------------
// The WebCrypto algorithm of an exported key (ES256's P-256, or Ed25519).
function subtle(jwk) {
  return jwk.kty === "OKP" ? { name: "Ed25519" } : { name: "ECDSA", namedCurve: jwk.crv };
}

async function exportPair(pair) {
  return {
    privateKey: await crypto.subtle.exportKey("jwk", pair.privateKey),
    publicKey: await crypto.subtle.exportKey("jwk", pair.publicKey),
  };
}

async function importPair(jwks) {
  const algorithm = subtle(jwks.publicKey);
  return {
    privateKey: await crypto.subtle.importKey("jwk", jwks.privateKey, algorithm, false, ["sign"]),
    publicKey: await crypto.subtle.importKey("jwk", jwks.publicKey, algorithm, true, ["verify"]),
  };
}

// The JSON of a JWT's header or payload (the proofs the library sent, for the test to read).
function part(jwt, index) {
  return JSON.parse(Buffer.from(jwt.split(".")[index], "base64url"));
}

// Every exchange the library makes, in order: what it sent (scheme, proof) and what it got.
function recorder(config, exchanges) {
  config[client.customFetch] = async (url, options) => {
    const response = await fetch(url, options);
    const headers = options.headers ?? {};
    const proof = headers.dpop ?? headers.DPoP;
    const entry = {
      url,
      method: options.method ?? "GET",
      scheme: (headers.authorization ?? "").split(" ")[0],
      proof: proof ? { header: part(proof, 0), claims: part(proof, 1) } : null,
      status: response.status,
      dpop_nonce: response.headers.get("dpop-nonce"),
      www_authenticate: response.headers.get("www-authenticate"),
    };
    if (new URL(url).pathname === "/token") {
      entry.body = await response.clone().json();
      for (const secret of ["access_token", "refresh_token", "id_token"]) {
        if (entry.body[secret]) entry.body[secret] = "(present)";
      }
    }
    exchanges.push(entry);
    return response;
  };
}

async function dpopStart() {
  const pair = await client.randomDPoPKeyPair(args.dpop_alg ?? "ES256", { extractable: true });
  const config = await configuration();
  const jkt = await client.getDPoPHandle(config, pair).calculateThumbprint();
  const started = await start();
  const url = new URL(started.url);
  url.searchParams.set("dpop_jkt", jkt);
  return { ...started, url: url.href, jkt, keys: await exportPair(pair) };
}

async function dpopFinish() {
  const config = await configuration();
  const exchanges = [];
  recorder(config, exchanges);
  const pair = await importPair(args.keys);
  const DPoP = client.getDPoPHandle(config, pair);
  const mark = (step) => exchanges.push({ step });

  mark("code");
  const tokens = await client.authorizationCodeGrant(
    config,
    new URL(args.callback),
    {
      pkceCodeVerifier: args.verifier,
      expectedNonce: args.nonce,
      expectedState: args.state,
      idTokenExpected: true,
    },
    undefined,
    { DPoP },
  );
  const claims = tokens.claims();
  mark("userinfo");
  const userinfo = await client.fetchUserInfo(config, tokens.access_token, claims.sub, { DPoP });
  // A second handle on the same key, as a separate component of the partner site would
  // hold: it knows no server nonce yet (when the server wants one, the library retries).
  mark("api");
  const api = await client.fetchProtectedResource(
    config,
    tokens.access_token,
    new URL("/api/profile", args.issuer),
    "GET",
    undefined,
    undefined,
    { DPoP: client.getDPoPHandle(config, pair) },
  );
  const profile = { status: api.status, body: await api.json() };

  let stolen = null;
  if (args.other_key_refresh) {
    // The refresh token in another key's hands (a public client's is bound to the key).
    mark("refresh-other-key");
    const other = await client.randomDPoPKeyPair(args.dpop_alg ?? "ES256");
    try {
      await client.refreshTokenGrant(config, tokens.refresh_token, undefined, {
        DPoP: client.getDPoPHandle(config, other),
      });
      stolen = { accepted: true };
    } catch (error) {
      stolen = { accepted: false, error: error.error ?? error.code, status: error.status };
    }
  }
  mark("refresh");
  const refreshed = await client.refreshTokenGrant(config, tokens.refresh_token, undefined, {
    DPoP,
  });
  mark("api-refreshed");
  const after = await client.fetchProtectedResource(
    config,
    refreshed.access_token,
    new URL("/api/profile", args.issuer),
    "GET",
    undefined,
    undefined,
    { DPoP },
  );
  return {
    claims,
    token_type: tokens.token_type,
    access_token: tokens.access_token,
    refreshed_token_type: refreshed.token_type,
    refreshed_access_token: refreshed.access_token,
    refreshed_refresh_token: refreshed.refresh_token,
    refreshed_sub: refreshed.claims()?.sub ?? null,
    userinfo,
    profile,
    profile_after_refresh: { status: after.status, body: await after.json() },
    other_key_refresh: stolen,
    jkt: await DPoP.calculateThumbprint(),
    exchanges,
  };
}

const MODES = { start, finish, "dpop-start": dpopStart, "dpop-finish": dpopFinish };

try {
  const result = await MODES[mode]();
  process.stdout.write(JSON.stringify(result));
} catch (error) {
  process.stdout.write(
    JSON.stringify({ error: error.name, code: error.code, message: error.message }),
  );
  process.exitCode = 1;
}
