//! fredkit-jobs: idempotent enqueue, delays on the server clock, priorities,
//! retries to dead and back, recurring ticks from two schedulers.

use super::{step, Demo, Section, SectionFuture};
use anyhow::{ensure, Result};
use fredkit_jobs::{Job, JobBackoff, JobOptions, JobState, Queue, Scheduler, Worker, WorkerConfig};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(crate) const SECTION: Section = Section {
    name: "jobs",
    title: "fredkit-jobs: background jobs, retries, recurring ticks",
    run,
};

fn run(demo: &Demo) -> SectionFuture<'_> {
    Box::pin(tour(demo))
}

/// Waits until `f` holds, at most 10 s.
async fn until<F, Fut>(mut f: F) -> Result<bool>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = fredkit_jobs::Result<bool>>,
{
    for _ in 0..500 {
        if f().await? {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(false)
}

async fn tour(demo: &Demo) -> Result<()> {
    let r = &demo.redis;
    // A fresh prefix per run, so a second run starts from an empty queue.
    let run_id = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let queue: Queue<String> = Queue::new(r, format!("demo:jobs:{run_id}"), "invoices")?;

    // "No duplicate invoice": the id makes enqueue idempotent.
    let first = queue
        .enqueue_with(&"order 42".into(), JobOptions::new().id("invoice-42"))
        .await?;
    let again = queue
        .enqueue_with(&"order 42".into(), JobOptions::new().id("invoice-42"))
        .await?;
    step(
        "queue.enqueue_with(&\"order 42\", JobOptions::new().id(\"invoice-42\"))  // twice",
        format!("added: {} then {} (one job)", first.added, again.added),
    );
    ensure!(
        first.added && !again.added,
        "the same id was enqueued twice"
    );

    // Due in 300 ms by the server's clock; a higher priority.
    queue
        .enqueue_with(
            &"reminder".into(),
            JobOptions::new()
                .id("reminder")
                .delay(Duration::from_millis(300)),
        )
        .await?;
    queue
        .enqueue_with(
            &"urgent".into(),
            JobOptions::new().id("urgent").priority(10),
        )
        .await?;
    // Fails twice, then succeeds: retried after a fixed backoff.
    queue
        .enqueue_with(
            &"flaky".into(),
            JobOptions::new()
                .id("flaky")
                .max_attempts(3)
                .backoff(JobBackoff::Fixed(Duration::from_millis(100))),
        )
        .await?;
    // Always fails: dead after 2 attempts, with both errors.
    queue
        .enqueue_with(
            &"broken".into(),
            JobOptions::new()
                .id("broken")
                .max_attempts(2)
                .backoff(JobBackoff::Fixed(Duration::from_millis(50))),
        )
        .await?;
    let counts = queue.counts().await?;
    step(
        "queue.counts()  // one script",
        format!(
            "waiting {}, delayed {}, active {}",
            counts.waiting, counts.delayed, counts.active
        ),
    );

    let order = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&order);
    let worker = Worker::start(
        &queue,
        WorkerConfig::new()
            .concurrency(1)
            .block(Duration::from_millis(200)),
        move |job: Job<String>| {
            seen.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(format!("{}#{}", job.id, job.attempt));
            async move {
                match job.payload.as_str() {
                    "flaky" if job.attempt < 3 => Err(format!("flaky attempt {}", job.attempt)),
                    "broken" => Err("the PDF service refused".to_string()),
                    other => Ok(format!("done: {other}")),
                }
            }
        },
    )?;
    let settled = until(|| async {
        let c = queue.counts().await?;
        Ok(c.completed == 4 && c.dead == 1)
    })
    .await?;
    ensure!(
        settled,
        "the jobs did not settle: {:?}",
        queue.counts().await?
    );
    step(
        "Worker::start(&queue, WorkerConfig::new().concurrency(1), handler)",
        format!(
            "attempts in order: {}",
            order.lock().unwrap_or_else(|p| p.into_inner()).join(", ")
        ),
    );
    let broken = queue.job::<String>("broken").await?;
    if let Some(info) = &broken {
        step(
            "queue.job::<String>(\"broken\")",
            format!(
                "{:?} after {} attempts; errors: {:?}",
                info.state,
                info.attempts,
                info.errors
                    .iter()
                    .map(|e| e.message.as_str())
                    .collect::<Vec<_>>()
            ),
        );
    }
    ensure!(
        broken.map(|i| i.state) == Some(JobState::Dead),
        "the broken job is not dead"
    );
    let flaky = queue.job::<String>("flaky").await?;
    step(
        "queue.job::<String>(\"flaky\")",
        format!("{:?}", flaky.map(|i| (i.state, i.attempts, i.result))),
    );
    let brought_back = queue.retry("broken").await?;
    let twice = queue.retry("broken").await?;
    step(
        "queue.retry(\"broken\")  // twice",
        format!("{brought_back} then {twice} (back once)"),
    );
    let report = worker.shutdown().await;
    step(
        "worker.shutdown().await",
        format!(
            "started {}, completed {}, failed {}, dead {}, abandoned {}",
            report.metrics.started,
            report.metrics.completed,
            report.metrics.failed,
            report.metrics.dead,
            report.abandoned
        ),
    );

    // Recurring: two schedulers, one tick each 200 ms, each tick once.
    let ticks: Queue<String> = Queue::new(r, format!("demo:jobs:{run_id}"), "ticks")?;
    let a = Scheduler::new(&ticks)
        .every("heartbeat", Duration::from_millis(200), &"beat".into())?
        .start();
    let b = Scheduler::new(&ticks)
        .every("heartbeat", Duration::from_millis(200), &"beat".into())?
        .start();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (na, nb) = (a.shutdown().await, b.shutdown().await);
    let c = ticks.counts().await?;
    step(
        "two Scheduler::new(&queue).every(\"heartbeat\", 200 ms, ..) for 1.1 s",
        format!(
            "scheduler A enqueued {na}, B {nb}; jobs in the queue: {}",
            c.waiting + c.delayed
        ),
    );
    ensure!(
        na + nb == c.waiting + c.delayed,
        "a tick was enqueued twice"
    );
    let bad = Scheduler::new(&ticks).cron("nightly", "0 25 * * *", &"x".into());
    step(
        "Scheduler::new(&queue).cron(\"nightly\", \"0 25 * * *\", ..)",
        bad.err().map(|e| e.to_string()).unwrap_or_default(),
    );
    Ok(())
}
