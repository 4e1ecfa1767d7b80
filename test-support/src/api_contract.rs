//! The HTTP contract: the real binary, started on a free port over a fresh
//! database, exercised over HTTP; written once and run on each database
//! (SQLite in `example-app/tests/api.rs`, PostgreSQL in the `postgres`
//! target of the tests package); [`api_contract_tests!`](crate::api_contract_tests)
//! expands to every test below.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use arch_events::Scope;
use example_app::adapters::database::Database;
use example_app::views::AllocationRow;
use example_app::Adapters;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::server::{add_batch, get, message, on_database, post, post_raw, Server};

/// Expands to one `#[tokio::test]` per contract test, each starting
/// `$binary` (a `&str` expression) over a fresh database from `$fresh` (an
/// `async fn` whose value has a `url` field, kept for the test's length).
#[macro_export]
macro_rules! api_contract_tests {
    ($binary:expr, $fresh:path) => {
        $crate::api_contract_tests!(@each $binary, $fresh;
            the_happy_path_allocates_and_reallocates,
            domain_errors_have_their_status_codes,
            bad_input_gets_a_4xx_with_a_message_naming_the_problem,
            concurrent_allocations_never_oversell,
            ctrl_c_shuts_down_cleanly_and_data_survives_a_restart,
            every_event_of_a_command_whose_client_hung_up_is_handled_once,
            every_event_committed_before_a_kill_9_is_handled_once_after_the_restart,
            idle_and_half_sent_connections_cannot_starve_the_server,
            beyond_the_connection_cap_a_connection_waits_until_one_closes,
            a_client_that_stops_reading_is_cut_off,
            commands_beyond_the_limit_are_told_to_retry,
            every_error_answer_is_json_with_a_message,
            a_server_error_names_no_internal_detail_only_an_error_id,
            operations_routes_are_off_unless_an_admin_token_is_configured,
        );
    };
    (@each $binary:expr, $fresh:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let database = $fresh().await;
                $crate::api_contract::$name(&$binary, &database.url).await
            }
        )*
    };
}

