//! The parser, table-driven: accepted queries with their canonical text, rejected queries with
//! the exact message a client receives.

use crate::ast::{Expr, Literal, Number, OrderTarget, Path, Segment, Select};
use crate::{MAX_QUERY_LENGTH, QueryError, Source, parse, parse_condition};

/// (query as written, its canonical text). Every example query of Azure's query pages is here
/// verbatim; the clause fragments of the language page ("SELECT *") are in `REJECTED`.
const ACCEPTED: &[(&str, &str)] = &[
    // query-twins.md and iot-hub-devguide-query-language.md (current), verbatim
    ("SELECT * FROM devices", "SELECT * FROM devices"),
    (
        "SELECT * FROM devices\nWHERE tags.location.region = 'US'",
        "SELECT * FROM devices WHERE (tags.location.region = 'US')",
    ),
    (
        "SELECT * FROM devices\n  WHERE tags.location.region = 'US'\n    AND properties.reported.telemetryConfig.sendFrequencyInSecs >= 60",
        "SELECT * FROM devices WHERE ((tags.location.region = 'US') AND (properties.reported.telemetryConfig.sendFrequencyInSecs >= 60))",
    ),
    (
        "SELECT * FROM devices\n  WHERE properties.reported.connectivity IN ['wired', 'wifi']",
        "SELECT * FROM devices WHERE (properties.reported.connectivity IN ['wired', 'wifi'])",
    ),
    (
        "SELECT * FROM devices\n  WHERE is_defined(properties.reported.connectivity)",
        "SELECT * FROM devices WHERE IS_DEFINED(properties.reported.connectivity)",
    ),
    (
        "SELECT properties.reported.telemetryConfig.status AS status,\n    COUNT() AS numberOfDevices\n  FROM devices\n  GROUP BY properties.reported.telemetryConfig.status",
        "SELECT properties.reported.telemetryConfig.status AS status, COUNT() AS numberOfDevices FROM devices GROUP BY properties.reported.telemetryConfig.status",
    ),
    (
        "SELECT COUNT() as totalNumberOfDevices FROM devices",
        "SELECT COUNT() AS totalNumberOfDevices FROM devices",
    ),
    (
        "SELECT DeviceId, LastActivityTime FROM devices WHERE status = 'enabled' AND connectionState = 'Disconnected'",
        "SELECT deviceId, lastActivityTime FROM devices WHERE ((status = 'enabled') AND (connectionState = 'Disconnected'))",
    ),
    // query-twins.md, module twins, verbatim
    (
        "SELECT * FROM devices.modules",
        "SELECT * FROM devices.modules",
    ),
    (
        "SELECT * FROM devices.modules WHERE properties.reported.status = 'scanning'",
        "SELECT * FROM devices.modules WHERE (properties.reported.status = 'scanning')",
    ),
    (
        "SELECT * FROM devices.modules\n  WHERE properties.reported.status = 'scanning'\n  AND deviceId IN ['device1', 'device2']",
        "SELECT * FROM devices.modules WHERE ((properties.reported.status = 'scanning') AND (deviceId IN ['device1', 'device2']))",
    ),
    // query-jobs.md, verbatim (createdTimeUtc is read as createdDateTimeUtc)
    (
        "SELECT * FROM devices.jobs\n  WHERE devices.jobs.deviceId = 'myDeviceId'",
        "SELECT * FROM devices.jobs WHERE (deviceId = 'myDeviceId')",
    ),
    (
        "SELECT * FROM devices.jobs\n  WHERE devices.jobs.deviceId = 'myDeviceId'\n    AND devices.jobs.jobType = 'scheduleUpdateTwin'\n    AND devices.jobs.status = 'completed'\n    AND devices.jobs.createdTimeUtc > '2016-09-01'",
        "SELECT * FROM devices.jobs WHERE ((deviceId = 'myDeviceId') AND (jobType = 'scheduleUpdateTwin') AND (status = 'completed') AND (createdDateTimeUtc > '2016-09-01'))",
    ),
    (
        "SELECT * FROM devices.jobs\n  WHERE devices.jobs.jobId = 'myJobId'",
        "SELECT * FROM devices.jobs WHERE (jobId = 'myJobId')",
    ),
    // iot-hub-devguide-query-language.md, the `group` caution, verbatim
    (
        "SELECT * FROM devices WHERE tags.[[group]].name = 'some_value'",
        "SELECT * FROM devices WHERE (tags.[[group]].name = 'some_value')",
    ),
    // iot-hub-devguide-query-language.md, 2018 and 2016 versions, verbatim (`property.` is the 2016 typo)
    (
        "SELECT LastActivityTime FROM devices WHERE status = 'enabled'",
        "SELECT lastActivityTime FROM devices WHERE (status = 'enabled')",
    ),
    (
        "Select * from devices.modules where properties.reported.status = 'scanning'",
        "SELECT * FROM devices.modules WHERE (properties.reported.status = 'scanning')",
    ),
    (
        "Select * from devices.modules \n  where properties.reported.status = 'scanning' \n  and deviceId IN ['device1', 'device2']",
        "SELECT * FROM devices.modules WHERE ((properties.reported.status = 'scanning') AND (deviceId IN ['device1', 'device2']))",
    ),
    (
        "SELECT * FROM devices\n        WHERE tags.location.region = 'US'\n            AND properties.reported.telemetryConfig.sendFrequencyInSecs >= 60",
        "SELECT * FROM devices WHERE ((tags.location.region = 'US') AND (properties.reported.telemetryConfig.sendFrequencyInSecs >= 60))",
    ),
    (
        "SELECT * FROM devices\n        WHERE property.reported.connectivity IN ['wired', 'wifi']",
        "SELECT * FROM devices WHERE (property.reported.connectivity IN ['wired', 'wifi'])",
    ),
    (
        "SELECT * FROM devices\n        WHERE is_defined(property.reported.connectivity)",
        "SELECT * FROM devices WHERE IS_DEFINED(property.reported.connectivity)",
    ),
    (
        "SELECT * FROM devices.jobs\n        WHERE devices.jobs.deviceId = 'myDeviceId'\n            AND devices.jobs.jobType = 'scheduleTwinUpdate'\n            AND devices.jobs.status = 'completed'\n            AND devices.jobs.createdTimeUtc > '2016-09-01'",
        "SELECT * FROM devices.jobs WHERE ((deviceId = 'myDeviceId') AND (jobType = 'scheduleTwinUpdate') AND (status = 'completed') AND (createdDateTimeUtc > '2016-09-01'))",
    ),
    // iot-hub-automatic-device-management.md, metric queries, verbatim
    (
        "SELECT deviceId FROM devices \n     WHERE properties.reported.chillerWaterSettings.status='pending'",
        "SELECT deviceId FROM devices WHERE (properties.reported.chillerWaterSettings.status = 'pending')",
    ),
    (
        "SELECT deviceId FROM devices \n     WHERE configurations.[[yourconfigname]].status='Applied'",
        "SELECT deviceId FROM devices WHERE (configurations.yourconfigname.status = 'Applied')",
    ),
    (
        "SELECT deviceId, moduleId FROM devices.modules\n     WHERE properties.reported.lastDesiredStatus.code = 200",
        "SELECT deviceId, moduleId FROM devices.modules WHERE (properties.reported.lastDesiredStatus.code = 200)",
    ),
    (
        "select deviceId from devices where configurations.[[chillersettingswashington]].status = 'Applied' AND properties.reported.chillerWaterSettings.status='current'",
        "SELECT deviceId FROM devices WHERE ((configurations.chillersettingswashington.status = 'Applied') AND (properties.reported.chillerWaterSettings.status = 'current'))",
    ),
    (
        "select deviceid from devices where configurations.[[firmwareupdatelewis]].status='Applied' and properties.reported.firmware.currentFwVersion='1.0.1'",
        "SELECT deviceId FROM devices WHERE ((configurations.firmwareupdatelewis.status = 'Applied') AND (properties.reported.firmware.currentFwVersion = '1.0.1'))",
    ),
    // SDK samples and issue threads (PROTOCOL.md captures, azure-iot-sdk-node#355, IoT Plug and Play samples)
    (
        "SELECT * FROM devices WHERE deviceId IN ['dev1']",
        "SELECT * FROM devices WHERE (deviceId IN ['dev1'])",
    ),
    (
        "SELECT properties.reported.air_quality_data AS data FROM devices WHERE deviceId='10000001'",
        "SELECT properties.reported.air_quality_data AS data FROM devices WHERE (deviceId = '10000001')",
    ),
    (
        "SELECT * FROM devices.modules WHERE moduleId in ['$edgeAgent'] and deviceId in ['...']",
        "SELECT * FROM devices.modules WHERE ((moduleId IN ['$edgeAgent']) AND (deviceId IN ['...']))",
    ),
    (
        "SELECT * FROM devices WHERE tags.site = 'a'",
        "SELECT * FROM devices WHERE (tags.site = 'a')",
    ),
    (
        "select deviceId, lastActivityTime, connectionState, status, properties.reported.[[$iotin:deviceinfo]].manufacturer.value as manufacturer FROM devices",
        "SELECT deviceId, lastActivityTime, connectionState, status, properties.reported.[[$iotin:deviceinfo]].manufacturer.value AS manufacturer FROM devices",
    ),
    (
        "SELECT deviceId, lastActivityTime FROM devices WHERE lastActivityTime >= '2024-05-01T10:00:00Z'",
        "SELECT deviceId, lastActivityTime FROM devices WHERE (lastActivityTime >= '2024-05-01T10:00:00Z')",
    ),
    // the language, feature by feature
    (
        "SELECT TOP 10 * FROM devices",
        "SELECT TOP 10 * FROM devices",
    ),
    (
        "SELECT TOP 5 deviceId FROM devices WHERE status = 'enabled' ORDER BY lastActivityTime DESC",
        "SELECT TOP 5 deviceId FROM devices WHERE (status = 'enabled') ORDER BY lastActivityTime DESC",
    ),
    (
        "SELECT * FROM devices WHERE properties.reported.$metadata.temp.$lastUpdated > '2024-01-01'",
        "SELECT * FROM devices WHERE (properties.reported.$metadata.temp.$lastUpdated > '2024-01-01')",
    ),
    (
        "SELECT * FROM devices WHERE Properties.Reported.$Version >= 2",
        "SELECT * FROM devices WHERE (properties.reported.$version >= 2)",
    ),
    (
        "SELECT * FROM devices WHERE DEVICEID = 'dev1'",
        "SELECT * FROM devices WHERE (deviceId = 'dev1')",
    ),
    (
        "SELECT * FROM devices WHERE devices.deviceId = 'dev1'",
        "SELECT * FROM devices WHERE (deviceId = 'dev1')",
    ),
    (
        "SELECT * FROM devices.modules WHERE devices.modules.moduleId = 'm1'",
        "SELECT * FROM devices.modules WHERE (moduleId = 'm1')",
    ),
    (
        "SELECT * FROM devices WHERE capabilities.iotEdge = true",
        "SELECT * FROM devices WHERE (capabilities.iotEdge = true)",
    ),
    (
        "SELECT * FROM devices WHERE x509Thumbprint.primaryThumbprint = null",
        "SELECT * FROM devices WHERE (x509Thumbprint.primaryThumbprint = null)",
    ),
    (
        "SELECT * FROM devices WHERE properties.desired.$version = properties.reported.lastDesiredVersion",
        "SELECT * FROM devices WHERE (properties.desired.$version = properties.reported.lastDesiredVersion)",
    ),
    (
        "SELECT * FROM devices WHERE version <> 3",
        "SELECT * FROM devices WHERE (version != 3)",
    ),
    (
        "SELECT * FROM devices WHERE version != 3 AND etag = 'AAAAAAAAAAE='",
        "SELECT * FROM devices WHERE ((version != 3) AND (etag = 'AAAAAAAAAAE='))",
    ),
    (
        "SELECT * FROM devices WHERE tags.n < 1 OR tags.n <= 2 OR tags.n > 3 OR tags.n >= 4",
        "SELECT * FROM devices WHERE ((tags.n < 1) OR (tags.n <= 2) OR (tags.n > 3) OR (tags.n >= 4))",
    ),
    (
        "SELECT * FROM devices WHERE tags.n + 1 * 2 - 3 / 4 % 5 = 0",
        "SELECT * FROM devices WHERE (((tags.n + (1 * 2)) - ((3 / 4) % 5)) = 0)",
    ),
    (
        "SELECT * FROM devices WHERE -tags.n = 5",
        "SELECT * FROM devices WHERE ((- tags.n) = 5)",
    ),
    (
        "SELECT * FROM devices WHERE tags.n = -0x10",
        "SELECT * FROM devices WHERE (tags.n = -16)",
    ),
    (
        "SELECT * FROM devices WHERE tags.f = 1.5e-3 OR tags.f = 2E+10 OR tags.f = 0.25",
        "SELECT * FROM devices WHERE ((tags.f = 1.5e-3) OR (tags.f = 2e10) OR (tags.f = 2.5e-1))",
    ),
    (
        "SELECT * FROM devices WHERE tags.s = \"double \\\"quoted\\\"\" OR tags.s = 'single \\'quoted\\'' OR tags.s = 'back\\\\slash'",
        "SELECT * FROM devices WHERE ((tags.s = 'double \"quoted\"') OR (tags.s = 'single \\'quoted\\'') OR (tags.s = 'back\\\\slash'))",
    ),
    (
        "SELECT * FROM devices WHERE tags.s = '\\u0041\\n\\t\\/'",
        "SELECT * FROM devices WHERE (tags.s = 'A\\u000A\\u0009/')",
    ),
    (
        "SELECT * FROM devices WHERE tags.b = true OR tags.b = false OR tags.b = null OR tags.b = undefined",
        "SELECT * FROM devices WHERE ((tags.b = true) OR (tags.b = false) OR (tags.b = null) OR (tags.b = undefined))",
    ),
    (
        "SELECT * FROM devices WHERE tags.a IN [1, 'a', true, null, [1, 2]]",
        "SELECT * FROM devices WHERE (tags.a IN [1, 'a', true, null, [1, 2]])",
    ),
    (
        "SELECT * FROM devices WHERE tags.a NIN ['x', 'y']",
        "SELECT * FROM devices WHERE (tags.a NIN ['x', 'y'])",
    ),
    (
        "SELECT * FROM devices WHERE NOT tags.a = 1",
        "SELECT * FROM devices WHERE (NOT (tags.a = 1))",
    ),
    (
        "SELECT * FROM devices WHERE NOT NOT is_defined(tags.a)",
        "SELECT * FROM devices WHERE (NOT (NOT IS_DEFINED(tags.a)))",
    ),
    (
        "SELECT * FROM devices WHERE tags.a = 1 OR tags.b = 2 AND tags.c = 3",
        "SELECT * FROM devices WHERE ((tags.a = 1) OR ((tags.b = 2) AND (tags.c = 3)))",
    ),
    (
        "SELECT * FROM devices WHERE (tags.a = 1 OR tags.b = 2) AND tags.c = 3",
        "SELECT * FROM devices WHERE (((tags.a = 1) OR (tags.b = 2)) AND (tags.c = 3))",
    ),
    (
        "SELECT * FROM devices WHERE IS_NULL(tags.a) OR IS_BOOL(tags.a) OR IS_NUMBER(tags.a) OR IS_STRING(tags.a) OR IS_OBJECT(tags.a) OR IS_ARRAY(tags.a) OR IS_PRIMITIVE(tags.a)",
        "SELECT * FROM devices WHERE (IS_NULL(tags.a) OR IS_BOOL(tags.a) OR IS_NUMBER(tags.a) OR IS_STRING(tags.a) OR IS_OBJECT(tags.a) OR IS_ARRAY(tags.a) OR IS_PRIMITIVE(tags.a))",
    ),
    (
        "SELECT * FROM devices WHERE STARTSWITH(deviceId, 'dev') AND STARTS_WITH(deviceId, 'd') AND ENDSWITH(deviceId, '1') AND ends_with(deviceId, '1') AND CONTAINS(deviceId, 'ev')",
        "SELECT * FROM devices WHERE (STARTSWITH(deviceId, 'dev') AND STARTSWITH(deviceId, 'd') AND ENDSWITH(deviceId, '1') AND ENDSWITH(deviceId, '1') AND CONTAINS(deviceId, 'ev'))",
    ),
    (
        "SELECT * FROM devices WHERE LOWER(deviceId) = 'dev1' AND UPPER(deviceId) = 'DEV1' AND LENGTH(deviceId) = 4",
        "SELECT * FROM devices WHERE ((LOWER(deviceId) = 'dev1') AND (UPPER(deviceId) = 'DEV1') AND (LENGTH(deviceId) = 4))",
    ),
    (
        "SELECT * FROM devices WHERE SUBSTRING(deviceId, 1) = 'ev1' AND SUBSTRING(deviceId, 0, 3) = 'dev' AND INDEX_OF(deviceId, 'v') = 2 AND CONCAT(deviceId, '-', status) = 'dev1-enabled'",
        "SELECT * FROM devices WHERE ((SUBSTRING(deviceId, 1) = 'ev1') AND (SUBSTRING(deviceId, 0, 3) = 'dev') AND (INDEX_OF(deviceId, 'v') = 2) AND (CONCAT(deviceId, '-', status) = 'dev1-enabled'))",
    ),
    (
        "SELECT * FROM devices WHERE ABS(tags.n) = 1 AND CEILING(tags.f) = 2 AND FLOOR(tags.f) = 1 AND SIGN(tags.n) = -1 AND SQUARE(tags.n) = 1 AND POWER(tags.n, 2) = 1 AND SQRT(4) = 2 AND EXP(0) = 1 AND AS_NUMBER('5') = 5",
        "SELECT * FROM devices WHERE ((ABS(tags.n) = 1) AND (CEILING(tags.f) = 2) AND (FLOOR(tags.f) = 1) AND (SIGN(tags.n) = -1) AND (SQUARE(tags.n) = 1) AND (POWER(tags.n, 2) = 1) AND (SQRT(4) = 2) AND (EXP(0) = 1) AND (AS_NUMBER('5') = 5))",
    ),
    (
        "SELECT COUNT() AS n, SUM(properties.reported.temp) AS total, AVG(properties.reported.temp) AS mean, MIN(properties.reported.temp) AS low, MAX(properties.reported.temp) AS high FROM devices",
        "SELECT COUNT() AS n, SUM(properties.reported.temp) AS total, AVG(properties.reported.temp) AS mean, MIN(properties.reported.temp) AS low, MAX(properties.reported.temp) AS high FROM devices",
    ),
    (
        "SELECT tags.site, tags.floor, COUNT() AS n FROM devices GROUP BY tags.site, tags.floor",
        "SELECT tags.site, tags.floor, COUNT() AS n FROM devices GROUP BY tags.site, tags.floor",
    ),
    (
        "SELECT tags.site AS site, COUNT() AS n FROM devices GROUP BY tags.site ORDER BY n DESC, site",
        "SELECT tags.site AS site, COUNT() AS n FROM devices GROUP BY tags.site ORDER BY n DESC, site ASC",
    ),
    (
        "SELECT tags.site, AVG(properties.reported.temp) FROM devices GROUP BY tags.site ORDER BY AVG(properties.reported.temp) DESC, tags.site ASC",
        "SELECT tags.site, AVG(properties.reported.temp) FROM devices GROUP BY tags.site ORDER BY AVG(properties.reported.temp) DESC, tags.site ASC",
    ),
    (
        "SELECT COUNT() FROM devices.modules WHERE moduleId = '$edgeAgent'",
        "SELECT COUNT() FROM devices.modules WHERE (moduleId = '$edgeAgent')",
    ),
    (
        "SELECT * FROM devices ORDER BY properties.reported.temp DESC, deviceId ASC",
        "SELECT * FROM devices ORDER BY properties.reported.temp DESC, deviceId ASC",
    ),
    (
        "SELECT * FROM devices.jobs WHERE devices.jobs.outcome.deviceMethodResponse.status = 200 ORDER BY devices.jobs.createdDateTimeUtc DESC",
        "SELECT * FROM devices.jobs WHERE (outcome.deviceMethodResponse.status = 200) ORDER BY createdDateTimeUtc DESC",
    ),
    (
        "SELECT TOP 2 * FROM devices.jobs WHERE devices.jobs.error.code != '' OR jobType = 'scheduleDeviceMethod'",
        "SELECT TOP 2 * FROM devices.jobs WHERE ((error.code != '') OR (jobType = 'scheduleDeviceMethod'))",
    ),
    (
        "SELECT * FROM devices WHERE tags.order = 1 AND tags.group = 2 AND tags.select = 3",
        "SELECT * FROM devices WHERE ((tags.[[order]] = 1) AND (tags.[[group]] = 2) AND (tags.[[select]] = 3))",
    ),
    (
        "SELECT * FROM devices WHERE tags.[[a.b c]] = 1 AND tags.[[x]y]] = 2",
        "SELECT * FROM devices WHERE ((tags.[[a.b c]] = 1) AND (tags.[[x]y]] = 2))",
    ),
    (
        "SELECT * FROM devices WHERE tags.list[0] = 'a' AND tags.matrix[1][2] = 3",
        "SELECT * FROM devices WHERE ((tags.list[0] = 'a') AND (tags.matrix[1][2] = 3))",
    ),
    (
        "SELECT deviceId AS [[device id]], tags.x + 1 AS next FROM devices ORDER BY [[device id]] DESC",
        "SELECT deviceId AS [[device id]], (tags.x + 1) AS next FROM devices ORDER BY [[device id]] DESC",
    ),
    (
        "SELECT * FROM devices WHERE tags.température = 'chaud'",
        "SELECT * FROM devices WHERE (tags.température = 'chaud')",
    ),
    (
        "SELECT * FROM devices WHERE tags.x = [ [1, 2], 3]",
        "SELECT * FROM devices WHERE (tags.x = [ [1, 2], 3])",
    ),
    (
        "SELECT * FROM devices WHERE tags.a IN []",
        "SELECT * FROM devices WHERE (tags.a IN [])",
    ),
    (
        "SELECT * FROM devices WHERE -(tags.n) < -9223372036854775808",
        "SELECT * FROM devices WHERE ((- tags.n) < -9223372036854775808)",
    ),
    (
        "SELECT * FROM devices WHERE tags.big = 18446744073709551615",
        "SELECT * FROM devices WHERE (tags.big = 1.8446744073709552e19)",
    ),
    (
        "SELECT * FROM devices WHERE tags.a = 1 AND tags.b = 2 AND tags.c = 3 OR NOT tags.d IN ['x']",
        "SELECT * FROM devices WHERE (((tags.a = 1) AND (tags.b = 2) AND (tags.c = 3)) OR (NOT (tags.d IN ['x'])))",
    ),
    (
        "SELECT\tdeviceId\nFROM\r\ndevices",
        "SELECT deviceId FROM devices",
    ),
    (
        "SELECT * FROM DEVICES.MODULES WHERE ModuleId = 'm'",
        "SELECT * FROM devices.modules WHERE (moduleId = 'm')",
    ),
    (
        "SELECT * FROM devices WHERE statusReason = null AND cloudToDeviceMessageCount = 0 AND authenticationType = 'sas' AND modelId = '' AND deviceEtag = 'x' AND statusUpdateTime < '2025' AND parentScopes = [] AND deviceScope = 's'",
        "SELECT * FROM devices WHERE ((statusReason = null) AND (cloudToDeviceMessageCount = 0) AND (authenticationType = 'sas') AND (modelId = '') AND (deviceEtag = 'x') AND (statusUpdateTime < '2025') AND (parentScopes = []) AND (deviceScope = 's'))",
    ),
    (
        "SELECT * FROM devices WHERE tags.x NOT IN ['a'] AND tags.y = - 1.5",
        "SELECT * FROM devices WHERE ((tags.x NIN ['a']) AND (tags.y = -1.5e0))",
    ),
    (
        "SELECT MAX(properties.reported.temp - 1) AS m, MIN(LENGTH(deviceId)) FROM devices WHERE connectionState = 'Connected'",
        "SELECT MAX((properties.reported.temp - 1)) AS m, MIN(LENGTH(deviceId)) FROM devices WHERE (connectionState = 'Connected')",
    ),
];

