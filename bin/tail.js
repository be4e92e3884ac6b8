'use strict';

// `resilient-change-stream tail`: prints a change stream as canonical Extended JSON lines and
// keeps its position in a token file, through the package's public API only.
//
// Delivery contract: an event's token is saved only after its line was handed to the OS
// (stdout's write callback), so a restart never skips an event. Saves are batched (at most
// every SAVE_INTERVAL_MS) and flushed on every way out but SIGKILL; after a SIGKILL the events
// of the last batch interval may be printed again (at-least-once).

const { EJSON } = require('bson');
const { ResilientChangeStream } = require('..');
const { readTokenFile, writeTokenFile, checkWritable } = require('./token-file');

const SAVE_INTERVAL_MS = 100;
const STATUS_REFRESH_MS = 1000;
const STATUS_MIN_INTERVAL_MS = 100;

// Exit codes.
const EXIT_OK = 0; // stopped by a signal, ended by invalidation, or stdout closed
const EXIT_FAILED = 1; // the stream failed (history lost, auth, ...), or output failed
const EXIT_USAGE = 2; // bad arguments, option or token file
const EXIT_FORCED = 130; // a second Ctrl-C: stopped without waiting for the server

class UsageError extends Error {}

/**
 * Runs `tail` until it ends; resolves with the exit code. `args`:
 * `{ uri, db, coll?, pipeline?, tokenFile?, fullDocument? }`.
 */
