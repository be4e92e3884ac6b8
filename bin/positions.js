'use strict';

// `resilient-change-stream positions`: look at and move stored positions without writing
// code. The engine does the work (src/engine/position_tools.rs, through NativePositions):
// reading and writing the file or MongoDB store, checking a time against the oplog, and a
// consumer group's lease. Nothing printed holds a connection string: stores are described
// by path or db.collection, and the engine's messages are redacted.

const { parseArgs } = require('node:util');
const readline = require('node:readline');
const { EJSON, Timestamp, serialize, deserialize } = require('bson');

const PREFIX = 'resilient-change-stream positions: ';

const USAGE = `Usage:
  resilient-change-stream positions <store> [name] [--uri <uri>] [--json]
  resilient-change-stream positions rewind <store> <name> --to <ISO time | token> [options]
  resilient-change-stream positions reset <store> <name> [options]

<store> is a token store: a file path (the file store; "file:<path>" works too), or
mongodb:<db>.<collection> (the MongoDB store) on the deployment of --uri or $MONGODB_URI.

List: each stored position with its name, kind, namespace, the cluster time of the position
and its age (when it was written), the lag (now minus that time) and, when the server can
tell (a MongoDB store, or --uri), the oplog headroom (that time minus the oplog's oldest entry).

rewind: moves a change stream's position. --to <ISO time> (e.g. 2026-12-01T10:00:00Z):
the stream restarts with startAtOperationTime there, so every event since is delivered again;
a time the oplog no longer holds is refused. --to <token> (Extended JSON, e.g.
'{"_data":"8263..."}'): the stream resumes after that token.
reset: deletes the position: the stream starts afresh (from now, or its start option).

Options:
  --uri <uri>            the deployment (default $MONGODB_URI): the MongoDB store's, and the
                         one whose oplog and leases are checked for a file store
  --leases <db>.<coll>   where consumer groups keep leases (default resilient_change_stream.leases)
  --yes, -y              do not ask for confirmation (it is asked only on a terminal)
  --force                move a position under a live group lease (the holder is fenced: the
                         position and the lease get the next epoch), or rewind to a time whose
                         oplog cannot be read
  --json                 list as JSON lines (canonical Extended JSON records)
  -h, --help             this text

Exit codes: 0 done, 1 refused or failed (the reason on stderr), 2 bad arguments.`;

const EXIT_OK = 0;
const EXIT_FAILED = 1;
const EXIT_USAGE = 2;

class UsageError extends Error {}

/** The store argument, as the native request's `store` (the URI only inside the request). */
function parseStore(text, uri) {
  if (text.startsWith('mongodb:') && !text.startsWith('mongodb://') && !text.startsWith('mongodb+srv:')) {
    const ns = text.slice('mongodb:'.length);
    const dot = ns.indexOf('.');
    if (dot <= 0 || dot === ns.length - 1) throw new UsageError(`"${text}" is not mongodb:<db>.<collection>`);
    if (!uri) throw new UsageError('a MongoDB store needs --uri or $MONGODB_URI');
    return { type: 'mongodb', uri, db: ns.slice(0, dot), collection: ns.slice(dot + 1) };
  }
  if (/^mongodb(\+srv)?:\/\//.test(text)) {
    throw new UsageError('<store> is a file path or mongodb:<db>.<collection>; give the connection string with --uri');
  }
  const path = text.startsWith('file:') ? text.slice('file:'.length) : text;
  if (path === '') throw new UsageError('<store> is empty');
  return { type: 'file', path };
}

/** `--to`: a token (a JSON object) or an ISO time (seconds precision: the oplog's). */
function parseTarget(text) {
  if (text.trimStart().startsWith('{')) {
    let token;
    try {
      token = EJSON.parse(text, { relaxed: false });
    } catch (err) {
      throw new UsageError(`--to is not a valid token (Extended JSON): ${err.message}`);
    }
    return { token };
  }
  const ms = Date.parse(text);
  if (!/^\d{4}-\d\d-\d\d/.test(text) || Number.isNaN(ms)) {
    throw new UsageError(`--to must be an ISO time (e.g. 2026-12-01T10:00:00Z) or a token ({"_data": "…"}), got "${text}"`);
  }
  return { time: new Timestamp({ t: Math.floor(ms / 1000), i: 0 }) };
}

