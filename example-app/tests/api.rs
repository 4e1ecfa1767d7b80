//! End to end: the real binary, started on a free port with its own SQLite
//! file, exercised over HTTP.

// A test whose setup fails should panic, helpers included.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::process::Command;

use reqwest::StatusCode;
use serde_json::{json, Value};

#[path = "support/server.rs"]
mod server;

use server::{add_batch, database, get, message, post, post_raw, Server};

/// The binary under test.
const BINARY: &str = env!("CARGO_BIN_EXE_example-app");

#[tokio::test]
async fn the_happy_path_allocates_and_reallocates() {
    let (_dir, db) = database();
    let server = Server::start(BINARY, &db);
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
    assert_eq!(body, json!([{"sku": "RETRO-CLOCK", "batchref": "b-stock"}]));

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
    assert_eq!(body, json!([{"sku": "RETRO-CLOCK", "batchref": "b-early"}]));
}

#[tokio::test]
async fn domain_errors_have_their_status_codes() {
    let (_dir, db) = database();
    let server = Server::start(BINARY, &db);
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

#[tokio::test]
async fn bad_input_gets_a_4xx_with_a_message_naming_the_problem() {
    let (_dir, db) = database();
    let server = Server::start(BINARY, &db);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_allocations_never_oversell() {
    let (_dir, db) = database();
    let server = Server::start(BINARY, &db);
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

#[tokio::test]
async fn ctrl_c_shuts_down_cleanly_and_data_survives_a_restart() {
    let (_dir, db) = database();
    let server = Server::start(BINARY, &db);
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

    let server = Server::start(BINARY, &db);
    let (status, body) = get(&server, "/allocations/o1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!([{"sku": "DURABLE-DESK", "batchref": "b1"}]));
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

#[test]
fn an_unreachable_database_is_a_clear_startup_error() {
    let output = Command::new(BINARY)
        .args([
            "--bind",
            "127.0.0.1:0",
            "--database-url",
            "sqlite:///no/such/dir/allocation.db",
        ])
        .env("RUST_LOG", "off")
        .output()
        .expect("the binary runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("error: cannot open the database sqlite:///no/such/dir/allocation.db"),
        "{stderr}"
    );
}
