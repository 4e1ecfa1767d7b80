//! The HTTP contract: the real binary, started on a free port over a fresh
//! database, exercised over HTTP; written once and run on each database
//! (SQLite in `example-app/tests/api.rs`, PostgreSQL in the `postgres`
//! target of the tests package). `#[path]`-included next to
//! `support/server.rs` (as the crate's `server` module);
//! [`api_contract_tests!`] expands to every test below.

#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::server::{add_batch, get, message, post, post_raw, Server};

/// Expands to one `#[tokio::test]` per contract test, each starting
/// `$binary` (a `&str` expression) over a fresh database from `$fresh` (an
/// `async fn` whose value has a `url` field, kept for the test's length).
macro_rules! api_contract_tests {
    ($binary:expr, $fresh:path) => {
        api_contract_tests!(@each $binary, $fresh;
            the_happy_path_allocates_and_reallocates,
            domain_errors_have_their_status_codes,
            bad_input_gets_a_4xx_with_a_message_naming_the_problem,
            concurrent_allocations_never_oversell,
            ctrl_c_shuts_down_cleanly_and_data_survives_a_restart,
        );
    };
    (@each $binary:expr, $fresh:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let database = $fresh().await;
                api_contract::$name(&$binary, &database.url).await
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
