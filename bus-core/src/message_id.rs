//! Message ids: UUIDs of version 7 (RFC 9562), made without a lock, an
//! allocation or a system call.
//!
//! The layout, most significant bit first:
//!
//! | bits | what |
//! |---|---|
//! | 48 | Unix time in milliseconds |
//! | 4 | the version, `0111` |
//! | 12 | the high bits of a per-thread counter |
//! | 2 | the variant, `10` |
//! | 14 | the low bits of the per-thread counter |
//! | 48 | random bits drawn once per thread |
//!
//! Ids sort by the time they were made (to the clock's tick: a few
//! milliseconds on Linux, which reads its coarse real-time clock, a vDSO
//! read of a few nanoseconds), and strictly in the order one thread made
//! them.
//!
//! Why two ids never collide:
//! - one thread: each id's (time, counter) pair is larger than the last
//!   one's. The time never goes back (a clock stepped back leaves the last
//!   time in place), and when the 26-bit counter wraps within one
//!   millisecond the time is moved one millisecond on, so a pair never
//!   repeats;
//! - two threads, or two processes: their 48 random bits differ, except with
//!   a chance of 2^-48 per pair of threads, and even then their ids collide
//!   only if made in the same millisecond with the same counter value.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::num::NonZeroU64;
use std::str::FromStr;

/// A message's id: a UUID of version 7 (RFC 9562), unique across threads
/// and processes, ordered by the time it was made.
///
/// Making one reads a clock and a thread-local counter: no lock, no
/// allocation, no system call (see the module's docs for the layout and
/// why ids never collide).
///
/// ```
/// use arch_events::MessageId;
///
/// let a = MessageId::new();
/// let b = MessageId::new();
/// assert_ne!(a, b);
/// assert!(a < b, "ids made one after the other sort in that order");
/// assert_eq!(a.version(), 7);
/// assert_eq!(a.to_string().parse::<MessageId>().unwrap(), a);
/// let now = std::time::SystemTime::now()
///     .duration_since(std::time::UNIX_EPOCH)
///     .unwrap()
///     .as_millis() as u64;
/// assert!(now.abs_diff(a.unix_ms()) < 1_000, "made about now");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId {
    /// Never zero (a version 7 id has its version bits set), so that an
    /// `Option<MessageId>` is as small as an id.
    high: NonZeroU64,
    low: u64,
}

/// What one thread's ids are made from.
#[derive(Clone, Copy)]
struct Generator {
    /// This thread's random bits (the low 48), drawn on its first id.
    random: Option<u64>,
    /// The next counter value (the low 26 bits are used).
    counter: u32,
    /// The time of this thread's last id, in Unix milliseconds.
    last_ms: u64,
}

const COUNTER_BITS: u32 = 26;
const COUNTER_MASK: u32 = (1 << COUNTER_BITS) - 1;
const RANDOM_MASK: u64 = (1 << 48) - 1;
const VERSION_7: u64 = 0x7 << 12;
const VARIANT_RFC: u64 = 0b10 << 62;

thread_local! {
    static GENERATOR: Cell<Generator> = const {
        Cell::new(Generator { random: None, counter: 0, last_ms: 0 })
    };
}

impl MessageId {
    /// A fresh id.
    #[inline]
    pub fn new() -> Self {
        let now = clock::unix_ms();
        GENERATOR.with(|cell| {
            let generator = cell.get();
            let random = match generator.random {
                Some(random) => random,
                None => thread_random(),
            };
            let counter = generator.counter & COUNTER_MASK;
            let mut ms = now.max(generator.last_ms);
            if counter == 0 && ms == generator.last_ms && generator.random.is_some() {
                // The counter wrapped within one millisecond (or while the
                // clock stood behind): move the time on, so that this
                // thread's (time, counter) pairs keep growing.
                ms += 1;
            }
            cell.set(Generator {
                random: Some(random),
                counter: counter.wrapping_add(1),
                last_ms: ms,
            });
            MessageId::from_parts(ms, counter, random)
        })
    }

    #[inline]
    fn from_parts(ms: u64, counter: u32, random: u64) -> Self {
        let counter = u64::from(counter);
        let high = ((ms & 0xffff_ffff_ffff) << 16) | VERSION_7 | (counter >> 14);
        let low = VARIANT_RFC | ((counter & 0x3fff) << 48) | (random & RANDOM_MASK);
        MessageId {
            // The version bits are set: never zero.
            high: NonZeroU64::new(high).unwrap_or(NonZeroU64::MIN),
            low,
        }
    }

