//! The [`CacheStore`] contract.

use std::time::Duration;

use bytes::Bytes;
use fredkit_core::traits::CacheStore;
use fredkit_core::{ErrorKind, Result};

use super::{assert_kind, together, Time};

const LONG: Duration = Duration::from_secs(600);
const SHORT: Duration = Duration::from_millis(50);
/// How long the suite lets pass to see a [`SHORT`] entry expire.
const EXPIRY_WAIT: Duration = Duration::from_millis(300);

/// Checks [`CacheStore`]'s contract on `a` and `b`, two handles onto one store, with keys
/// under `ns` (a prefix without trailing `:`, unique per run).
///
/// Asserts: a missing key reads `None` and removes `false`; any bytes (empty, every byte
/// value, 64 KiB) round trip exactly across handles; `set_bytes` replaces the value and
/// its expiry (longer and shorter); `remove` answers `true` once, then `false`, also for
/// an expired entry; an entry is gone once its TTL has passed while a long-lived one
/// stays; a zero TTL is `InvalidInput` and leaves the existing entry as it was; 32
/// concurrent writers through both handles each find their own value; concurrent
/// writers of one key leave one of their values, whole.
///
/// # Errors
///
/// An unexpected error of the implementation (the suite panics on a broken promise).
pub async fn cache_store<S: CacheStore + ?Sized>(
    a: &S,
    b: &S,
    ns: &str,
    time: &Time,
) -> Result<()> {
    let key = |k: &str| format!("{ns}:{k}");

    // Absent.
    assert_eq!(
        a.get_bytes(&key("absent")).await?,
        None,
        "a key never written must read None"
    );
    assert!(
        !a.remove(&key("absent")).await?,
        "removing a key never written must answer false"
    );

    // Round trips of any bytes, across handles.
    let all_bytes: Bytes = (0..=255u8).collect::<Vec<u8>>().into();
    let big: Bytes = (0..65_536u32)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    for (name, value) in [
        ("plain", Bytes::from_static(b"hello")),
        ("empty", Bytes::new()),
        ("all-bytes", all_bytes),
        ("big", big),
    ] {
        a.set_bytes(&key(name), value.clone(), LONG).await?;
        assert_eq!(
            b.get_bytes(&key(name)).await?,
            Some(value),
            "the {name} value written through one handle must read back exactly through the other"
        );
    }

    // Replace.
    a.set_bytes(&key("plain"), Bytes::from_static(b"second"), LONG)
        .await?;
    assert_eq!(
        b.get_bytes(&key("plain")).await?,
        Some(Bytes::from_static(b"second")),
        "set_bytes must replace the previous value"
    );

    // Zero TTL: refused, the entry left as it was.
    assert_kind(
        a.set_bytes(&key("plain"), Bytes::from_static(b"never"), Duration::ZERO)
            .await,
        ErrorKind::InvalidInput,
        "set_bytes with a zero TTL",
    );
    assert_eq!(
        b.get_bytes(&key("plain")).await?,
        Some(Bytes::from_static(b"second")),
        "a refused set_bytes (zero TTL) must leave the entry as it was"
    );
    assert_kind(
        a.set_bytes(
            &key("zero-new"),
            Bytes::from_static(b"never"),
            Duration::ZERO,
        )
        .await,
        ErrorKind::InvalidInput,
        "set_bytes with a zero TTL",
    );
    assert_eq!(
        b.get_bytes(&key("zero-new")).await?,
        None,
        "a refused set_bytes must write nothing"
    );

    // Remove.
    assert!(
        b.remove(&key("plain")).await?,
        "remove of a live entry must answer true"
    );
    assert_eq!(
        a.get_bytes(&key("plain")).await?,
        None,
        "a removed entry must read None"
    );
    assert!(
        !a.remove(&key("plain")).await?,
        "a second remove must answer false"
    );

    // Expiry, and set_bytes replacing the expiry both ways.
    let v = Bytes::from_static(b"v");
    a.set_bytes(&key("short"), v.clone(), SHORT).await?;
    a.set_bytes(&key("long"), v.clone(), LONG).await?;
    a.set_bytes(&key("shortened"), v.clone(), LONG).await?;
    b.set_bytes(&key("shortened"), v.clone(), SHORT).await?;
    a.set_bytes(&key("lengthened"), v.clone(), SHORT).await?;
    b.set_bytes(&key("lengthened"), v.clone(), LONG).await?;
    time.pass(EXPIRY_WAIT).await;
    assert_eq!(
        a.get_bytes(&key("short")).await?,
        None,
        "an entry must be gone once its TTL has passed"
    );
    assert_eq!(
        a.get_bytes(&key("long")).await?,
        Some(v.clone()),
        "an entry must live until its TTL"
    );
    assert_eq!(
        a.get_bytes(&key("shortened")).await?,
        None,
        "set_bytes must replace the expiry: a shorter TTL given later must end the entry"
    );
    assert_eq!(
        a.get_bytes(&key("lengthened")).await?,
        Some(v),
        "set_bytes must replace the expiry: a longer TTL given later must keep the entry"
    );
    assert!(
        !b.remove(&key("short")).await?,
        "remove of an expired entry must answer false"
    );

    // Concurrent writers of distinct keys, through both handles.
    let writes = (0..32u32).map(|i| {
        let store = if i % 2 == 0 { a } else { b };
        let k = key(&format!("many:{i}"));
        async move { store.set_bytes(&k, Bytes::from(i.to_string()), LONG).await }
    });
    for r in together(writes).await {
        r?;
    }
    for i in 0..32u32 {
        assert_eq!(
            a.get_bytes(&key(&format!("many:{i}"))).await?,
            Some(Bytes::from(i.to_string())),
            "concurrent writer {i} must find its own value"
        );
    }

    // Concurrent writers of one key: one whole value wins.
    let values: Vec<Bytes> = (0..16u8).map(|i| Bytes::from(vec![i; 1024])).collect();
    let writes = values.iter().enumerate().map(|(i, v)| {
        let store = if i % 2 == 0 { a } else { b };
        let k = key("contended");
        async move { store.set_bytes(&k, v.clone(), LONG).await }
    });
    for r in together(writes).await {
        r?;
    }
    let winner = a.get_bytes(&key("contended")).await?;
    assert!(
        winner.as_ref().is_some_and(|w| values.contains(w)),
        "concurrent writers of one key must leave one of their values, whole (got {:?} bytes)",
        winner.map(|w| w.len())
    );
    Ok(())
}
