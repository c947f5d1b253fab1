// connect opens the v2 SDK's MQTT connection as its samples do, with the
// SDK's default options over mTLS: an MQTT 3.1.1 connection
// (AwsIotMqttConnectionConfigBuilder) or an MQTT 5 client
// (AwsIotMqtt5ClientConfigBuilder), after UMBRA_PROTOCOL (mqtt311, the
// default, or mqtt5). It prints the "connect" event and returns
// { protocol, newClient(serviceClass), stop }: newClient builds a
// request-response service client (IotShadowClientv2, IotJobsClientv2) on
// the connection.
//
// Env: UMBRA_HOST, UMBRA_PORT, UMBRA_CA, UMBRA_CERT, UMBRA_KEY,
// UMBRA_CLIENT_ID, UMBRA_PROTOCOL.
'use strict';
const { mqtt, mqtt5, iot } = require('aws-iot-device-sdk-v2');
const { out, env, errorInfo } = require('./lib');

const rrOptions = { maxRequestResponseSubscriptions: 4, maxStreamingSubscriptions: 4, operationTimeoutInSeconds: 20 };

async function connect() {
  const host = env('UMBRA_HOST');
  const port = Number(env('UMBRA_PORT'));
  const clientId = env('UMBRA_CLIENT_ID');
  const protocol = process.env.UMBRA_PROTOCOL || 'mqtt311';
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
    return { protocol, newClient: (cls) => cls.newFromMqtt5(client, rrOptions), stop: () => client.stop() };
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
  return { protocol, newClient: (cls) => cls.newFromMqtt311(conn, rrOptions), stop: () => conn.disconnect() };
}

// open connects (exiting with a "connect-failed" event if that fails) and
// returns { client, service, stop }: service is a cls client (e.g.
// iotjobs.IotJobsClientv2) on the connection.
async function open(cls) {
  let client;
  try {
    client = await connect();
  } catch (e) {
    out({ event: 'connect-failed', error: errorInfo(e) });
    process.exit(1);
  }
  return { client, service: client.newClient(cls), stop: () => client.stop() };
}

// respond prints the outcome of a request's promise as a "response" event:
// {"ok":true,"resp"} or {"ok":false,"error":{message,modeled}}.
async function respond(op, promise) {
  try {
    out({ event: 'response', op, ok: true, resp: await promise });
  } catch (e) {
    out({ event: 'response', op, ok: false, error: errorInfo(e) });
  }
}

module.exports = { connect, open, respond };
