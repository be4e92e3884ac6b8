'use strict';

// `resilient-change-stream tail`: prints a change stream as canonical Extended JSON lines,
// through the package's public API only. With --token-file the stream is a named one
// (STREAM_NAME) with the library's file store: the position record, its atomic writes, the
// check that it belongs to this namespace and pipeline, and startAfter after an invalidate
// are all the library's.
//
// Delivery contract: the library stores a position only after the 'change' listener for its
// event has finished, and the listener finishes only once the event's line is handed to the
// OS, so a restart never skips an event. Positions are written at most every
// CHECKPOINT_EVERY_MS and on every way out but SIGKILL (and a second Ctrl-C); after those,
// the events since the last write may be printed again (at-least-once).

const fs = require('node:fs');
const path = require('node:path');
const { EJSON } = require('bson');
const { ResilientChangeStream } = require('..');

/** The name of the CLI's position in a token file (a library stream named so can share it). */
const STREAM_NAME = 'cli';
const CHECKPOINT_EVERY_MS = 100;
const STATUS_REFRESH_MS = 1000;
const STATUS_MIN_INTERVAL_MS = 100;
const PARENT_CHECK_MS = 1000;

// Exit codes.
const EXIT_OK = 0; // stopped by a signal, ended by invalidation, or stdout closed
const EXIT_FAILED = 1; // the stream failed (history lost, auth, ...), or output failed
const EXIT_USAGE = 2; // bad arguments, option or token file
const EXIT_FORCED = 130; // a second Ctrl-C: stopped without waiting for the server

/** A bad argument or token file, found before anything was printed (exit code 2). */
class UsageError extends Error {}

/**
 * Runs `tail` until it ends; resolves with the exit code. `args`:
 * `{ uri, db, coll?, pipeline?, tokenFile?, fullDocument?, outliveParent?, snapshot? }`.
 * `snapshot`: the collection's documents first (`operationType: 'snapshot'` lines), then
 * its changes from the moment the copy began (the library's `initialSnapshot`).
 */
