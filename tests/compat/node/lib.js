'use strict';
// Shared helpers of the Node apps: JSON-line events on stdout, commands on stdin, hard deadlines.
// An app that hits a problem prints a "fatal" event plus a readable message on stderr and exits 1.

const readline = require('readline');

function emit(event, fields) {
  process.stdout.write(JSON.stringify(Object.assign({ event }, fields || {})) + '\n');
}

function describe(err) {
  if (!err) return { error: null };
  return {
    error: err.name || (err.constructor && err.constructor.name) || typeof err,
    message: err.message || String(err),
    statusCode: err.response && err.response.statusCode,
    responseBody: err.responseBody,
  };
}

function fail(message, err) {
  const details = err ? describe(err) : {};
  emit('fatal', Object.assign({ message }, details));
  process.stderr.write(`FAILED: ${message}${err ? `: ${err.stack || err}` : ''}\n`);
  process.exit(1);
}

function check(condition, message) {
  if (!condition) fail(message);
}

function sameJson(actual, expected, what) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  check(a === e, `${what}: expected ${e}, got ${a}`);
}

// Kills the app if it is still running after `seconds` (a hung SDK must fail, not hang).
function deadline(seconds, what) {
  const timer = setTimeout(() => fail(`${what} did not finish within ${seconds} s`), seconds * 1000);
  timer.unref();
  return timer;
}

// Resolves once predicate() is true, polling every 20 ms; rejects after `seconds`.
function waitUntil(predicate, seconds, what) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const tick = () => {
      if (predicate()) return resolve();
      if (Date.now() - started > seconds * 1000) return reject(new Error(`${what} not within ${seconds} s`));
      setTimeout(tick, 20);
    };
    tick();
  });
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function utcNow() {
  return new Date().toISOString();
}

// Calls handlers[cmd](command) for each JSON line on stdin; "exit" (or EOF) calls onExit.
function readCommands(handlers, onExit) {
  const lines = readline.createInterface({ input: process.stdin });
  lines.on('line', async (line) => {
    if (!line.trim()) return;
    const command = JSON.parse(line);
    if (command.cmd === 'exit') return onExit();
    const handler = handlers[command.cmd];
    if (!handler) return emit('failed', { id: command.id, error: 'unknown command', message: command.cmd });
    try {
      emit('done', Object.assign({ id: command.id }, (await handler(command)) || {}));
    } catch (err) {
      emit('failed', Object.assign({ id: command.id }, describe(err)));
    }
  });
  lines.on('close', onExit);
}

process.on('unhandledRejection', (err) => fail('unhandled promise rejection', err));
process.on('uncaughtException', (err) => fail('uncaught exception', err));

module.exports = { emit, describe, fail, check, sameJson, deadline, waitUntil, sleep, utcNow, readCommands };