const REJECTED: &[(&str, &str)] = &[
    // Azure documentation fragments and typos, verbatim
    (
        "SELECT *",
        "syntax error at position 8: expected FROM after SELECT *, found end of query",
    ),
    (
        "SELECT DeviceID, LastActivityTime",
        "syntax error at position 33: expected ',' or FROM after a SELECT item, found end of query",
    ),
    (
        "SELECT COUNT() as TotalNumber",
        "syntax error at position 29: expected ',' or FROM after a SELECT item, found end of query",
    ),
    (
        "select deviceId, moduleId from devices.module where configurations.[[chillermodulesettingswashington]].status = 'Applied' AND properties.reported.chillerWaterSettings.status='current'",
        "syntax error at position 39: expected 'modules' or 'jobs' after 'devices.', found 'module'",
    ),
    // syntax
    (
        "",
        "syntax error at position 0: expected SELECT, found end of query",
    ),
    (
        "SELECT",
        "syntax error at position 6: expected '*' or a list of properties to select, found end of query",
    ),
    (
        "SELECT * FROM",
        "syntax error at position 13: expected devices, devices.modules or devices.jobs after FROM, found end of query",
    ),
    (
        "SELECT * FROM devices WHERE",
        "syntax error at position 27: expected an expression after 'WHERE', found end of query",
    ),
    (
        "SELECT * FROM devices WHERE tags.a = 1 AND",
        "syntax error at position 42: expected an expression after 'AND', found end of query",
    ),
    (
        "SELECT FROM devices",
        "syntax error at position 7: expected '*' or a list of properties to select, found 'FROM'",
    ),
    (
        "SELECT * devices",
        "syntax error at position 9: expected FROM after SELECT *, found 'devices'",
    ),
    (
        "SELECT *, deviceId FROM devices",
        "syntax error at position 8: expected FROM after SELECT *, found ','",
    ),
    (
        "SELECT * FROM things",
        "syntax error at position 14: expected devices, devices.modules or devices.jobs after FROM, found 'things'",
    ),
    (
        "SELECT * FROM devices WHERE 'abc",
        "syntax error at position 28: unterminated string: no closing '",
    ),
    (
        "SELECT * FROM devices WHERE x = 'a\\qb'",
        "syntax error at position 34: invalid escape sequence '\\q'; the escapes are \\' \\\" \\\\ \\/ \\b \\f \\n \\r \\t and \\uXXXX",
    ),
    (
        "SELECT * FROM devices WHERE x = 12abc",
        "syntax error at position 32: invalid number '12abc'",
    ),
    (
        "SELECT * FROM devices WHERE x = 0x",
        "syntax error at position 32: expected hexadecimal digits after '0x'",
    ),
    (
        "SELECT * FROM devices WHERE x IN ('a')",
        "syntax error at position 33: expected an array constant such as ['a', 'b'] after IN, found '('",
    ),
    (
        "SELECT * FROM devices WHERE x = 1 = 2",
        "syntax error at position 34: comparisons cannot be chained; combine them with AND",
    ),
    (
        "SELECT * FROM devices WHERE tags.[[x",
        "syntax error at position 33: unterminated quoted name: '[[' without ']]'",
    ),
    (
        "SELECT * FROM devices WHERE tags.[[]] = 1",
        "syntax error at position 33: empty quoted name '[[]]'",
    ),
    (
        "SELECT * FROM devices WHERE tags. = 1",
        "syntax error at position 34: expected a property name after '.', found '='",
    ),
    (
        "SELECT * FROM devices WHERE x ! 1",
        "syntax error at position 30: unexpected character '!'; did you mean '!='?",
    ),
    (
        "SELECT * FROM devices WHERE x = #",
        "syntax error at position 32: unexpected character '#'",
    ),
    (
        "SELECT TOP -1 * FROM devices",
        "syntax error at position 11: expected a whole number after TOP, found '-'",
    ),
    (
        "SELECT TOP 1.5 * FROM devices",
        "syntax error at position 11: expected a whole number after TOP, found number 1.5",
    ),
    (
        "SELECT * FROM devices WHERE (x = 1",
        "syntax error at position 34: expected ')' to close the '(' at position 28, found end of query",
    ),
    (
        "SELECT * FROM devices WHERE x IN [[1],[2]]",
        "syntax error at position 33: expected an array constant such as ['a', 'b'] after IN, found '[[1],[2]]' ('[[' opens a quoted name; write '[ [' to start an array of arrays)",
    ),
    (
        "SELECT * FROM devices WHERE x IN [1, 2",
        "syntax error at position 38: expected ',' or ']' in the array, found end of query",
    ),
    (
        "SELECT * FROM devices WHERE x IN [tags.a]",
        "syntax error at position 34: expected a constant (a string, a number, true, false, null or an array) in the array, found 'tags'",
    ),
    (
        "SELECT deviceId AS FROM devices",
        "syntax error at position 19: expected a name after AS, found 'FROM'",
    ),
    (
        "SELECT * FROM devices WHERE x = 1 y",
        "syntax error at position 34: expected GROUP BY, ORDER BY or end of query, found 'y'",
    ),
    (
        "SELECT * FROM devices LIMIT 5",
        "syntax error at position 22: expected WHERE, GROUP BY, ORDER BY or end of query, found 'LIMIT'",
    ),
    (
        "SELECT * FROM devices GROUP deviceId",
        "syntax error at position 28: expected BY after GROUP, found 'deviceId'",
    ),
    (
        "SELECT * FROM devices ORDER deviceId",
        "syntax error at position 28: expected BY after ORDER, found 'deviceId'",
    ),
    (
        "SELECT * FROM devices WHERE x = '\\uD800'",
        "syntax error at position 33: invalid \\u escape: a high surrogate must be followed by a \\u escape of a low surrogate",
    ),
    (
        "SELECT * FROM devices WHERE x = '\\u12'",
        "syntax error at position 33: invalid \\u escape: expected four hexadecimal digits after \\u",
    ),
    (
        "SELECT * FROM devices WHERE x = 1e999",
        "syntax error at position 32: number 1e999 is too large",
    ),
    (
        "SELECT * FROM devices WHERE x = 0x1FFFFFFFFFFFFFFFF",
        "syntax error at position 32: hexadecimal number 0x1FFFFFFFFFFFFFFFF does not fit in 64 bits",
    ),
    (
        "SELECT * FROM devices WHERE tags.list[x] = 1",
        "syntax error at position 38: expected an array index (a whole number) after '[', found 'x'",
    ),
    (
        "SELECT * FROM devices WHERE STARTSWITH(deviceId, 'a' 'b')",
        "syntax error at position 53: expected ',' or ')' in the arguments of STARTSWITH, found a string",
    ),
    (
        "SELECT * FROM devices WHERE x = +1",
        "syntax error at position 32: expected an expression after '=', found '+'",
    ),
    (
        "SELECT * FROM devices WHERE x = \n  1 AND\n  OR y = 2",
        "syntax error at position 43: expected an expression after 'AND', found 'OR'",
    ),
    // the language's rules
    (
        "SELECT deviceId FROM devices.jobs",
        "invalid query at position 7: queries FROM devices.jobs support only SELECT * (Azure supports no projections or aggregates on devices.jobs)",
    ),
    (
        "SELECT * FROM devices WHERE foo(1)",
        "invalid query at position 28: unknown function 'foo'",
    ),
    (
        "SELECT * FROM devices WHERE STARTSWITH(deviceId)",
        "invalid query at position 28: STARTSWITH takes 2 arguments, found 1",
    ),
    (
        "SELECT * FROM devices WHERE SUBSTRING(deviceId)",
        "invalid query at position 28: SUBSTRING takes 2 or 3 arguments, found 1",
    ),
    (
        "SELECT * FROM devices WHERE CONCAT(deviceId)",
        "invalid query at position 28: CONCAT takes at least 2 arguments, found 1",
    ),
    (
        "SELECT * FROM devices WHERE LOWER(deviceId, 1)",
        "invalid query at position 28: LOWER takes 1 argument, found 2",
    ),
    (
        "SELECT * FROM devices WHERE COUNT() > 1",
        "invalid query at position 28: aggregate function COUNT is not allowed in WHERE",
    ),
    (
        "SELECT * FROM devices GROUP BY COUNT()",
        "invalid query at position 31: aggregate function COUNT is not allowed in GROUP BY",
    ),
    (
        "SELECT deviceId, COUNT() FROM devices",
        "invalid query at position 7: 'deviceId' must be inside an aggregate function: a query with aggregates and no GROUP BY returns one row",
    ),
    (
        "SELECT * FROM devices GROUP BY tags.x",
        "invalid query at position 7: SELECT * cannot be used with GROUP BY; select the grouped properties and aggregates",
    ),
    (
        "SELECT tags.y, COUNT() FROM devices GROUP BY tags.x",
        "invalid query at position 7: 'tags.y' must be a GROUP BY property or inside an aggregate function",
    ),
    (
        "SELECT * FROM devices.jobs WHERE tags.x = 1",
        "invalid query at position 33: 'tags.x' is not a job property; queries FROM devices.jobs can refer only to deviceId, moduleId, jobId, jobType, status, startTimeUtc, endTimeUtc, createdDateTimeUtc, lastUpdatedDateTimeUtc, outcome, error (Azure does not support conditions on the device twin in job queries)",
    ),
    (
        "SELECT * FROM devices WHERE devices.modules.moduleId = 'm'",
        "invalid query at position 28: 'devices.modules.moduleId' refers to devices.modules, but this query is FROM devices; IoT Hub does not join collections",
    ),
    (
        "SELECT * FROM devices.modules WHERE devices.jobs.jobId = 'j'",
        "invalid query at position 36: 'devices.jobs.jobId' refers to devices.jobs, but this query is FROM devices.modules; IoT Hub does not join collections",
    ),
    (
        "SELECT COUNT(*) FROM devices",
        "invalid query at position 13: COUNT takes no arguments; write COUNT()",
    ),
    (
        "SELECT SUM() FROM devices",
        "invalid query at position 7: SUM takes 1 argument, found 0",
    ),
    (
        "SELECT SUM(tags.a, tags.b) FROM devices",
        "invalid query at position 7: SUM takes 1 argument, found 2",
    ),
    (
        "SELECT SUM(COUNT()) FROM devices",
        "invalid query at position 11: aggregate function COUNT cannot be nested in another aggregate",
    ),
    (
        "SELECT COUNT() + 1 AS n FROM devices",
        "invalid query at position 7: aggregate function COUNT must be a whole item of the SELECT list, not part of an expression",
    ),
    (
        "SELECT deviceId AS a, status AS a FROM devices",
        "invalid query at position 22: duplicate column name 'a' in the SELECT list; rename one with AS",
    ),
    (
        "SELECT properties.desired.x, properties.reported.x FROM devices",
        "invalid query at position 29: duplicate column name 'x' in the SELECT list; rename one with AS",
    ),
    (
        "SELECT * FROM devices ORDER BY COUNT()",
        "invalid query at position 31: aggregate function COUNT in ORDER BY needs the same aggregate in the SELECT list",
    ),
    (
        "SELECT tags.a, COUNT() AS n FROM devices GROUP BY tags.a ORDER BY tags.b",
        "invalid query at position 66: ORDER BY 'tags.b': a query with aggregates or GROUP BY can be ordered only by an alias of its SELECT list, a GROUP BY property or an aggregate of its SELECT list",
    ),
    (
        "SELECT * FROM devices GROUP BY 1",
        "invalid query at position 31: GROUP BY accepts only property paths, found '1'",
    ),
    (
        "SELECT * FROM devices WHERE x IN [undefined]",
        "invalid query at position 34: undefined cannot be an element of an array",
    ),
    (
        "SELECT * FROM devices.jobs GROUP BY deviceId",
        "invalid query at position 27: GROUP BY is not supported on devices.jobs",
    ),
    (
        "SELECT * FROM devices WHERE devices = 1",
        "invalid query at position 28: 'devices' names the collection; write a property after it, as in devices.deviceId",
    ),
    (
        "SELECT * FROM devices.jobs WHERE devices.jobs.outcome.foo = 1",
        "invalid query at position 33: 'devices.jobs.outcome.foo' is not a job property; queries FROM devices.jobs can refer only to deviceId, moduleId, jobId, jobType, status, startTimeUtc, endTimeUtc, createdDateTimeUtc, lastUpdatedDateTimeUtc, outcome, error (Azure does not support conditions on the device twin in job queries)",
    ),
    (
        "SELECT * FROM devices.jobs WHERE devices.deviceId = 'a'",
        "invalid query at position 33: 'devices.deviceId' refers to the device twin, but this query is FROM devices.jobs; IoT Hub does not join collections",
    ),
];

