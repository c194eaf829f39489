'use strict';
// The reference workflow's service app on the Node SDK (azure-iothub): invokes `firmwareUpdate`
// with Client.invokeDeviceMethod, then polls Registry.getTwin every 500 ms until "completed",
// checking that the status never goes backwards. Prints one "result" event, exits 0 if all held.
// Usage: node firmware_service.js <service connection string> <device id> <fwPackageUri>

const { Client, Registry } = require('azure-iothub');
const { emit, fail, check, sameJson, deadline, sleep } = require('./lib');

const STATES = ['standBy', 'downloading', 'applying', 'completed'];
const TIME_KEYS = ['logTime', 'downloadComplete', 'startedApplyingImage', 'lastFirmwareUpdate'];

function getTwin(registry, deviceId) {
  return new Promise((resolve, reject) => {
    registry.getTwin(deviceId, (err, twin) => (err ? reject(err) : resolve(twin)));
  });
}

function invoke(client, deviceId, params) {
  return new Promise((resolve, reject) => {
    client.invokeDeviceMethod(deviceId, params, (err, result) => (err ? reject(err) : resolve(result)));
  });
}

async function main() {
  const [connectionString, deviceId, fwPackageUri] = process.argv.slice(2);
  if (!fwPackageUri) fail('usage: firmware_service.js <connection string> <device id> <fwPackageUri>');
  deadline(80, 'the Node service app');

  const registry = Registry.fromConnectionString(connectionString);
  const client = Client.fromConnectionString(connectionString);

  const before = await getTwin(registry, deviceId);
  check(before.properties.reported.firmwareStatus === 'standBy', `twin before the update: ${JSON.stringify(before.properties)}`);
  const standbyVersion = before.properties.reported.$version;
  check(Number.isInteger(standbyVersion), `reported.$version missing: ${JSON.stringify(before.properties.reported)}`);

  const method = await invoke(client, deviceId, {
    methodName: 'firmwareUpdate',
    payload: { fwPackageUri },
    responseTimeoutInSeconds: 60,
  });
  sameJson(method, { status: 200, payload: { Response: 'Firmware update started' } }, 'method result');

  const seen = [];
  let reported;
  const started = Date.now();
  for (;;) {
    reported = (await getTwin(registry, deviceId)).properties.reported;
    const status = reported.firmwareStatus;
    check(STATES.includes(status), `unexpected firmwareStatus ${JSON.stringify(status)}`);
    if (seen.length) {
      check(STATES.indexOf(status) >= STATES.indexOf(seen[seen.length - 1]), `status went backwards: ${seen} then ${status}`);
    }
    if (seen[seen.length - 1] !== status) seen.push(status);
    if (status === 'completed') break;
    check(Date.now() - started < 30000, `no "completed" within 30 s; seen ${seen}`);
    await sleep(500);
  }
  for (const key of TIME_KEYS) check(typeof reported[key] === 'string', `${key} missing: ${JSON.stringify(reported)}`);
  check(reported.$version === standbyVersion + 3, `reported.$version ${reported.$version}, standBy was ${standbyVersion}`);
  check(reported.$metadata && reported.$metadata.$lastUpdated, `reported.$metadata missing: ${JSON.stringify(reported)}`);

  emit('result', { method, seen, standbyVersion, final: reported });
  process.exit(0);
}

main().catch((err) => fail('firmware_service', err));
