#!/usr/bin/env node
'use strict';

// Command-line entry: `npx resilient-change-stream tail <uri> <db>[.<coll>] [options]`.
// See `--help` and the README's "CLI" section.

const { parseArgs } = require('node:util');
const { EJSON } = require('bson');

const USAGE = `Usage:
  resilient-change-stream tail <uri> <db>[.<coll>] [options]
  resilient-change-stream tail <db>[.<coll>] [options]        (uri from $MONGODB_URI)
  resilient-change-stream positions --help                    list, rewind, reset stored positions

Prints each change event of a collection (or of a whole database) as one line of canonical
Extended JSON on stdout, and keeps going through outages. With --token-file, the position is
saved after the events are printed and a restart continues right after the last one.

Options:
  --pipeline <json>             stages appended after $changeStream, as (Extended) JSON:
                                '[{"$match":{"operationType":"insert"}}]'
  --token-file <path>           where to keep the position: the library's file store, the
                                stream named "cli" (resume token, namespace, a fingerprint
                                of pipeline and --full-document; never the connection
                                string). Written atomically, mode 0600. A file written for
                                another namespace, pipeline or --full-document is refused.
  --full-document <mode>        updateLookup | whenAvailable | required | default
  --snapshot                    first print every document of the collection as a
                                {"operationType":"snapshot",...} line (in _id order), then
                                every change from the moment the copy began (no gap at the
                                seam). With --token-file an interrupted copy continues
                                after the last printed document. Collections only.
  --outlive-parent              keep running when the parent process exits (nohup, &);
                                by default it then stops as on SIGTERM
  -h, --help                    this text
  -v, --version                 the package version

Status goes to stderr (a live line on a terminal). Ctrl-C (SIGINT), SIGTERM or SIGHUP stop
it cleanly: the position is saved and the exit code is 0; so does its parent process exiting
(e.g. npx, which does not pass SIGTERM on: under a supervisor run the installed bin itself,
node_modules/.bin/resilient-change-stream, or exec it from a shell script).
Exit codes: 0 stopped / stream invalidated / output closed, 1 the stream failed, 2 bad
arguments or token file, 130 a second Ctrl-C (the position written last is kept: the events
since are printed again).`;

const PREFIX = 'resilient-change-stream: ';

/** Some of the library's messages (NativeAddonError's) already start with the prefix. */
function withoutPrefix(message) {
  return message.startsWith(PREFIX) ? message.slice(PREFIX.length) : message;
}

function fail(message) {
  process.stderr.write(`${PREFIX}${message}\n(see resilient-change-stream --help)\n`);
  process.exitCode = 2;
}

function parsePipeline(text) {
  let pipeline;
  try {
    pipeline = EJSON.parse(text, { relaxed: false });
  } catch (err) {
    throw new Error(`--pipeline is not valid (Extended) JSON: ${err.message}`);
  }
  if (!Array.isArray(pipeline)) pipeline = [pipeline];
  if (!pipeline.every((stage) => stage !== null && typeof stage === 'object' && !Array.isArray(stage))) {
    throw new Error('--pipeline must be an array of stage documents');
  }
  return pipeline;
}

/** `<db>[.<coll>]`: database names cannot contain dots, collection names can. */
function parseNamespace(text) {
  const dot = text.indexOf('.');
  const db = dot === -1 ? text : text.slice(0, dot);
  const coll = dot === -1 ? undefined : text.slice(dot + 1);
  if (db === '' || coll === '') throw new Error(`"${text}" is not <db> or <db>.<collection>`);
  return { db, coll };
}

async function main(argv) {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: {
        pipeline: { type: 'string' },
        'token-file': { type: 'string' },
        'full-document': { type: 'string' },
        'outlive-parent': { type: 'boolean' },
        snapshot: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
        version: { type: 'boolean', short: 'v' },
      },
    });
  } catch (err) {
    return fail(err.message);
  }
  const { values, positionals } = parsed;
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  if (values.version) {
    process.stdout.write(`${require('../package.json').version}\n`);
    return;
  }
  const [command, ...rest] = positionals;
  if (command === undefined) return fail('no command given');
  if (command !== 'tail') return fail(`unknown command "${command}"`);

  let uri;
  let nsText;
  if (rest.length === 2) {
    [uri, nsText] = rest;
  } else if (rest.length === 1 && process.env.MONGODB_URI) {
    uri = process.env.MONGODB_URI;
    [nsText] = rest;
  } else {
    return fail(
      rest.length > 2
        ? 'too many arguments'
        : 'tail needs a connection string and <db>[.<coll>] (or $MONGODB_URI and <db>[.<coll>])',
    );
  }

  const { tail, UsageError, EXIT_USAGE, EXIT_FAILED } = require('./tail');
  let args;
  try {
    args = {
      uri,
      ...parseNamespace(nsText),
      pipeline: values.pipeline === undefined ? undefined : parsePipeline(values.pipeline),
      tokenFile: values['token-file'],
      fullDocument: values['full-document'],
      outliveParent: values['outlive-parent'] === true,
      snapshot: values.snapshot === true,
    };
  } catch (err) {
    return fail(err.message);
  }

  try {
    process.exitCode = await tail(args);
  } catch (err) {
    // Before any event: bad option (InvalidOptionError), token file, missing binary, ...
    // Messages never contain the connection string's credentials (the engine redacts them).
    const usage = err instanceof UsageError || err?.kind === 'InvalidOption';
    process.stderr.write(`${PREFIX}${withoutPrefix(String(err?.message ?? err))}\n`);
    process.exitCode = usage ? EXIT_USAGE : EXIT_FAILED;
  }
  // Everything is closed by now; do not wait for anything else that might linger.
  process.stdout.write('', () => process.exit());
}

const argv = process.argv.slice(2);
const run = argv[0] === 'positions' ? require('./positions').main(argv.slice(1)) : main(argv);
run.catch((err) => {
  process.stderr.write(`${PREFIX}unexpected error: ${err?.stack ?? err}\n`);
  process.exit(1);
});