#[test]
fn accepted_queries_parse_to_their_canonical_text() {
    for (text, canonical) in ACCEPTED {
        let query = parse(text).unwrap_or_else(|error| panic!("{text:?}: {error}"));
        assert_eq!(query.to_string(), *canonical, "{text:?}");
        assert_eq!(
            parse(canonical).as_ref(),
            Ok(&query),
            "{canonical:?} reads back"
        );
    }
    assert!(ACCEPTED.len() >= 80, "{} accepted queries", ACCEPTED.len());
}

#[test]
fn rejected_queries_name_the_position_and_the_problem() {
    for (text, message) in REJECTED {
        match parse(text) {
            Ok(query) => panic!("{text:?} was accepted as {query}"),
            Err(error) => assert_eq!(error.to_string(), *message, "{text:?}"),
        }
    }
    assert!(REJECTED.len() >= 40, "{} rejected queries", REJECTED.len());
}

#[test]
fn the_docs_clause_fragments_parse_once_a_from_clause_is_added() {
    for fragment in [
        "SELECT *",
        "SELECT DeviceID, LastActivityTime",
        "SELECT COUNT() as TotalNumber",
    ] {
        let query = parse(&format!("{fragment} FROM devices"));
        assert!(query.is_ok(), "{fragment}: {query:?}");
    }
}

