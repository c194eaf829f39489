'use strict';
// Registry CRUD on the Node service SDK (azure-iothub Registry): create (hub-generated keys),
// create again (409), get, and on the "delete" command delete, then get (404).
// Usage: node registry_crud.js <service connection string> <device id>

const { Registry } = require('azure-iothub');
const { emit, fail, check, deadline, readCommands } = require('./lib');

function call(registry, name, ...args) {
  return new Promise((resolve, reject) => {
    registry[name](...args, (err, result, response) => (err ? reject(err) : resolve({ result, response })));
  });
}

async function expectError(promise, what) {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  return fail(`${what} succeeded, expected an error`);
}

async function main() {
  const [connectionString, deviceId] = process.argv.slice(2);
  if (!deviceId) fail('usage: registry_crud.js <connection string> <device id>');
  deadline(60, 'the Node registry app');
  const registry = Registry.fromConnectionString(connectionString);

  // no authentication given: the SDK sends symmetricKey {primaryKey: "", secondaryKey: ""}
  const created = (await call(registry, 'create', { deviceId })).result;
  check(created.deviceId === deviceId, `create returned ${JSON.stringify(created)}`);
  const keys = created.authentication && created.authentication.symmetricKey;
  check(keys && keys.primaryKey && keys.secondaryKey, `hub generated no keys: ${JSON.stringify(created)}`);

  const conflict = await expectError(call(registry, 'create', { deviceId }), 'creating an existing device');
  check(conflict.response && conflict.response.statusCode === 409, `second create: ${conflict.name} ${conflict.message}`);
  check(conflict.name === 'DeviceAlreadyExistsError', `second create gave ${conflict.name}`);

  const fetched = (await call(registry, 'get', deviceId)).result;
  check(fetched.deviceId === deviceId, `get returned ${JSON.stringify(fetched)}`);
  check(fetched.status === 'enabled', `status ${fetched.status}`);
  check(fetched.authentication.symmetricKey.primaryKey === keys.primaryKey, 'get returned other keys than create');
  emit('created', { device: { deviceId, etag: fetched.etag, primaryKey: keys.primaryKey, secondaryKey: keys.secondaryKey } });

  readCommands(
    {
      delete: async () => {
        const deleted = await call(registry, 'delete', deviceId);
        check(deleted.response.statusCode === 204 || deleted.response.statusCode === 200, `delete status ${deleted.response.statusCode}`);
        const missing = await expectError(call(registry, 'get', deviceId), 'get after delete');
        check(missing.response && missing.response.statusCode === 404, `get after delete: ${missing.name} ${missing.message}`);
        // azure-iot-http-base parses {"Message": "ErrorCode:DeviceNotFound;..."} into this error type
        check(missing.name === 'DeviceNotFoundError', `get after delete gave ${missing.name}: ${missing.responseBody}`);
        return { deleteStatus: deleted.response.statusCode };
      },
    },
    () => process.exit(0)
  );
}

main().catch((err) => fail('registry_crud', err));
