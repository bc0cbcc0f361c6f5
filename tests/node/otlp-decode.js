// otlp-decode.js - checks OTLP/HTTP JSON log bodies with the OpenTelemetry
// project's own generated protobuf code (@opentelemetry/otlp-transformer):
// each body (one per line of stdin, JSON-encoded strings) is turned into
// an ExportLogsServiceRequest message with fromObject(), encoded to
// protobuf bytes, decoded back and compared with the input: a field the
// schema does not know, or of the wrong type, does not survive the round
// trip. Prints one JSON line {"ok":bool,"records":N,"uids":[...],"error"}.
'use strict';
const root = require('@opentelemetry/otlp-transformer/build/src/generated/root');
const Req = root.opentelemetry.proto.collector.logs.v1.ExportLogsServiceRequest;
const lines = require('fs').readFileSync(0, 'utf8').split('\n').filter(Boolean);
const out = { ok: true, records: 0, uids: [], error: null };
// key order is the schema's after the round trip: compare sorted
const norm = (v) => Array.isArray(v) ? v.map(norm) :
  v && typeof v === 'object' ? Object.keys(v).sort().reduce((o, k) => (o[k] = norm(v[k]), o), {}) : v;
for (const line of lines) {
  const body = JSON.parse(line);
  const obj = JSON.parse(body);
  const err = Req.verify(Req.toObject(Req.fromObject(obj)));
  const back = Req.toObject(Req.decode(Req.encode(Req.fromObject(obj)).finish()),
                            { longs: String, enums: Number, bytes: String, defaults: false });
  const a = JSON.stringify(norm(obj)), b = JSON.stringify(norm(back));
  if (err || a !== b) {
    out.ok = false;
    out.error = err || ('round trip differs:\n' + a + '\n' + b);
    break;
  }
  for (const rl of back.resourceLogs)
    for (const sl of rl.scopeLogs)
      for (const r of sl.logRecords) {
        out.records++;
        const u = (r.attributes || []).find((kv) => kv.key === 'log.record.uid');
        if (u) out.uids.push(u.value.stringValue);
      }
}
console.log(JSON.stringify(out));
process.exit(out.ok ? 0 : 1);