async function tail(args, io = defaultIo()) {
  const { uri, db, coll, pipeline, tokenFile, fullDocument } = args;
  const ns = coll === undefined ? { db } : { db, coll };
  const nsLabel = coll === undefined ? db : `${db}.${coll}`;

  let saved = null;
  if (tokenFile !== undefined) {
    saved = readTokenFile(tokenFile);
    if (saved && (saved.ns.db !== db || saved.ns.coll !== coll)) {
      const savedLabel = saved.ns.coll === undefined ? saved.ns.db : `${saved.ns.db}.${saved.ns.coll}`;
      throw new UsageError(
        `token file ${tokenFile} holds a position in ${savedLabel}, not in ${nsLabel}; ` +
          'use another --token-file',
      );
    }
    checkWritable(tokenFile);
  }

  const startKind = saved?.startAfter ? 'startAfter' : 'resumeAfter';
  const stream = new ResilientChangeStream({
    uri,
    db,
    collection: coll,
    pipeline,
    fullDocument,
    ...(saved ? { [startKind]: saved[startKind] } : {}),
    // Lossless decoding for canonical EJSON: keep BSON's number types, binaries and regexes.
    promoteValues: false,
    promoteBuffers: false,
    bsonRegExp: true,
  });

  const status = new Status(io.stderr, nsLabel, { sharesScreen: Boolean(io.stdoutIsTTY) });
  const position = {
    token: saved ? saved[startKind] : null,
    kind: startKind,
    savedText: null, // what the file holds (its text), to skip writes that change nothing
  };
  let events = 0;
  let invalidateToken = null;
  let saveTimer = null;

  function save() {
    clearTimeout(saveTimer);
    saveTimer = null;
    if (tokenFile === undefined || position.token === null) return;
    const record = { ns, kind: position.kind, token: position.token };
    const text = EJSON.stringify(record, { relaxed: false });
    if (text === position.savedText) return;
    writeTokenFile(tokenFile, record);
    position.savedText = text;
    status.saved();
  }

  let printing = null; // the write of the event being printed, if any
  stream.on('change', (event) => {
    const line = `${EJSON.stringify(event, { relaxed: false })}\n`;
    status.beforeOutput();
    printing = io.writeOut(line).then(() => {
      events += 1;
      if (event.operationType === 'invalidate') invalidateToken = event._id;
      status.event(events);
    });
    return printing;
  });

  stream.on('resumeTokenChanged', (token) => {
    if (invalidateToken !== null) {
      // After an invalidate only startAfter can continue (resumeAfter would fail with 260).
      position.token = invalidateToken;
      position.kind = 'startAfter';
    } else {
      position.token = token;
      // As the spec resumes: startAfter until the stream started with it has seen an event.
      position.kind = startKind === 'startAfter' && events === 0 ? 'startAfter' : 'resumeAfter';
    }
    saveTimer ??= setTimeout(() => {
      try {
        save();
      } catch (err) {
        stop({ error: err });
      }
    }, SAVE_INTERVAL_MS);
  });

  stream.on('reconnecting', ({ attempt, delayMs, error }) => {
    status.reconnecting(attempt, delayMs, error);
  });
  stream.on('resumed', ({ attempts, downtimeMs }) => {
    status.resumed(attempts, downtimeMs);
  });
  // Emitter mode: without a listener a fatal error would be thrown; 'close' carries it too.
  stream.on('error', () => {});

  const closed = new Promise((resolve) => stream.once('close', resolve));

  // How the run ends: the first of a signal, the stream closing by itself, a failed save.
  let stopping = null;
  function stop(why) {
    if (stopping) return;
    stopping = why;
    stream.close().catch(() => {});
  }

  const onSignal = (signal) => {
    if (stopping?.signal) {
      // Second signal: do not wait for the server; the position of the last printed event is
      // already in memory.
      try {
        save();
      } catch {
        // exiting anyway
      }
      status.clear();
      io.stderr.write(`resilient-change-stream: ${signal} again, exiting without waiting\n`);
      io.exit(EXIT_FORCED);
      return;
    }
    stop({ signal });
  };
  const signals = ['SIGINT', 'SIGTERM', 'SIGHUP'];
  for (const signal of signals) io.process.on(signal, onSignal);

  status.start();
  let info;
  try {
    info = await closed;
  } finally {
    status.stop();
  }
  // A stop can come while an event is being written: let that write finish, and the stream
  // move its position past the event, so the position is that of the last printed event.
  if (printing) {
    await printing.catch(() => {});
    await new Promise((resolve) => setImmediate(resolve));
  }
  let code = EXIT_OK;
  let failure = stopping?.error ?? (info.reason === 'error' ? info.error : null);
  try {
    save();
  } catch (err) {
    failure ??= err;
  }
  for (const signal of signals) io.process.removeListener(signal, onSignal);

  const where = tokenFile === undefined ? '' : `; position saved in ${tokenFile}`;
  if (stopping?.signal && !failure) {
    status.say(`stopped by ${stopping.signal} after ${events} events${where}`);
  } else if (failure && isClosedOutput(failure)) {
    // The reader went away (`| head`): not an error; the unprinted event stays unsaved.
  } else if (failure) {
    status.say(describeFailure(failure, tokenFile));
    code = EXIT_FAILED;
  } else if (info.reason === 'invalidate' || invalidateToken !== null) {
    status.say(
      `the change stream was invalidated (the ${coll === undefined ? 'database' : 'collection'} ` +
        `was dropped or renamed)${where}${tokenFile === undefined ? '' : '; run again to continue after it'}`,
    );
  }
  return code;
}

function isClosedOutput(err) {
  return err?.code === 'EPIPE' || err?.code === 'ERR_STREAM_DESTROYED';
}

function describeFailure(err, tokenFile) {
  const name = err.name ?? 'Error';
  let text = `${name}${err.code && err.code !== name ? ` (${err.code})` : ''}: ${err.message}`;
  if (
    tokenFile !== undefined &&
    (err.code === 'ChangeStreamHistoryLost' || err.code === 'InvalidResumeToken')
  ) {
    text +=
      `\nThe position saved in ${tokenFile} can no longer be resumed from. Remove the file to ` +
      'start from now (the events in between are not printed).';
  }
  return text;
}

/**
 * What the user sees on stderr. On a terminal: one status line, redrawn in place (cleared
 * before each event line, in case stdout is the same terminal). Elsewhere: one plain line per
 * state change (reconnecting, resumed, the end), for logs.
 */
