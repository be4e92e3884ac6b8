'use strict';
// A group member fixture run as its own process (groups.test.js, partitions.test.js), so the
// test can kill -9, SIGSTOP/SIGCONT and SIGTERM it: its control lines, its out file of
// handed-out events, its exit.

const fs = require('node:fs');
const path = require('node:path');
const { spawn } = require('node:child_process');
const { EventEmitter } = require('node:events');

class MemberProcess extends EventEmitter {
  /**
   * @param {string} fixture the member script
   * @param {{ member: string }} config passed to it as JSON
   * @param {string} dir where its out file goes
   */
  constructor(fixture, config, dir) {
    super();
    this.id = config.member;
    this.out = path.join(dir, `${this.id}.log`);
    this.lines = [];
    this.proc = spawn(process.execPath, [fixture, JSON.stringify(config), this.out], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    this.exited = new Promise((resolve) => this.proc.once('exit', resolve));
    let buffered = '';
    this.proc.stdout.on('data', (chunk) => {
      buffered += chunk;
      let nl;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        this.lines.push(line);
        const [kind, ...rest] = line.split(' ');
        if (kind === 'error') this.emit('failed', line);
        else this.onLine(kind, rest);
      }
    });
  }

  /** A control line other than "error …": what a subclass follows. */
  onLine(_kind, _rest) {}

  alive() {
    return this.proc.exitCode === null && this.proc.signalCode === null;
  }

  signal(name) {
    this.proc.kill(name);
  }

  /** The out file's lines (one per handed-out event), each split on spaces. */
  outLines() {
    if (!fs.existsSync(this.out)) return [];
    return fs
      .readFileSync(this.out, 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((line) => line.split(' '));
  }
}

module.exports = { MemberProcess };
