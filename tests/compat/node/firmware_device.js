'use strict';
// The reference workflow's device app on the Node SDK (azure-iot-device + azure-iot-device-mqtt).
// Reports standBy, answers `firmwareUpdate` with 200 {"Response": "Firmware update started"} at once,
// then reports downloading, applying and completed in the background (0.3 s apart).
// Usage: node firmware_device.js <device connection string>

const { Client } = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');
const { emit, describe, fail, deadline, waitUntil, sleep, utcNow, readCommands } = require('./lib');

const STEP_MS = 300;
const STEPS = [
  ['downloading', 'downloadComplete'],
  ['applying', 'startedApplyingImage'],
  ['completed', 'lastFirmwareUpdate'],
];

async function main() {
  const [connectionString] = process.argv.slice(2);
  if (!connectionString) fail('usage: firmware_device.js <connection string>');
  const startup = deadline(90, 'device start-up');

  const client = Client.fromConnectionString(connectionString, Mqtt);
  client.on('error', (err) => emit('background_exception', describe(err)));
  client.on('disconnect', () => emit('connection_state', { connected: false }));
  try {
    await client.open();
  } catch (err) {
    emit('connect_failed', describe(err));
    process.exit(3);
  }

  const twin = await client.getTwin();
  const report = (patch) =>
    new Promise((resolve, reject) => {
      twin.properties.reported.update(patch, (err) => (err ? reject(err) : resolve()));
    });

  const standby = { firmwareStatus: 'standBy', logTime: utcNow() };
  await report(standby);
  emit('reported', { patch: standby });

  const runUpdate = async (payload) => {
    for (const [status, timeKey] of STEPS) {
      await sleep(STEP_MS);
      const patch = { firmwareStatus: status, [timeKey]: utcNow() };
      await report(patch);
      emit('reported', { patch });
    }
    emit('firmware_done', { payload });
  };

  client.onDeviceMethod('firmwareUpdate', (request, response) => {
    emit('method', { name: request.methodName, payload: request.payload, request_id: request.requestId });
    response.send(200, { Response: 'Firmware update started' }, (err) => {
      if (err) return fail('sending the method response', err);
      emit('method_answered', { name: request.methodName, status: 200 });
      runUpdate(request.payload).catch((e) => fail('firmware update', e));
    });
  });
  // onDeviceMethod subscribes in the background and offers no completion callback; "ready" must
  // mean "a method can be delivered", so wait for the transport's SUBACK flag (pinned SDK version).
  const methodTopic = client._transport && client._transport._topics && client._transport._topics.method;
  if (!methodTopic) fail('azure-iot-device-mqtt internals changed: no _transport._topics.method');
  await waitUntil(() => methodTopic.subscribed, 30, 'SUBACK for $iothub/methods/POST/#');

  clearTimeout(startup);
  emit('ready');

  readCommands({}, () => {
    deadline(5, 'client.close()');
    client.close().finally(() => process.exit(0));
  });
}

main().catch((err) => fail('firmware_device', err));
