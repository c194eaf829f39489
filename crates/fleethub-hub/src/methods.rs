//! Direct methods in flight: each call waiting for its device's answer, keyed by the request id the hub put
//! in the `$rid` of the request topic.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use fleethub_core::identity::IdentityKey;
use tokio::sync::oneshot;

/// A device's answer: the status it chose and its raw payload.
#[derive(Debug)]
pub struct MethodReply {
    pub status: i32,
    pub payload: Bytes,
}

/// Outcome of handing a device's answer to the waiting call.
#[derive(Debug, PartialEq, Eq)]
pub enum ReplyOutcome {
    Delivered,
    /// No call with that id waits (it timed out or never existed); the answer is dropped.
    Unknown,
    /// The call was made to another identity; the answer is dropped (a device cannot answer for another).
    WrongResponder,
}

#[derive(Default)]
pub struct PendingMethods {
    next_request_id: AtomicU64,
    calls: Mutex<HashMap<u64, (IdentityKey, oneshot::Sender<MethodReply>)>>,
}

/// Removes its call from the table when dropped, so a timed-out or cancelled call leaves nothing behind.
pub struct PendingCall<'a> {
    table: &'a PendingMethods,
    id: u64,
    pub request_id: String,
    pub reply: oneshot::Receiver<MethodReply>,
}

impl Drop for PendingCall<'_> {
    fn drop(&mut self) {
        self.table
            .calls
            .lock()
            .expect("pending methods lock poisoned")
            .remove(&self.id);
    }
}

impl PendingMethods {
    pub fn register(&self, key: &IdentityKey) -> PendingCall<'_> {
        let id = self.next_request_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (sender, reply) = oneshot::channel();
        self.calls
            .lock()
            .expect("pending methods lock poisoned")
            .insert(id, (key.clone(), sender));
        PendingCall {
            table: self,
            id,
            request_id: format!("{id:x}"),
            reply,
        }
    }

    pub fn complete(
        &self,
        responder: &IdentityKey,
        request_id: &str,
        reply: MethodReply,
    ) -> ReplyOutcome {
        let Ok(id) = u64::from_str_radix(request_id, 16) else {
            return ReplyOutcome::Unknown;
        };
        let mut calls = self.calls.lock().expect("pending methods lock poisoned");
        match calls.get(&id) {
            None => ReplyOutcome::Unknown,
            Some((target, _)) if target != responder => ReplyOutcome::WrongResponder,
            Some(_) => {
                let (_, sender) = calls.remove(&id).expect("entry checked above");
                match sender.send(reply) {
                    Ok(()) => ReplyOutcome::Delivered,
                    Err(_) => ReplyOutcome::Unknown,
                }
            }
        }
    }

    pub fn in_flight(&self) -> usize {
        self.calls
            .lock()
            .expect("pending methods lock poisoned")
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> IdentityKey {
        IdentityKey::device(id.parse().unwrap())
    }

    #[test]
    fn only_the_called_device_can_answer_and_only_once() {
        let pending = PendingMethods::default();
        let mut call = pending.register(&key("a"));
        let reply = || MethodReply {
            status: 200,
            payload: Bytes::from_static(b"{}"),
        };
        assert_eq!(
            pending.complete(&key("b"), &call.request_id, reply()),
            ReplyOutcome::WrongResponder
        );
        assert_eq!(
            pending.complete(&key("a"), &call.request_id, reply()),
            ReplyOutcome::Delivered
        );
        assert_eq!(
            pending.complete(&key("a"), &call.request_id, reply()),
            ReplyOutcome::Unknown
        );
        assert_eq!(call.reply.try_recv().unwrap().status, 200);
        assert_eq!(
            pending.complete(&key("a"), "not-hex", reply()),
            ReplyOutcome::Unknown
        );
    }

    #[test]
    fn a_dropped_call_leaves_nothing_and_late_answers_are_dropped() {
        let pending = PendingMethods::default();
        let call = pending.register(&key("a"));
        let request_id = call.request_id.clone();
        assert_eq!(pending.in_flight(), 1);
        drop(call);
        assert_eq!(pending.in_flight(), 0);
        let late = MethodReply {
            status: 200,
            payload: Bytes::new(),
        };
        assert_eq!(
            pending.complete(&key("a"), &request_id, late),
            ReplyOutcome::Unknown
        );
    }
}