async function tail(args, io = defaultIo()) {
  const { uri, db, coll, pipeline, tokenFile, fullDocument, outliveParent, snapshot } = args;
  if (snapshot && coll === undefined) {
    throw new UsageError('--snapshot copies one collection: give <db>.<coll>, not a whole database');
  }
  const nsLabel = coll === undefined ? db : `${db}.${coll}`;
  if (tokenFile !== undefined) checkWritableDirectory(tokenFile);

  const stream = new ResilientChangeStream({
    uri,
    db,
    collection: coll,
    pipeline,
    fullDocument,
    ...(snapshot ? { initialSnapshot: true } : {}),
    ...(tokenFile === undefined
      ? {}
      : {
          name: STREAM_NAME,
          tokenStore: { type: 'file', path: tokenFile },
          checkpoint: { everyMs: CHECKPOINT_EVERY_MS },
        }),
    // Lossless decoding for canonical EJSON: keep BSON's number types, binaries and regexes.
    promoteValues: false,
    promoteBuffers: false,
    bsonRegExp: true,
  });

  const status = new Status(io.stderr, nsLabel, {
    sharesScreen: Boolean(io.stdoutIsTTY),
    unsaved: tokenFile === undefined ? null : () => unsavedEvents(stream),
  });
  let events = 0;
  let invalidated = false;
  // The stream's cursor is open (its first position came): from then on, a token store
  // error is about saving, not about the file that was there before.
  let opened = false;

  // Returns nothing when the line is already in the OS, else a promise the library awaits
  // before it counts the event as processed.
  stream.on('change', (event) => {
    status.beforeOutput();
    const written = io.writeOut(`${EJSON.stringify(event, { relaxed: false })}\n`);
    const printed = () => {
      events += 1;
      if (event.operationType === 'invalidate') invalidated = true;
      status.event(events);
    };
    if (written === undefined) return printed();
    return written.then(printed);
  });
  stream.once('resumeTokenChanged', () => {
    opened = true;
  });
  // A copy hands out documents before the stream has a token: the cursor is open.
  if (snapshot) stream.once('change', () => (opened = true));
  stream.on('reconnecting', ({ attempt, delayMs, error }) => {
    status.reconnecting(attempt, delayMs, error);
  });
  stream.on('resumed', ({ attempts, downtimeMs }) => {
    status.resumed(attempts, downtimeMs);
  });
  // Emitter mode: without a listener a fatal error would be thrown; 'close' carries it too.
  stream.on('error', () => {});

  const closed = new Promise((resolve) => stream.once('close', resolve));

  // How the run ends: the first of a signal, the parent process going away, or the stream
  // closing by itself.
  let stoppedBy = null;
  let orphanedFrom = null; // the pid of the parent that went away
  const onSignal = (signal) => {
    if (stoppedBy !== null) {
      // Second signal: do not wait for the server (or anything else). The token file keeps
      // the last position written: the events since then are printed again next time.
      status.clear();
      io.stderr.write(`resilient-change-stream: ${signal} again, exiting without waiting\n`);
      io.exit(EXIT_FORCED);
      return;
    }
    stoppedBy = signal;
    // close() stores the position of the last printed event (its failure is read below).
    stream.close().catch(() => {});
  };
  const signals = ['SIGINT', 'SIGTERM', 'SIGHUP'];
  for (const signal of signals) io.process.on(signal, onSignal);
  // A wrapper that dies without passing a signal on (npx under a supervisor's SIGTERM, a
  // shell without exec) would leave us running orphaned: stop as on SIGTERM once we are
  // re-parented. Not when asked to outlive the parent (nohup, `&` from a login shell).
  const parentWatch = outliveParent
    ? null
    : watchParent(io.process, (parentPid) => {
        if (stoppedBy !== null) return;
        orphanedFrom = parentPid;
        stoppedBy = 'parent';
        stream.close().catch(() => {});
      });

  status.start();
  let info;
  try {
    info = await closed;
  } finally {
    status.stop();
    clearInterval(parentWatch);
    for (const signal of signals) io.process.removeListener(signal, onSignal);
  }
  // However it closed, close() (idempotent) says whether the last position was stored.
  const closeFailure = await stream.close().then(
    () => null,
    (err) => err,
  );
  const failure = (info.reason === 'error' ? info.error : null) ?? closeFailure;

  const where = tokenFile === undefined ? '' : `; position saved in ${tokenFile}`;
  if (failure && isClosedOutput(failure)) {
    // The reader went away (`| head`): not an error; the unprinted event stays unsaved.
    return EXIT_OK;
  }
  if (failure && tokenFile !== undefined && !opened && events === 0 && isTokenFileError(failure)) {
    throw new UsageError(describeTokenFileError(failure, tokenFile));
  }
  if (failure) {
    status.say(describeFailure(failure, tokenFile));
    return EXIT_FAILED;
  }
  if (stoppedBy === 'parent') {
    status.say(`stopped because its parent process (pid ${orphanedFrom}) exited, after ${events} events${where}`);
  } else if (stoppedBy !== null) {
    status.say(`stopped by ${stoppedBy} after ${events} events${where}`);
  } else if (info.reason === 'invalidate' || invalidated) {
    status.say(
      `the change stream was invalidated (the ${coll === undefined ? 'database' : 'collection'} ` +
        `was dropped or renamed)${where}${tokenFile === undefined ? '' : '; run again to continue after it'}`,
    );
  }
  return EXIT_OK;
}

/**
 * Calls `onGone(parentPid)` once the process's parent changes: it exited and we were
 * re-parented (to init or a subreaper). One getppid() a second on an unref'd timer: cheap, and
 * never what keeps the process alive. (Windows keeps the creator's pid: it never fires there.)
 */
function watchParent(proc, onGone) {
  const parent = proc.ppid;
  const timer = setInterval(() => {
    if (proc.ppid === parent) return;
    clearInterval(timer);
    onGone(parent);
  }, PARENT_CHECK_MS);
  timer.unref();
  return timer;
}

/** Printed events whose position is not in the token file yet; null once it cannot tell. */
function unsavedEvents(stream) {
  try {
    return stream.health().pendingCheckpoint;
  } catch {
    return null; // closed meanwhile
  }
}

/**
 * Fails before anything is printed if the token file cannot be written: the store would
 * only find out at its first save, and retry that for a while as events go by unsaved.
 */
function checkWritableDirectory(file) {
  const dir = path.dirname(path.resolve(file));
  try {
    if (!fs.statSync(dir).isDirectory()) throw new Error(`${dir} is not a directory`);
    fs.accessSync(dir, fs.constants.W_OK);
  } catch (err) {
    throw new UsageError(`cannot write token file ${file}: ${err.message}`);
  }
}

