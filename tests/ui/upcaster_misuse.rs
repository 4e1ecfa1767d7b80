use arch_events::{upcaster, Event};
use serde_json::Value;

#[derive(Debug, Clone, Event)]
struct NotStored;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Event)]
#[event(serde, version = 2)]
struct Stored;

#[upcaster(NotStored, from = 1)]
fn not_stored(value: Value) -> Result<Value, String> {
    Ok(value)
}

#[upcaster(from = 0)]
async fn everything_wrong() {}

#[upcaster(Stored, from = 1)]
fn returns_the_value(value: Value) -> Value {
    value
}

fn main() {}
