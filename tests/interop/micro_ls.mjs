// List NATS micro services the way standard NATS tooling does (nats.js ServiceClient).
// Usage: node micro_ls.mjs nats://127.0.0.1:4222 [service-name]
import { connect } from "nats";

const [server, name] = process.argv.slice(2);
const nc = await connect({ servers: server });
const client = nc.services.client();
const out = { pings: [], infos: [], stats: [] };
for await (const p of await client.ping(name)) out.pings.push(p);
for await (const i of await client.info(name)) out.infos.push(i);
for await (const s of await client.stats(name)) out.stats.push(s);
console.log(JSON.stringify(out));
await nc.close();