    /// The id as a number.
    pub fn as_u128(self) -> u128 {
        (u128::from(self.high.get()) << 64) | u128::from(self.low)
    }

    /// An id from a number (one read back from storage); `None` for a number
    /// no id has (one whose high 64 bits are zero). Any UUID is accepted,
    /// not only version 7 ones: ids that other systems made, or that an
    /// earlier release stored, read back unchanged.
    pub fn from_u128(value: u128) -> Option<Self> {
        Some(MessageId {
            high: NonZeroU64::new((value >> 64) as u64)?,
            low: value as u64,
        })
    }

    /// The UUID version: 7 for every id this crate makes.
    pub fn version(self) -> u8 {
        ((self.high.get() >> 12) & 0xf) as u8
    }

    /// When a version 7 id was made, in milliseconds since the Unix epoch
    /// (to the clock's tick). For an id of another version, its first 48
    /// bits, which mean something else.
    pub fn unix_ms(self) -> u64 {
        self.high.get() >> 16
    }
}

impl Default for MessageId {
    fn default() -> Self {
        MessageId::new()
    }
}

/// This thread's random bits: drawn once per thread, from the operating
/// system's random source (through `RandomState`'s seed), this process and
/// this thread.
#[cold]
fn thread_random() -> u64 {
    // `RandomState` is seeded from the operating system's random source once
    // per process and varies per instance; mixing in the thread's id and the
    // time keeps two threads, or two processes, apart.
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(std::process::id().into());
    hasher.write(format!("{:?}", std::thread::current().id()).as_bytes());
    if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(now.as_nanos());
    }
    hasher.finish()
}

mod clock {
    /// Now, in milliseconds since the Unix epoch, from the coarse real-time
    /// clock: a vDSO read (a few nanoseconds, no system call), to the
    /// kernel's tick (1 to 4 ms).
    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[inline]
    pub(super) fn unix_ms() -> u64 {
        let now = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
        let seconds = u64::try_from(now.tv_sec).unwrap_or(0);
        let millis = u64::try_from(now.tv_nsec).unwrap_or(0) / 1_000_000;
        seconds.saturating_mul(1_000).saturating_add(millis)
    }

    /// Now, in milliseconds since the Unix epoch.
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    #[inline]
    pub(super) fn unix_ms() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |now| u64::try_from(now.as_millis()).unwrap_or(u64::MAX))
    }
}

impl MessageId {
    /// The id's text, `8-4-4-4-12` lower-case hexadecimal digits, written
    /// digit by digit: the formatting machinery's padded hexadecimal
    /// integers cost some forty times as much, and a store writes several
    /// ids per request.
    fn hyphenated(self) -> [u8; 36] {
        /// Writes the low `digits.len()` hexadecimal digits of `value`.
        fn hex(digits: &mut [u8], value: u64) {
            const DIGITS: &[u8; 16] = b"0123456789abcdef";
            let last = digits.len().saturating_sub(1);
            for (at, digit) in digits.iter_mut().enumerate() {
                let nibble = (value >> (4 * (last - at))) & 0xf;
                *digit = DIGITS[nibble as usize];
            }
        }
        let (high, low) = (self.high.get(), self.low);
        let mut text = [b'-'; 36];
        hex(&mut text[0..8], high >> 32);
        hex(&mut text[9..13], high >> 16);
        hex(&mut text[14..18], high);
        hex(&mut text[19..23], low >> 48);
        hex(&mut text[24..36], low);
        text
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.hyphenated();
        // Hexadecimal digits and dashes: ASCII, so always UTF-8.
        let text = std::str::from_utf8(&text).map_err(|_| fmt::Error)?;
        f.pad(text)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

/// A text that is not a [`MessageId`].
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "`{0}` is not a message id (32 hexadecimal digits, dashes allowed, the first 16 not all zero)"
)]
pub struct ParseMessageIdError(String);

impl FromStr for MessageId {
    type Err = ParseMessageIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let digits: String = text.chars().filter(|c| *c != '-').collect();
        if digits.len() != 32 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ParseMessageIdError(text.to_owned()));
        }
        u128::from_str_radix(&digits, 16)
            .ok()
            .and_then(MessageId::from_u128)
            .ok_or_else(|| ParseMessageIdError(text.to_owned()))
    }
}

