'use strict';

// The CLI's position store: one small file holding the resume token and the namespace it
// belongs to, as canonical Extended JSON, e.g.
//
//   {"ns":{"db":"shop","coll":"orders"},"resumeAfter":{"_data":"8266..."}}
//
// `startAfter` instead of `resumeAfter` after an invalidate event (and while a stream started
// with startAfter has seen no event yet), as the change-streams spec resumes. Never the URI:
// the file may end up in backups or tickets, the credentials must not.
//
// Writes are atomic and durable: a temp file in the same directory (mode 0600), fsync, rename
// over the old file, fsync of the directory. A crash leaves the old or the new file, never a
// torn one.

const fs = require('node:fs');
const path = require('node:path');
const { EJSON } = require('bson');

class TokenFileError extends Error {
  constructor(message, options) {
    super(message, options);
    this.name = 'TokenFileError';
  }
}

/**
 * Reads a token file. Returns `null` if it does not exist, else
 * `{ ns: { db, coll? }, resumeAfter?: token, startAfter?: token }`.
 * @throws TokenFileError if it exists but is unreadable or not a token file
 */
function readTokenFile(file) {
  let text;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    if (err.code === 'ENOENT') return null;
    throw new TokenFileError(`cannot read token file ${file}: ${err.message}`, { cause: err });
  }
  let doc;
  try {
    doc = EJSON.parse(text, { relaxed: false });
  } catch (err) {
    throw new TokenFileError(`token file ${file} is not Extended JSON: ${err.message}`, { cause: err });
  }
  const keys = ['resumeAfter', 'startAfter'].filter((k) => doc?.[k] != null);
  if (
    doc === null ||
    typeof doc !== 'object' ||
    typeof doc.ns !== 'object' ||
    typeof doc.ns?.db !== 'string' ||
    (doc.ns.coll !== undefined && typeof doc.ns.coll !== 'string') ||
    keys.length !== 1 ||
    typeof doc[keys[0]] !== 'object'
  ) {
    throw new TokenFileError(
      `${file} is not a resilient-change-stream token file ` +
        '(expected {"ns":{"db":…,"coll":…},"resumeAfter"|"startAfter":{…}})',
    );
  }
  return doc;
}

/** The canonical EJSON text of a token file. */
function formatTokenFile({ ns, kind, token }) {
  const nsDoc = ns.coll === undefined ? { db: ns.db } : { db: ns.db, coll: ns.coll };
  return `${EJSON.stringify({ ns: nsDoc, [kind]: token }, { relaxed: false })}\n`;
}

/**
 * Atomically replaces `file` with the token (kind: 'resumeAfter' | 'startAfter'). Synchronous:
 * it also runs on the way out of the process.
 */
function writeTokenFile(file, { ns, kind, token }) {
  const text = formatTokenFile({ ns, kind, token });
  const tmp = `${file}.${process.pid}.tmp`;
  let fd;
  try {
    fd = fs.openSync(tmp, 'w', 0o600);
    fs.fchmodSync(fd, 0o600); // if a stale temp file with other permissions was reused
    fs.writeSync(fd, text);
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fd = undefined;
    fs.renameSync(tmp, file);
  } catch (err) {
    if (fd !== undefined) fs.closeSync(fd);
    try {
      fs.unlinkSync(tmp);
    } catch {
      // already gone
    }
    throw new TokenFileError(`cannot write token file ${file}: ${err.message}`, { cause: err });
  }
  syncDirectory(path.dirname(path.resolve(file)));
}

/** Makes a rename in `dir` durable. Not possible everywhere (Windows): best effort. */
function syncDirectory(dir) {
  let fd;
  try {
    fd = fs.openSync(dir, 'r');
    fs.fsyncSync(fd);
  } catch {
    // EISDIR/EPERM on some platforms: the rename is still atomic, only its durability is the OS's
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

/** Fails early (before any event is printed) if the token file's directory is not writable. */
function checkWritable(file) {
  const tmp = `${file}.${process.pid}.tmp`;
  try {
    fs.closeSync(fs.openSync(tmp, 'w', 0o600));
    fs.unlinkSync(tmp);
  } catch (err) {
    throw new TokenFileError(`cannot write token file ${file}: ${err.message}`, { cause: err });
  }
}

module.exports = { readTokenFile, writeTokenFile, formatTokenFile, checkWritable, TokenFileError };
