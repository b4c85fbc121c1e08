// The peer's sign-in and consent pages (the library leaves them to the application;
// development interactions are off): GET /interaction/:uid shows the login form or the
// consent form of the pending authorization, POST .../login checks the demo password
// (as our bundled dummy site does: any username, password "password") and remembers the
// account in Redis, POST .../confirm records the grant. Each ends with the library's
// interactionFinished (a 303 back to the authorization endpoint).
import { accountKey } from './provider.js';

const PAGE = /^\/interaction\/([\w-]+)(\/login|\/confirm)?$/;

function escape(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function page(title, action, fields) {
  return `<!doctype html><html><head><meta charset="utf-8"><title>${escape(title)}</title></head>`
    + `<body><h1>${escape(title)}</h1><form method="post" action="${escape(action)}">${fields}`
    + '<button type="submit">Continue</button></form></body></html>';
}

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw new Error('form too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

export function interactions(provider, redis) {
  return async function interactionPages(ctx, next) {
    const match = PAGE.exec(ctx.path);
    if (!match) return next();
    const [, uid, action] = match;
    ctx.set('Cache-Control', 'no-store');
    const details = await provider.interactionDetails(ctx.req, ctx.res);
    if (details.uid !== uid) ctx.throw(400, 'interaction mismatch');
    const { prompt, params, session } = details;

    if (!action && ctx.method === 'GET') {
      ctx.type = 'html';
      if (prompt.name === 'login') {
        ctx.body = page(
          'Sign in',
          `/interaction/${uid}/login`,
          '<input name="username" autocomplete="username">'
            + '<input name="password" type="password" autocomplete="current-password">',
        );
      } else {
        const client = await provider.Client.find(params.client_id);
        ctx.body = page(
          `Allow ${client.clientName || client.clientId} to use your account?`,
          `/interaction/${uid}/confirm`,
          `<p>Scope: ${escape(params.scope)}</p>`,
        );
      }
      return undefined;
    }
    if (ctx.method !== 'POST') ctx.throw(405);

    if (action === '/login') {
      if (prompt.name !== 'login') ctx.throw(400, 'not signing in');
      const form = await readForm(ctx.req);
      const username = form.get('username') || '';
      if (!username || form.get('password') !== 'password') {
        ctx.status = 401;
        ctx.type = 'html';
        ctx.body = page('Sign in (wrong username or password)', `/interaction/${uid}/login`, '');
        return undefined;
      }
      const accountId = `user-${username}`;
      await redis.set(accountKey(accountId), JSON.stringify({
        sub: accountId, name: username, email: `${username}@example.com`,
      }));
      ctx.respond = false;
      await provider.interactionFinished(
        ctx.req,
        ctx.res,
        { login: { accountId } },
        { mergeWithLastSubmission: false },
      );
      return undefined;
    }

    if (prompt.name !== 'consent') ctx.throw(400, 'no consent pending');
    await readForm(ctx.req);
    const { accountId } = session;
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId, clientId: params.client_id });
    const missing = prompt.details;
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes || {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    const grantId = await grant.save();
    ctx.respond = false;
    await provider.interactionFinished(
      ctx.req,
      ctx.res,
      { consent: { grantId } },
      { mergeWithLastSubmission: true },
    );
    return undefined;
  };
}

