//! fredkit-core: key spaces and codecs.

use super::{step, Demo, Section, SectionFuture};
use anyhow::{ensure, Result};
use fred::prelude::*;
use fredkit_core::{Codec, KeySpace, MsgPack};
use serde::{Deserialize, Serialize};

pub(crate) const SECTION: Section = Section {
    name: "core",
    title: "fredkit-core: keys and codecs",
    run,
};

fn run(demo: &Demo) -> SectionFuture<'_> {
    Box::pin(tour(demo))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
    roles: Vec<String>,
}

async fn tour(demo: &Demo) -> Result<()> {
    // Keys are built, never formatted by hand: the hash tag lands where it
    // belongs and user data in a part cannot move the key to another slot.
    let space = KeySpace::new("demo")?;
    let key = space.key(["user", "42"]);
    step("KeySpace::new(\"demo\")?.key([\"user\", \"42\"])", &key);
    step(
        "space.tagged(\"user42\", [\"sessions\"])?  // one cluster slot per tag",
        space.tagged("user42", ["sessions"])?,
    );
    step(
        "space.key([\"a:b\", \"{x}\"])  // user data cannot escape its part",
        space.key(["a:b", "{x}"]),
    );
    match space.try_key(["user", "{42}"]) {
        Ok(k) => step("space.try_key([\"user\", \"{42}\"])", k),
        Err(e) => step("space.try_key([\"user\", \"{42}\"])", format!("error: {e}")),
    }

    // Values go through a codec: MessagePack with named fields by default.
    let user = User {
        id: 42,
        name: "Ada".into(),
        roles: vec!["admin".into(), "ops".into()],
    };
    let codec = MsgPack;
    let bytes = codec.encode(&user)?;
    step(
        &format!("MsgPack.encode(&{user:?})"),
        format!("{} bytes: {}", bytes.len(), hex(&bytes)),
    );
    let client = demo.redis.client();
    client
        .set::<(), _, _>(
            key.clone(),
            bytes.to_vec(),
            Some(Expiration::EX(60)),
            None,
            false,
        )
        .await?;
    let stored: Option<Vec<u8>> = client.get(key.clone()).await?;
    let stored = stored.unwrap_or_default();
    let back: User = codec.decode(&stored)?;
    step(
        "SET key bytes EX 60; GET key; MsgPack.decode(&bytes)",
        format!("{back:?}"),
    );
    ensure!(back == user, "the MsgPack round trip changed the value");
    match codec.decode::<User>(b"\xc1 not msgpack") {
        Ok(u) => step("MsgPack.decode::<User>(garbage)", format!("{u:?}")),
        Err(e) => step(
            "MsgPack.decode::<User>(garbage)  // an error, never a panic",
            format!("error: {e}"),
        ),
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    let shown: Vec<String> = bytes.iter().take(24).map(|b| format!("{b:02x}")).collect();
    let more = if bytes.len() > 24 { " ..." } else { "" };
    format!("{}{more}", shown.join(" "))
}
