//! An event held in place: the box a [`PendingEvent`](crate::PendingEvent)
//! keeps its event in, inline when the event is small, on the heap
//! otherwise, so that releasing a small event allocates nothing.
//!
//! This is the crate's only `unsafe` code, and it is not written here: it is
//! what `smallbox!` expands to. Why it is sound: the macro takes the pointer
//! it unsizes from the very value it moves into the box
//! (`addr_of!(val)`), so the pointer's metadata (the vtable of
//! `ErasedEvent` for `E`) is the metadata of the value stored, and
//! `SmallBox::new_unchecked` copies the value's bytes into inline space
//! only when its size and alignment fit, allocating with the value's own
//! layout otherwise. Nothing else here touches raw memory.
#![allow(unsafe_code)]

use smallbox::space::S4;
use smallbox::{smallbox, SmallBox};

use crate::events::ErasedEvent;

/// An event of any type: inline up to four words (32 bytes on 64-bit
/// targets, an id and a number, or one `String`), boxed beyond.
pub(crate) type EventBox = SmallBox<dyn ErasedEvent, S4>;

/// Puts `event` in an [`EventBox`].
#[inline]
pub(crate) fn event_box<E: ErasedEvent>(event: E) -> EventBox {
    smallbox!(event)
}