#[test]
fn deep_nesting_is_refused_before_the_stack_is_at_risk() {
    // Parentheses add no level to the tree, but the parser's recursion is bounded too.
    let parentheses = |count: usize| {
        format!(
            "SELECT * FROM devices WHERE {}1{}",
            "(".repeat(count),
            ")".repeat(count)
        )
    };
    assert!(parse(&parentheses(100)).is_ok());
    assert_eq!(
        parse(&parentheses(200)).unwrap_err().to_string(),
        "invalid query at position 164: expression is nested too deeply (more than 64 levels)"
    );
    let negations = format!("SELECT * FROM devices WHERE x = {}y", "-".repeat(70));
    assert_eq!(
        parse(&negations).unwrap_err().to_string(),
        "invalid query at position 38: expression is nested too deeply (more than 64 levels)"
    );
    let sum = format!(
        "SELECT * FROM devices WHERE {} = 1",
        vec!["1"; 70].join(" + ")
    );
    assert_eq!(
        parse(&sum).unwrap_err().to_string(),
        "invalid query at position 282: expression is nested too deeply (more than 64 levels)"
    );
    let nots = format!("SELECT * FROM devices WHERE {}true", "NOT ".repeat(2000));
    assert!(matches!(parse(&nots), Err(QueryError::Invalid { .. })));
    // Long flat lists are fine: AND and OR are n-ary.
    let conditions: Vec<String> = (0..400)
        .map(|index| format!("tags.t{index} = {index}"))
        .collect();
    let long = format!("SELECT * FROM devices WHERE {}", conditions.join(" OR "));
    assert!(long.len() < MAX_QUERY_LENGTH);
    assert!(parse(&long).is_ok());
}

