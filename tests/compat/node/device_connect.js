'use strict';
// Node device (azure-iot-device + Mqtt): connect, report "ready" or "connect_failed", wait for "exit".
// Usage: node device_connect.js <device connection string>

const { Client } = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');
const { emit, describe, fail, deadline, readCommands } = require('./lib');

async function main() {
  const [connectionString] = process.argv.slice(2);
  if (!connectionString) fail('usage: device_connect.js <connection string>');
  const client = Client.fromConnectionString(connectionString, Mqtt);
  client.on('error', (err) => emit('background_exception', describe(err)));

  const opening = deadline(90, 'client.open()');
  try {
    await client.open();
  } catch (err) {
    clearTimeout(opening);
    emit('connect_failed', describe(err));
    process.exit(0);
  }
  clearTimeout(opening);
  emit('ready');

  const exit = () => {
    deadline(5, 'client.close()');
    client.close().finally(() => process.exit(0));
  };
  readCommands({}, exit);
}

main().catch((err) => fail('device_connect', err));