pub async fn the_happy_path_allocates_and_reallocates(binary: &str, database_url: &str) {
    let server = Server::start_with(binary, database_url, &[]);
    add_batch(&server, "b-early", "RETRO-CLOCK", 100, Some("2026-12-01")).await;
    add_batch(&server, "b-stock", "RETRO-CLOCK", 10, None).await;
    add_batch(&server, "b-late", "RETRO-CLOCK", 100, Some("2026-12-31")).await;

    let (status, body) = post(
        &server,
        "/allocate",
        json!({"orderid": "o1", "sku": "RETRO-CLOCK", "qty": 3}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body, json!({"batchref": "b-stock"}));

    let (status, body) = get(&server, "/allocations/o1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!([{"sku": "RETRO-CLOCK", "qty": 3, "batchref": "b-stock"}])
    );

    // Shrinking the warehouse batch moves the order to the earliest shipment.
    let (status, body) = post(
        &server,
        "/change_batch_quantity",
        json!({"ref": "b-stock", "qty": 2}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (status, body) = get(&server, "/allocations/o1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!([{"sku": "RETRO-CLOCK", "qty": 3, "batchref": "b-early"}])
    );
}

pub async fn domain_errors_have_their_status_codes(binary: &str, database_url: &str) {
    let server = Server::start_with(binary, database_url, &[]);
    add_batch(&server, "b1", "LAMP", 5, None).await;

    let (status, body) = post(
        &server,
        "/allocate",
        json!({"orderid": "o1", "sku": "UNKNOWN-SKU", "qty": 1}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body, json!({"message": "Invalid sku UNKNOWN-SKU"}));

    let (status, body) = get(&server, "/allocations/nobody").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(message(&body), "no allocations for order nobody");

    let (status, body) = post(
        &server,
        "/add_batch",
        json!({"ref": "b1", "sku": "SOFA", "qty": 1, "eta": null}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(message(&body), "Batch b1 already exists");

    let (status, body) = post(
        &server,
        "/change_batch_quantity",
        json!({"ref": "nope", "qty": 1}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(message(&body), "Invalid batch reference nope");

    // Out of stock is accepted, with no batch; the notification goes to the log.
    let (status, body) = post(
        &server,
        "/allocate",
        json!({"orderid": "o2", "sku": "LAMP", "qty": 6}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body, json!({"batchref": null}));
}

pub async fn bad_input_gets_a_4xx_with_a_message_naming_the_problem(
    binary: &str,
    database_url: &str,
) {
    let server = Server::start_with(binary, database_url, &[]);
    let json_type = "application/json";
    let cases: Vec<(&str, &str, &str, &str)> = vec![
        (
            "/allocate",
            json_type,
            r#"{"orderid": "o1", "sku""#,
            "EOF while parsing",
        ),
        (
            "/allocate",
            json_type,
            "not json at all",
            "Failed to parse the request body as JSON",
        ),
        (
            "/allocate",
            json_type,
            r#"{"orderid": "o1", "qty": 1}"#,
            "missing field `sku`",
        ),
        (
            "/allocate",
            json_type,
            r#"{"orderid": "o1", "sku": "X", "qty": "ten"}"#,
            "invalid type: string \"ten\"",
        ),
        (
            "/allocate",
            json_type,
            r#"{"orderid": "o1", "sku": "X", "qty": 1.5}"#,
            "invalid type: floating point",
        ),
        (
            "/allocate",
            json_type,
            r#"{"orderid": "o1", "sku": "X", "qty": 1, "colour": "red"}"#,
            "unknown field `colour`",
        ),
        (
            "/allocate",
            json_type,
            r#"{"orderid": "o1", "sku": "X", "qty": 0}"#,
            "qty must be a whole number from 1",
        ),
        (
            "/allocate",
            json_type,
            r#"{"orderid": "o1", "sku": "X", "qty": -4}"#,
            "got -4",
        ),
        (
            "/allocate",
            json_type,
            r#"{"orderid": "", "sku": "X", "qty": 1}"#,
            "orderid must not be empty",
        ),
        (
            "/allocate",
            "text/plain",
            r#"{"orderid": "o1", "sku": "X", "qty": 1}"#,
            "Content-Type",
        ),
        (
            "/add_batch",
            json_type,
            r#"{"ref": "b", "sku": "X", "qty": 1, "eta": "2026-13-45"}"#,
            "eta must be a date YYYY-MM-DD",
        ),
        (
            "/add_batch",
            json_type,
            r#"{"ref": "b", "sku": "X", "qty": 1, "eta": 20261201}"#,
            "invalid type: integer",
        ),
        (
            "/add_batch",
            json_type,
            r#"{"ref": "b", "sku": "X", "qty": 99999999999, "eta": null}"#,
            "got 99999999999",
        ),
        (
            "/change_batch_quantity",
            json_type,
            r#"{"ref": "b", "qty": -1}"#,
            "got -1",
        ),
        (
            "/change_batch_quantity",
            json_type,
            r#"[1, 2]"#,
            "expected a string",
        ),
    ];
    for (path, content_type, body, expected) in cases {
        let (status, answer) = post_raw(&server, path, content_type, body).await;
        assert!(status.is_client_error(), "{path} {body}: {status} {answer}");
        assert!(
            message(&answer).contains(expected),
            "{path} {body}: {answer} lacks {expected:?}"
        );
    }

    let (status, body) = get(&server, "/no/such/route").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(message(&body), "no such route: /no/such/route");
    let (status, body) = get(&server, "/allocate").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(message(&body), "GET is not allowed on /allocate");
}

pub async fn concurrent_allocations_never_oversell(binary: &str, database_url: &str) {
    let server = Server::start_with(binary, database_url, &[]);
    add_batch(&server, "b1", "LIMITED-VASE", 10, None).await;
    let client = reqwest::Client::new();
    let mut requests = Vec::new();
    for n in 0..30 {
        let client = client.clone();
        let url = server.url("/allocate");
        requests.push(tokio::spawn(async move {
            let response = client
                .post(url)
                .json(&json!({"orderid": format!("order-{n}"), "sku": "LIMITED-VASE", "qty": 1}))
                .send()
                .await
                .expect("sent");
            let status = response.status();
            (status, response.json::<Value>().await.expect("json"))
        }));
    }
    let mut allocated = 0;
    for request in requests {
        let (status, body) = request.await.expect("task");
        match status {
            StatusCode::ACCEPTED if body["batchref"] == "b1" => allocated += 1,
            StatusCode::ACCEPTED => assert_eq!(body["batchref"], Value::Null),
            StatusCode::CONFLICT => assert!(message(&body).contains("retry"), "{body}"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(
        allocated <= 10,
        "oversold: {allocated} allocations of 10 units"
    );
    // Whatever lost a race for good can be asked again; the stock ends used up, never more.
    for n in 0..30 {
        let (status, _) = post(
            &server,
            "/allocate",
            json!({"orderid": format!("order-{n}"), "sku": "LIMITED-VASE", "qty": 1}),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    let mut held = 0;
    for n in 0..30 {
        let (status, _) = get(&server, &format!("/allocations/order-{n}")).await;
        if status == StatusCode::OK {
            held += 1;
        }
    }
    assert_eq!(held, 10, "exactly the stock is allocated");
}

pub async fn ctrl_c_shuts_down_cleanly_and_data_survives_a_restart(
    binary: &str,
    database_url: &str,
) {
    let server = Server::start_with(binary, database_url, &[]);
    add_batch(&server, "b1", "DURABLE-DESK", 10, None).await;
    let (status, _) = post(
        &server,
        "/allocate",
        json!({"orderid": "o1", "sku": "DURABLE-DESK", "qty": 2}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let exit = server.interrupt();
    assert!(exit.success(), "graceful shutdown exits 0, got {exit}");

    let server = Server::start_with(binary, database_url, &[]);
    let (status, body) = get(&server, "/allocations/o1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!([{"sku": "DURABLE-DESK", "qty": 2, "batchref": "b1"}])
    );
    let (status, body) = post(
        &server,
        "/allocate",
        json!({"orderid": "o2", "sku": "DURABLE-DESK", "qty": 8}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(
        body,
        json!({"batchref": "b1"}),
        "the first allocation's stock is still taken"
    );
    let (status, body) = post(
        &server,
        "/allocate",
        json!({"orderid": "o3", "sku": "DURABLE-DESK", "qty": 1}),
    )
    .await;
    assert_eq!(
        (status, body),
        (StatusCode::ACCEPTED, json!({"batchref": null}))
    );
}

// ---------------------------------------------------------------------------
// Nothing committed is lost: a client that hangs up, a kill -9
// ---------------------------------------------------------------------------

/// How many order lines the reallocation scenario moves.
const LINES: usize = 300;

/// `LINES` lines of `LAMP` allocated to batch `C1` (which they fill), with
/// room for all of them in `C2`.
async fn lines_in_c1(server: &Server) {
    add_batch(server, "C1", "LAMP", LINES as u32, None).await;
    add_batch(server, "C2", "LAMP", 10 * LINES as u32, None).await;
    for n in 0..LINES {
        let line = json!({"orderid": format!("order-{n}"), "sku": "LAMP", "qty": 1});
        let (status, body) = post(server, "/allocate", line).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(body["batchref"], "C1", "{body}");
    }
}

/// The write model of `LAMP` as the database holds it: each order line's
/// batches (more than one would be a line allocated twice), and `C1`'s
/// quantity.
async fn write_model(database: &Database) -> (BTreeMap<String, Vec<String>>, u32) {
    let (lines, quantities) = lines_of(database, "LAMP").await;
    let mut by_order: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (orderid, _, batchref) in lines {
        by_order.entry(orderid).or_default().push(batchref);
    }
    (by_order, quantities["C1"])
}

/// Every line of the product `sku` as the write model holds it
/// (`(orderid, qty, batchref)`, sorted), and each batch's quantity: each
/// batch loaded whole by its reference.
pub async fn lines_of(
    database: &Database,
    sku: &str,
) -> (Vec<(String, u32, String)>, BTreeMap<String, u32>) {
    let batches = crate::write_model::batches_of(database, sku).await;
    assert!(!batches.is_empty(), "{sku} exists");
    let mut lines = Vec::new();
    let mut quantities = BTreeMap::new();
    for batch in batches {
        quantities.insert(batch.reference.clone(), batch.purchased_quantity());
        for line in batch.allocations() {
            lines.push((line.orderid.clone(), line.qty, batch.reference.clone()));
        }
    }
    lines.sort();
    (lines, quantities)
}

/// Waits (at most 60 s) until every line is in exactly one batch and the
/// read model says the same of every order, then checks that nothing
/// happened twice: no line in two batches, no order with two view rows.
async fn every_line_in_a_batch_and_the_view_agrees(database: &Database) {
    let view = (Adapters::for_database(database).views)(&mut Scope::new());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (lines, _) = write_model(database).await;
        let mut agrees = lines.len() == LINES;
        let mut disagreements = Vec::new();
        for n in 0..LINES {
            let orderid = format!("order-{n}");
            let rows = view.for_order(&orderid).await.expect("read");
            let expected: Vec<AllocationRow> = lines
                .get(&orderid)
                .into_iter()
                .flatten()
                .map(|batchref| AllocationRow {
                    sku: "LAMP".into(),
                    qty: 1,
                    batchref: batchref.clone(),
                })
                .collect();
            if rows != expected {
                agrees = false;
                disagreements.push((orderid, rows, expected));
            }
        }
        if agrees {
            break;
        }
        disagreements.truncate(3);
        assert!(
            Instant::now() < deadline,
            "after 60 s, {} of {LINES} lines are in a batch; the view disagrees on {disagreements:?}",
            lines.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (lines, c1) = write_model(database).await;
    assert_eq!(c1, 1);
    let twice: Vec<_> = lines
        .iter()
        .filter(|(_, batches)| batches.len() > 1)
        .collect();
    assert!(twice.is_empty(), "lines allocated twice: {twice:?}");
    let in_c2 = lines.values().filter(|b| b[0] == "C2").count();
    assert_eq!(in_c2, LINES - 1, "all but one moved to C2");
}

pub async fn every_event_of_a_command_whose_client_hung_up_is_handled_once(
    binary: &str,
    database_url: &str,
) {
    let server = Server::start_with(binary, database_url, &[]);
    lines_in_c1(&server).await;
    let database = Database::connect(database_url).await.expect("opens");

    // The client hangs up 0.2 s in, while the command's 299 `Deallocated`
    // events are being handled.
    let hung_up = reqwest::Client::new()
        .post(server.url("/change_batch_quantity"))
        .timeout(Duration::from_millis(200))
        .json(&json!({"ref": "C1", "qty": 1}))
        .send()
        .await;
    assert!(
        hung_up.as_ref().is_err_and(reqwest::Error::is_timeout),
        "the client was to hang up before the answer: {hung_up:?}"
    );
    let (lines, c1) = write_model(&database).await;
    assert_eq!(c1, 1, "the command committed before the client hung up");
    let moved = lines
        .values()
        .filter(|b| b.contains(&"C2".to_owned()))
        .count();
    assert!(
        moved < LINES - 1,
        "the hang-up came mid-cascade ({moved} lines moved so far)"
    );

    // The rest of the cascade goes on without the client.
    every_line_in_a_batch_and_the_view_agrees(&database).await;
    database.close().await;
}

pub async fn every_event_committed_before_a_kill_9_is_handled_once_after_the_restart(
    binary: &str,
    database_url: &str,
) {
    // Processes taken for dead one second after they went silent.
    let env = [("NODE_TIMEOUT_MS", "1000")];
    let server = Server::start_with(binary, database_url, &env);
    lines_in_c1(&server).await;
    let database = Database::connect(database_url).await.expect("opens");

    let change = reqwest::Client::new()
        .post(server.url("/change_batch_quantity"))
        .json(&json!({"ref": "C1", "qty": 1}))
        .send();
    let change = tokio::spawn(change);
    // kill -9 the moment the command's commit is visible: its events are
    // stored, and their handlers have barely begun.
    let deadline = Instant::now() + Duration::from_secs(30);
    while write_model(&database).await.1 != 1 {
        assert!(Instant::now() < deadline, "the command never committed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill_hard();
    let _ = change.await;
    let (lines, _) = write_model(&database).await;
    assert!(
        lines.len() < LINES,
        "the kill came mid-cascade ({} of {LINES} lines in a batch)",
        lines.len()
    );

    // The restarted service delivers what was left, to the handlers that
    // had not handled it.
    let restarted = Server::start_with(binary, database_url, &env);
    every_line_in_a_batch_and_the_view_agrees(&database).await;
    drop(restarted);
    database.close().await;
}

// ---------------------------------------------------------------------------
// Under attack: idle and half-sent connections, the connection cap, error
// answers, the operations routes
// ---------------------------------------------------------------------------

/// A raw connection to `addr`, whose reads give up after 60 s (a guard
/// against a test that would hang; no assertion depends on it).
fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("a read timeout");
    stream
}

/// What the server sends until it closes the connection; an error if it
/// resets it, or if it is still open after the read guard.
fn until_closed(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut received = Vec::new();
    stream.read_to_end(&mut received)?;
    Ok(received)
}

/// Reads one response: its status and its body (by its `Content-Length`).
fn response(stream: &mut TcpStream) -> (u16, Value) {
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut chunk).expect("a response");
        assert!(n > 0, "closed before a response");
        received.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&received[..head_end]).to_ascii_lowercase();
    let status = head[9..12].parse().expect("a status");
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .map_or(0, |value| value.trim().parse().expect("a length"));
    while received.len() < head_end + length {
        let n = stream.read(&mut chunk).expect("the body");
        assert!(n > 0, "closed in the body");
        received.extend_from_slice(&chunk[..n]);
    }
    let body = &received[head_end..head_end + length];
    (status, serde_json::from_slice(body).expect("a JSON body"))
}

/// A complete request, answered 404 in JSON.
const GET_NOBODY: &[u8] = b"GET /allocations/nobody HTTP/1.1\r\nHost: test\r\n\r\n";

pub async fn idle_and_half_sent_connections_cannot_starve_the_server(
    binary: &str,
    database_url: &str,
) {
    let env = [
        ("HEADER_TIMEOUT_MS", "2000"),
        ("REQUEST_TIMEOUT_MS", "3000"),
    ];
    let server = Server::start_with(binary, database_url, &env);
    let addr = server.addr();
    let start = Instant::now();
    // 400 connections: 100 that send nothing, 100 half a head, 100 half a
    // body, 100 that had an answer and stay open (kept alive).
    let attackers = tokio::task::spawn_blocking(move || {
        (0..400)
            .map(|n| {
                let mut stream = connect(addr);
                match n % 4 {
                    0 => {}
                    1 => stream
                        .write_all(b"GET /allocations/o1 HTTP/1.1\r\nHost: test\r\nX-Slow: ")
                        .expect("sent"),
                    2 => stream
                        .write_all(
                            b"POST /allocate HTTP/1.1\r\nHost: test\r\n\
                              Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n\
                              {\"orderid\": ",
                        )
                        .expect("sent"),
                    _ => {
                        stream.write_all(GET_NOBODY).expect("sent");
                        assert_eq!(response(&mut stream).0, 404);
                    }
                }
                (n % 4, stream)
            })
            .collect::<Vec<_>>()
    })
    .await
    .expect("opened");
    let opened = start.elapsed();

    // With all of them open, a client is served.
    let asked = Instant::now();
    let (status, body) = get(&server, "/allocations/nobody").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let served = asked.elapsed();

    // Then the server closes every one of them: those that sent no
    // complete head after the header timeout, those with half a body with
    // a JSON 408 after the request timeout.
    let closed = tokio::task::spawn_blocking(move || {
        for (kind, mut stream) in attackers {
            let received = until_closed(&mut stream)
                .unwrap_or_else(|error| panic!("connection of kind {kind} not closed: {error}"));
            let text = String::from_utf8_lossy(&received);
            if kind == 2 {
                assert!(text.starts_with("HTTP/1.1 408"), "{text}");
                assert!(text.contains("application/json"), "{text}");
                assert!(text.contains("\"message\""), "{text}");
            } else {
                assert!(received.is_empty(), "kind {kind} got {text}");
            }
        }
    });
    closed.await.expect("all closed");
    eprintln!(
        "400 connections opened in {opened:?}; a request with them open served in {served:?}; \
         all closed by the server {:?} after the first opened",
        start.elapsed()
    );
}

pub async fn beyond_the_connection_cap_a_connection_waits_until_one_closes(
    binary: &str,
    database_url: &str,
) {
    let env = [("MAX_CONNECTIONS", "50"), ("HEADER_TIMEOUT_MS", "60000")];
    let server = Server::start_with(binary, database_url, &env);
    let addr = server.addr();
    tokio::task::spawn_blocking(move || {
        // 50 connections, each answered once, then kept open.
        let mut held: Vec<TcpStream> = (0..50)
            .map(|_| {
                let mut stream = connect(addr);
                stream.write_all(GET_NOBODY).expect("sent");
                assert_eq!(response(&mut stream).0, 404);
                stream
            })
            .collect();
        // The 51st connects (the kernel's listen backlog takes it) but is
        // not served while the 50 stay open...
        let mut waiting = connect(addr);
        waiting.write_all(GET_NOBODY).expect("sent");
        waiting
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let early = waiting.read(&mut [0u8; 1]);
        assert!(
            early.as_ref().is_err_and(|e| matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            )),
            "the 51st connection was answered while 50 were open: {early:?}"
        );
        // ... and is served as soon as one of them closes.
        drop(held.pop());
        waiting
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let (status, body) = response(&mut waiting);
        assert_eq!(status, 404, "{body}");
        assert!(body["message"].is_string(), "{body}");
        drop(held);
    })
    .await
    .expect("the cap holds");
}

/// Clients that ask for a large answer and stop reading it cannot hold
/// their connections: once a write makes no progress for the write
/// timeout, the server closes them, and the connection cap frees up.
pub async fn a_client_that_stops_reading_is_cut_off(binary: &str, database_url: &str) {
    let env = [
        ("MAX_CONNECTIONS", "2"),
        ("WRITE_TIMEOUT_MS", "500"),
        // Only the write timeout can free a slot.
        ("HEADER_TIMEOUT_MS", "600000"),
    ];
    let server = Server::start_with(binary, database_url, &env);
    // An order of 60,000 lines in the read model, each with a 200-byte
    // sku and batch reference: an answer of about 26 MB, more than the
    // kernel buffers hold for a client that reads nothing (written into the
    // view directly: that many requests would take minutes).
    let long = "S".repeat(200);
    on_database(
        database_url,
        &format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 60000) \
             INSERT INTO allocations_view (orderid, sku, qty, batchref, version) \
             SELECT 'big', '{long}', i, '{long}', 1 FROM n"
        ),
    )
    .await;
    let addr = server.addr();
    let slow: Vec<tokio::net::TcpStream> = {
        let mut slow = Vec::new();
        for _ in 0..2 {
            let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
            socket.set_recv_buffer_size(2048).expect("a small buffer");
            let mut stream = socket.connect(addr).await.expect("connects");
            tokio::io::AsyncWriteExt::write_all(
                &mut stream,
                b"GET /allocations/big HTTP/1.1\r\nHost: test\r\n\r\n",
            )
            .await
            .expect("sent");
            slow.push(stream);
        }
        slow
    };
    // Both slots are taken by clients that read nothing; a normal request
    // is still served, once the write timeout has cut them off (the guard
    // only keeps a failing test from waiting for the header timeout).
    let (status, body) =
        tokio::time::timeout(Duration::from_secs(60), get(&server, "/allocations/nobody"))
            .await
            .expect("served while the slow readers hold every slot");
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // That slot was freed by cutting a reader off: at least one of them
    // ends short of the answer. (The other may still have been waiting for
    // its answer, which reading it now would then take whole: stop there.)
    let mut cut_short = 0;
    for mut stream in slow {
        let mut received = 0usize;
        let mut chunk = vec![0u8; 65536];
        while received < 20_000_000 {
            match tokio::io::AsyncReadExt::read(&mut stream, &mut chunk).await {
                Ok(0) | Err(_) => {
                    cut_short += 1;
                    break;
                }
                Ok(n) => received += n,
            }
        }
    }
    assert!(cut_short >= 1, "no slow reader was cut off");
}

/// Commands beyond `MAX_COMMANDS` in progress are told to retry (503,
/// `Retry-After`), so that clients sending and dropping requests cannot
/// pile up work: with the database held by another session, one command
/// takes the only slot and waits; the other is answered at once.
pub async fn commands_beyond_the_limit_are_told_to_retry(binary: &str, database_url: &str) {
    use sqlx::Connection as _;
    let server = Server::start_with(binary, database_url, &[("MAX_COMMANDS", "1")]);
    add_batch(&server, "b1", "LAMP", 10, None).await;
    // Hold the database from another session: the next command waits.
    let mut held: Box<dyn std::any::Any> = if database_url.starts_with("sqlite:") {
        let mut connection = sqlx::SqliteConnection::connect(database_url)
            .await
            .expect("opens");
        sqlx::query("BEGIN EXCLUSIVE")
            .execute(&mut connection)
            .await
            .expect("holds");
        Box::new(connection)
    } else {
        let mut connection = sqlx::PgConnection::connect(database_url)
            .await
            .expect("opens");
        sqlx::query("BEGIN")
            .execute(&mut connection)
            .await
            .expect("begins");
        sqlx::query("LOCK TABLE products IN ACCESS EXCLUSIVE MODE")
            .execute(&mut connection)
            .await
            .expect("holds");
        Box::new(connection)
    };
    let allocate = |orderid: &'static str| {
        let url = server.url("/allocate");
        tokio::spawn(async move {
            let response = reqwest::Client::new()
                .post(url)
                .json(&json!({"orderid": orderid, "sku": "LAMP", "qty": 1}))
                .send()
                .await
                .expect("sent");
            let retry_after = response.headers().get("retry-after").cloned();
            let status = response.status();
            (
                status,
                retry_after,
                response.json::<Value>().await.expect("JSON"),
            )
        })
    };
    let (mut first, mut second) = (allocate("o1"), allocate("o2"));
    // One of them waits for the database; the other is answered first.
    let (answered, waiting) = tokio::select! {
        done = &mut first => (done, second),
        done = &mut second => (done, first),
    };
    let (status, retry_after, body) = answered.expect("a request ends");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(retry_after.as_ref().map(|v| v.as_bytes()), Some(&b"1"[..]));
    assert!(message(&body).contains("too many commands"), "{body}");
    drop(std::mem::replace(&mut held, Box::new(())));
    let (status, _, body) = waiting.await.expect("a request ends");
    assert!(
        status == StatusCode::ACCEPTED || status == StatusCode::CONFLICT,
        "the waiting command ends once the database is free: {status} {body}"
    );
    let (status, body) = post(
        &server,
        "/allocate",
        json!({"orderid": "o3", "sku": "LAMP", "qty": 1}),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "its slot is free again: {body}"
    );
}

/// `(status, content type, body)` of an answer (a body that is not JSON
/// as `{"not json": text}`).
async fn answer(response: reqwest::Response) -> (StatusCode, String, Value) {
    let status = response.status();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = response.bytes().await.expect("a body");
    let body = serde_json::from_slice(&body)
        .unwrap_or_else(|_| json!({ "not json": String::from_utf8_lossy(&body) }));
    (status, content_type, body)
}

pub async fn every_error_answer_is_json_with_a_message(binary: &str, database_url: &str) {
    let env = [
        ("MAX_BODY_BYTES", "1024"),
        ("REQUEST_TIMEOUT_MS", "1000"),
        ("ADMIN_TOKEN", crate::server::ADMIN_TOKEN),
    ];
    let server = Server::start_with(binary, database_url, &env);
    let client = reqwest::Client::new();
    let long_path = format!("/allocations/{}", "a".repeat(9 * 1024));
    let many_headers = (0..150)
        .map(|n| {
            (
                reqwest::header::HeaderName::try_from(format!("x-header-{n}")).unwrap(),
                reqwest::header::HeaderValue::from_static("1"),
            )
        })
        .collect::<reqwest::header::HeaderMap>();
    let big_body = format!(
        r#"{{"orderid": "{}", "sku": "X", "qty": 1}}"#,
        "o".repeat(4096)
    );
    let cases = [
        (
            client.get(server.url("/allocations/%FF")),
            StatusCode::BAD_REQUEST,
        ),
        (client.get(server.url(&long_path)), StatusCode::URI_TOO_LONG),
        (
            client
                .get(server.url("/allocations/o1"))
                .header("x-big", "b".repeat(17 * 1024)),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        ),
        (
            client
                .get(server.url("/allocations/o1"))
                .headers(many_headers),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        ),
        (
            client
                .post(server.url("/allocate"))
                .header("content-type", "application/json")
                .body(big_body),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            client.get(server.url("/no/such/route")),
            StatusCode::NOT_FOUND,
        ),
        (
            client.get(server.url("/allocate")),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            client.get(server.url("/dead_letters")),
            StatusCode::UNAUTHORIZED,
        ),
    ];
    for (request, expected) in cases {
        let request = request.build().expect("a request");
        let what = format!("{} {:.60}", request.method(), request.url().path());
        let (status, content_type, body) =
            answer(client.execute(request).await.expect("sent")).await;
        assert_eq!(status, expected, "{what}: {body}");
        assert_eq!(content_type, "application/json", "{what}: {body}");
        assert!(body["message"].is_string(), "{what}: {body}");
    }

    // A message quotes at most 300 bytes of what the client sent.
    let long_route = format!("/{}", "r".repeat(7000));
    let long_type = format!(
        r#"{{"orderid": "o1", "sku": "X", "qty": "{}"}}"#,
        "9".repeat(900)
    );
    let quoting = [
        client.get(server.url(&long_route)),
        client.put(server.url(&format!("/allocations/{}", "o".repeat(2000)))),
        client
            .post(server.url("/allocate"))
            .header("content-type", "application/json")
            .body(long_type),
    ];
    for request in quoting {
        let (status, _, body) = answer(request.send().await.expect("sent")).await;
        assert!(status.is_client_error(), "{status} {body}");
        let message = message(&body);
        assert!(
            message.len() < 340,
            "{} bytes: {message:.80}",
            message.len()
        );
        assert!(message.contains("(cut from "), "{message:.80}");
    }

    // A body refused unread (too large, wrong type, no such route): the
    // answer says the connection closes, so a client that keeps its
    // connections sends its next request on a new one, which is served.
    let unread = "x".repeat(60_000);
    for (path, content_type, expected) in [
        (
            "/allocate",
            "text/plain",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "/allocate",
            "application/json",
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        ("/no/such/route", "application/json", StatusCode::NOT_FOUND),
    ] {
        let response = client
            .post(server.url(path))
            .header("content-type", content_type)
            .body(unread.clone())
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), expected, "{path} {content_type}");
        assert_eq!(
            response.headers().get("connection").map(|v| v.as_bytes()),
            Some(&b"close"[..]),
            "{path} {content_type}"
        );
        let (status, _) = get(&server, "/allocations/nobody").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "the next request is served");
        let again = client
            .get(server.url("/allocations/nobody"))
            .send()
            .await
            .expect("the same client's next request is served");
        assert_eq!(again.status(), StatusCode::NOT_FOUND);
    }
    // A body read to its end keeps the connection.
    let read = client
        .post(server.url("/allocate"))
        .header("content-type", "application/json")
        .body(r#"{"orderid": "o1", "sku": "NOPE", "qty": 1}"#)
        .send()
        .await
        .expect("sent");
    assert_eq!(read.status(), StatusCode::BAD_REQUEST);
    assert!(read.headers().get("connection").is_none());

    // Half a body: a 408 once the request timeout is up, in JSON too.
    let addr = server.addr();
    let (status, body) = tokio::task::spawn_blocking(move || {
        let mut stream = connect(addr);
        stream
            .write_all(
                b"POST /allocate HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
                  Content-Length: 100\r\n\r\n{",
            )
            .expect("sent");
        response(&mut stream)
    })
    .await
    .expect("answered");
    assert_eq!(status, 408, "{body}");
    assert!(body["message"].is_string(), "{body}");
}

pub async fn a_server_error_names_no_internal_detail_only_an_error_id(
    binary: &str,
    database_url: &str,
) {
    let server = Server::start_with(binary, database_url, &[]);
    add_batch(&server, "b1", "LAMP", 5, None).await;
    // The read model's table goes away: its query fails in the database.
    on_database(
        database_url,
        "ALTER TABLE allocations_view RENAME TO allocations_view_away",
    )
    .await;
    let (status, content_type, body) = answer(
        reqwest::get(server.url("/allocations/o1"))
            .await
            .expect("sent"),
    )
    .await;
    assert!(status.is_server_error(), "{status} {body}");
    assert_eq!(content_type, "application/json");
    let fields: Vec<&String> = body.as_object().expect("an object").keys().collect();
    assert_eq!(fields, ["error_id", "message"], "{body}");
    let text = message(&body);
    assert!(
        !text.contains("allocations_view") && !text.to_lowercase().contains("table"),
        "the database's error reached the client: {body}"
    );
    let id = body["error_id"].as_str().expect("an id");
    let dashes: Vec<usize> = id.match_indices('-').map(|(at, _)| at).collect();
    assert!(
        id.len() == 36 && dashes == [8, 13, 18, 23],
        "error_id {id} is not a UUID"
    );
    // Another failure, another id.
    let (_, _, again) = answer(
        reqwest::get(server.url("/allocations/o1"))
            .await
            .expect("sent"),
    )
    .await;
    assert_ne!(again["error_id"], body["error_id"]);
}

pub async fn operations_routes_are_off_unless_an_admin_token_is_configured(
    binary: &str,
    database_url: &str,
) {
    use crate::server::{admin, ADMIN_TOKEN};
    use reqwest::Method;

    let operations = [
        (Method::GET, "/dead_letters"),
        (Method::POST, "/dead_letters/1/replay"),
        (Method::DELETE, "/dead_letters/1"),
    ];
    // Off: the routes do not exist.
    let server = Server::start_with(binary, database_url, &[]);
    for (method, path) in &operations {
        let (status, body) = admin(&server, method.clone(), path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {body}");
        assert!(body["message"].is_string(), "{body}");
    }
    drop(server);

    // A token too short to be one is refused at start, and not echoed.
    let output = std::process::Command::new(binary)
        .args(["--bind", "127.0.0.1:0", "--database-url", database_url])
        .env("ADMIN_TOKEN", "abc123")
        .env("RUST_LOG", "off")
        .output()
        .expect("the binary runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("at least 16 characters"), "{stderr}");
    assert!(!stderr.contains("abc123"), "{stderr}");

    // On: every operations route needs the token.
    let server = Server::start_with(binary, database_url, &[("ADMIN_TOKEN", ADMIN_TOKEN)]);
    let client = reqwest::Client::new();
    let wrong = format!("{ADMIN_TOKEN}x");
    let basic = format!("Basic {ADMIN_TOKEN}");
    for (method, path) in &operations {
        let url = server.url(path);
        let refused = [
            client.request(method.clone(), &url),
            client.request(method.clone(), &url).bearer_auth(&wrong),
            client.request(method.clone(), &url).bearer_auth(""),
            client
                .request(method.clone(), &url)
                .header("authorization", &basic),
        ];
        for request in refused {
            let response = request.send().await.expect("sent");
            let challenge = response
                .headers()
                .get(reqwest::header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let (status, _, body) = answer(response).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}: {body}");
            assert_eq!(challenge.as_deref(), Some("Bearer"));
            assert!(body["message"].is_string(), "{body}");
        }
    }
    let (status, body) = admin(&server, Method::GET, "/dead_letters").await;
    assert_eq!((status, body), (StatusCode::OK, json!([])));
    let (status, body) = admin(&server, Method::POST, "/dead_letters/1/replay").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = admin(&server, Method::DELETE, "/dead_letters/1").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // The scheme's case does not matter.
    let response = client
        .get(server.url("/dead_letters"))
        .header("authorization", format!("bearer {ADMIN_TOKEN}"))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::OK);
}
