//! Redelivering a stored event: a store's recovery hands back an event
//! whose handlers did not all complete (the process died, the task running
//! it was dropped), naming the handlers that did; the others run, and what
//! they release runs after them, as in any dispatch.

use std::convert::Infallible;

use super::cascade::{Cascade, Current, Run};
use super::invocation::dispatch_span;
use super::Bus;
use crate::error::DispatchError;
use crate::events::PendingEvent;

impl Bus {
    /// Delivers `event` again to each of its handlers except those named in
    /// `completed` (their paths, as [`Delivery::handler`](crate::delivery::Delivery::handler)
    /// gave them), with its own ids (its [`context`](PendingEvent::context),
    /// set by the store), then runs the cascade they cause. Retries and dead
    /// letters work as in any dispatch; a stored event's store hears how the
    /// delivery goes (see [`DeliveryLog`](crate::delivery::DeliveryLog)). A name in
    /// `completed` that is no handler of the event here is ignored.
    ///
    /// ```
    /// use std::sync::Mutex;
    /// use arch_events::{handler, Bus, Dependencies, Event, MessageContext, PendingEvent};
    ///
    /// #[derive(Debug, Clone, Event)]
    /// struct Shipped;
    ///
    /// #[handler]
    /// fn email(_: &Shipped, calls: &Mutex<Vec<&'static str>>) {
    ///     calls.lock().unwrap().push("email");
    /// }
    ///
    /// #[handler]
    /// fn invoice(_: &Shipped, calls: &Mutex<Vec<&'static str>>) {
    ///     calls.lock().unwrap().push("invoice");
    /// }
    ///
    /// let calls = std::sync::Arc::new(Mutex::new(Vec::<&str>::new()));
    /// let bus = Bus::builder()
    ///     .dependencies(Dependencies::new().shared_arc(calls.clone()))
    ///     .build()?;
    /// let mut event = PendingEvent::new(Shipped);
    /// event.assign_ids(&MessageContext::root());
    /// let emailed = [format!("{}::email", module_path!())];
    /// futures::executor::block_on(bus.redeliver(event, &emailed))?;
    /// assert_eq!(*calls.lock().unwrap(), ["invoice"]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn redeliver(
        &self,
        event: PendingEvent,
        completed: &[String],
    ) -> Result<(), DispatchError<Infallible>> {
        crate::blocking::driving(self.redeliver_awaited(event, completed)).await
    }

    async fn redeliver_awaited(
        &self,
        mut event: PendingEvent,
        completed: &[String],
    ) -> Result<(), DispatchError<Infallible>> {
        let _in_flight = self.enter_dispatch()?;
        let meta = event.meta();
        let mut context = event.context();
        let span = dispatch_span(meta, "redelivery", &mut context);
        let context = event.assign_ids(&context.unwrap_or_default());
        let mut cascade = Cascade::new(meta, self.inner.max_messages, 0);
        cascade.count(meta)?;
        let mut current = Current::new(event, context);
        current.skip = completed.into();
        let run = Run::starting_with(cascade, current);
        self.run_to_end(run, span)
            .await
            .map_err(DispatchError::from)
    }
}
