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
const { mqtt, mqtt5, iot, iotshadow } = require('aws-iot-device-sdk-v2');
const { SubscriptionStatusEventType } = require('aws-crt').mqtt_request_response;
const { out, env, commands, errorInfo } = require('./lib');

const host = env('UMBRA_HOST');
const port = Number(env('UMBRA_PORT'));
const thingName = env('UMBRA_THING');
const clientId = env('UMBRA_CLIENT_ID');
const protocol = process.env.UMBRA_PROTOCOL || 'mqtt311';
const rrOptions = { maxRequestResponseSubscriptions: 4, maxStreamingSubscriptions: 4, operationTimeoutInSeconds: 20 };

async function connect() {
  if (protocol === 'mqtt5') {
    const builder = iot.AwsIotMqtt5ClientConfigBuilder.newDirectMqttBuilderWithMtlsFromPath(host, env('UMBRA_CERT'), env('UMBRA_KEY'));
    builder.withCertificateAuthorityFromPath(undefined, env('UMBRA_CA'));
    builder.withPort(port);
    // The client ID is the only connect property set; the rest (keepalive
    // 1200 s) stays the builder's default.
    const props = { ...builder.config.connectProperties, clientId };
    builder.withConnectProperties(props);
    const client = new mqtt5.Mqtt5Client(builder.build());
    const connected = new Promise((resolve, reject) => {
      client.on('connectionSuccess', (ev) => resolve(ev));
      client.on('connectionFailure', (ev) => reject(ev.error));
    });
    client.on('disconnection', (ev) => out({ event: 'closed', error: errorInfo(ev.error) }));
    client.start();
    const ev = await connected;
    out({ event: 'connect', protocol, sessionPresent: ev.connack.sessionPresent, keepAlive: props.keepAliveIntervalSeconds,
      serverKeepAlive: ev.connack.serverKeepAlive ?? null, reasonCode: ev.connack.reasonCode });
    return { shadow: iotshadow.IotShadowClientv2.newFromMqtt5(client, rrOptions), stop: () => client.stop() };
  }
  const builder = iot.AwsIotMqttConnectionConfigBuilder.new_mtls_builder_from_path(env('UMBRA_CERT'), env('UMBRA_KEY'));
  builder.with_certificate_authority_from_path(undefined, env('UMBRA_CA'));
  builder.with_endpoint(host);
  builder.with_port(port);
  builder.with_client_id(clientId);
  const config = builder.build();
  const conn = new mqtt.MqttClient().new_connection(config);
  conn.on('error', (e) => out({ event: 'error', error: errorInfo(e) }));
  conn.on('closed', () => out({ event: 'closed' }));
  const sessionPresent = await conn.connect();
  // keep_alive undefined is aws-crt's native default, 1200 s.
  out({ event: 'connect', protocol, sessionPresent, keepAlive: config.keep_alive ?? 'default', cleanSession: config.clean_session });
  return { shadow: iotshadow.IotShadowClientv2.newFromMqtt311(conn, rrOptions), stop: () => conn.disconnect() };
}

async function main() {
  let client;
  try {
    client = await connect();
  } catch (e) {
    out({ event: 'connect-failed', error: errorInfo(e) });
    process.exit(1);
  }
  const { shadow } = client;
  const streams = [];
  const respond = async (op, promise) => {
    try {
      out({ event: 'response', op, ok: true, resp: await promise });
    } catch (e) {
      out({ event: 'response', op, ok: false, error: errorInfo(e) });
    }
  };
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
    await client.stop();
    out({ event: 'end' });
    process.exit(0);
  });
}

main();
