//! The object-safe traits of each fredkit primitive.
//!
//! Code that only *uses* a primitive — a handler that checks a rate limit, a
//! service that reads through a cache — depends on these traits and on
//! `fredkit-core` alone, and can be handed the Redis implementation in
//! production and an in-memory one in unit tests.
//!
//! Each trait is object-safe (`Arc<dyn CacheStore>` works) and speaks bytes;
//! the typed conveniences live in an extension trait with a blanket impl
//! (`CacheStoreExt` for every `CacheStore`), taking a [`Codec`](crate::Codec)
//! per call.
//!
//! Each trait documents, as a contract every implementation keeps:
//! what every method promises, how many Redis round trips it may cost, what
//! happens on failure, and what happens when its future is dropped halfway
//! (cancellation).

mod cache;
mod lock;
mod pubsub;
mod rate_limit;
mod revocation;
mod streams;

pub use cache::{CacheStore, CacheStoreExt};
pub use lock::{DistributedLock, LockLease};
pub use pubsub::{Message, Publisher, PublisherExt, Subscriber, SubscriberExt};
pub use rate_limit::{Decision, RateLimiter};
pub use revocation::{RevocationStore, TokenClaims};
pub use streams::{StreamProducer, StreamProducerExt};
