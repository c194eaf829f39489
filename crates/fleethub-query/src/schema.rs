//! Where each name of a path points in a twin or a job record: resolves a path as written into
//! its canonical form, once, at parse time.
//!
//! Rules:
//! - System names (`deviceId`, `properties.reported`, `configurations.[[id]].status`,
//!   `capabilities.iotEdge`, the job fields, ...) are matched case-insensitively and come back in
//!   their canonical case: Azure's own example `SELECT DeviceId, LastActivityTime FROM devices`
//!   answers `{"deviceId": ..., "lastActivityTime": ...}` (query-twins.md).
//! - Names the user chose (under `tags`, `properties.desired`, `properties.reported`, inside
//!   `$metadata`, configuration ids, a method's `payload`) are case-sensitive, as twin keys are.
//!   The `$` names inside them (`$metadata`, `$version`, `$lastUpdated`, `$lastUpdatedVersion`) are
//!   system names: users cannot create keys with `$`, so matching them case-insensitively is safe.
//! - A path may start with the collection alias: `devices.deviceId`, `devices.modules.moduleId`,
//!   `devices.jobs.jobId` ("SELECT * FROM devices.jobs WHERE devices.jobs.deviceId = 'myDeviceId'").
//! - "We don't allow join between the devices and devices.modules collections" (query-twins.md):
//!   `devices.modules.x` in a query FROM devices, or `devices.jobs.x` outside FROM devices.jobs, is
//!   an error rather than a silent "undefined".
//! - Jobs: "Currently, queries on devices.jobs don't support: ... Conditions that refer to the
//!   device twin in addition to job properties" (query-jobs.md). Paths in a jobs query must name a
//!   field of the device-job record. The docs' own example filters on
//!   `devices.jobs.createdTimeUtc`, a field the record does not have (it has
//!   `createdDateTimeUtc`); fleethub reads `createdTimeUtc` as `createdDateTimeUtc`.

use crate::ast::{Path, Segment, Source};

/// A path segment as written.
#[derive(Debug, Clone)]
pub(crate) enum RawSegment {
    Name { text: String, quoted: bool },
    Index(u64),
}

const TWIN_FIELDS: [&str; 20] = [
    "deviceId",
    "moduleId",
    "etag",
    "deviceEtag",
    "status",
    "statusReason",
    "statusUpdateTime",
    "connectionState",
    "lastActivityTime",
    "cloudToDeviceMessageCount",
    "authenticationType",
    "x509Thumbprint",
    "modelId",
    "version",
    "tags",
    "properties",
    "capabilities",
    "configurations",
    "deviceScope",
    "parentScopes",
];

const DOLLAR_NAMES: [&str; 4] = [
    "$metadata",
    "$version",
    "$lastUpdated",
    "$lastUpdatedVersion",
];

/// The fields of Azure's device-job record (`DeviceJob` in the service SDKs).
pub(crate) const JOB_FIELDS: [&str; 11] = [
    "deviceId",
    "moduleId",
    "jobId",
    "jobType",
    "status",
    "startTimeUtc",
    "endTimeUtc",
    "createdDateTimeUtc",
    "lastUpdatedDateTimeUtc",
    "outcome",
    "error",
];

#[derive(Clone, Copy)]
enum Node {
    TwinRoot,
    Properties,
    Thumbprint,
    Capabilities,
    Configurations,
    Configuration,
    /// Names chosen by users: case-sensitive, `$` names canonical.
    UserTree,
    JobRoot,
    JobOutcome,
    JobMethodResponse,
    JobError,
}

