//! How requests look on the wire, kept pure so that it can be tested without a hub: paths with percent-encoded
//! ids, the `api-version` query parameter, and `If-Match` values (PROTOCOL.md §3.1, §3.2).

use fleethub_protocol::ids::{DeviceId, ETag, JobId, ModuleId};
use fleethub_protocol::percent::quote;
use reqwest::header::HeaderValue;

/// The REST API version this client speaks (and the official SDKs' current one), sent on every request.
pub const API_VERSION: &str = "2021-04-12";

/// `/devices/{id}`; ids are escaped like the Python SDK (`quote(id, safe="")`), so `a?b%c` becomes `a%3Fb%25c`.
pub(crate) fn device(device_id: &DeviceId) -> String {
    format!("/devices/{}", quote(device_id.as_str()))
}

pub(crate) fn module(device_id: &DeviceId, module_id: &ModuleId) -> String {
    format!(
        "{}/modules/{}",
        device(device_id),
        quote(module_id.as_str())
    )
}

pub(crate) fn modules(device_id: &DeviceId) -> String {
    format!("{}/modules", device(device_id))
}

pub(crate) fn twin(device_id: &DeviceId) -> String {
    format!("/twins/{}", quote(device_id.as_str()))
}

pub(crate) fn module_twin(device_id: &DeviceId, module_id: &ModuleId) -> String {
    format!("{}/modules/{}", twin(device_id), quote(module_id.as_str()))
}

pub(crate) fn device_method(device_id: &DeviceId) -> String {
    format!("{}/methods", twin(device_id))
}

pub(crate) fn module_method(device_id: &DeviceId, module_id: &ModuleId) -> String {
    format!("{}/methods", module_twin(device_id, module_id))
}

/// `/jobs/v2/{id}` (Jobs v2, as the Python SDK's `create_scheduled_job` sends it).
pub(crate) fn job(job_id: &JobId) -> String {
    format!("/jobs/v2/{}", quote(job_id.as_str()))
}

/// `/configurations/{id}`.
pub(crate) fn configuration(id: &str) -> String {
    format!("/configurations/{}", quote(id))
}

/// `path?name=value&...&api-version=2021-04-12`, with names and values escaped like the ids.
pub(crate) fn with_query(path: &str, parameters: &[(&str, &str)]) -> String {
    let mut path_and_query = String::from(path);
    for (index, (name, value)) in parameters
        .iter()
        .chain([&("api-version", API_VERSION)])
        .enumerate()
    {
        path_and_query.push(if index == 0 { '?' } else { '&' });
        path_and_query.push_str(&quote(name));
        path_and_query.push('=');
        path_and_query.push_str(&quote(value));
    }
    path_and_query
}

/// For [`ServiceClient::raw`](crate::ServiceClient::raw): adds `api-version` unless the query already has one.
pub(crate) fn ensure_api_version(path_and_query: &str) -> String {
    let query = path_and_query.split_once('?').map(|(_, query)| query);
    let has_api_version = query.is_some_and(|query| {
        query
            .split('&')
            .any(|parameter| parameter.split('=').next() == Some("api-version"))
    });
    match query {
        _ if has_api_version => path_and_query.to_owned(),
        Some("") => format!("{path_and_query}api-version={API_VERSION}"),
        Some(_) => format!("{path_and_query}&api-version={API_VERSION}"),
        None => format!("{path_and_query}?api-version={API_VERSION}"),
    }
}

