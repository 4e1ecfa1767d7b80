//! Runs the warehouse example: adds stock, allocates three orders, and prints
//! what their events caused.

use std::process::ExitCode;
use std::sync::Arc;

use example_app::{bootstrap, AddStock, Allocate, StdoutNotifications};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();

    let bus = match bootstrap(Arc::default(), Arc::new(StdoutNotifications)) {
        Ok(bus) => bus,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::FAILURE;
        }
    };

    if let Err(error) = bus.dispatch_blocking(AddStock {
        sku: "RED-CHAIR".into(),
        qty: 10,
    }) {
        eprintln!("adding stock failed: {error}");
        return ExitCode::FAILURE;
    }
    for (orderid, sku, qty) in [
        ("order-1", "RED-CHAIR", 3),
        ("order-2", "RED-CHAIR", 8),
        ("order-3", "BLUE-SOFA", 1),
    ] {
        let command = Allocate {
            orderid: orderid.into(),
            sku: sku.into(),
            qty,
        };
        match bus.dispatch_blocking(command) {
            Ok(left) => println!("{orderid}: {qty} x {sku} requested, {left} left"),
            Err(error) => println!("{orderid}: refused: {error}"),
        }
    }
    ExitCode::SUCCESS
}
