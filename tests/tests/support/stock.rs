//! A tiny inbound-command fixture shared by the consumer tests (in-memory
//! and Redis): `change_batch_quantity` messages, and a handler that notes
//! each one. `#[path]`-included, so each test target has its own copy.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bus_core::transport::OutboundMessage;
use bus_core::{handler, Bus, Command, Dependencies, MessageId, Registrations};

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

/// A bus with that handler, and what it noted.
pub fn bus() -> (Bus, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let bus = Bus::builder()
        .registrations(Registrations::new().handler::<change_quantity>())
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