/// Written as its text (`0190e0b6-...`), as it prints: a saga's state can
/// keep the id of a timeout it requested, say.
impl serde::Serialize for MessageId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Read from its text; anything else is an error naming it.
impl<'de> serde::Deserialize<'de> for MessageId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(feature = "json")]
    fn an_id_is_written_as_its_text_and_read_back() {
        let id = MessageId::new();
        let json = serde_json::to_string(&id).unwrap_or_default();
        assert_eq!(json, format!("\"{id}\""));
        let back: MessageId = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, id);
        let bad = serde_json::from_str::<MessageId>("\"not-an-id\"").unwrap_err();
        assert!(bad.to_string().contains("not-an-id"), "{bad}");
    }

    #[test]
    fn every_id_has_the_version_and_variant_bits_of_a_uuid_v7() {
        for _ in 0..10_000 {
            let id = MessageId::new().as_u128();
            assert_eq!((id >> 76) & 0xf, 7, "version nibble of {id:032x}");
            assert_eq!((id >> 62) & 0b11, 0b10, "variant bits of {id:032x}");
        }
    }

    #[test]
    fn one_threads_ids_grow_strictly() {
        let mut last = MessageId::new();
        for _ in 0..100_000 {
            let next = MessageId::new();
            assert!(next > last, "{next} after {last}");
            last = next;
        }
    }

    #[test]
    fn a_counter_that_wraps_within_a_millisecond_moves_the_time_on() {
        // The state a thread is in after 2^26 ids within one millisecond
        // (or while the clock stood behind): far in the future, so that the
        // clock reads earlier.
        let future = clock::unix_ms() + 3_600_000;
        GENERATOR.with(|cell| {
            cell.set(Generator {
                random: Some(0xabc),
                counter: COUNTER_MASK,
                last_ms: future,
            })
        });
        let before_wrap = MessageId::new();
        let after_wrap = MessageId::new();
        assert_eq!(
            before_wrap.unix_ms(),
            future,
            "a clock behind keeps the time"
        );
        assert_eq!(after_wrap.unix_ms(), future + 1);
        assert!(after_wrap > before_wrap);
    }

    #[test]
    fn threads_making_ids_at_once_never_make_one_twice() {
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
        let made: Vec<Vec<MessageId>> = (0..8)
            .map(|_| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    (0..50_000).map(|_| MessageId::new()).collect()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|thread| thread.join().unwrap())
            .collect();
        let mut all: Vec<MessageId> = made.into_iter().flatten().collect();
        let count = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), count, "no id made twice");
    }

    #[test]
    fn ids_of_different_threads_differ_in_their_random_bits() {
        let here = MessageId::new();
        let there = std::thread::spawn(MessageId::new).join().unwrap();
        assert_ne!(here.low & RANDOM_MASK, there.low & RANDOM_MASK);
        assert_ne!(here, there);
    }

    #[test]
    fn an_id_reads_back_from_its_text_and_a_malformed_one_is_refused() {
        let id = MessageId::new();
        assert_eq!(id.to_string().parse::<MessageId>().unwrap(), id);
        assert_eq!(id.to_string().len(), 36);
        for bad in [
            "",
            "not an id",
            "00000000-0000-0000-0000-000000000001",
            "+1234567-89ab-cdef-0123-456789abcdef",
            "0123456789abcdef0123456789abcde",
            "0123456789abcdef0123456789abcdeg",
        ] {
            assert!(bad.parse::<MessageId>().is_err(), "{bad:?}");
        }
        // An id of another version (or one an earlier release stored) reads
        // back unchanged.
        let v4: MessageId = "f47ac10b-58cc-4372-a567-0e02b2c3d479".parse().unwrap();
        assert_eq!(v4.version(), 4);
        assert_eq!(v4.to_string(), "f47ac10b-58cc-4372-a567-0e02b2c3d479");
        // Every digit in its place, and the text padded like any other.
        let all: MessageId = "0123456789abcdeffedcba9876543210".parse().unwrap();
        assert_eq!(all.to_string(), "01234567-89ab-cdef-fedc-ba9876543210");
        assert_eq!(
            format!("{all:>38}|"),
            "  01234567-89ab-cdef-fedc-ba9876543210|"
        );
        assert_eq!(
            format!("{all:?}"),
            "MessageId(01234567-89ab-cdef-fedc-ba9876543210)"
        );
    }
}
