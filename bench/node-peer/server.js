// A peer for bench/load.sh's photo section: what the body costs a common Node stack that does
// only the schema part of flowgate's work. Fastify parses the JSON, ajv (draft 2020-12, every
// error, formats) checks it against schemas/sip-v4.schema.json; 200 when valid, 400 with the
// errors otherwise. No rules, no store, no flow files: an upper bound for a gateway in Node.
//
//   node bench/node-peer/server.js [--listen 127.0.0.1:0]   # prints "node peer listening on http://ADDR"
'use strict';

const fs = require('fs');
const path = require('path');
const Fastify = require('fastify');
const Ajv2020 = require('ajv/dist/2020');
const addFormats = require('ajv-formats');

let listen = '127.0.0.1:0';
for (let i = 2; i < process.argv.length; i++) {
  if (process.argv[i] === '--listen' && i + 1 < process.argv.length) listen = process.argv[++i];
  else if (process.argv[i].startsWith('--listen=')) listen = process.argv[i].slice('--listen='.length);
  else {
    console.error(`unknown argument ${process.argv[i]}; usage: server.js [--listen 127.0.0.1:PORT]`);
    process.exit(2);
  }
}
const [host, port] = [listen.slice(0, listen.lastIndexOf(':')), Number(listen.slice(listen.lastIndexOf(':') + 1))];
if (host !== '127.0.0.1') {
  console.error('the node peer listens on 127.0.0.1 only');
  process.exit(2);
}

const schema = JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', 'schemas', 'sip-v4.schema.json'), 'utf8'));
const ajv = new Ajv2020({ allErrors: true, strict: false });
addFormats(ajv);
const validate = ajv.compile(schema);

// The gateway's body limit (32 MiB).
const app = Fastify({ bodyLimit: 32 * 1024 * 1024, logger: false });
app.post('/v4/sip', async (req, reply) => {
  if (validate(req.body)) return { status: 'valid' };
  reply.code(400);
  return { status: 'invalid', errors: validate.errors.slice(0, 100) };
});

const stop = () => app.close().then(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);

app.listen({ host, port }).then(() => {
  const a = app.server.address();
  console.log(`node peer listening on http://${a.address}:${a.port}`);
}).catch((e) => {
  console.error(e);
  process.exit(1);
});
