//! Cloud-to-device messages: send one to a device's queue (fleethub's REST envelope; Azure's service SDKs
//! send over AMQP instead), purge a queue, and read the feedback records of delivered, expired and rejected
//! messages (Azure's `/messages/serviceBound/feedback`), one locked batch at a time or as a stream.

use std::collections::VecDeque;
use std::time::Duration;

use fleethub_protocol::c2d::{FeedbackRecord, LockToken, SendC2dRequest, SendC2dResponse};
use fleethub_protocol::ids::DeviceId;
use fleethub_protocol::percent::quote;
use fleethub_protocol::rest::PurgeMessageQueueResult;
use reqwest::{Method, StatusCode, header};

use crate::client::{Call, ServiceClient};
use crate::error::ServiceError;
use crate::wire;

const FEEDBACK_PATH: &str = "/messages/serviceBound/feedback";

/// A batch of feedback records, locked for this reader until [`ServiceClient::complete_feedback`] (done with
/// them) or [`ServiceClient::abandon_feedback`] (hand them out again); a batch neither completed nor abandoned
/// is handed out again once its lock runs out (Azure: one minute).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedFeedback {
    pub lock_token: LockToken,
    /// Oldest first.
    pub records: Vec<FeedbackRecord>,
}

impl ServiceClient {
    /// Queues a message for a device (`POST /devices/{id}/messages/deviceBound`, a fleethub extension): the hub
    /// delivers it when the device is subscribed, over MQTT at QoS 1, until the device acknowledges it or it
    /// expires. Returns its message id (generated when the request has none), sequence number and expiry.
    ///
    /// Refusals are [`ServiceError::Api`]: 404 `DeviceNotFound`, 403 `DeviceMaximumQueueDepthExceeded` when 50
    /// messages wait already, 413 `MessageTooLarge` over 64 KB (body and properties), 400 `ArgumentInvalid` for a
    /// malformed property or id, 403 `InvalidMessageExpiryTime` for an expiry in the past or over 2 days ahead.
    pub async fn send_c2d(
        &self,
        device_id: &DeviceId,
        request: &SendC2dRequest,
    ) -> Result<SendC2dResponse, ServiceError> {
        let path = wire::with_query(
            &format!("{}/messages/deviceBound", wire::device(device_id)),
            &[],
        );
        let call = Call::new(Method::POST, path, "a sent message").json_body(request)?;
        self.call_json(call).await
    }

    /// Removes every message waiting in a device's queue (`DELETE /devices/{id}/commands`); their senders get
    /// `Purged` feedback if they asked for negative feedback.
    pub async fn purge_c2d(
        &self,
        device_id: &DeviceId,
    ) -> Result<PurgeMessageQueueResult, ServiceError> {
        let path = wire::with_query(&format!("{}/commands", wire::device(device_id)), &[]);
        self.call_json(Call::new(Method::DELETE, path, "a purge result"))
            .await
    }

    /// Locks and returns the oldest feedback records (`GET /messages/serviceBound/feedback`), `None` when there
    /// are none now. Settle the batch with [`complete_feedback`](Self::complete_feedback) or
    /// [`abandon_feedback`](Self::abandon_feedback).
    pub async fn receive_feedback(&self) -> Result<Option<ReceivedFeedback>, ServiceError> {
        let path = wire::with_query(FEEDBACK_PATH, &[]);
        let response = self
            .execute(Method::GET, &path, header::HeaderMap::new(), None, None)
            .await?
            .error_for_status()?;
        if response.status == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let records: Vec<FeedbackRecord> = response.decode("a batch of feedback records")?;
        let etag = response.header(header::ETAG).unwrap_or_default();
        let lock_token =
            LockToken::from_etag(etag).map_err(|error| ServiceError::InvalidRequest {
                reason: format!(
                    "the hub's feedback batch has no usable lock token in ETag: {error}"
                ),
            })?;
        Ok(Some(ReceivedFeedback {
            lock_token,
            records,
        }))
    }

    /// Deletes a batch of feedback records: they are read (`DELETE /messages/serviceBound/feedback/{lock}`).
    /// 412 `DeviceMessageLockLost` when its lock ran out meanwhile (the batch is handed out again).
    pub async fn complete_feedback(&self, lock_token: &LockToken) -> Result<(), ServiceError> {
        let path = wire::with_query(
            &format!("{FEEDBACK_PATH}/{}", quote(lock_token.as_str())),
            &[],
        );
        self.call_no_content(Call::new(Method::DELETE, path, "nothing"))
            .await
    }

    /// Unlocks a batch of feedback records to be received again
    /// (`POST /messages/serviceBound/feedback/{lock}/abandon`).
    pub async fn abandon_feedback(&self, lock_token: &LockToken) -> Result<(), ServiceError> {
        let path = wire::with_query(
            &format!("{FEEDBACK_PATH}/{}/abandon", quote(lock_token.as_str())),
            &[],
        );
        self.call_no_content(Call::new(Method::POST, path, "nothing"))
            .await
    }

    /// Follows the feedback records as they come: asks the hub every `poll_interval` while there are none,
    /// yields each record of a batch, and completes the batch once its last record was yielded. A reader that
    /// stops in the middle of a batch leaves it locked; the hub hands it out again when the lock runs out, so
    /// every record is seen at least once.
    pub fn feedback_stream(&self, poll_interval: Duration) -> FeedbackStream {
        FeedbackStream {
            client: self.clone(),
            poll_interval,
            batch: None,
        }
    }
}

/// Feedback records one by one (see [`ServiceClient::feedback_stream`]).
pub struct FeedbackStream {
    client: ServiceClient,
    poll_interval: Duration,
    batch: Option<(LockToken, VecDeque<FeedbackRecord>)>,
}

impl FeedbackStream {
    /// The next record, waiting for one as long as it takes; an error when the hub could not be asked (the
    /// stream may be polled again after it).
    pub async fn next(&mut self) -> Result<FeedbackRecord, ServiceError> {
        loop {
            if let Some((lock_token, records)) = &mut self.batch {
                if let Some(record) = records.pop_front() {
                    return Ok(record);
                }
                let lock_token = lock_token.clone();
                self.batch = None;
                self.client.complete_feedback(&lock_token).await?;
            }
            match self.client.receive_feedback().await? {
                Some(batch) => {
                    self.batch = Some((batch.lock_token, batch.records.into()));
                }
                None => tokio::time::sleep(self.poll_interval).await,
            }
        }
    }
}
