use arch_events::Event;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Event)]
#[event(serde, personal(subject = client, fields(email, phone, plan)))]
struct Registered {
    customer: String,
    email: Option<String>,
    plan: String,
}

#[derive(Debug, Clone, Event)]
#[event(personal(fields(email)))]
struct NotStored {
    email: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Event)]
#[event(serde, personal(subject = customer, fields(customer)))]
struct OwnKey {
    customer: Option<String>,
}

fn main() {}
