//! The SQLite unit of work against a real database file.

// A test whose setup fails should panic, helpers included.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;

use bus_core::{EventReleaser, UnitOfWork as _};
use chrono::NaiveDate;
use example_app::adapters::sqlite::{self, SqliteDatabase, SqliteUnitOfWork};
use example_app::domain::model::{Batch, OrderLine, Product};
use example_app::service_layer::unit_of_work::{UnitOfWork, UowError};
use tempfile::TempDir;
use tokio::sync::Barrier;

async fn database() -> (TempDir, SqliteDatabase) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("allocation.db").display());
    let pool = sqlite::connect(&url).await.expect("database opens");
    (dir, pool)
}

fn line(orderid: &str, sku: &str, qty: u32) -> OrderLine {
    OrderLine {
        orderid: orderid.into(),
        sku: sku.into(),
        qty,
    }
}

async fn insert_product(pool: &SqliteDatabase, sku: &str, batches: Vec<Batch>) {
    let mut uow = SqliteUnitOfWork::new(pool.clone(), EventReleaser::new());
    uow.products().add(Product::new(sku, batches, 0));
    uow.commit().await.expect("committed");
}

async fn load(pool: &SqliteDatabase, sku: &str) -> Option<Product> {
    let mut uow = SqliteUnitOfWork::new(pool.clone(), EventReleaser::new());
    uow.products().get(sku).await.expect("read").cloned()
}

#[tokio::test]
async fn a_commit_persists_products_batches_and_allocations() {
    let (_dir, pool) = database().await;
    let eta = NaiveDate::from_ymd_opt(2026, 12, 24).expect("date");
    insert_product(
        &pool,
        "HIPSTER-WORKBENCH",
        vec![
            Batch::new("b1", "HIPSTER-WORKBENCH", 100, None),
            Batch::new("b2", "HIPSTER-WORKBENCH", 50, Some(eta)),
        ],
    )
    .await;

    let releaser = EventReleaser::new();
    let mut uow = SqliteUnitOfWork::new(pool.clone(), releaser.clone());
    let product = uow
        .products()
        .get("HIPSTER-WORKBENCH")
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(
        product
            .allocate(line("o1", "HIPSTER-WORKBENCH", 10))
            .as_deref(),
        Some("b1")
    );
    assert!(
        releaser.drain().is_empty(),
        "nothing released before commit"
    );
    uow.commit().await.expect("committed");
    let released: Vec<_> = releaser.drain().iter().map(|e| e.name()).collect();
    assert_eq!(released, ["allocation.allocated"]);

    let product = load(&pool, "HIPSTER-WORKBENCH").await.expect("persisted");
    assert_eq!(product.version_number, 1);
    assert_eq!(
        product.batch("b1").expect("b1").allocations(),
        [line("o1", "HIPSTER-WORKBENCH", 10)]
    );
    assert_eq!(product.batch("b2").expect("b2").eta, Some(eta));
    assert_eq!(product.batch("b2").expect("b2").available_quantity(), 50);
}

#[tokio::test]
async fn without_commit_nothing_is_written_or_released() {
    let (_dir, pool) = database().await;
    let releaser = EventReleaser::new();
    {
        let mut uow = SqliteUnitOfWork::new(pool.clone(), releaser.clone());
        let product = uow.products().add(Product::new(
            "LAMP",
            vec![Batch::new("b1", "LAMP", 5, None)],
            0,
        ));
        product.allocate(line("o1", "LAMP", 1));
    }
    assert!(load(&pool, "LAMP").await.is_none());
    assert!(releaser.drain().is_empty());
}

#[tokio::test]
async fn a_rollback_writes_nothing() {
    let (_dir, pool) = database().await;
    insert_product(&pool, "LAMP", vec![Batch::new("b1", "LAMP", 5, None)]).await;
    let mut uow = SqliteUnitOfWork::new(pool.clone(), EventReleaser::new());
    let product = uow
        .products()
        .get("LAMP")
        .await
        .expect("read")
        .expect("exists");
    product.allocate(line("o1", "LAMP", 1));
    uow.rollback().await.expect("rolled back");
    uow.commit().await.expect("an empty commit");
    let product = load(&pool, "LAMP").await.expect("exists");
    assert!(product.batch("b1").expect("b1").allocations().is_empty());
}

