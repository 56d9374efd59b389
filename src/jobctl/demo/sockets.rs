//! The demo's GSM sockets as an SMS backend: a [`Sender`] that hands
//! every SMS to the simulated fleet instead of a modem. A socket's number
//! obeys the SimPal command it reads (see `simpal`), any other number is a
//! person reading the text; nothing leaves the process.

use std::sync::{Arc, Mutex, PoisonError};

use super::fleet::Fleet;
use crate::clock::Clock;
use crate::sms::{Delivered, Message, SendFuture, Sender};

/// The demo's SMS backend: every message reaches the simulated fleet, a
/// socket's number obeys it and any other number is a person reading it.
/// Nothing leaves the process.
pub(crate) struct DemoSockets {
    fleet: Arc<Mutex<Fleet>>,
    clock: Arc<dyn Clock>,
}

impl DemoSockets {
    /// The backend name in the journal, as `[sms] backend` names it.
    pub(crate) const NAME: &'static str = "demo";

    /// Sockets of `fleet`, whose time is `clock`'s.
    pub(crate) fn new(fleet: Arc<Mutex<Fleet>>, clock: Arc<dyn Clock>) -> DemoSockets {
        DemoSockets { fleet, clock }
    }
}

impl std::fmt::Debug for DemoSockets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemoSockets").finish_non_exhaustive()
    }
}

impl Sender for DemoSockets {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn send<'a>(&'a self, message: &'a Message) -> SendFuture<'a> {
        let now = self.clock.now();
        let mut fleet = self.fleet.lock().unwrap_or_else(PoisonError::into_inner);
        let number = fleet.receive(&message.phone, &message.text, now);
        Box::pin(std::future::ready(Ok(Delivered {
            backend: Self::NAME.to_string(),
            reference: Some(format!("demo-{number}")),
        })))
    }
}
