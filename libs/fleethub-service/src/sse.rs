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

/// Incremental Server-Sent Events parser: feed it bytes, get the `data` of each complete event. Comments
/// (":" lines, the hub's keep-alives), ids and event names are dropped: the data says all the streams need.
#[derive(Default)]
pub(crate) struct SseParser {
    buffer: Vec<u8>,
}

impl SseParser {
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        self.buffer.extend_from_slice(chunk);
        let mut events = Vec::new();
        while let Some((block_end, separator)) = event_end(&self.buffer) {
            let block: Vec<u8> = self.buffer.drain(..block_end).collect();
            self.buffer.drain(..separator);
            let text = String::from_utf8_lossy(&block);
            let data: Vec<&str> = text
                .lines()
                .filter_map(|line| line.strip_prefix("data:"))
                .map(|value| value.strip_prefix(' ').unwrap_or(value))
                .collect();
            if !data.is_empty() {
                events.push(data.join("\n"));
            }
        }
        events
    }
}

/// The end of the first complete event: (length of the block, length of the blank-line separator).
fn event_end(buffer: &[u8]) -> Option<(usize, usize)> {
    (0..buffer.len()).find_map(|index| {
        if buffer[index..].starts_with(b"\r\n\r\n") {
            Some((index, 4))
        } else if buffer[index..].starts_with(b"\n\n") {
            Some((index, 2))
        } else {
            None
        }
    })
}