#[test]
fn queries_longer_than_8192_characters_are_refused_with_their_own_error() {
    let prefix = "SELECT * FROM devices WHERE tags.x = '";
    let fill = |length: usize, character: char| {
        let body: String = std::iter::repeat_n(character, length - prefix.len() - 1).collect();
        format!("{prefix}{body}'")
    };
    assert!(parse(&fill(MAX_QUERY_LENGTH, 'a')).is_ok());
    let too_long = fill(MAX_QUERY_LENGTH + 1, 'a');
    let error = parse(&too_long).unwrap_err();
    assert_eq!(error, QueryError::TooLong { length: 8193 });
    assert_eq!(
        error.to_string(),
        "query is 8193 characters long, more than the maximum of 8192"
    );
    assert_eq!(error.position(), None);
    // Characters, not bytes: 8192 two-byte characters are within the limit.
    assert!(parse(&fill(MAX_QUERY_LENGTH, 'é')).is_ok());
    assert_eq!(
        parse_condition(&"x".repeat(MAX_QUERY_LENGTH + 1), Source::Devices),
        Err(QueryError::TooLong { length: 8193 })
    );
}

#[test]
fn positions_count_characters_and_lines() {
    let error = parse("SELECT * FROM devices WHERE tags.é = 'ü' AND").unwrap_err();
    assert_eq!(error.position(), Some(44));
    assert_eq!(
        error.to_string(),
        "syntax error at position 44: expected an expression after 'AND', found end of query"
    );
    let error = parse("SELECT * FROM devices WHERE x = \n  1 AND\n  OR y = 2").unwrap_err();
    assert_eq!(error.position(), Some(43));
    assert_eq!(error.line_column(), Some((3, 3)));
    assert_eq!(
        error.message(),
        "expected an expression after 'AND', found 'OR'"
    );
}

