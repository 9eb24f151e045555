//! fredkit-session: two concurrent requests that both keep their write,
//! server-side counters, sign-in with a new id, the devices list and
//! "sign out everywhere".

use super::{step, Demo, Section, SectionFuture};
use anyhow::{ensure, Result};
use fred::prelude::*;
use fredkit_session::{Changes, SaveOutcome, SessionOptions, Sessions};
use std::time::{SystemTime, UNIX_EPOCH};

pub(crate) const SECTION: Section = Section {
    name: "session",
    title: "fredkit-session: web sessions that never lose a concurrent write",
    run,
};

fn run(demo: &Demo) -> SectionFuture<'_> {
    Box::pin(tour(demo))
}

async fn tour(demo: &Demo) -> Result<()> {
    let r = &demo.redis;
    let run_id = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let sessions = Sessions::new(r, format!("demo:session:{run_id}"), SessionOptions::new())?;

    // A visitor's first write creates the session (one script).
    let mut first = Changes::new();
    first.set("theme", "dark")?;
    let visitor = sessions.create(None, None, &first).await?;
    step(
        "sessions.create(None, None, {theme: \"dark\"})",
        format!("{visitor:?}  (the id itself never appears in Debug or logs)"),
    );

    // Two tabs: both requests load the session, then each saves its field.
    let (tab1, tab2) = tokio::join!(sessions.load(visitor.id()), sessions.load(visitor.id()));
    ensure!(
        tab1?.is_some() && tab2?.is_some(),
        "the session did not load"
    );
    let mut c1 = Changes::new();
    c1.set("cart", &vec!["sku-1"])?;
    let mut c2 = Changes::new();
    c2.set("locale", "fr")?;
    let (s1, s2) = tokio::join!(
        sessions.save(visitor.id(), &c1),
        sessions.save(visitor.id(), &c2)
    );
    let (s1, s2) = (s1?, s2?);
    let now = sessions
        .load(visitor.id())
        .await?
        .ok_or_else(|| anyhow::anyhow!("the session is gone"))?;
    let (cart, locale) = (
        now.get::<Vec<String>>("cart")?,
        now.get::<String>("locale")?,
    );
    step(
        "tab 1 saves {cart}, tab 2 saves {locale}, at the same time",
        format!("{s1:?} / {s2:?}; the session now has cart {cart:?} and locale {locale:?}"),
    );
    ensure!(
        cart.is_some() && locale.is_some(),
        "a concurrent write was lost"
    );

    // Counters add up server-side (HINCRBY), whatever the concurrency.
    let adds = (0..64).map(|_| sessions.increment(visitor.id(), "page_views", 1));
    futures::future::try_join_all(adds).await?;
    let views = sessions
        .load(visitor.id())
        .await?
        .map(|s| s.counter("page_views"))
        .transpose()?;
    step(
        "64 concurrent increment(\"page_views\", 1)",
        format!("{views:?}"),
    );
    ensure!(views == Some(64), "the counter is {views:?}, not 64");

    // The touch is a PEXPIRE inside the load script: no data rewritten.
    let ttl: i64 = r.client().pttl(sessions.key(visitor.id())?).await?;
    step(
        "sessions.load(id)  // every request: HGETALL + PEXPIRE in one script",
        format!("PTTL {ttl} ms (idle timeout restarted, nothing rewritten)"),
    );

    // Sign-in: a new id (fixation), same data, listed under the user.
    let signed = sessions
        .cycle_id(&now, Some("user-42"), Some("Firefox on Linux"))
        .await?;
    let old_gone = sessions.load(visitor.id()).await?.is_none();
    step(
        "sessions.cycle_id(&session, Some(\"user-42\"), Some(\"Firefox on Linux\"))",
        format!(
            "new id; old id dead: {old_gone}; cart kept: {:?}",
            signed.get::<Vec<String>>("cart")?
        ),
    );
    ensure!(old_gone, "the old id still works");
    let phone = sessions
        .create(Some("user-42"), Some("phone"), &Changes::new())
        .await?;
    let devices = sessions.sessions_of("user-42").await?;
    step(
        "sessions.sessions_of(\"user-42\")",
        devices
            .iter()
            .map(|d| format!("{:?} since {:?}", d.device, d.created))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    ensure!(devices.len() == 2, "{} sessions listed", devices.len());

    // Sign out everywhere: one cut-off, O(1), every instance.
    sessions.revoke_all("user-42").await?;
    let late = sessions.set(phone.id(), "cart", &vec!["sku-9"]).await?;
    step(
        "sessions.revoke_all(\"user-42\"); then a late save from the phone",
        format!(
            "{late:?}; laptop session: {:?}; listed: {}",
            sessions.load(signed.id()).await?.map(|_| "alive"),
            sessions.sessions_of("user-42").await?.len()
        ),
    );
    ensure!(late == SaveOutcome::Gone, "a revoked session was written");
    Ok(())
}
