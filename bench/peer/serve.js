// `node serve.js`: the peer on 127.0.0.1:$PEER_PORT, $PEER_WORKERS (2) workers of
// node:cluster sharing the port, storage in Redis at $PEER_REDIS_URL.
import cluster from 'node:cluster';

import { interactions } from './interactions.js';
import { makeProvider, signingJwks } from './provider.js';

const port = Number(process.env.PEER_PORT);
const workers = Number(process.env.PEER_WORKERS || 2);
const redisUrl = process.env.PEER_REDIS_URL;
if (!port || !redisUrl) {
  console.error('serve.js needs PEER_PORT and PEER_REDIS_URL');
  process.exit(2);
}

if (cluster.isPrimary) {
  // One signing key for both workers (ID Tokens from either verify with the same JWKS).
  const jwks = JSON.stringify(signingJwks());
  for (let i = 0; i < workers; i += 1) cluster.fork({ PEER_JWKS: jwks });
  cluster.on('exit', (worker, code, signal) => {
    console.error(`worker ${worker.process.pid} exited (${signal || code}): stopping`);
    process.exit(1);
  });
  const stop = () => {
    for (const worker of Object.values(cluster.workers)) worker.process.kill('SIGTERM');
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
} else {
  const { provider, redis } = makeProvider({
    issuer: `http://127.0.0.1:${port}`,
    redisUrl,
    jwks: JSON.parse(process.env.PEER_JWKS),
  });
  provider.use(interactions(provider, redis));
  provider.listen(port, '127.0.0.1', () => {
    console.log(`peer worker ${process.pid} listening on 127.0.0.1:${port}`);
  });
}