/// (condition, collection, the equivalent query's canonical text).
const ACCEPTED_CONDITIONS: &[(&str, Source, &str)] = &[
    // Job query conditions (PROTOCOL.md §3.3 captures).
    (
        "deviceId IN ['dev1']",
        Source::Devices,
        "SELECT * FROM devices WHERE (deviceId IN ['dev1'])",
    ),
    (
        "tags.site = 'a'",
        Source::Devices,
        "SELECT * FROM devices WHERE (tags.site = 'a')",
    ),
    // Configuration target conditions (iot-hub-automatic-device-management.md).
    (
        "tags.environment='test'",
        Source::Devices,
        "SELECT * FROM devices WHERE (tags.environment = 'test')",
    ),
    (
        "properties.reported.chillerProperties.model='4000x'",
        Source::Modules,
        "SELECT * FROM devices.modules WHERE (properties.reported.chillerProperties.model = '4000x')",
    ),
    (
        "properties.desired.devicemodel='4000x'",
        Source::Devices,
        "SELECT * FROM devices WHERE (properties.desired.devicemodel = '4000x')",
    ),
    (
        "moduleId = '$edgeAgent' and configurations.[[cfg-1]].status = 'Applied' and properties.desired.$version = properties.reported.lastDesiredVersion and properties.reported.lastDesiredStatus.code = 200",
        Source::Modules,
        "SELECT * FROM devices.modules WHERE ((moduleId = '$edgeAgent') AND (configurations.[[cfg-1]].status = 'Applied') AND (properties.desired.$version = properties.reported.lastDesiredVersion) AND (properties.reported.lastDesiredStatus.code = 200))",
    ),
    (
        "devices.jobs.status = 'failed'",
        Source::Jobs,
        "SELECT * FROM devices.jobs WHERE (status = 'failed')",
    ),
    // Routing conditions (iot-hub-devguide-routing-query-syntax.md and the 2016 language page),
    // verbatim: they parse with the same grammar; their `$body`/`$twin` schema comes later.
    (
        "$contentEncoding = 'UTF-8'",
        Source::Devices,
        "SELECT * FROM devices WHERE ($contentEncoding = 'UTF-8')",
    ),
    (
        "processingPath = 'hot'",
        Source::Devices,
        "SELECT * FROM devices WHERE (processingPath = 'hot')",
    ),
    (
        "$contentEncoding = 'UTF-8' AND processingPath = 'hot'",
        Source::Devices,
        "SELECT * FROM devices WHERE (($contentEncoding = 'UTF-8') AND (processingPath = 'hot'))",
    ),
    (
        "$body.Weather.HistoricalData[0].Month = 'Feb' ",
        Source::Devices,
        "SELECT * FROM devices WHERE ($body.Weather.HistoricalData[0].Month = 'Feb')",
    ),
    (
        "$body.Weather.Temperature = 50 AND $body.Weather.IsEnabled ",
        Source::Devices,
        "SELECT * FROM devices WHERE (($body.Weather.Temperature = 50) AND $body.Weather.IsEnabled)",
    ),
    (
        "length($body.Weather.Location.State) = 2 ",
        Source::Devices,
        "SELECT * FROM devices WHERE (LENGTH($body.Weather.Location.State) = 2)",
    ),
    (
        "$body.properties.desired.telemetryConfig.sendFrequency > 10",
        Source::Devices,
        "SELECT * FROM devices WHERE ($body.properties.desired.telemetryConfig.sendFrequency > 10)",
    ),
    (
        "is_defined($body.properties.desired.telemetryConfig.sendFrequency)",
        Source::Devices,
        "SELECT * FROM devices WHERE IS_DEFINED($body.properties.desired.telemetryConfig.sendFrequency)",
    ),
    (
        "$body[0] = 'Feb'",
        Source::Devices,
        "SELECT * FROM devices WHERE ($body[0] = 'Feb')",
    ),
    (
        "$twin.tags.deploymentLocation.floor = 1 ",
        Source::Devices,
        "SELECT * FROM devices WHERE ($twin.tags.deploymentLocation.floor = 1)",
    ),
    (
        "messageType = 'alerts' AND as_number(severity) <= 2",
        Source::Devices,
        "SELECT * FROM devices WHERE ((messageType = 'alerts') AND (AS_NUMBER(severity) <= 2))",
    ),
];