fn find_canonical(candidates: &[&'static str], text: &str) -> Option<&'static str> {
    candidates
        .iter()
        .copied()
        .find(|candidate| candidate.eq_ignore_ascii_case(text))
}

fn is_word(raw: &[RawSegment], index: usize, word: &str) -> bool {
    matches!(raw.get(index), Some(RawSegment::Name { text, quoted: false }) if text.eq_ignore_ascii_case(word))
}

/// The path as written, for messages.
pub(crate) fn raw_text(raw: &[RawSegment]) -> String {
    let mut text = String::new();
    for (index, segment) in raw.iter().enumerate() {
        match segment {
            RawSegment::Name { text: name, quoted } => {
                if index > 0 {
                    text.push('.');
                }
                if *quoted {
                    text.push_str("[[");
                    text.push_str(name);
                    text.push_str("]]");
                } else {
                    text.push_str(name);
                }
            }
            RawSegment::Index(position) => {
                text.push_str(&format!("[{position}]"));
            }
        }
    }
    text
}

/// Resolves a path as written against the collection; the error is the message (the caller adds
/// the position of the path).
pub(crate) fn resolve_path(source: Source, raw: &[RawSegment]) -> Result<Path, String> {
    let join_error = |collection: &str| {
        format!(
            "'{}' refers to {collection}, but this query is FROM {}; IoT Hub does not join collections",
            raw_text(raw),
            source.collection_name()
        )
    };
    let skip = if is_word(raw, 0, "devices") {
        match source {
            Source::Devices if is_word(raw, 1, "modules") => {
                return Err(join_error("devices.modules"));
            }
            Source::Devices | Source::Modules if is_word(raw, 1, "jobs") => {
                return Err(join_error("devices.jobs"));
            }
            Source::Devices => 1,
            Source::Modules if is_word(raw, 1, "modules") => 2,
            Source::Modules => 1,
            Source::Jobs if is_word(raw, 1, "jobs") => 2,
            Source::Jobs => return Err(join_error("the device twin")),
        }
    } else {
        0
    };
    let rest = &raw[skip..];
    match rest.first() {
        None => {
            return Err(format!(
                "'{}' names the collection; write a property after it, as in {}.deviceId",
                raw_text(raw),
                source.collection_name()
            ));
        }
        Some(RawSegment::Index(_)) => {
            return Err(format!(
                "'{}': a path cannot index the collection itself",
                raw_text(raw)
            ));
        }
        Some(RawSegment::Name { .. }) => {}
    }
    let node = match source {
        Source::Devices | Source::Modules => Node::TwinRoot,
        Source::Jobs => Node::JobRoot,
    };
    resolve_from(node, rest, raw)
}

/// A path into a twin, as routing's `$twin.` is followed by one: system names canonical, user names
/// as written.
pub(crate) fn resolve_twin_segments(raw: &[RawSegment]) -> Result<Vec<Segment>, String> {
    resolve_from(Node::TwinRoot, raw, raw).map(|path| path.segments)
}

/// Walks `rest` from `node`; `raw` is the whole path as written, for messages.
fn resolve_from(mut node: Node, rest: &[RawSegment], raw: &[RawSegment]) -> Result<Path, String> {
    let mut segments = Vec::with_capacity(rest.len());
    for segment in rest {
        let text = match segment {
            RawSegment::Index(position) => {
                segments.push(Segment::Index(*position));
                node = Node::UserTree;
                continue;
            }
            RawSegment::Name { text, .. } => text.as_str(),
        };
        let not_a_job_property = || {
            format!(
                "'{}' is not a job property; queries FROM devices.jobs can refer only to {} (Azure does not support conditions on the device twin in job queries)",
                raw_text(raw),
                JOB_FIELDS.join(", ")
            )
        };
        let (name, next): (String, Node) = match node {
            Node::TwinRoot => match find_canonical(&TWIN_FIELDS, text) {
                Some(canonical) => (canonical.to_owned(), twin_child(canonical)),
                None => (user_name(text), Node::UserTree),
            },
            Node::Properties => match find_canonical(&["desired", "reported"], text) {
                Some(canonical) => (canonical.to_owned(), Node::UserTree),
                None => (user_name(text), Node::UserTree),
            },
            Node::Thumbprint => {
                match find_canonical(&["primaryThumbprint", "secondaryThumbprint"], text) {
                    Some(canonical) => (canonical.to_owned(), Node::UserTree),
                    None => (user_name(text), Node::UserTree),
                }
            }
            Node::Capabilities => match find_canonical(&["iotEdge"], text) {
                Some(canonical) => (canonical.to_owned(), Node::UserTree),
                None => (user_name(text), Node::UserTree),
            },
            // Configuration ids are the user's (and lowercase in Azure).
            Node::Configurations => (text.to_owned(), Node::Configuration),
            Node::Configuration => match find_canonical(&["status"], text) {
                Some(canonical) => (canonical.to_owned(), Node::UserTree),
                None => (user_name(text), Node::UserTree),
            },
            Node::UserTree => (user_name(text), Node::UserTree),
            Node::JobRoot => {
                let canonical = if text.eq_ignore_ascii_case("createdTimeUtc") {
                    Some("createdDateTimeUtc")
                } else {
                    find_canonical(&JOB_FIELDS, text)
                };
                match canonical {
                    Some("outcome") => ("outcome".to_owned(), Node::JobOutcome),
                    Some("error") => ("error".to_owned(), Node::JobError),
                    Some(canonical) => (canonical.to_owned(), Node::UserTree),
                    None => return Err(not_a_job_property()),
                }
            }
            Node::JobOutcome => match find_canonical(&["deviceMethodResponse"], text) {
                Some(canonical) => (canonical.to_owned(), Node::JobMethodResponse),
                None => return Err(not_a_job_property()),
            },
            Node::JobMethodResponse => match find_canonical(&["status", "payload"], text) {
                Some(canonical) => (canonical.to_owned(), Node::UserTree),
                None => return Err(not_a_job_property()),
            },
            Node::JobError => match find_canonical(&["code", "description"], text) {
                Some(canonical) => (canonical.to_owned(), Node::UserTree),
                None => return Err(not_a_job_property()),
            },
        };
        segments.push(Segment::Name(name));
        node = next;
    }
    Ok(Path { segments })
}

fn twin_child(canonical: &str) -> Node {
    match canonical {
        "properties" => Node::Properties,
        "x509Thumbprint" => Node::Thumbprint,
        "capabilities" => Node::Capabilities,
        "configurations" => Node::Configurations,
        _ => Node::UserTree,
    }
}

fn user_name(text: &str) -> String {
    if text.starts_with('$')
        && let Some(canonical) = find_canonical(&DOLLAR_NAMES, text)
    {
        return canonical.to_owned();
    }
    text.to_owned()
}
