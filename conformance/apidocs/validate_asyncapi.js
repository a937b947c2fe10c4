// Validates an AsyncAPI document with @asyncapi/parser (the AsyncAPI
// Initiative's parser: JSON Schema validation of the document plus its
// Spectral ruleset). Prints every diagnostic; exits 0 when there is no
// error-severity diagnostic and the parser returned a document, else 1.
//
// Usage: node validate_asyncapi.js FILE [EXPECTED_SERVER_PROTOCOL]
'use strict';
const fs = require('fs');
const { Parser } = require('@asyncapi/parser');

const SEVERITY = ['error', 'warning', 'info', 'hint'];

(async () => {
  const [file, protocol] = process.argv.slice(2);
  const text = fs.readFileSync(file, 'utf8');
  const parser = new Parser();
  const { document, diagnostics } = await parser.parse(text);
  let errors = 0;
  for (const d of diagnostics) {
    const sev = SEVERITY[d.severity] || String(d.severity);
    if (d.severity === 0) errors += 1;
    console.log(`  asyncapi ${sev}: ${d.code}: ${d.message} at /${(d.path || []).join('/')}`);
  }
  if (!document) {
    console.log('  asyncapi: the parser returned no document');
    process.exit(1);
  }
  // A few facts read back through the parser's model, so the document is
  // not only valid but also says what the server serves.
  const channels = document.channels().all();
  const operations = document.operations().all();
  const messages = document.messages().all();
  console.log(`  asyncapi: version ${document.version()}, ${channels.length} channels, ` +
    `${operations.length} operations, ${messages.length} messages, ${errors} errors`);
  if (channels.length === 0 || operations.length === 0) {
    console.log('  asyncapi: expected channels and operations');
    process.exit(1);
  }
  for (const op of operations) {
    if (op.channels().length !== 1) {
      console.log(`  asyncapi: operation ${op.id()} is not bound to one channel`);
      process.exit(1);
    }
  }
  if (protocol) {
    const got = document.servers().all().map((s) => s.protocol());
    const wanted = protocol === 'wss' ? ['wss', 'https'] : ['ws', 'http'];
    if (!got.every((p) => wanted.includes(p)) || !got.includes(protocol)) {
      console.log(`  asyncapi: server protocols ${got.join(', ')}; expected ${wanted.join(' / ')}`);
      process.exit(1);
    }
  }
  process.exit(errors === 0 ? 0 : 1);
})().catch((e) => {
  console.log(`  asyncapi: parser failed: ${e && e.stack ? e.stack : e}`);
  process.exit(1);
});
