use arch_events::Event;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Event)]
#[event(serde, version = 0)]
struct Shipped;

#[derive(Debug, Clone, Event)]
#[event(version = 2)]
struct Packed;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Event)]
#[event(serde, version = "two")]
struct Sent;

fn main() {}
