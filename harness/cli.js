#!/usr/bin/env node
'use strict';
// CLI around the harness, mainly for Rust `cargo test`:
//   node harness/cli.js install
//   node harness/cli.js serve [--disk] [--sync-on-commit] [--noop-heartbeat-seconds N]
//                             [--oplog-max-entries N] [--oplog-retention-seconds N]
// `serve` prints ONE JSON line {"uri","port","pid"} (or {"uri","external":true}
// with MONGODB_URI set) and keeps the server up until stdin closes or it gets
// SIGTERM/SIGINT. Tying its life to stdin means the server dies with the test
// process that spawned us, however that process ends.

const { installServer, startServer } = require('./index');
const { externalUri } = require('./server');

const USAGE = `usage: node harness/cli.js install
       node harness/cli.js serve [--disk] [--sync-on-commit] [--noop-heartbeat-seconds N]
                                 [--oplog-max-entries N] [--oplog-retention-seconds N]`;

const NUMBER_FLAGS = {
  '--noop-heartbeat-seconds': 'noopHeartbeatSeconds',
  '--oplog-max-entries': 'oplogMaxEntries',
  '--oplog-retention-seconds': 'oplogRetentionSeconds',
};

class UsageError extends Error {}

function parseServeArgs(argv) {
  const opts = {};
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--disk') opts.storage = 'disk';
    else if (arg === '--sync-on-commit') opts.syncOnCommit = true;
    else if (NUMBER_FLAGS[arg]) {
      const value = Number(argv[++i]);
      if (argv[i] === undefined || !Number.isFinite(value)) throw new UsageError(`${arg} needs a number`);
      opts[NUMBER_FLAGS[arg]] = value;
    } else throw new UsageError(`unknown option ${arg}`);
  }
  return opts;
}

/** Resolves when stdin closes or on SIGTERM/SIGINT/SIGHUP. */
function untilShutdown() {
  return new Promise((resolve) => {
    const done = (why) => resolve(why);
    process.stdin.on('end', () => done('stdin closed'));
    process.stdin.on('close', () => done('stdin closed'));
    process.stdin.on('error', () => done('stdin error'));
    // `on`, not `once`: while we listen, the harness's own hook won't re-raise the signal.
    for (const s of ['SIGTERM', 'SIGINT', 'SIGHUP']) process.on(s, () => done(s));
    process.stdin.resume(); // flowing mode: drain whatever the parent writes
  });
}

function writeLine(obj) {
  return new Promise((resolve) => process.stdout.write(`${JSON.stringify(obj)}\n`, resolve));
}

async function serve(argv) {
  const opts = parseServeArgs(argv);
  if (externalUri()) {
    await writeLine({ uri: externalUri(), external: true });
    await untilShutdown();
    return;
  }
  // Listen for signals before starting, so a signal during startup is ours.
  const shutdown = untilShutdown();
  const server = await startServer(opts);
  await writeLine({ uri: server.uri, port: server.port, pid: server.pid });
  await shutdown;
  await server.close();
}

async function main(argv) {
  const [command, ...rest] = argv;
  if (command === 'install') {
    process.stdout.write(`${await installServer()}\n`);
  } else if (command === 'serve') {
    await serve(rest);
  } else {
    throw new UsageError(command ? `unknown command ${command}` : 'missing command');
  }
}

main(process.argv.slice(2)).then(
  () => process.exit(0), // don't wait on a still-open stdin
  (err) => {
    if (err instanceof UsageError) process.stderr.write(`harness/cli.js: ${err.message}\n${USAGE}\n`);
    else process.stderr.write(`harness/cli.js: ${err.stack || err}\n`);
    process.exit(err instanceof UsageError ? 2 : 1);
  },
);
