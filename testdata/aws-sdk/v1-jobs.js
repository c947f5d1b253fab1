// The v1 AWS IoT Device SDK for JavaScript (aws-iot-device-sdk 2.2.16):
// its jobs client with default options, as the SDK's jobs agent sample uses
// it: subscribeToJobs for the "firmware-update" operation, then
// startJobNotifications; job.inProgress, job.succeeded and job.failed
// publish the updates (QoS 0, no subscription to their replies).
//
// Env: as v1-shadow.js, plus UMBRA_THING.
// Commands (stdin, JSON lines):
//   {"op":"download","job":ID}                  → {"event":"downloaded","job","status","bytes","sha256"}
//   {"op":"inProgress"|"succeeded"|"failed","job":ID,"details":{…}} → {"event":"updated","op","job","err"}
// Events: connect, close, offline, reconnect, error, subscribed (err),
// notifications (err), job (id, operation, document, status) for every job
// the SDK hands the "firmware-update" handler; "end" after stdin closed.
'use strict';
const awsIot = require('aws-iot-device-sdk');
const { out, env, commands } = require('./lib');
const { download } = require('./download');

const thing = env('UMBRA_THING');
const jobs = awsIot.jobs({
  keyPath: env('UMBRA_KEY'),
  certPath: env('UMBRA_CERT'),
  caPath: env('UMBRA_CA'),
  clientId: env('UMBRA_CLIENT_ID'),
  host: env('UMBRA_HOST'),
  port: Number(env('UMBRA_PORT')),
});

for (const ev of ['close', 'offline', 'reconnect']) {
  jobs.on(ev, () => out({ event: ev }));
}
jobs.on('error', (e) => out({ event: 'error', message: String(e && e.message || e) }));

const known = new Map(); // job ID → the SDK's job object
let started = false;
jobs.on('connect', () => {
  out({ event: 'connect' });
  if (started) return;
  started = true;
  jobs.subscribeToJobs(thing, 'firmware-update', (err, job) => {
    if (err) {
      out({ event: 'subscribed', err: String(err) });
      return;
    }
    known.set(job.id, job);
    out({ event: 'job', id: job.id, operation: job.operation, document: job.document, status: job.status });
  });
  jobs.startJobNotifications(thing, (err) => out({ event: 'notifications', err: err ? String(err) : null }));
});

commands(async (cmd) => {
  const job = known.get(cmd.job);
  if (!job) {
    out({ event: 'fatal', message: `unknown job ${cmd.job}` });
    process.exit(2);
  }
  switch (cmd.op) {
    case 'download': {
      const r = await download(job.document.url);
      out({ event: 'downloaded', job: cmd.job, ...r });
      break;
    }
    case 'inProgress':
    case 'succeeded':
    case 'failed':
      await new Promise((resolve) => job[cmd.op](cmd.details, (err) => {
        out({ event: 'updated', op: cmd.op, job: cmd.job, err: err ? String(err) : null });
        resolve();
      }));
      break;
    default:
      out({ event: 'fatal', message: `unknown op ${cmd.op}` });
      process.exit(2);
  }
}, () => {
  jobs.end(false, () => {
    out({ event: 'end' });
    process.exit(0);
  });
});
