//! Inbound messages: a name and a JSON payload arriving on a stream, read
//! into the registered type and dispatched when the type is declared for
//! that stream; every way it can go wrong is a typed error.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use arch_events::{
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

/// An internal event: it can be stored as JSON (`serde`), but it is
/// declared for no stream.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Event)]
#[event(name = "stock.deallocated", serde)]
struct Deallocated {
    orderid: String,
}

#[handler]
fn note_deallocation(event: &Deallocated, seen: &Seen) -> Result<(), Infallible> {
    seen.lock()
        .unwrap()
        .push(format!("deallocated {}", event.orderid));
    Ok(())
}

/// An internal command that can be read from JSON: still not for outside.
#[derive(Debug, serde::Deserialize, Command)]
#[command(name = "stock.recount", serde)]
struct Recount;

#[handler]
fn recount(_: Recount, seen: &Seen) -> Result<(), Infallible> {
    seen.lock().unwrap().push("recount".into());
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
                .handler::<note_deallocation>()
                .handler::<recount>()
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
        "change_batch_quantity",
        r#"{"batchref": "b1", "qty": 25}"#,
        MessageContext::continuing(flow.correlation_id(), Some(flow.message_id())),
    )
    .await
    .unwrap();
    // Its own name works too, on its stream.
    bus.handle_external(
        "change_batch_quantity",
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
    bus.handle_external(
        "restocked",
        "restocked",
        r#"{"sku": "LAMP"}"#,
        MessageContext::root(),
    )
    .await
    .unwrap();
    assert_eq!(*seen.lock().unwrap(), ["restocked LAMP"]);
}

#[tokio::test]
async fn every_bad_message_is_a_typed_error_and_none_is_retryable() {
    let (bus, seen) = bus();
    let on_cbq = "change_batch_quantity";
    let cases: [(&str, &str, &str, &str); 9] = [
        (on_cbq, "nobody.knows", "{}", "no message is named `nobody.knows` in this bus"),
        (
            on_cbq,
            "change_batch_quantity",
            "not json",
            "malformed `stock.change_quantity`: expected ident at line 1 column 2",
        ),
        (
            on_cbq,
            "change_batch_quantity",
            r#"{"batchref": "b1", "qty": -3}"#,
            "malformed `stock.change_quantity`: invalid value: integer `-3`, expected u32 at line 1 column 28",
        ),
        (
            on_cbq,
            "change_batch_quantity",
            r#"{"batchref": "missing", "qty": 3}"#,
            "`stock.change_quantity` failed: no batch missing",
        ),
        (
            on_cbq,
            "stock.internal_only",
            "null",
            "the command `stock.internal_only` is internal (declared for no stream: no \
             `external = \"...\"`): not accepted on stream `change_batch_quantity`",
        ),
        (
            on_cbq,
            "stock.recount",
            "null",
            "the command `stock.recount` is internal (declared for no stream: no \
             `external = \"...\"`): not accepted on stream `change_batch_quantity`",
        ),
        (
            on_cbq,
            "stock.deallocated",
            r#"{"orderid": "o1"}"#,
            "the event `stock.deallocated` is internal (declared for no stream: no \
             `external = \"...\"`): not accepted on stream `change_batch_quantity`",
        ),
        (
            on_cbq,
            "restocked",
            r#"{"sku": "LAMP"}"#,
            "the event `stock.restocked` is declared for stream `restocked`: \
             not accepted on stream `change_batch_quantity`",
        ),
        (on_cbq, "stock.level", "null", "`stock.level` is a query: queries are asked, not sent"),
    ];
    for (stream, name, payload, expected) in cases {
        let error = bus
            .handle_external(stream, name, payload, MessageContext::root())
            .await
            .expect_err(name);
        assert_eq!(error.to_string(), expected);
        assert!(!error.is_retryable(), "{error}");
    }
    assert!(seen.lock().unwrap().is_empty(), "no handler ran");
}

#[tokio::test]
async fn an_internal_event_on_a_stream_is_refused_before_its_payload_is_read() {
    let (bus, seen) = bus();
    for payload in [r#"{"orderid": "o1"}"#, "not even json"] {
        let error = bus
            .handle_external(
                "change_batch_quantity",
                "stock.deallocated",
                payload,
                MessageContext::root(),
            )
            .await
            .unwrap_err();
        let InboundError::NotDeclared {
            name,
            kind,
            stream,
            declared,
        } = error
        else {
            panic!("refused as not declared, unread: {error}")
        };
        assert_eq!(
            (name, kind, stream.as_str(), declared),
            (
                "stock.deallocated",
                arch_events::MessageKind::Event,
                "change_batch_quantity",
                None
            )
        );
    }
    assert!(seen.lock().unwrap().is_empty(), "its handler never ran");
}

#[tokio::test]
async fn a_message_declared_for_another_stream_is_refused_by_either_of_its_names() {
    let (bus, seen) = bus();
    for (stream, name, payload, declared) in [
        (
            "change_batch_quantity",
            "restocked",
            r#"{"sku": "LAMP"}"#,
            "restocked",
        ),
        (
            "change_batch_quantity",
            "stock.restocked",
            r#"{"sku": "LAMP"}"#,
            "restocked",
        ),
        (
            "restocked",
            "change_batch_quantity",
            r#"{"batchref": "b1", "qty": 1}"#,
            "change_batch_quantity",
        ),
        (
            "restocked",
            "stock.change_quantity",
            r#"{"batchref": "b1", "qty": 1}"#,
            "change_batch_quantity",
        ),
    ] {
        let error = bus
            .handle_external(stream, name, payload, MessageContext::root())
            .await
            .expect_err(name);
        assert!(
            matches!(&error, InboundError::NotDeclared { stream: on, declared: Some(d), .. } if on == stream && *d == declared),
            "{error}"
        );
        assert!(
            error
                .to_string()
                .contains(&format!("declared for stream `{declared}`")),
            "{error}"
        );
    }
    assert!(seen.lock().unwrap().is_empty(), "no handler ran");
    // Each on its own stream is dispatched.
    bus.handle_external(
        "restocked",
        "restocked",
        r#"{"sku": "LAMP"}"#,
        MessageContext::root(),
    )
    .await
    .unwrap();
    assert_eq!(*seen.lock().unwrap(), ["restocked LAMP"]);
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
            .handle_external(name, name, payload, MessageContext::root())
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
    let future = bus.handle_external("restocked", "restocked", "{}", MessageContext::root());
    assert_send(&future);
}