/// The `If-Match` value the Python SDK sends: the etag in double quotes (unless it already is quoted), `"*"`
/// (any version) when there is none. Fails only for an etag that cannot be an HTTP header value (control
/// characters), which no hub produces.
pub(crate) fn if_match(etag: Option<&ETag>) -> Result<HeaderValue, String> {
    let tag = etag.map_or("*", ETag::as_str);
    let already_quoted = tag.len() >= 2 && tag.starts_with('"') && tag.ends_with('"');
    let value = if already_quoted {
        tag.to_owned()
    } else {
        format!("\"{tag}\"")
    };
    HeaderValue::from_str(&value)
        .map_err(|_| format!("etag {tag:?} contains characters not allowed in an http header"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device_id(text: &str) -> DeviceId {
        DeviceId::new(text).expect("test ids are valid")
    }

    fn module_id(text: &str) -> ModuleId {
        ModuleId::new(text).expect("test ids are valid")
    }

    /// Every special character Azure allows in ids, escaped as CPython's `quote(x, safe="")` does. (`dev 1` and
    /// `a#b` from PROTOCOL.md's capture are not valid ids, so `DeviceId` cannot even hold them.)
    #[test]
    fn paths_escape_ids_like_the_python_sdk() {
        let cases = [
            (device(&device_id("dev1")), "/devices/dev1"),
            (device(&device_id("a?b%c")), "/devices/a%3Fb%25c"),
            (device(&device_id("a-b.c_d")), "/devices/a-b.c_d"),
            (
                device(&device_id("x:y=z@w$v'u")),
                "/devices/x%3Ay%3Dz%40w%24v%27u",
            ),
            (device(&device_id("(a),b!*")), "/devices/%28a%29%2Cb%21%2A"),
            (
                module(&device_id("d?"), &module_id("$edgeAgent")),
                "/devices/d%3F/modules/%24edgeAgent",
            ),
            (modules(&device_id("d%")), "/devices/d%25/modules"),
            (twin(&device_id("d:1")), "/twins/d%3A1"),
            (
                module_twin(&device_id("d"), &module_id("m=1")),
                "/twins/d/modules/m%3D1",
            ),
            (device_method(&device_id("d*")), "/twins/d%2A/methods"),
            (job(&"job:1".parse().expect("valid")), "/jobs/v2/job%3A1"),
            (configuration("fw-2.0+a%"), "/configurations/fw-2.0%2Ba%25"),
            (
                module_method(&device_id("d"), &module_id("m@x")),
                "/twins/d/modules/m%40x/methods",
            ),
        ];
        for (actual, expected) in cases {
            assert_eq!(actual, expected);
        }
    }

    /// The url crate must not undo or redo the escaping on the way out.
    #[test]
    fn escaped_paths_survive_url_parsing_unchanged() {
        let path = with_query(&module_twin(&device_id("a?b%c"), &module_id("m'(x)")), &[]);
        let url = reqwest::Url::parse(&format!("https://localhost:8443{path}")).expect("valid url");
        assert_eq!(url.path(), "/twins/a%3Fb%25c/modules/m%27%28x%29");
        assert_eq!(url.query(), Some("api-version=2021-04-12"));
        assert_eq!(
            format!("{}?{}", url.path(), url.query().unwrap_or_default()),
            path
        );
    }

    #[test]
    fn every_path_gets_the_api_version() {
        assert_eq!(
            with_query("/devices", &[]),
            "/devices?api-version=2021-04-12"
        );
        assert_eq!(
            with_query("/devices", &[("top", "10")]),
            "/devices?top=10&api-version=2021-04-12"
        );
        assert_eq!(
            with_query(
                "/jobs/v2/query",
                &[("jobType", "a b"), ("jobStatus", "x&y")]
            ),
            "/jobs/v2/query?jobType=a%20b&jobStatus=x%26y&api-version=2021-04-12"
        );
    }

    #[test]
    fn raw_paths_get_the_api_version_unless_they_have_one() {
        let cases = [
            ("/devices/d", "/devices/d?api-version=2021-04-12"),
            ("/devices?", "/devices?api-version=2021-04-12"),
            ("/devices?top=2", "/devices?top=2&api-version=2021-04-12"),
            (
                "/devices?api-version=2020-03-13",
                "/devices?api-version=2020-03-13",
            ),
            ("/devices?top=1&api-version=", "/devices?top=1&api-version="),
            (
                "/devices?x-api-version=1",
                "/devices?x-api-version=1&api-version=2021-04-12",
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(ensure_api_version(input), expected, "{input}");
        }
    }

    #[test]
    fn if_match_is_quoted_like_the_python_sdk() {
        let etag = |text: &str| ETag::new(text);
        let cases: [(Option<ETag>, Result<&str, String>); 6] = [
            (None, Ok("\"*\"")),
            (Some(etag("*")), Ok("\"*\"")),
            (Some(etag("AAAAAAAAAAE=")), Ok("\"AAAAAAAAAAE=\"")),
            (Some(etag("\"AAAAAAAAAAE=\"")), Ok("\"AAAAAAAAAAE=\"")),
            (Some(etag("\"")), Ok("\"\"\"")),
            (
                Some(etag("a\nb")),
                Err("etag \"a\\nb\" contains characters not allowed in an http header".to_owned()),
            ),
        ];
        for (input, expected) in cases {
            let actual = if_match(input.as_ref());
            let actual = actual
                .as_ref()
                .map(|value| value.to_str().expect("ascii"))
                .map_err(Clone::clone);
            assert_eq!(actual, expected, "{input:?}");
        }
    }
}
