// The v2 AWS IoT Device SDK for JavaScript (aws-iot-device-sdk-v2 1.28.0 on
// aws-crt): the iotshadow request-response client (IotShadowClientv2) over
// an MQTT 3.1.1 connection or an MQTT 5 client built with the SDK's
// default options, as its samples do.
//
// Env: as v1-shadow.js, plus UMBRA_PROTOCOL = mqtt311 (default) or mqtt5.
// Commands (stdin, JSON lines; "name" selects a named shadow):
//   {"op":"update","state":{…},"version"?:N,"name"?:S} → {"event":"response","op","ok",…}
//   {"op":"get","name"?:S}, {"op":"delete","name"?:S}   → {"event":"response",…}
//   {"op":"deltas","name"?:S}  opens the delta stream → {"event":"subscription","name","type"}
//                              (type SubscriptionEstablished, …), then {"event":"delta","name","delta"} per delta
// A response is {"ok":true,"resp":{…}} or {"ok":false,"error":{message,modeled}}.
// Events: connect, error, closed, subscription (stream status); "end" after
// stdin closed and the client stopped.
'use strict';
const { iotshadow } = require('aws-iot-device-sdk-v2');
const { SubscriptionStatusEventType } = require('aws-crt').mqtt_request_response;
const { out, env, commands, errorInfo } = require('./lib');
const { open, respond } = require('./v2connect');

const thingName = env('UMBRA_THING');

async function main() {
  const { service: shadow, stop } = await open(iotshadow.IotShadowClientv2);
  const streams = [];
  commands(async (cmd) => {
    const named = cmd.name !== undefined;
    const req = named ? { thingName, shadowName: cmd.name } : { thingName };
    switch (cmd.op) {
      case 'update': {
        const u = { ...req, state: cmd.state };
        if (cmd.version !== undefined) u.version = cmd.version;
        await respond('update', named ? shadow.updateNamedShadow(u) : shadow.updateShadow(u));
        break;
      }
      case 'get':
        await respond('get', named ? shadow.getNamedShadow(req) : shadow.getShadow(req));
        break;
      case 'delete':
        await respond('delete', named ? shadow.deleteNamedShadow(req) : shadow.deleteShadow(req));
        break;
      case 'deltas': {
        const stream = named ? shadow.createNamedShadowDeltaUpdatedStream(req) : shadow.createShadowDeltaUpdatedStream(req);
        stream.on('subscriptionStatus', (ev) => out({ event: 'subscription', name: cmd.name ?? null, type: SubscriptionStatusEventType[ev.type], error: errorInfo(ev.error) }));
        stream.on('incomingPublish', (ev) => out({ event: 'delta', name: cmd.name ?? null, delta: ev.message }));
        stream.on('incomingPublishError', (ev) => out({ event: 'delta-error', name: cmd.name ?? null, error: errorInfo(ev.error) }));
        stream.open();
        streams.push(stream);
        break;
      }
      default:
        out({ event: 'fatal', message: `unknown op ${cmd.op}` });
        process.exit(2);
    }
  }, async () => {
    for (const s of streams) s.close();
    shadow.close();
    await stop();
    out({ event: 'end' });
    process.exit(0);
  });
}

main();
