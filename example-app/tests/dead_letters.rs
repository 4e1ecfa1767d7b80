//! Dead letters in the service: an event handler that keeps failing is
//! retried per the bootstrap's policy, stored in SQLite, listed, and replayed
//! once the fault is gone, exactly once.

// A test whose setup fails should panic, helpers included.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;

use bus_core::Bus;
use example_app::adapters::dead_letters::SqliteDeadLetterStore;
use example_app::adapters::memory::InMemoryStore;
use example_app::adapters::notifications::RecordingNotifications;
use example_app::adapters::sqlite;
use example_app::bootstrap::EVENT_HANDLER_ATTEMPTS;
use example_app::domain::commands::{Allocate, CreateBatch};
use example_app::service_layer::dead_letters::{self, DeadLetterError, DeadLetterStore};
use example_app::{bootstrap, Adapters};

struct App {
    bus: Bus,
    notifications: Arc<RecordingNotifications>,
    dead_letters: Arc<dyn DeadLetterStore>,
    _dir: tempfile::TempDir,
}

/// The in-memory write model, with the real SQLite dead-letter store.
async fn app() -> App {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("dead.db").display());
    let database = sqlite::connect(&url).await.unwrap();
    let store = Arc::new(InMemoryStore::default());
    let notifications = Arc::new(RecordingNotifications::default());
    let dead_letters: Arc<dyn DeadLetterStore> = Arc::new(SqliteDeadLetterStore::new(database));
    let bus = bootstrap(Adapters {
        notifications: notifications.clone(),
        dead_letters: dead_letters.clone(),
        ..Adapters::in_memory(&store)
    })
    .unwrap();
    App {
        bus,
        notifications,
        dead_letters,
        _dir: dir,
    }
}

/// Allocates more than there is: `OutOfStock` is released.
async fn run_out_of_stock(app: &App) {
    app.bus
        .dispatch(CreateBatch {
            reference: "b1".into(),
            sku: "LAMP".into(),
            qty: 1,
            eta: None,
        })
        .await
        .unwrap();
    let batch = app
        .bus
        .dispatch(Allocate {
            orderid: "o1".into(),
            sku: "LAMP".into(),
            qty: 5,
        })
        .await
        .unwrap();
    assert_eq!(batch, None, "out of stock");
}

#[tokio::test]
async fn a_failing_notification_is_retried_kept_and_replayed_once_the_notifier_is_back() {
    let app = app().await;
    app.notifications.fail("smtp: connection refused");
    run_out_of_stock(&app).await;

    // Retried per policy, then kept, with everything needed to replay it.
    assert_eq!(app.notifications.refused(), EVENT_HANDLER_ATTEMPTS);
    let letters = app.dead_letters.list(false).await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(letter.record.message_name, "allocation.out_of_stock");
    assert_eq!(
        letter.record.handler,
        "example_app::service_layer::handlers::send_out_of_stock_notification"
    );
    assert!(
        letter.record.location.contains("handlers.rs:"),
        "{}",
        letter.record.location
    );
    assert_eq!(
        letter.record.error,
        "cannot notify stock@made.com: smtp: connection refused"
    );
    assert_eq!(letter.record.attempts, EVENT_HANDLER_ATTEMPTS);
    assert_eq!(letter.record.payload.as_deref(), Some(r#"{"sku":"LAMP"}"#));
    assert_eq!(
        letter.record.causation_id.as_deref(),
        Some(letter.record.correlation_id.as_str()),
        "caused by the command, which opened the flow"
    );

    // Still down: the replay fails, the letter stays, with the new error.
    let error = dead_letters::replay(&app.bus, &*app.dead_letters, letter.id)
        .await
        .unwrap_err();
    assert!(
        matches!(error, DeadLetterError::StillFailing { .. }),
        "{error}"
    );
    let kept = app.dead_letters.get(letter.id).await.unwrap().unwrap();
    assert_eq!(kept.replayed_at, None);
    assert!(
        kept.replay_error
            .as_deref()
            .unwrap()
            .contains("connection refused"),
        "{kept:?}"
    );
    assert!(app.notifications.sent().is_empty());

    // Back up: the replay succeeds, once.
    app.notifications.recover();
    let replayed = dead_letters::replay(&app.bus, &*app.dead_letters, letter.id)
        .await
        .unwrap();
    assert!(replayed.replayed_at.is_some());
    assert_eq!(replayed.replay_error, None);
    assert_eq!(
        app.notifications.sent(),
        [(
            "stock@made.com".to_owned(),
            "Out of stock for LAMP".to_owned()
        )]
    );
    let again = dead_letters::replay(&app.bus, &*app.dead_letters, letter.id)
        .await
        .unwrap_err();
    assert!(
        matches!(again, DeadLetterError::AlreadyReplayed(_)),
        "{again}"
    );
    assert_eq!(app.notifications.sent().len(), 1, "sent exactly once");
    assert!(app.dead_letters.list(false).await.unwrap().is_empty());
    assert_eq!(app.dead_letters.list(true).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_working_notifier_leaves_no_dead_letter() {
    let app = app().await;
    run_out_of_stock(&app).await;
    assert_eq!(app.notifications.sent().len(), 1);
    assert!(app.dead_letters.list(true).await.unwrap().is_empty());
}

#[tokio::test]
async fn replaying_an_unknown_letter_is_not_found_and_a_letter_is_claimed_once() {
    let app = app().await;
    let error = dead_letters::replay(&app.bus, &*app.dead_letters, 42)
        .await
        .unwrap_err();
    assert!(matches!(error, DeadLetterError::NotFound(42)));

    app.notifications.fail("down");
    run_out_of_stock(&app).await;
    let id = app.dead_letters.list(false).await.unwrap()[0].id;
    assert!(app.dead_letters.claim(id).await.unwrap());
    assert!(
        !app.dead_letters.claim(id).await.unwrap(),
        "two replays at once"
    );
    let busy = dead_letters::replay(&app.bus, &*app.dead_letters, id)
        .await
        .unwrap_err();
    assert!(matches!(busy, DeadLetterError::AlreadyReplayed(_)));
}