#[tokio::test]
async fn a_failed_commit_writes_nothing_and_releases_nothing() {
    let (_dir, pool) = database().await;
    insert_product(&pool, "LAMP", vec![Batch::new("b1", "LAMP", 5, None)]).await;
    let releaser = EventReleaser::new();
    let mut stale = SqliteUnitOfWork::new(pool.clone(), releaser.clone());
    stale
        .products()
        .get("LAMP")
        .await
        .expect("read")
        .expect("exists");
    // Another unit of work changes the product first.
    let mut other = SqliteUnitOfWork::new(pool.clone(), EventReleaser::new());
    other
        .products()
        .get("LAMP")
        .await
        .expect("read")
        .expect("exists")
        .allocate(line("o1", "LAMP", 1));
    other.commit().await.expect("committed");

    let product = stale
        .products()
        .get("LAMP")
        .await
        .expect("read")
        .expect("exists");
    product.allocate(line("o2", "LAMP", 2));
    product.add_batch(Batch::new("b9", "LAMP", 9, None));
    let error = stale.commit().await.expect_err("stale");
    assert!(matches!(error, UowError::Conflict { .. }), "{error}");
    assert!(
        releaser.drain().is_empty(),
        "a failed commit releases nothing"
    );
    let product = load(&pool, "LAMP").await.expect("exists");
    assert_eq!(
        product.batch("b1").expect("b1").allocations(),
        [line("o1", "LAMP", 1)]
    );
    assert!(
        product.batch("b9").is_none(),
        "the failed commit's writes were rolled back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_concurrent_allocations_exactly_one_commits() {
    let (_dir, pool) = database().await;
    insert_product(
        &pool,
        "LAST-CHAIR",
        vec![Batch::new("b1", "LAST-CHAIR", 1, None)],
    )
    .await;
    let barrier = Arc::new(Barrier::new(2));
    let mut tasks = Vec::new();
    for orderid in ["o1", "o2"] {
        let pool = pool.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let mut uow = SqliteUnitOfWork::new(pool, EventReleaser::new());
            let product = uow.products().get("LAST-CHAIR").await?.expect("exists");
            product.allocate(line(orderid, "LAST-CHAIR", 1));
            // Both have read version 0 before either writes.
            barrier.wait().await;
            uow.commit().await
        }));
    }
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.expect("task finished"));
    }
    let committed = outcomes.iter().filter(|o| o.is_ok()).count();
    assert_eq!(committed, 1, "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .any(|o| matches!(o, Err(UowError::Conflict { sku }) if sku == "LAST-CHAIR")),
        "the loser gets the typed conflict: {outcomes:?}"
    );
    let product = load(&pool, "LAST-CHAIR").await.expect("exists");
    assert_eq!(product.version_number, 1);
    assert_eq!(
        product.batch("b1").expect("b1").allocations().len(),
        1,
        "never oversold"
    );
}

#[tokio::test]
async fn a_deallocation_is_persisted_and_the_rest_kept_in_order() {
    let (_dir, pool) = database().await;
    insert_product(&pool, "RUG", vec![Batch::new("b1", "RUG", 50, None)]).await;
    let mut uow = SqliteUnitOfWork::new(pool.clone(), EventReleaser::new());
    let product = uow
        .products()
        .get("RUG")
        .await
        .expect("read")
        .expect("exists");
    for orderid in ["o1", "o2", "o3"] {
        product.allocate(line(orderid, "RUG", 10));
    }
    uow.commit().await.expect("committed");

    let mut uow = SqliteUnitOfWork::new(pool.clone(), EventReleaser::new());
    let product = uow
        .products()
        .get("RUG")
        .await
        .expect("read")
        .expect("exists");
    assert!(product.change_batch_quantity("b1", 25));
    uow.commit().await.expect("committed");

    let product = load(&pool, "RUG").await.expect("exists");
    let batch = product.batch("b1").expect("b1");
    assert_eq!(batch.purchased_quantity(), 25);
    assert_eq!(
        batch.allocations(),
        [line("o1", "RUG", 10), line("o2", "RUG", 10)],
        "the last line was deallocated; the others kept their order"
    );
}
