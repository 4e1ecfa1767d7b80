//! Inbound messages: a name and a JSON payload, read into the registered
//! type and dispatched; every way it can go wrong is a typed error.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bus_core::{
    handler, Bus, Command, Dependencies, Event, InboundError, Message, MessageContext, Query,
    Registrations,
};

type Seen = Mutex<Vec<String>>;

#[derive(Debug, serde::Deserialize, Command)]
#[command(name = "stock.change_quantity", external = "change_batch_quantity", error = StockError)]
struct ChangeQuantity {
    #[serde(rename = "batchref")]
    reference: String,
    qty: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("no batch {0}")]
struct StockError(String);

#[handler]
fn change_quantity(
    cmd: ChangeQuantity,
    seen: &Seen,
    context: MessageContext,
) -> Result<(), StockError> {
    if cmd.reference == "missing" {
        return Err(StockError(cmd.reference));
    }
    seen.lock().unwrap().push(format!(
        "{} -> {} (flow {})",
        cmd.reference,
        cmd.qty,
        context.correlation_id()
    ));
    Ok(())
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Event)]
#[event(name = "stock.restocked", external = "restocked")]
struct Restocked {
    sku: String,
}

#[handler]
fn note_restock(event: &Restocked, seen: &Seen) -> Result<(), Infallible> {
    seen.lock()
        .unwrap()
        .push(format!("restocked {}", event.sku));
    Ok(())
}

/// A command that cannot be read from JSON (no `serde`).
#[derive(Debug, Command)]
#[command(name = "stock.internal_only")]
struct InternalOnly;

#[handler]
fn internal_only(_: InternalOnly) -> Result<(), Infallible> {
    Ok(())
}

#[derive(Debug, Query)]
#[query(name = "stock.level", output = u32)]
struct Level;

#[handler]
fn level(_: Level) -> Result<u32, Infallible> {
    Ok(0)
}

fn bus() -> (Bus, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let bus = Bus::builder()
        .registrations(
            Registrations::new()
                .handler::<change_quantity>()
                .handler::<note_restock>()
                .handler::<internal_only>()
                .handler::<level>(),
        )
        .dependencies(Dependencies::new().shared_arc(seen.clone()))
        .build()
        .unwrap();
    (bus, seen)
}

#[tokio::test]
async fn a_command_arrives_by_its_external_name_and_continues_the_senders_flow() {
    let (bus, seen) = bus();
    let flow = MessageContext::root();
    bus.handle_external(
        "change_batch_quantity",
        r#"{"batchref": "b1", "qty": 25}"#,
        MessageContext::continuing(flow.correlation_id(), Some(flow.message_id())),
    )
    .await
    .unwrap();
    // Its own name works too.
    bus.handle_external(
        "stock.change_quantity",
        r#"{"batchref": "b2", "qty": 5}"#,
        MessageContext::root(),
    )
    .await
    .unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen[0],
        format!("b1 -> 25 (flow {})", flow.correlation_id())
    );
    assert!(seen[1].starts_with("b2 -> 5"));
    assert_eq!(
        ChangeQuantity::meta().external(),
        Some("change_batch_quantity")
    );
}

#[tokio::test]
async fn an_event_arrives_and_reaches_its_handlers() {
    let (bus, seen) = bus();
    bus.handle_external("restocked", r#"{"sku": "LAMP"}"#, MessageContext::root())
        .await
        .unwrap();
    assert_eq!(*seen.lock().unwrap(), ["restocked LAMP"]);
}

#[tokio::test]
async fn every_bad_message_is_a_typed_error_and_none_is_retryable() {
    let (bus, _) = bus();
    let cases: [(&str, &str, &str); 6] = [
        ("nobody.knows", "{}", "no message is named `nobody.knows` in this bus"),
        (
            "change_batch_quantity",
            "not json",
            "malformed `stock.change_quantity`: expected ident at line 1 column 2",
        ),
        (
            "change_batch_quantity",
            r#"{"batchref": "b1", "qty": -3}"#,
            "malformed `stock.change_quantity`: invalid value: integer `-3`, expected u32 at line 1 column 28",
        ),
        (
            "change_batch_quantity",
            r#"{"batchref": "missing", "qty": 3}"#,
            "`stock.change_quantity` failed: no batch missing",
        ),
        (
            "stock.internal_only",
            "null",
            "`stock.internal_only` cannot be read from JSON: derive it with `serde` or `external`",
        ),
        ("stock.level", "null", "`stock.level` is a query: queries are asked, not sent"),
    ];
    for (name, payload, expected) in cases {
        let error = bus
            .handle_external(name, payload, MessageContext::root())
            .await
            .expect_err(name);
        assert_eq!(error.to_string(), expected);
        assert!(!error.is_retryable(), "{error}");
    }
}

#[tokio::test]
async fn a_closed_bus_refuses_inbound_messages_as_retryable() {
    let (bus, seen) = bus();
    bus.close();
    for (name, payload) in [
        ("change_batch_quantity", r#"{"batchref": "b1", "qty": 1}"#),
        ("restocked", r#"{"sku": "LAMP"}"#),
    ] {
        let error = bus
            .handle_external(name, payload, MessageContext::root())
            .await
            .expect_err("closed");
        assert!(matches!(error, InboundError::Closed(_)), "{error}");
        assert!(error.is_retryable());
    }
    assert!(seen.lock().unwrap().is_empty());
}

#[test]
fn handling_an_inbound_message_is_a_send_future_for_a_consumer_task() {
    fn assert_send<T: Send>(_: &T) {}
    let (bus, _) = bus();
    let future = bus.handle_external("restocked", "{}", MessageContext::root());
    assert_send(&future);
}
