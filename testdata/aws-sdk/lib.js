// Shared by the scripts Umbra's Go tests run (internal/awssdktest): one
// JSON object per line on stdout, commands as JSON lines on stdin.
'use strict';
const readline = require('readline');

// out prints one JSON line.
function out(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

// env returns a required environment variable.
function env(name) {
  const v = process.env[name];
  if (!v) {
    out({ event: 'fatal', message: `${name} not set` });
    process.exit(2);
  }
  return v;
}

// commands calls handle(cmd) for every JSON line on stdin, one at a time
// (an async handle is awaited), then end() when stdin closes.
function commands(handle, end) {
  const rl = readline.createInterface({ input: process.stdin });
  let chain = Promise.resolve();
  rl.on('line', (line) => {
    if (!line.trim()) return;
    chain = chain.then(async () => {
      let cmd;
      try {
        cmd = JSON.parse(line);
      } catch (e) {
        out({ event: 'fatal', message: `bad command ${line}: ${e.message}` });
        process.exit(2);
      }
      try {
        await handle(cmd);
      } catch (e) {
        out({ event: 'exception', op: cmd.op, message: String(e && e.stack || e) });
      }
    });
  });
  rl.on('close', () => { chain.then(end); });
}

// errorInfo flattens an SDK error for the Go side.
function errorInfo(e) {
  if (!e) return null;
  const info = { message: String(e.message || e) };
  if (e.modeledError) info.modeled = e.modeledError;
  if (e.error_code !== undefined) info.errorCode = e.error_code;
  if (e.error_name) info.errorName = e.error_name;
  return info;
}

module.exports = { out, env, commands, errorInfo };
