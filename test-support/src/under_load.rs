//! The service under concurrent load: the read model never drifts from the
//! write model, and a hot product gets slower instead of failing. Written
//! once and run on each database (SQLite in `example-app/tests/red_team.rs`,
//! PostgreSQL in the tests package's `postgres` target);
//! [`under_load_tests!`](crate::under_load_tests) expands to every test.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arch_events::{EventReleaser, Scope};
use example_app::adapters::database::Database;
use example_app::Adapters;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::server::Server;

/// Expands to one `#[tokio::test]` per test below, each starting `$binary`
/// over a fresh database from `$fresh` (an `async fn` whose value has a
/// `url` field, kept for the test's length).
#[macro_export]
macro_rules! under_load_tests {
    ($binary:expr, $fresh:path) => {
        $crate::under_load_tests!(@each $binary, $fresh;
            two_lines_of_one_order_and_product_are_two_rows_of_the_view,
            the_view_equals_the_write_model_after_a_concurrent_run,
            a_hot_product_gets_slower_instead_of_failing,
            a_hot_product_on_two_processes_never_oversells_or_drifts,
            a_batch_added_many_times_at_once_is_added_once,
        );
    };
    (@each $binary:expr, $fresh:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let database = $fresh().await;
                $crate::under_load::$name(&$binary, &database.url).await
            }
        )*
    };
}