#[test]
fn conditions_parse_as_the_where_of_select_star() {
    for (text, source, canonical) in ACCEPTED_CONDITIONS {
        let query =
            parse_condition(text, *source).unwrap_or_else(|error| panic!("{text:?}: {error}"));
        assert_eq!(query.to_string(), *canonical, "{text:?}");
        assert_eq!(parse(canonical).as_ref(), Ok(&query), "{canonical:?}");
    }
}

#[test]
fn rejected_conditions_name_the_position_and_the_problem() {
    let cases = [
        (
            "",
            Source::Devices,
            "syntax error at position 0: expected an expression, found end of query",
        ),
        (
            "tags.a = 1 ORDER BY x",
            Source::Devices,
            "syntax error at position 11: expected AND, OR or end of condition, found 'ORDER'",
        ),
        (
            "COUNT() > 1",
            Source::Devices,
            "invalid query at position 0: aggregate function COUNT is not allowed in a condition",
        ),
        (
            "tags.site = 'a'",
            Source::Jobs,
            "invalid query at position 0: 'tags.site' is not a job property; queries FROM devices.jobs can refer only to deviceId, moduleId, jobId, jobType, status, startTimeUtc, endTimeUtc, createdDateTimeUtc, lastUpdatedDateTimeUtc, outcome, error (Azure does not support conditions on the device twin in job queries)",
        ),
        (
            "*",
            Source::Devices,
            "syntax error at position 0: expected an expression, found '*'",
        ),
    ];
    for (text, source, message) in cases {
        assert_eq!(
            parse_condition(text, source).unwrap_err().to_string(),
            message,
            "{text:?}"
        );
    }
}