class Status {
  /** @param {{ sharesScreen: boolean }} options sharesScreen: stdout is a terminal too */
  constructor(stderr, nsLabel, { sharesScreen }) {
    this.out = stderr;
    this.sharesScreen = sharesScreen;
    this.tty = Boolean(stderr.isTTY);
    this.nsLabel = nsLabel;
    this.events = 0;
    this.lastEventAt = null;
    this.savedAt = null;
    this.outage = null; // { attempt, delayMs, error, at }
    this.timer = null;
    this.lastDraw = 0;
    this.drawn = false;
    this.pendingDraw = null;
  }

  start() {
    if (!this.tty) return;
    this.draw();
    this.timer = setInterval(() => this.draw(), STATUS_REFRESH_MS);
  }

  stop() {
    clearInterval(this.timer);
    clearTimeout(this.pendingDraw);
    this.timer = null;
    this.pendingDraw = null;
    this.clear();
  }

  event(count) {
    this.events = count;
    this.lastEventAt = Date.now();
    this.outage = null;
    this.drawSoon();
  }

  saved() {
    this.savedAt = Date.now();
  }

  reconnecting(attempt, delayMs, error) {
    this.outage = { attempt, delayMs, error, at: Date.now() };
    if (this.tty) this.draw();
    else this.say(`reconnecting (attempt ${attempt}, in ${delayMs} ms) after ${describeError(error)}`);
  }

  resumed(attempts, downtimeMs) {
    this.outage = null;
    if (this.tty) this.draw();
    else this.say(`resumed after ${attempts} attempt(s), ${downtimeMs} ms down`);
  }

  /** Before an event line goes to stdout: take the status line away if they share a screen. */
  beforeOutput() {
    if (this.sharesScreen) this.clear();
  }

  clear() {
    if (this.tty && this.drawn) {
      this.out.write('\r\x1b[2K');
      this.drawn = false;
    }
  }

  /** A line of its own (any terminal status line is cleared first; redrawn later). */
  say(text) {
    this.clear();
    this.out.write(`resilient-change-stream: ${text}\n`);
  }

  drawSoon() {
    if (!this.tty || this.timer === null || this.pendingDraw) return;
    const wait = Math.max(0, this.lastDraw + STATUS_MIN_INTERVAL_MS - Date.now());
    this.pendingDraw = setTimeout(() => {
      this.pendingDraw = null;
      this.draw();
    }, wait);
  }

  draw() {
    if (!this.tty) return;
    const now = Date.now();
    let text;
    if (this.outage) {
      const { attempt, delayMs, error, at } = this.outage;
      const next = Math.max(0, at + delayMs - now);
      text =
        `${this.nsLabel} · ${this.events} events · reconnecting (attempt ${attempt}, ` +
        `next in ${formatMs(next)}) after ${describeError(error)}`;
    } else {
      const last = this.lastEventAt === null ? 'none yet' : `${formatMs(now - this.lastEventAt)} ago`;
      const saved = this.savedAt === null ? '' : ` · saved ${formatMs(now - this.savedAt)} ago`;
      text = `${this.nsLabel} · ${this.events} events · last ${last}${saved} · Ctrl-C to stop`;
    }
    const width = this.out.columns || 80;
    if (text.length > width - 1) text = `${text.slice(0, width - 2)}…`;
    this.out.write(`\r\x1b[2K${text}`);
    this.drawn = true;
    this.lastDraw = now;
  }
}

function describeError(error) {
  const first = String(error?.message ?? error).split('\n')[0];
  return error?.code ? `${error.code}: ${first}` : first;
}

function formatMs(ms) {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(ms < 10000 ? 1 : 0)} s`;
  const minutes = Math.floor(ms / 60000);
  return `${minutes} min ${Math.floor((ms % 60000) / 1000)} s`;
}

function defaultIo() {
  const { stdout, stderr } = process;
  // Write errors (EPIPE when the reader goes away) arrive through the write callback.
  stdout.on('error', () => {});
  return {
    stderr,
    stdoutIsTTY: stdout.isTTY,
    process,
    writeOut: (text) =>
      new Promise((resolve, reject) => {
        stdout.write(text, (err) => (err ? reject(err) : resolve()));
      }),
    exit: (code) => process.exit(code),
  };
}

module.exports = { tail, UsageError, EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_FORCED };