function parseLeases(text) {
  if (text === undefined) return undefined;
  const dot = text.indexOf('.');
  if (dot <= 0 || dot === text.length - 1) throw new UsageError(`--leases must be <db>.<collection>, got "${text}"`);
  return { db: text.slice(0, dot), collection: text.slice(dot + 1) };
}

/** One native call: the request as BSON, the answer decoded; an engine refusal throws. */
async function call(method, request) {
  const { nativePositions } = require('../lib/native');
  const clean = Object.fromEntries(Object.entries(request).filter(([, v]) => v !== undefined));
  const answer = deserialize(await nativePositions()[method](serialize(clean)), { promoteLongs: true });
  if (answer.error) {
    const err = new Error(answer.error.message);
    // The engine's stable kind (as the errors' `kind`).
    err.kind = answer.error.code;
    throw err;
  }
  return answer;
}

function iso(seconds) {
  return new Date(seconds * 1000).toISOString().replace('.000Z', 'Z');
}

/** "3d 4h", "2m 5s", "800ms": a duration for people. */
function duration(ms) {
  const negative = ms < 0;
  let rest = Math.abs(ms);
  if (rest < 1000) return `${negative ? '-' : ''}${Math.round(rest)}ms`;
  rest = Math.round(rest / 1000);
  const parts = [];
  for (const [unit, size] of [
    ['d', 86400],
    ['h', 3600],
    ['m', 60],
    ['s', 1],
  ]) {
    if (rest >= size) {
      parts.push(`${Math.floor(rest / size)}${unit}`);
      rest %= size;
    }
    if (parts.length === 2) break;
  }
  return `${negative ? '-' : ''}${parts.join(' ')}`;
}

/** What one stored record says, with the lag and headroom against `oplog` (may be unknown). */
function describe({ name, record }, oplog, now = Date.now()) {
  const time = record.clusterTime instanceof Timestamp ? record.clusterTime.high : null;
  const written = record.writtenAt instanceof Date ? record.writtenAt : null;
  const oldest = oplog?.oldest instanceof Timestamp ? oplog.oldest.high : null;
  const kind = record.kind ?? 'changeStream';
  return {
    name,
    kind,
    namespace: record.namespace ?? null,
    position:
      kind === 'cursor'
        ? `after key ${EJSON.stringify(record.lastKey, { relaxed: true })}`
        : record.token === null
          ? `at ${time === null ? '?' : iso(time)} (rewound: startAtOperationTime)`
          : time === null
            ? 'token (time unknown)'
            : iso(time),
    clusterTime: time === null ? null : iso(time),
    writtenAt: written,
    ageMs: written ? now - written.getTime() : null,
    lagMs: time === null ? null : now - time * 1000,
    headroomMs: time === null || oldest === null ? null : (time - oldest) * 1000,
    epoch: record.epoch ?? null,
  };
}

function printTable(rows, out) {
  const header = ['NAME', 'KIND', 'NAMESPACE', 'POSITION', 'WRITTEN', 'LAG', 'HEADROOM', 'EPOCH'];
  const cells = rows.map((r) => [
    r.name,
    r.kind,
    r.namespace ?? '?',
    r.position,
    r.ageMs === null ? '?' : `${duration(r.ageMs)} ago`,
    r.lagMs === null ? '?' : duration(r.lagMs),
    r.headroomMs === null ? '?' : r.headroomMs < 0 ? `LOST (${duration(r.headroomMs)})` : duration(r.headroomMs),
    r.epoch === null ? '-' : String(r.epoch),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i].length)));
  for (const line of [header, ...cells]) {
    out.write(`${line.map((c, i) => c.padEnd(widths[i])).join('  ').trimEnd()}\n`);
  }
}

async function list(store, name, values, io) {
  const answer = await call('list', { store, name, uri: store.type === 'file' ? values.uri : undefined });
  const rows = answer.positions.map((p) => describe(p, answer.oplog));
  if (values.json) {
    answer.positions.forEach((p, i) => {
      const { writtenAt, ...row } = rows[i];
      io.stdout.write(`${JSON.stringify({ ...row, writtenAt: writtenAt?.toISOString() ?? null, record: EJSON.serialize(p.record, { relaxed: false }) })}\n`);
    });
    return EXIT_OK;
  }
  if (rows.length === 0) {
    io.stdout.write(name === undefined ? `no stored positions in ${answer.store}\n` : `no stored position named "${name}" in ${answer.store}\n`);
    return name === undefined ? EXIT_OK : EXIT_FAILED;
  }
  printTable(rows, io.stdout);
  if (answer.oplog?.reason) io.stdout.write(`(oplog headroom unknown: ${answer.oplog.reason})\n`);
  else if (answer.oplog === undefined) io.stdout.write('(oplog headroom: give --uri to check it)\n');
  return EXIT_OK;
}

