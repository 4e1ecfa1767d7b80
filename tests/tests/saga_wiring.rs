//! Sagas in the bus's build and its wiring report: two saga types with one
//! name, a timeout that cannot be scheduled and a missing runtime are build
//! problems, all at once, each with its `file:line`; a well-made saga is
//! described with what each message does to it.

use std::sync::Arc;

use arch_events::saga::{saga, SagaContext, Sagas};
use arch_events::schedule::InMemoryScheduler;
use arch_events::{Bus, Dependencies, Event, Problem, Registrations};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Event)]
#[event(name = "wiring.opened", serde)]
struct Opened {
    account: String,
}

/// Not stored as JSON: it cannot wait in the scheduler.
#[derive(Debug, Clone, serde::Serialize, Event)]
#[event(name = "wiring.dormant")]
struct Dormant {
    account: String,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Event)]
#[event(name = "wiring.closed", serde)]
struct Closed {
    account: String,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Onboarding {
    account: String,
}

#[saga(name = "wiring.onboarding")]
impl Onboarding {
    #[starts(by = account)]
    fn opened(&mut self, event: &Opened, _: &mut SagaContext) {
        self.account.clone_from(&event.account);
    }

    #[timeout(by = account)]
    fn dormant(&mut self, _: &Dormant, saga: &mut SagaContext) {
        saga.mark_completed();
    }
}

/// Named like `Onboarding`: their instances would share rows.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Impostor;

#[saga(name = "wiring.onboarding")]
impl Impostor {
    #[starts(by = account)]
    fn opened(&mut self, _: &Opened, _: &mut SagaContext) {}
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Closing;

#[saga(name = "wiring.closing")]
impl Closing {
    #[starts(by = account)]
    fn opened(&mut self, _: &Opened, _: &mut SagaContext) {}

    #[handles(by = account, not_found = ignore)]
    fn closed(&mut self, _: &Closed, saga: &mut SagaContext) {
        saga.mark_completed();
    }
}

#[test]
fn every_saga_problem_is_reported_at_once_with_its_place() {
    let error = Bus::builder()
        .registrations(Registrations::new().saga::<Onboarding>().saga::<Impostor>())
        .build()
        .unwrap_err();
    let file = file!();
    let text = error.to_string();
    let sagas: Vec<&Problem> = error
        .problems()
        .iter()
        .filter(|problem| matches!(problem, Problem::Saga { .. }))
        .collect();
    assert_eq!(sagas.len(), 3, "{text}");
    assert!(
        text.contains("shares its name with `saga_wiring::Impostor`"),
        "{text}"
    );
    assert!(
        text.contains("its timeout `wiring.dormant`")
            && text.contains("derive it with `#[event(serde)]`"),
        "{text}"
    );
    assert!(text.contains(&format!("(at {file}:37)")), "{text}");
    assert!(text.contains(&format!("(at {file}:54)")), "{text}");
    // And the runtime nobody registered, with each handler that needs it.
    assert!(
        text.contains("the shared dependency `arch_events::saga::runtime::Sagas` was not provided; 3 handlers need it"),
        "{text}"
    );
    assert!(text.contains("saga_wiring::Onboarding::dormant"), "{text}");
}

#[test]
fn a_saga_is_described_with_what_each_message_does_to_it() {
    let bus = Bus::builder()
        .registrations(Registrations::new().saga::<Closing>())
        .dependencies(Dependencies::new().shared(Sagas::new(Arc::new(InMemoryScheduler::new()))))
        .build()
        .unwrap();
    let wiring = bus.describe();
    assert_eq!(wiring.sagas.len(), 1);
    let closing = &wiring.sagas[0];
    assert_eq!(closing.name, "wiring.closing");
    assert_eq!(closing.rust_path, "saga_wiring::Closing");
    let steps: Vec<(&str, &str, String)> = closing
        .steps
        .iter()
        .map(|step| (step.message, step.handler, step.role.to_string()))
        .collect();
    assert_eq!(
        steps,
        [
            (
                "wiring.opened",
                "saga_wiring::Closing::opened",
                "starts".to_owned()
            ),
            (
                "wiring.closed",
                "saga_wiring::Closing::closed",
                "continues (not found: ignore)".to_owned()
            ),
        ]
    );
    let table = wiring.to_table();
    assert!(
        table.contains("saga wiring.closing (saga_wiring::Closing, "),
        "{table}"
    );
    let mermaid = wiring.to_mermaid();
    assert!(
        mermaid.contains("subgraph s_wiring_closing[\"saga wiring.closing\"]"),
        "{mermaid}"
    );
    assert!(
        mermaid.contains("m_wiring_opened == starts ==> s_wiring_closing"),
        "{mermaid}"
    );
}
