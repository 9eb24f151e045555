//! The [`Publisher`] + [`Subscriber`] contract.

use std::time::Duration;

use bytes::Bytes;
use fredkit_core::traits::{Message, Publisher, Subscriber};
use fredkit_core::{Error, Result};
use futures::stream::{BoxStream, StreamExt};

/// How long the suite waits for a message before declaring it lost: generous, as it only
/// bounds a failing run.
const PATIENCE: Duration = Duration::from_secs(10);

async fn next(
    stream: &mut BoxStream<'static, Message<Bytes>>,
    what: &str,
) -> Result<Message<Bytes>> {
    match tokio::time::timeout(PATIENCE, stream.next()).await {
        Ok(Some(m)) => Ok(m),
        Ok(None) => Err(Error::protocol(format!(
            "contract: the stream ended while waiting for {what}"
        ))),
        Err(_) => Err(Error::timeout(format!(
            "contract: {what} was not delivered within {PATIENCE:?} (lost?)"
        ))),
    }
}

async fn expect(
    stream: &mut BoxStream<'static, Message<Bytes>>,
    channel: &str,
    payloads: &[Bytes],
    who: &str,
) -> Result<()> {
    for (i, p) in payloads.iter().enumerate() {
        let m = next(stream, &format!("message {i} for {who}")).await?;
        assert_eq!(m.channel, channel, "{who}: a message must name its channel");
        assert_eq!(
            &m.payload, p,
            "{who}: messages must arrive each once, in publish order (message {i})"
        );
    }
    Ok(())
}

fn batch(tag: &str, n: usize) -> Vec<Bytes> {
    (0..n).map(|i| Bytes::from(format!("{tag}-{i}"))).collect()
}

/// Checks the pub/sub contract: `publisher` publishes, `s1` and `s2` are two subscribers
/// onto the same bus (two subscriber connections, or two clones of a double), on
/// channels named under `ns`. With `counts_receivers` (standalone Redis, the memory
/// double; not a cluster, where a publish counts only the receiving node's subscribers)
/// the count `publish_bytes` returns is checked too.
///
/// Asserts: a message published before subscribing is not delivered (at most once, not
/// stored), while every message published after `subscribe_bytes` returned is, once, in
/// publish order, naming its channel; two subscribers and two receivers on one subscriber
/// each get everything; dropping one receiver leaves the others receiving; a message on
/// another channel is not delivered; with `counts_receivers`: 0 before any subscription,
/// at least 1 while subscribed, and back to 0 once every receiver was dropped.
///
/// # Errors
///
/// An unexpected error of the implementation, or a message not delivered within 10 s
/// (the suite panics on any other broken promise).
pub async fn pubsub<P, S>(
    publisher: &P,
    s1: &S,
    s2: &S,
    ns: &str,
    counts_receivers: bool,
) -> Result<()>
where
    P: Publisher + ?Sized,
    S: Subscriber + ?Sized,
{
    let ch = format!("{ns}:ch");
    let other = format!("{ns}:other");

    let n = publisher
        .publish_bytes(&ch, Bytes::from_static(b"before"))
        .await?;
    if counts_receivers {
        assert_eq!(n, 0, "a channel nobody subscribed must count 0 receivers");
    }
    let mut r1 = s1.subscribe_bytes(&ch).await?;
    let first = batch("first", 20);
    for p in &first {
        let n = publisher.publish_bytes(&ch, p.clone()).await?;
        if counts_receivers {
            assert!(
                n >= 1,
                "a subscribed channel must count its receiver (got {n})"
            );
        }
    }
    expect(&mut r1, &ch, &first, "the first subscriber").await?;

    // More receivers: another subscriber, and a second receiver on the first.
    let mut r2 = s2.subscribe_bytes(&ch).await?;
    let mut r1b = s1.subscribe_bytes(&ch).await?;
    let mut r_other = s2.subscribe_bytes(&other).await?;
    let second = batch("second", 10);
    for p in &second {
        publisher.publish_bytes(&ch, p.clone()).await?;
    }
    expect(&mut r1, &ch, &second, "the first receiver").await?;
    expect(&mut r2, &ch, &second, "the second subscriber").await?;
    expect(
        &mut r1b,
        &ch,
        &second,
        "a second receiver on the first subscriber",
    )
    .await?;

    // Dropping one receiver leaves the others.
    drop(r1b);
    let third = batch("third", 5);
    for p in &third {
        publisher.publish_bytes(&ch, p.clone()).await?;
    }
    expect(
        &mut r1,
        &ch,
        &third,
        "the first receiver after another was dropped",
    )
    .await?;
    expect(
        &mut r2,
        &ch,
        &third,
        "the second subscriber after another receiver was dropped",
    )
    .await?;

    // Channels apart: the other channel's receiver sees only its own message.
    publisher
        .publish_bytes(&other, Bytes::from_static(b"elsewhere"))
        .await?;
    let marker = vec![Bytes::from_static(b"marker")];
    publisher.publish_bytes(&ch, marker[0].clone()).await?;
    expect(
        &mut r1,
        &ch,
        &marker,
        "the first receiver (nothing from another channel)",
    )
    .await?;
    expect(
        &mut r_other,
        &other,
        &[Bytes::from_static(b"elsewhere")],
        "the other channel's receiver",
    )
    .await?;

    if counts_receivers {
        drop((r1, r2));
        // Unsubscribing may complete after the drop: poll, bounded.
        let mut n = u64::MAX;
        for _ in 0..200 {
            n = publisher
                .publish_bytes(&ch, Bytes::from_static(b"after"))
                .await?;
            if n == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            n, 0,
            "once every receiver was dropped, the channel must count 0 receivers"
        );
    }
    Ok(())
}
