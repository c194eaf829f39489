//! What the two Server-Sent Events streams (`GET /changes`, `GET /events`) share: opening one, parsing its
//! bytes into events, decoding their data, and the rules for reconnecting.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use futures_util::Stream;
use reqwest::Method;
use serde::de::DeserializeOwned;

use crate::{ServiceClient, ServiceError};

/// A stream is open-ended; this only bounds one that stopped sending even keep-alives.
const STREAM_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

pub(crate) type Body = Pin<Box<dyn Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

/// Opens a stream; returns its body and the value of the response header `start_header` (where the hub
/// says the stream starts), if it has one.
pub(crate) async fn open(
    client: &ServiceClient,
    path_and_query: &str,
    start_header: &str,
) -> Result<(Body, Option<String>), ServiceError> {
    let response = client
        .send_streaming(Method::GET, path_and_query, STREAM_TIMEOUT)
        .await?;
    let start = response
        .headers()
        .get(start_header)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    Ok((Box::pin(response.bytes_stream()), start))
}

/// Waits before the next connection attempt after `failures` failed ones in a row: none after none, then
/// 0.25 s, 0.5 s, 1 s, ... up to 10 s.
pub(crate) async fn wait_before_reconnecting(failures: u32) {
    if failures > 0 {
        let delay = Duration::from_millis(250 << failures.min(6)).min(Duration::from_secs(10));
        tokio::time::sleep(delay).await;
    }
}

/// An error opening a stream that trying again will not mend: the hub's refusal (4xx), not a connectivity
/// failure or a 5xx.
pub(crate) fn is_permanent(error: &ServiceError) -> bool {
    !error.is_connectivity() && error.status().is_some_and(|status| status < 500)
}

/// Decodes the data of each event `chunk` completes as JSON `T` ("what" names it in the error) into
/// `pending`; stops at the first that is not one.
pub(crate) fn decode_events<T: DeserializeOwned>(
    parser: &mut SseParser,
    chunk: &[u8],
    what: &'static str,
    pending: &mut VecDeque<T>,
) -> Result<(), ServiceError> {
    for data in parser.push(chunk) {
        match serde_json::from_str::<T>(&data) {
            Ok(decoded) => pending.push_back(decoded),
            Err(source) => {
                return Err(ServiceError::Decode {
                    what,
                    body: data,
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Incremental Server-Sent Events parser (the WHATWG event-stream rules): feed it bytes, get the `data` of
/// each complete event. Lines end with CRLF, LF or CR; a blank line ends an event; `data` lines are joined
/// with "\n". Comments (":" lines, the hub's keep-alives), ids, event names and retry hints are dropped: the
/// data says all the streams need. Each byte is looked at once, however the stream is split into chunks.
#[derive(Default)]
pub(crate) struct SseParser {
    /// Bytes not yet consumed: at most one incomplete line.
    buffer: Vec<u8>,
    /// The data lines of the event in progress, each followed by "\n".
    data: String,
    has_data: bool,
}

impl SseParser {
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        self.buffer.extend_from_slice(chunk);
        let mut events = Vec::new();
        let mut consumed = 0;
        while let Some((line_end, next)) = line_end(&self.buffer[consumed..]) {
            let line = &self.buffer[consumed..consumed + line_end];
            consumed += next;
            if line.is_empty() {
                if self.has_data {
                    let mut data = std::mem::take(&mut self.data);
                    data.pop();
                    events.push(data);
                    self.has_data = false;
                }
                continue;
            }
            if line[0] == b':' {
                continue;
            }
            let (field, value) = match line.iter().position(|&byte| byte == b':') {
                Some(colon) => {
                    let value = &line[colon + 1..];
                    (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
                }
                None => (line, &b""[..]),
            };
            if field == b"data" {
                self.data.push_str(&String::from_utf8_lossy(value));
                self.data.push('\n');
                self.has_data = true;
            }
        }
        self.buffer.drain(..consumed);
        events
    }
}

/// The first complete line of `bytes`: (its length, where the next line starts). A CR at the very end is not
/// complete yet: the LF of a CRLF may follow in the next chunk.
fn line_end(bytes: &[u8]) -> Option<(usize, usize)> {
    let end = bytes
        .iter()
        .position(|&byte| byte == b'\n' || byte == b'\r')?;
    if bytes[end] == b'\n' {
        return Some((end, end + 1));
    }
    match bytes.get(end + 1) {
        None => None,
        Some(b'\n') => Some((end, end + 2)),
        Some(_) => Some((end, end + 1)),
    }
}

#[cfg(test)]
mod tests {
    use super::SseParser;

    fn parse_all(chunks: &[&[u8]]) -> Vec<String> {
        let mut parser = SseParser::default();
        chunks.iter().flat_map(|chunk| parser.push(chunk)).collect()
    }

    const STREAM: &[u8] = b": keep-alive\n\nid: 0:1\nevent: Telemetry\ndata: {\"a\":1}\n\n\
        id: 0:2\r\ndata: first\r\ndata:second\r\n\r\ndata: cr only\r\rretry: 10\ndata\n\n";

    #[test]
    fn events_come_out_whole_whatever_the_line_endings() {
        assert_eq!(
            parse_all(&[STREAM]),
            ["{\"a\":1}", "first\nsecond", "cr only", ""]
        );
    }

    #[test]
    fn every_split_of_the_stream_gives_the_same_events() {
        let whole = parse_all(&[STREAM]);
        for split in 0..=STREAM.len() {
            let (head, tail) = STREAM.split_at(split);
            assert_eq!(parse_all(&[head, tail]), whole, "split at {split}");
        }
        let bytes: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(parse_all(&bytes), whole);
    }

    #[test]
    fn an_event_without_its_blank_line_waits_and_one_without_data_is_dropped() {
        let mut parser = SseParser::default();
        assert!(parser.push(b"id: 7\nevent: x\n\ndata: half").is_empty());
        assert!(parser.push(b"-done\n").is_empty());
        assert_eq!(parser.push(b"\n"), ["half-done"]);
    }

    #[test]
    fn malformed_bytes_do_not_stop_the_stream() {
        let events = parse_all(&[b"data: \xff\xfe ok\n\n\x00\x01:\x02\n\ndata: next\n\n"]);
        assert_eq!(events, ["\u{fffd}\u{fffd} ok", "next"]);
    }
}
