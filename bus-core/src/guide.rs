#![doc = include_str!("../guide/README.md")]

/// Chapter 1.
pub mod commands_and_events {
    #![doc = include_str!("../guide/01-commands-and-events.md")]
}

/// Chapter 2.
pub mod handlers_and_dependency_injection {
    #![doc = include_str!("../guide/02-handlers-and-dependency-injection.md")]
}

/// Chapter 3.
pub mod unit_of_work_and_aggregates {
    #![doc = include_str!("../guide/03-unit-of-work-and-aggregates.md")]
}

/// Chapter 4.
pub mod queries_and_read_models {
    #![doc = include_str!("../guide/04-queries-and-read-models.md")]
}

/// Chapter 5.
pub mod bootstrap_and_testing {
    #![doc = include_str!("../guide/05-bootstrap-and-testing.md")]
}

/// Chapter 6.
pub mod failure_handling {
    #![doc = include_str!("../guide/06-failure-handling.md")]
}

/// Chapter 7.
pub mod handlers_across_crates {
    #![doc = include_str!("../guide/07-handlers-across-crates.md")]
}

/// Chapter 8.
pub mod adding_a_use_case {
    #![doc = include_str!("../guide/08-adding-a-use-case.md")]
}

/// Chapter 9.
pub mod nothing_committed_is_lost {
    #![doc = include_str!("../guide/09-nothing-committed-is-lost.md")]
}

/// Chapter 10.
pub mod your_own_domain {
    #![doc = include_str!("../guide/10-your-own-domain.md")]
}

/// Chapter 11.
#[cfg(feature = "json")]
pub mod event_sourcing {
    #![doc = include_str!("../guide/11-event-sourcing.md")]
}

/// Chapter 12.
#[cfg(feature = "json")]
pub mod sagas_and_scheduling {
    #![doc = include_str!("../guide/12-sagas-and-scheduling.md")]
}
