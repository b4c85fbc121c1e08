// The peer's storage: a Redis adapter for oidc-provider written after the library's
// example adapter (example/adapters/redis.js): one JSON value per artifact with its TTL,
// hashes for the consumable ones (a `consumed` field), a list per grant id of its tokens
// (so revoking a grant deletes them), and uid / userCode indexes.
import Redis from 'ioredis';

const GRANTABLE = new Set([
  'AccessToken',
  'AuthorizationCode',
  'RefreshToken',
  'DeviceCode',
  'BackchannelAuthenticationRequest',
]);

const CONSUMABLE = new Set([
  'AuthorizationCode',
  'RefreshToken',
  'DeviceCode',
  'BackchannelAuthenticationRequest',
]);

export function redisClient(url) {
  return new Redis(url, { keyPrefix: 'oidc:', lazyConnect: false });
}

export function adapterFor(client) {
  return class RedisAdapter {
    constructor(name) {
      this.name = name;
      this.consumable = CONSUMABLE.has(name);
      this.grantable = GRANTABLE.has(name);
    }

    key(id) {
      return `${this.name}:${id}`;
    }

    async upsert(id, payload, expiresIn) {
      const key = this.key(id);
      const multi = client.multi();
      if (this.consumable) {
        multi.hset(key, 'payload', JSON.stringify(payload));
      } else {
        multi.set(key, JSON.stringify(payload));
      }
      if (expiresIn) multi.expire(key, expiresIn);
      if (this.grantable && payload.grantId) {
        const grantKey = `grant:${payload.grantId}`;
        multi.rpush(grantKey, key);
        // The list lives as long as its longest-lived token (NX: a new list; GT: longer).
        if (expiresIn) {
          multi.expire(grantKey, expiresIn, 'NX');
          multi.expire(grantKey, expiresIn, 'GT');
        }
      }
      for (const [field, prefix] of [['userCode', 'userCode'], ['uid', 'uid']]) {
        if (payload[field]) {
          const indexKey = `${prefix}:${payload[field]}`;
          if (expiresIn) multi.set(indexKey, id, 'EX', expiresIn);
          else multi.set(indexKey, id);
        }
      }
      await multi.exec();
    }

    async find(id) {
      if (!id) return undefined;
      if (this.consumable) {
        const data = await client.hgetall(this.key(id));
        if (!data || !data.payload) return undefined;
        const { payload, ...rest } = data;
        return { ...rest, ...JSON.parse(payload) };
      }
      const data = await client.get(this.key(id));
      return data ? JSON.parse(data) : undefined;
    }

    async findByUid(uid) {
      return this.find(await client.get(`uid:${uid}`));
    }

    async findByUserCode(userCode) {
      return this.find(await client.get(`userCode:${userCode}`));
    }

    async destroy(id) {
      await client.del(this.key(id));
    }

    // eslint-disable-next-line class-methods-use-this
    async revokeByGrantId(grantId) {
      const grantKey = `grant:${grantId}`;
      const keys = await client.lrange(grantKey, 0, -1);
      const multi = client.multi();
      for (const key of keys) multi.del(key);
      multi.del(grantKey);
      await multi.exec();
    }

    async consume(id) {
      await client.hset(this.key(id), 'consumed', Math.floor(Date.now() / 1000));
    }
  };
}
