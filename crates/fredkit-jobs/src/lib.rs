//! # fredkit-jobs
//!
//! Background jobs on Redis: delayed (server clock), prioritised and
//! recurring jobs, retries with backoff, leases renewed while a handler
//! runs, stalled-job recovery, job state and results, pause / resume,
//! exactly-once recurring ticks. See the README for the delivery contract
//! and the round trips.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod acl;
mod keys;
mod metrics;
mod options;
mod queue;
mod recurring;
mod reply;
mod worker;

pub use acl::{acl_rule, ACL_COMMANDS};
/// The core types every fredkit crate shares, re-exported the same way from
/// each: `fredkit_<crate>::{Error, ErrorKind, Result, FailMode, KeySpace,
/// IntoKeySpace}` are `fredkit_core`'s.
pub use fredkit_core::{Error, ErrorKind, FailMode, IntoKeySpace, KeySpace, Result};
pub use metrics::WorkerSnapshot;
pub use options::{JobBackoff, JobOptions, Keep, MAX_DELAY};
pub use queue::{AttemptError, Counts, Enqueued, JobInfo, JobState, Queue};
pub use recurring::{Scheduler, SchedulerHandle};
pub use worker::{Job, ShutdownReport, Worker, WorkerConfig};

/// The README's example, compiled as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