fn path(names: &[&str]) -> Expr {
    Expr::Path(Path {
        segments: names
            .iter()
            .map(|name| Segment::Name((*name).to_owned()))
            .collect(),
    })
}

fn where_of(text: &str) -> Expr {
    parse(text)
        .unwrap_or_else(|error| panic!("{text}: {error}"))
        .condition
        .expect("has WHERE")
}

#[test]
fn system_names_are_case_insensitive_and_come_back_canonical() {
    let expected = Expr::Compare {
        op: crate::CompareOp::Equal,
        left: Box::new(path(&[
            "properties",
            "reported",
            "$metadata",
            "Temp",
            "$lastUpdated",
        ])),
        right: Box::new(Expr::Literal(Literal::String("x".to_owned()))),
    };
    assert_eq!(
        where_of(
            "SELECT * FROM devices WHERE PROPERTIES.Reported.$METADATA.Temp.$LastUpdated = 'x'"
        ),
        expected
    );
    // User names keep their case.
    assert_ne!(
        where_of("SELECT * FROM devices WHERE tags.Site = 1"),
        where_of("SELECT * FROM devices WHERE tags.site = 1")
    );
    assert_eq!(
        where_of("SELECT * FROM devices WHERE Configurations.[[MyConfig]].STATUS = 1"),
        Expr::Compare {
            op: crate::CompareOp::Equal,
            left: Box::new(path(&["configurations", "MyConfig", "status"])),
            right: Box::new(Expr::Literal(Literal::Number(Number::Int(1)))),
        }
    );
    assert_eq!(
        where_of(
            "SELECT * FROM devices.jobs WHERE DEVICES.JOBS.Outcome.DeviceMethodResponse.Payload.Ok = 1"
        ),
        Expr::Compare {
            op: crate::CompareOp::Equal,
            left: Box::new(path(&["outcome", "deviceMethodResponse", "payload", "Ok"])),
            right: Box::new(Expr::Literal(Literal::Number(Number::Int(1)))),
        }
    );
}

#[test]
fn numbers_keep_integers_exact_and_fold_their_sign() {
    let literal = |text: &str| match where_of(&format!("SELECT * FROM devices WHERE x = {text}")) {
        Expr::Compare { right, .. } => *right,
        other => panic!("{other:?}"),
    };
    let number = |number| Expr::Literal(Literal::Number(number));
    assert_eq!(
        literal("-9223372036854775808"),
        number(Number::Int(i64::MIN))
    );
    assert_eq!(
        literal("9223372036854775808"),
        number(Number::Float(9.223_372_036_854_776e18))
    );
    assert_eq!(literal("0x1F"), number(Number::Int(31)));
    assert_eq!(literal("0XfF"), number(Number::Int(255)));
    assert_eq!(literal("-0x10"), number(Number::Int(-16)));
    assert_eq!(literal("1.5e3"), number(Number::Float(1500.0)));
    assert_eq!(literal("2E-2"), number(Number::Float(0.02)));
    assert_eq!(literal("- -5"), number(Number::Int(5)));
    assert_eq!(literal("-(5)"), number(Number::Int(-5)));
    assert_eq!(literal("007"), number(Number::Int(7)));
}

#[test]
fn order_by_an_alias_sorts_by_that_column() {
    let query = parse("SELECT deviceId AS Id FROM devices ORDER BY Id DESC, id").unwrap();
    assert_eq!(
        query.order_by[0].target,
        OrderTarget::Column("Id".to_owned())
    );
    // Aliases are case-sensitive; `id` is a path.
    assert_eq!(query.order_by[1].target, OrderTarget::Expr(path(&["id"])));
}

#[test]
fn column_names_are_aliases_last_names_or_numbers() {
    let query =
        parse("SELECT tags.x, 1 + 2, LOWER(deviceId) AS l, tags.list[0], DEVICEID FROM devices")
            .unwrap();
    assert_eq!(query.column_names(), ["x", "$1", "l", "$2", "deviceId"]);
    assert!(
        parse("SELECT * FROM devices")
            .unwrap()
            .column_names()
            .is_empty()
    );
}

#[test]
fn result_item_types_are_azures() {
    let item_type = |text: &str| parse(text).unwrap().result_item_type();
    assert_eq!(item_type("SELECT * FROM devices"), "twin");
    assert_eq!(item_type("SELECT * FROM devices.modules"), "twin");
    assert_eq!(
        item_type("SELECT TOP 1 * FROM devices ORDER BY deviceId"),
        "twin"
    );
    assert_eq!(item_type("SELECT * FROM devices.jobs"), "deviceJob");
    assert_eq!(item_type("SELECT deviceId FROM devices"), "raw");
    assert_eq!(item_type("SELECT COUNT() AS n FROM devices"), "raw");
}

#[test]
fn aggregate_and_ordered_queries_need_all_rows() {
    let query = |text: &str| parse(text).unwrap();
    let plain = query("SELECT TOP 3 deviceId FROM devices WHERE status = 'enabled'");
    assert!(!plain.is_aggregate() && !plain.needs_all_rows());
    let ordered = query("SELECT * FROM devices ORDER BY deviceId");
    assert!(!ordered.is_aggregate() && ordered.needs_all_rows());
    let counted = query("SELECT COUNT() AS n FROM devices");
    assert!(counted.is_aggregate() && counted.needs_all_rows());
    let grouped = query("SELECT tags.site FROM devices GROUP BY tags.site");
    assert!(grouped.is_aggregate() && grouped.needs_all_rows());
    assert!(matches!(grouped.select, Select::Items(_)));
}