function isClosedOutput(err) {
  // The 'change' listener's write failed: the stream closed with a HandlerError around it.
  const cause = err?.kind === 'HandlerFailed' ? err.cause : err;
  return cause?.code === 'EPIPE' || cause?.code === 'ERR_STREAM_DESTROYED';
}

/** The stored position could not be used: read when the stream started, before any event. */
function isTokenFileError(err) {
  return err?.kind === 'PositionMismatch' || err?.kind === 'TokenStoreError';
}

function describeTokenFileError(err, tokenFile) {
  if (err.kind === 'TokenStoreError' && isOldTokenFile(tokenFile)) {
    return (
      `token file ${tokenFile} was written by an earlier version of this CLI, whose format is ` +
      'no longer read; delete it to start from now, or use a new --token-file'
    );
  }
  // The library's advice names its option; the CLI user's way out is another file.
  const message = err.message.replace(/; set allowPositionMismatch\b.*$/s, '');
  const remedy =
    err.kind === 'PositionMismatch'
      ? 'use another --token-file for this stream'
      : 'delete it to start from now, or use another --token-file';
  return `${err.name}: ${message}; ${remedy}`;
}

/**
 * Whether the file is in the format of the CLI before 0.1.0 shipped (`{"ns":…,"resumeAfter"|
 * "startAfter":…}`): only to say so, its position is not read.
 */
function isOldTokenFile(file) {
  try {
    const doc = JSON.parse(fs.readFileSync(file, 'utf8'));
    return (
      doc !== null &&
      typeof doc === 'object' &&
      !('version' in doc) &&
      typeof doc.ns === 'object' &&
      ('resumeAfter' in doc || 'startAfter' in doc)
    );
  } catch {
    return false;
  }
}

function describeFailure(err, tokenFile) {
  const name = err.name ?? 'Error';
  const kind = err.kind ?? err.code;
  let text = `${name}${kind && kind !== name ? ` (${kind})` : ''}: ${err.message}`;
  if (
    tokenFile !== undefined &&
    (err.kind === 'ChangeStreamHistoryLost' || err.kind === 'InvalidResumeToken')
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
  /**
   * @param {{ sharesScreen: boolean, unsaved: (() => number) | null }} options sharesScreen:
   *   stdout is a terminal too; unsaved: how many printed events the token file is behind
   *   (null without one)
   */
  constructor(stderr, nsLabel, { sharesScreen, unsaved }) {
    this.out = stderr;
    this.sharesScreen = sharesScreen;
    this.unsaved = unsaved;
    this.tty = Boolean(stderr.isTTY);
    this.nsLabel = nsLabel;
    this.events = 0;
    this.lastEventAt = null;
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
      const unsaved = this.events === 0 ? null : this.unsaved?.();
      const saved = unsaved == null ? '' : unsaved === 0 ? ' · all saved' : ` · ${unsaved} unsaved`;
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
  const kind = error?.kind ?? error?.code;
  return kind ? `${kind}: ${first}` : first;
}

function formatMs(ms) {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(ms < 10000 ? 1 : 0)} s`;
  const minutes = Math.floor(ms / 60000);
  return `${minutes} min ${Math.floor((ms % 60000) / 1000)} s`;
}

function defaultIo() {
  const { stdout, stderr } = process;
  // Write errors (EPIPE when the reader goes away) are read from stdout.errored, or arrive
  // through a write callback.
  stdout.on('error', () => {});
  return {
    stderr,
    stdoutIsTTY: stdout.isTTY,
    process,
    writeOut: (text) => writeOut(stdout, text),
    exit: (code) => process.exit(code),
  };
}

/**
 * Writes `text`. Returns nothing if it is in the OS already (Linux pipes, files and POSIX
 * terminals are written synchronously: no tick per event); else a promise that settles once
 * it is (an empty write's callback comes after every write before it; waiting for 'drain'
 * would leave up to a highWaterMark of lines unwritten). Throws, or rejects, if it cannot
 * be written: the event is then not processed, and its position not saved.
 */
function writeOut(stdout, text) {
  stdout.write(text);
  if (stdout.errored) throw stdout.errored;
  if (stdout.writableLength === 0) return undefined;
  return new Promise((resolve, reject) => {
    stdout.write('', (err) => (err ? reject(err) : resolve()));
  });
}

module.exports = { tail, writeOut, UsageError, STREAM_NAME, EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_FORCED };
