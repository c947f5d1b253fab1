// The v1 AWS IoT Device SDK for JavaScript (aws-iot-device-sdk 2.2.16),
// thingShadow with its default options, as an application uses it.
//
// Env: UMBRA_HOST, UMBRA_PORT, UMBRA_CA, UMBRA_CERT, UMBRA_KEY,
// UMBRA_CLIENT_ID (see internal/awssdktest Device.Env).
// Commands (stdin, JSON lines):
//   {"op":"register","thing":T}            → {"event":"registered","thing","err","failed"}
//   {"op":"update","thing":T,"state":{…}}  → {"event":"sent","op","token"} (token null: refused by the SDK)
//   {"op":"get"|"delete","thing":T}         → {"event":"sent",…}
//   {"op":"publish","topic":…,"payload":…} → {"event":"published","err"} (QoS 0, raw)
// Events: connect, close, offline, reconnect, error, status (thing, stat,
// token, doc), delta (thing, doc), foreign (thing, op, doc), timeout
// (thing, token); "end" after stdin closed and the client ended.
'use strict';
const awsIot = require('aws-iot-device-sdk');
const { out, env, commands } = require('./lib');

const shadows = awsIot.thingShadow({
  keyPath: env('UMBRA_KEY'),
  certPath: env('UMBRA_CERT'),
  caPath: env('UMBRA_CA'),
  clientId: env('UMBRA_CLIENT_ID'),
  host: env('UMBRA_HOST'),
  port: Number(env('UMBRA_PORT')),
});

for (const ev of ['connect', 'close', 'offline', 'reconnect']) {
  shadows.on(ev, () => out({ event: ev }));
}
shadows.on('error', (e) => out({ event: 'error', message: String(e && e.message || e) }));
shadows.on('status', (thing, stat, token, doc) => out({ event: 'status', thing, stat, token, doc }));
shadows.on('delta', (thing, doc) => out({ event: 'delta', thing, doc }));
shadows.on('foreignStateChange', (thing, op, doc) => out({ event: 'foreign', thing, op, doc }));
shadows.on('timeout', (thing, token) => out({ event: 'timeout', thing, token }));

commands((cmd) => new Promise((resolve) => {
  switch (cmd.op) {
    case 'register':
      shadows.register(cmd.thing, {}, (err, failed) => {
        out({ event: 'registered', thing: cmd.thing, err: err || null, failed: failed || null });
        resolve();
      });
      return;
    case 'update':
      out({ event: 'sent', op: 'update', thing: cmd.thing, token: shadows.update(cmd.thing, { state: cmd.state }) });
      break;
    case 'get':
      out({ event: 'sent', op: 'get', thing: cmd.thing, token: shadows.get(cmd.thing) });
      break;
    case 'delete':
      out({ event: 'sent', op: 'delete', thing: cmd.thing, token: shadows.delete(cmd.thing) });
      break;
    case 'publish':
      shadows.publish(cmd.topic, cmd.payload, { qos: 0 }, (err) => {
        out({ event: 'published', topic: cmd.topic, err: err ? String(err) : null });
        resolve();
      });
      return;
    default:
      out({ event: 'fatal', message: `unknown op ${cmd.op}` });
      process.exit(2);
  }
  resolve();
}), () => {
  shadows.end(false, () => {
    out({ event: 'end' });
    process.exit(0);
  });
});