/** Asks on a terminal; resolves true for y/yes. */
function confirm(question, io) {
  const rl = readline.createInterface({ input: io.stdin, output: io.stderr });
  return new Promise((resolve) => {
    rl.question(`${question} [y/N] `, (answer) => {
      rl.close();
      resolve(/^y(es)?$/i.test(answer.trim()));
    });
  });
}

async function move(action, store, name, values, io) {
  const request = {
    store,
    name,
    uri: store.type === 'file' ? values.uri : undefined,
    leases: parseLeases(values.leases),
    force: values.force === true,
  };
  if (action === 'rewind') {
    if (values.to === undefined) throw new UsageError('rewind needs --to <ISO time | token>');
    request.to = parseTarget(values.to);
  } else if (values.to !== undefined) {
    throw new UsageError('reset takes no --to (it deletes the position)');
  }
  // Every check first (record, oplog, lease), nothing written: then ask, then do it.
  const plan = await call(action, { ...request, dryRun: true });
  const before = describe({ name, record: plan.before }, null);
  const what =
    action === 'rewind'
      ? `rewind "${name}" (${before.namespace ?? '?'}) from ${before.position} to ${values.to}`
      : `reset "${name}" (${before.namespace ?? '?'}, at ${before.position}): delete its position`;
  const fence = plan.fencedEpoch == null ? '' : `, fencing the live holder ${plan.lease?.holder ?? '?'} (epoch ${plan.lease?.epoch} → ${plan.fencedEpoch})`;
  if (!values.yes && io.stdin.isTTY) {
    if (!(await confirm(`${what}${fence}?`, io))) {
      io.stderr.write('not changed\n');
      return EXIT_FAILED;
    }
  }
  await call(action, request);
  io.stdout.write(`${action === 'rewind' ? 'rewound' : 'reset'}: ${what.slice(action.length + 1)}${fence}\n`);
  return EXIT_OK;
}

function defaultIo() {
  return { stdin: process.stdin, stdout: process.stdout, stderr: process.stderr, env: process.env };
}

/** Runs `positions …`; resolves with the exit code (and sets it). */
async function main(argv, io = defaultIo()) {
  let code;
  try {
    code = await run(argv, io);
  } catch (err) {
    io.stderr.write(`${PREFIX}${String(err?.message ?? err)}\n`);
    if (err instanceof UsageError) io.stderr.write('(see resilient-change-stream positions --help)\n');
    code = err instanceof UsageError ? EXIT_USAGE : EXIT_FAILED;
  }
  process.exitCode = code;
  return code;
}

async function run(argv, io) {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: {
        uri: { type: 'string' },
        to: { type: 'string' },
        leases: { type: 'string' },
        yes: { type: 'boolean', short: 'y' },
        force: { type: 'boolean' },
        json: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (err) {
    throw new UsageError(err.message);
  }
  const { values, positionals } = parsed;
  if (values.help) {
    io.stdout.write(`${USAGE}\n`);
    return EXIT_OK;
  }
  values.uri ??= io.env.MONGODB_URI || undefined;
  const [first, ...rest] = positionals;
  if (first === undefined) throw new UsageError('no store given');
  if (first === 'rewind' || first === 'reset') {
    if (rest.length !== 2) throw new UsageError(`${first} needs <store> <name>`);
    const [storeText, name] = rest;
    return move(first, parseStore(storeText, values.uri), name, values, io);
  }
  if (rest.length > 1) throw new UsageError('too many arguments');
  for (const option of ['to', 'yes', 'force', 'leases']) {
    if (values[option] !== undefined) throw new UsageError(`--${option} is for rewind and reset`);
  }
  return list(parseStore(first, values.uri), rest[0], values, io);
}

module.exports = { main, parseTarget, parseStore, describe, duration };
