//! What one allocation costs as a product's history grows: one sku, one
//! large batch, allocations one after another through the bus (the same
//! work as `POST /allocate` minus HTTP), on SQLite and on PostgreSQL.
//!
//! `cargo bench -p arch-events-benches --bench history` (PostgreSQL at
//! `POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/test`, in a
//! database of its own that it drops; skipped with a note when
//! unreachable). `HISTORY_ALLOCATIONS` sets the last point (20,000).
//!
//! Prints, per database, the mean cost of the 100 allocations ending at
//! each point of the curve, and the last point's cost over the 500th's.

#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::time::{Duration, Instant};

use arch_events::Bus;
use example_app::adapters::database::Database;
use example_app::domain::commands::{Allocate, CreateBatch};
use example_app::{bootstrap, Adapters};
use sqlx::{Connection, PgConnection};

/// How many allocations each point averages.
const WINDOW: usize = 100;

async fn curve(bus: &Bus, last: usize) -> Vec<(usize, Duration)> {
    bus.dispatch(CreateBatch {
        reference: "b1".into(),
        sku: "POPULAR".into(),
        qty: 1_000_000_000,
        eta: None,
    })
    .await
    .expect("batch added");
    let mut points: Vec<usize> = [500, 1_000, 3_000, 6_000, 10_000, 15_000, 20_000, last]
        .into_iter()
        .filter(|point| *point <= last)
        .collect();
    points.dedup();
    let mut curve = Vec::new();
    let mut window_start = Instant::now();
    for n in 1..=last {
        if points.iter().any(|point| n == point + 1 - WINDOW) {
            window_start = Instant::now();
        }
        let batchref = bus
            .dispatch(Allocate {
                orderid: format!("order-{n}"),
                sku: "POPULAR".into(),
                qty: 1,
            })
            .await
            .expect("allocated");
        assert_eq!(batchref.as_deref(), Some("b1"));
        if points.contains(&n) {
            curve.push((n, window_start.elapsed() / WINDOW as u32));
        }
    }
    curve
}

fn report(database: &str, curve: &[(usize, Duration)]) {
    println!("{database}:");
    for (n, cost) in curve {
        println!("  allocation {n:>6}: {:>8.3} ms", cost.as_secs_f64() * 1e3);
    }
    if let (Some((_, first)), Some((n, last))) = (curve.first(), curve.last()) {
        println!(
            "  allocation {n} costs {:.2}x allocation 500",
            last.as_secs_f64() / first.as_secs_f64()
        );
    }
}

async fn run_on(url: &str, last: usize) -> Vec<(usize, Duration)> {
    let database = Database::connect(url).await.expect("opens");
    let bus = bootstrap(Adapters::for_database(&database)).expect("wiring");
    let recovery = database.start_recovery(&bus).expect("recovery");
    let curve = curve(&bus, last).await;
    bus.shutdown(Duration::from_secs(10)).await.expect("idle");
    recovery.stop().await;
    database.close().await;
    curve
}

#[tokio::main]
async fn main() {
    let last: usize = std::env::var("HISTORY_ALLOCATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000)
        .max(500);

    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite = format!("sqlite://{}", dir.path().join("history.db").display());
    report("SQLite", &run_on(&sqlite, last).await);

    let server = std::env::var("POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let Ok(mut admin) = PgConnection::connect(&server).await else {
        println!("PostgreSQL: not reachable at {server}, skipped");
        return;
    };
    let name = format!("bench_history_{}", std::process::id());
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut admin)
        .await
        .expect("created");
    let (base, _) = server.rsplit_once('/').expect("a database in the URL");
    let curve = run_on(&format!("{base}/{name}"), last).await;
    sqlx::query(&format!("DROP DATABASE \"{name}\" WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .expect("dropped");
    report("PostgreSQL", &curve);
}
