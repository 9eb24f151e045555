//! [`SessionId`]: the secret a cookie carries, and how it maps to keys.

use std::fmt;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Random bytes in a session's secret: 192 bits from the OS's CSPRNG.
const SECRET_BYTES: usize = 24;
/// Length of the secret, base64url without padding.
const SECRET_LEN: usize = 32;
/// Random bytes in an anonymous session's tag.
const ANON_TAG_BYTES: usize = 6;
/// Hex digits of the user hash in a signed-in session's tag (64 bits).
const USER_TAG_HEX: usize = 16;
/// The longest tag we accept from a cookie.
const MAX_TAG_LEN: usize = 24;

/// A session's id: what the cookie carries. **A secret**: whoever holds it
/// holds the session. It never appears in `Debug` output, logs or Redis key
/// names (keys hold a SHA-256 digest of it, the [`handle`](Self::handle)).
///
/// The id is `<tag>.<secret>`: the secret is 192 bits from the operating
/// system's CSPRNG (`rand::rngs::OsRng`); the tag is the hash tag of the
/// session's Redis keys. An anonymous session's tag is random (sessions
/// spread over the cluster's slots); a signed-in session's tag is derived from
/// its user (`u` + 16 hex digits of SHA-256 of the user id), so that all of a
/// user's sessions, their index and their cut-off live in one slot and one
/// script checks a session against its user's
/// [`revoke_all`](crate::Sessions::revoke_all) cut-off.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SessionId {
    tag: String,
    secret: String,
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionId(<redacted>)")
    }
}

impl SessionId {
    /// A fresh anonymous id (random tag).
    pub fn new_anonymous() -> SessionId {
        let mut tag = [0u8; ANON_TAG_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut tag);
        SessionId {
            tag: format!("a{}", URL_SAFE_NO_PAD.encode(tag)),
            secret: new_secret(),
        }
    }

    /// A fresh id for a session of `user` (the user's tag).
    pub fn new_for_user(user: &str) -> SessionId {
        SessionId {
            tag: user_tag(user),
            secret: new_secret(),
        }
    }

    /// Parses a cookie value. `None` for anything that is not an id this
    /// crate issued (wrong shape, length or alphabet): such a cookie is "no
    /// session", never an error.
    pub fn parse(value: &str) -> Option<SessionId> {
        let (tag, secret) = value.split_once('.')?;
        let b64 = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if tag.is_empty() || tag.len() > MAX_TAG_LEN || !b64(tag) {
            return None;
        }
        if secret.len() != SECRET_LEN || !b64(secret) {
            return None;
        }
        Some(SessionId {
            tag: tag.to_owned(),
            secret: secret.to_owned(),
        })
    }

    /// The id as the cookie carries it. **Secret**: put it in a cookie and
    /// nowhere else (not in logs, URLs or error messages).
    pub fn expose_secret(&self) -> String {
        format!("{}.{}", self.tag, self.secret)
    }

    /// The hash tag of this session's keys.
    pub(crate) fn tag(&self) -> &str {
        &self.tag
    }

    /// A public name of the session: base64url of the first 128 bits of
    /// SHA-256 of the secret. It names the session's Redis key and its entry in
    /// [`sessions_of`](crate::Sessions::sessions_of); it cannot be turned back
    /// into the id, so showing it (a "signed-in devices" page) or finding it in
    /// a key name gives no access.
    pub fn handle(&self) -> String {
        let digest = Sha256::digest(self.secret.as_bytes());
        URL_SAFE_NO_PAD.encode(digest.get(..16).unwrap_or(&digest[..]))
    }
}

fn new_secret() -> String {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The tag of `user`'s sessions: `u` + 16 hex digits of SHA-256(user).
pub(crate) fn user_tag(user: &str) -> String {
    let digest = Sha256::digest(user.as_bytes());
    let mut tag = String::with_capacity(1 + USER_TAG_HEX);
    tag.push('u');
    for b in digest.iter().take(USER_TAG_HEX / 2) {
        tag.push_str(&format!("{b:02x}"));
    }
    tag
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_are_redacted() {
        let id = SessionId::new_anonymous();
        let text = id.expose_secret();
        assert_eq!(SessionId::parse(&text), Some(id.clone()));
        assert!(!format!("{id:?}").contains(&id.secret));
        assert_eq!(id.handle().len(), 22);
        let u = SessionId::new_for_user("alice@example.com");
        assert_eq!(u.tag(), user_tag("alice@example.com"));
        assert_ne!(u, SessionId::new_for_user("alice@example.com"));
    }

    #[test]
    fn foreign_cookie_values_are_not_ids() {
        for bad in [
            "",
            ".",
            "abc",
            "a.short",
            "a{b}.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "a.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            "aaaaaaaaaaaaaaaaaaaaaaaaa.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert_eq!(SessionId::parse(bad), None, "{bad}");
        }
    }
}
