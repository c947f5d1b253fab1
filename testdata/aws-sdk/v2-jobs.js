// The v2 AWS IoT Device SDK for JavaScript (aws-iot-device-sdk-v2 1.28.0 on
// aws-crt): the iotjobs request-response client (IotJobsClientv2) over an
// MQTT 3.1.1 connection or an MQTT 5 client with the SDK's default options,
// as its jobs sample uses it: the next-execution and executions-changed
// streams, getPendingJobExecutions, startNextPendingJobExecution,
// describeJobExecution and updateJobExecution.
//
// Env: as v2-shadow.js.
// Commands (stdin, JSON lines):
//   {"op":"streams"}  opens both streams → {"event":"subscription","stream","type"}, then
//                     {"event":"next","message"} and {"event":"changed","message"} per notification
//   {"op":"pending"}, {"op":"startNext","details"?}, {"op":"describe","jobId","executionNumber"?},
//   {"op":"update","jobId","status","details"?,"expectedVersion"?,"includeState"?}
//                     → {"event":"response","op","ok",…} as v2-shadow.js
//   {"op":"download","url"} → {"event":"downloaded","status","bytes","sha256"}
'use strict';
const { iotjobs } = require('aws-iot-device-sdk-v2');
const { SubscriptionStatusEventType } = require('aws-crt').mqtt_request_response;
const { out, env, commands, errorInfo } = require('./lib');
const { open, respond } = require('./v2connect');
const { download } = require('./download');

const thingName = env('UMBRA_THING');

async function main() {
  const { service: jobs, stop } = await open(iotjobs.IotJobsClientv2);
  const streams = [];
  const openStream = (name, event, stream) => {
    stream.on('subscriptionStatus', (ev) => out({ event: 'subscription', stream: name, type: SubscriptionStatusEventType[ev.type], error: errorInfo(ev.error) }));
    stream.on('incomingPublish', (ev) => out({ event, message: ev.message }));
    stream.on('incomingPublishError', (ev) => out({ event: `${event}-error`, error: errorInfo(ev.error) }));
    stream.open();
    streams.push(stream);
  };
  commands(async (cmd) => {
    switch (cmd.op) {
      case 'streams':
        openStream('next', 'next', jobs.createNextJobExecutionChangedStream({ thingName }));
        openStream('changed', 'changed', jobs.createJobExecutionsChangedStream({ thingName }));
        break;
      case 'pending':
        await respond('pending', jobs.getPendingJobExecutions({ thingName }));
        break;
      case 'startNext': {
        const req = { thingName };
        if (cmd.details) req.statusDetails = cmd.details;
        await respond('startNext', jobs.startNextPendingJobExecution(req));
        break;
      }
      case 'describe': {
        const req = { thingName, jobId: cmd.jobId, includeJobDocument: true };
        if (cmd.executionNumber !== undefined) req.executionNumber = cmd.executionNumber;
        await respond('describe', jobs.describeJobExecution(req));
        break;
      }
      case 'update': {
        const req = { thingName, jobId: cmd.jobId, status: cmd.status };
        if (cmd.details) req.statusDetails = cmd.details;
        if (cmd.expectedVersion !== undefined) req.expectedVersion = cmd.expectedVersion;
        if (cmd.includeState) req.includeJobExecutionState = true;
        await respond('update', jobs.updateJobExecution(req));
        break;
      }
      case 'download':
        out({ event: 'downloaded', ...(await download(cmd.url)) });
        break;
      default:
        out({ event: 'fatal', message: `unknown op ${cmd.op}` });
        process.exit(2);
    }
  }, async () => {
    for (const s of streams) s.close();
    jobs.close();
    await stop();
    out({ event: 'end' });
    process.exit(0);
  });
}

main();
