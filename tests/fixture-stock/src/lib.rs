//! A tiny inbound-command fixture shared by the consumer tests (in-memory
//! and Redis): `change_batch_quantity` messages, and a handler that notes
//! each one; and two events a `change_batch_quantity` consumer must refuse
//! (an internal one, one declared for `line_allocated`), with handlers that
//! would note them. A crate of its own: only the targets that link it get
//! its handlers.

#![allow(missing_docs, clippy::unwrap_used)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use arch_events::transport::OutboundMessage;
use arch_events::{handler, Bus, Command, Dependencies, Event, MessageId, Registrations};

#[derive(Debug, serde::Deserialize, Command)]
#[command(name = "stock.change_quantity", external = "change_batch_quantity")]
pub struct ChangeQuantity {
    pub batchref: String,
    pub qty: u32,
}

#[handler]
pub fn change_quantity(cmd: ChangeQuantity, seen: &Mutex<Vec<String>>) -> Result<(), Infallible> {
    seen.lock()
        .unwrap()
        .push(format!("{}={}", cmd.batchref, cmd.qty));
    Ok(())
}

/// An internal event: JSON (to store it), but no stream.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Event)]
#[event(name = "stock.deallocated", serde)]
pub struct Deallocated {
    pub orderid: String,
}

#[handler]
pub fn note_deallocated(event: &Deallocated, seen: &Mutex<Vec<String>>) -> Result<(), Infallible> {
    seen.lock()
        .unwrap()
        .push(format!("deallocated {}", event.orderid));
    Ok(())
}

/// An event declared for another stream.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Event)]
#[event(name = "stock.allocated", external = "line_allocated")]
pub struct Allocated {
    pub orderid: String,
}

#[handler]
pub fn note_allocated(event: &Allocated, seen: &Mutex<Vec<String>>) -> Result<(), Infallible> {
    seen.lock()
        .unwrap()
        .push(format!("allocated {}", event.orderid));
    Ok(())
}

/// A bus with those handlers, and what they noted.
pub fn bus() -> (Bus, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let bus = Bus::builder()
        .registrations(
            Registrations::new()
                .handler::<change_quantity>()
                .handler::<note_deallocated>()
                .handler::<note_allocated>(),
        )
        .dependencies(Dependencies::new().shared_arc(seen.clone()))
        .build()
        .unwrap();
    (bus, seen)
}

/// A message for `stream`, opening its own flow.
pub fn message(stream: &str, name: &str, payload: &str) -> OutboundMessage {
    let id = MessageId::new();
    OutboundMessage {
        id,
        stream: stream.into(),
        name: name.into(),
        payload: payload.into(),
        correlation_id: id,
        causation_id: None,
    }
}