/// A client that keeps its connections, for many requests.
struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    fn new(server: &Server) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: server.url(""),
        }
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .expect("request sent");
        let status = response.status();
        (status, response.json().await.expect("a JSON body"))
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("request sent");
        let status = response.status();
        (status, response.json().await.expect("a JSON body"))
    }

    async fn add_batch(&self, reference: &str, sku: &str, qty: u32) {
        let (status, body) = self
            .post(
                "/add_batch",
                json!({"ref": reference, "sku": sku, "qty": qty, "eta": null}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
}

/// One line as both models hold it: `(orderid, sku, qty, batchref)`.
type Line = (String, String, u32, String);

/// Every line of the products `skus` in the write model, sorted: each batch
/// loaded whole by its reference.
async fn write_model(database: &Database, skus: &[&str]) -> Vec<Line> {
    let mut lines = Vec::new();
    for sku in skus {
        for batch in crate::write_model::batches_of(database, sku).await {
            assert!(
                batch.available_quantity() >= 0,
                "batch {} oversold: {} of {}",
                batch.reference,
                batch.allocated_quantity(),
                batch.purchased_quantity()
            );
            for line in batch.allocations() {
                lines.push((
                    line.orderid.clone(),
                    line.sku.clone(),
                    line.qty,
                    batch.reference.clone(),
                ));
            }
        }
    }
    lines.sort();
    lines
}

/// Every line of the orders `orderids` in the read model, sorted.
async fn read_model(database: &Database, orderids: &[String]) -> Vec<Line> {
    let view = (Adapters::for_database(database).views)(&mut Scope::new());
    let mut lines = Vec::new();
    for orderid in orderids {
        for row in view.for_order(orderid).await.expect("read") {
            lines.push((orderid.clone(), row.sku, row.qty, row.batchref));
        }
    }
    lines.sort();
    lines
}

/// Waits (at most 60 s: the events of the last commands may still be on
/// their way) until the read model of `orderids` equals the write model of
/// `skus`, and fails with the difference if it never does.
async fn the_models_agree(database: &Database, skus: &[&str], orderids: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let written = write_model(database, skus).await;
        let read = read_model(database, orderids).await;
        if written == read {
            return;
        }
        if Instant::now() > deadline {
            let missing: Vec<_> = written.iter().filter(|l| !read.contains(l)).collect();
            let extra: Vec<_> = read.iter().filter(|l| !written.contains(l)).collect();
            panic!(
                "after 60 s the view still differs from the write model: \
                 {} lines missing from the view ({:?}...), {} extra ({:?}...)",
                missing.len(),
                &missing[..missing.len().min(5)],
                extra.len(),
                &extra[..extra.len().min(5)],
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One order with two lines of one product; its batch shrinks so that the
/// later line no longer fits and has nowhere to go: the view keeps the
/// other line (it once deleted both, by order and product).
pub async fn two_lines_of_one_order_and_product_are_two_rows_of_the_view(
    binary: &str,
    database_url: &str,
) {
    let server = Server::start_with(binary, database_url, &[]);
    let client = Client::new(&server);
    client.add_batch("b1", "LAMP", 10).await;
    for qty in [3, 5] {
        let (status, body) = client
            .post(
                "/allocate",
                json!({"orderid": "o1", "sku": "LAMP", "qty": qty}),
            )
            .await;
        assert_eq!(
            (status, &body),
            (StatusCode::ACCEPTED, &json!({"batchref": "b1"}))
        );
    }
    let (status, body) = client
        .post("/change_batch_quantity", json!({"ref": "b1", "qty": 4}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (status, body) = client.get("/allocations/o1").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!([{"sku": "LAMP", "qty": 3, "batchref": "b1"}]));
    let database = Database::connect(database_url).await.expect("opens");
    assert_eq!(
        write_model(&database, &["LAMP"]).await,
        [("o1".into(), "LAMP".into(), 3, "b1".into())]
    );
}

/// Twelve adds of one reference at once (eight for one product, four for
/// another) while lines of the first product are allocated: one add wins,
/// the others are 409s, the batch keeps the winner's quantity and what was
/// allocated to it, and its lines add up to its allocated quantity.
pub async fn a_batch_added_many_times_at_once_is_added_once(binary: &str, database_url: &str) {
    let server = Server::start_with(binary, database_url, &[]);
    let client = Arc::new(Client::new(&server));
    let mut adds = Vec::new();
    for n in 0..12u32 {
        let client = client.clone();
        let sku = if n < 8 { "LAMP" } else { "DESK" };
        adds.push(tokio::spawn(async move {
            let body = json!({"ref": "near", "sku": sku, "qty": 20 + n, "eta": null});
            let (status, body) = client.post("/add_batch", body).await;
            (status, body, sku, 20 + n)
        }));
    }
    let mut allocations = Vec::new();
    for n in 0..20 {
        let client = client.clone();
        allocations.push(tokio::spawn(async move {
            let line = json!({"orderid": format!("o{n}"), "sku": "LAMP", "qty": 1});
            client.post("/allocate", line).await
        }));
    }
    let mut winners = Vec::new();
    for add in adds {
        let (status, body, sku, qty) = add.await.expect("an add ends");
        match status {
            StatusCode::CREATED => winners.push((sku, qty)),
            StatusCode::CONFLICT => assert!(
                body["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("already exists")),
                "{body}"
            ),
            other => panic!("add: {other} {body}"),
        }
    }
    for allocation in allocations {
        let (status, body) = allocation.await.expect("an allocation ends");
        assert!(
            status == StatusCode::ACCEPTED || status == StatusCode::BAD_REQUEST,
            "allocate: {status} {body}"
        );
    }
    assert_eq!(winners.len(), 1, "added once: {winners:?}");
    let (sku, qty) = winners[0];
    let database = Database::connect(database_url).await.expect("opens");
    let mut uow = database.unit_of_work(EventReleaser::new());
    let product = uow
        .products()
        .get_with_batch_lines("near")
        .await
        .expect("read")
        .expect("the batch exists");
    assert_eq!(product.sku, sku);
    let batch = product.batch("near").expect("near");
    assert_eq!(batch.purchased_quantity(), qty, "the winner's quantity");
    let lines: u64 = batch.allocations().iter().map(|l| u64::from(l.qty)).sum();
    assert_eq!(lines, batch.allocated_quantity(), "its lines add up");
    assert!(batch.available_quantity() >= 0, "never oversold");
}

/// How many order lines the concurrent runs place.
const ALLOCATIONS: usize = 1_000;

/// How many clients allocate at once.
const CLIENTS: usize = 24;

/// How many clients change batch quantities meanwhile.
const CHANGERS: usize = 4;

/// A concurrent run on one product: `CLIENTS` clients allocate `ALLOCATIONS`
/// lines (some orders with two lines of the product) while `CHANGERS`
/// clients shrink and grow its batches, which deallocates and reallocates
/// lines. The clients are spread over `servers` (processes of one
/// database). Returns how many allocations answered each status, and the
/// orders placed.
async fn concurrent_run(
    servers: &[&Server],
    sku: &'static str,
) -> (BTreeMap<u16, usize>, Vec<String>) {
    let clients: Vec<Arc<Client>> = servers.iter().map(|s| Arc::new(Client::new(s))).collect();
    let batches = ["A1", "A2", "A3"];
    for reference in batches {
        clients[0].add_batch(reference, sku, 400).await;
    }
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let mut allocators = Vec::new();
    for n in 0..CLIENTS {
        let (client, next) = (clients[n % clients.len()].clone(), next.clone());
        allocators.push(tokio::spawn(async move {
            let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= ALLOCATIONS {
                    return statuses;
                }
                // Every fifth order has two lines of the product.
                let orderid = format!("order-{}", n - n % 5 / 4);
                let line = json!({"orderid": orderid, "sku": sku, "qty": 1 + n % 3});
                let (status, body) = client.post("/allocate", line).await;
                assert!(
                    status == StatusCode::ACCEPTED || status == StatusCode::CONFLICT,
                    "allocation {n}: {status} {body}"
                );
                *statuses.entry(status.as_u16()).or_default() += 1;
            }
        }));
    }
    let mut changers = Vec::new();
    for changer in 0..CHANGERS {
        let (client, done) = (clients[changer % clients.len()].clone(), done.clone());
        changers.push(tokio::spawn(async move {
            let mut round = changer;
            let mut changes = 0;
            while !done.load(Ordering::Relaxed) || changes == 0 {
                let reference = batches[round % batches.len()];
                // Between 150 and 449 units: often below what is allocated.
                let qty = 150 + (round * 97) % 300;
                let (status, body) = client
                    .post(
                        "/change_batch_quantity",
                        json!({"ref": reference, "qty": qty}),
                    )
                    .await;
                assert!(
                    status == StatusCode::ACCEPTED || status == StatusCode::CONFLICT,
                    "change {reference} to {qty}: {status} {body}"
                );
                round += CHANGERS;
                changes += 1;
            }
            changes
        }));
    }
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    for allocator in allocators {
        for (status, count) in allocator.await.expect("an allocator ends") {
            *statuses.entry(status).or_default() += count;
        }
    }
    done.store(true, Ordering::Relaxed);
    for changer in changers {
        changer.await.expect("a changer ends");
    }
    let orders = (0..ALLOCATIONS)
        .map(|n| format!("order-{}", n - n % 5 / 4))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    (statuses, orders)
}

/// After a concurrent run of allocations and quantity changes on one
/// product, the view holds exactly the write model's lines: no row missing,
/// none extra, none in a batch it left.
pub async fn the_view_equals_the_write_model_after_a_concurrent_run(
    binary: &str,
    database_url: &str,
) {
    let server = Server::start_with(binary, database_url, &[]);
    let (_, orders) = concurrent_run(&[&server], "LAMP").await;
    let database = Database::connect(database_url).await.expect("opens");
    the_models_agree(&database, &["LAMP"], &orders).await;
}

/// A hot product: every allocation and quantity change goes to one product
/// at once. Within one process its writers take turns: no dead letter and
/// under 1% of conflicts (409). Prints the figures as one line.
pub async fn a_hot_product_gets_slower_instead_of_failing(binary: &str, database_url: &str) {
    let server = Server::start_with(binary, database_url, &[]);
    let figures = hot_product(&[&server], database_url).await;
    assert!(figures.dead_letters == 0, "dead letters on one process");
    assert!(
        figures.conflicts * 100 < ALLOCATIONS,
        "{} of {ALLOCATIONS} allocations lost their race (409)",
        figures.conflicts
    );
}

/// The same load spread over two processes of one database: between them,
/// optimistic concurrency decides (with backoff and jitter), so some
/// requests may lose and some lines wait as dead letters; the models still
/// agree and no batch is oversold. Prints the figures as one line.
pub async fn a_hot_product_on_two_processes_never_oversells_or_drifts(
    binary: &str,
    database_url: &str,
) {
    let first = Server::start_with(binary, database_url, &[]);
    let second = Server::start_with(binary, database_url, &[]);
    hot_product(&[&first, &second], database_url).await;
}

struct Figures {
    conflicts: usize,
    dead_letters: usize,
}

async fn hot_product(servers: &[&Server], database_url: &str) -> Figures {
    let started = Instant::now();
    let (statuses, orders) = concurrent_run(servers, "HOT-LAMP").await;
    let elapsed = started.elapsed();
    let database = Database::connect(database_url).await.expect("opens");
    let letters = Adapters::for_database(&database)
        .dead_letters
        .list(true)
        .await
        .expect("listed");
    // A line whose reallocation waits as a dead letter is in no batch and,
    // rightly, in no row of the view: the models agree all the same.
    the_models_agree(&database, &["HOT-LAMP"], &orders).await;
    let conflicts = statuses.get(&409).copied().unwrap_or(0);
    println!(
        "hot product on {} process(es): {ALLOCATIONS} allocations by {CLIENTS} clients with \
         {CHANGERS} changers on one sku in {:.1} s: {} answered 202, {conflicts} answered 409 \
         ({:.2}%), {} dead letters",
        servers.len(),
        elapsed.as_secs_f64(),
        statuses.get(&202).copied().unwrap_or(0),
        100.0 * conflicts as f64 / ALLOCATIONS as f64,
        letters.len(),
    );
    Figures {
        conflicts,
        dead_letters: letters.len(),
    }
}
