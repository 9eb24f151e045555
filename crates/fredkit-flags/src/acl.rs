//! The least-privilege ACL rule of this crate.

use fredkit_core::KeySpace;

/// The commands this crate sends, as ACL tokens: the write and sync scripts
/// (`EVALSHA`, `EVAL` after `NOSCRIPT`, and every command they call,
/// whichever branch runs), the admin reads (`HGET`, `HGETALL`, `XREVRANGE`).
/// Its pub/sub commands are [`fredkit_pubsub::ACL_COMMANDS`]. The complete
/// rule is [`acl_rule`].
pub const ACL_COMMANDS: &str =
    "+evalsha +eval +time +get +incr +hget +hgetall +hset +hdel +xadd +xrevrange";

/// The complete ACL rule a service needs to use this crate under `keys`
/// and nothing else: `-@all`, the connection's commands
/// ([`fredkit_conn::ACL_COMMANDS`]), [`fredkit_pubsub::ACL_COMMANDS`] (the
/// change channel), [`ACL_COMMANDS`], `~prefix:*` (its keys) and
/// `&prefix:*` (its channel), with the glob characters of the prefix
/// escaped.
///
/// `keys` is the namespace's prefix (what [`Flags::new`](crate::Flags::new)
/// and [`FlagAdmin::new`](crate::FlagAdmin::new) were given). An instance
/// that only evaluates needs the same rule (its sync script is an
/// `EVALSHA` too); to keep instances read-only, give them a rule without
/// `+incr +hset +hdel +xadd` (their `EVALSHA` of the write script then fails
/// with [`ErrorKind::Permission`](crate::ErrorKind::Permission)).
///
/// Give it to `ACL SETUSER <user> on ><password> <rule>` (on every node of a
/// cluster). Anything outside it fails with
/// [`ErrorKind::Permission`](crate::ErrorKind::Permission), naming the command
/// and, for a script, the keys.
///
/// ```
/// use fredkit_core::KeySpace;
/// let rule = fredkit_flags::acl_rule(&KeySpace::new("shop:flags")?);
/// assert!(rule.starts_with("-@all ") && rule.ends_with("shop:flags:*"));
/// # Ok::<(), fredkit_core::Error>(())
/// ```
pub fn acl_rule(keys: &KeySpace) -> String {
    let pattern = keys.scan_pattern();
    format!(
        "-@all {} {} {ACL_COMMANDS} ~{pattern} &{pattern}",
        fredkit_conn::ACL_COMMANDS,
        fredkit_pubsub::ACL_COMMANDS
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readme_shows_the_rule() -> fredkit_core::Result<()> {
        let rule = acl_rule(&KeySpace::new("shop:flags")?);
        assert!(
            include_str!("../README.md").contains(&rule),
            "README.md's 'Least privilege (ACL)' section must show: {rule}"
        );
        Ok(())
    }

    #[test]
    fn glob_characters_of_the_prefix_are_escaped() -> fredkit_core::Result<()> {
        assert!(acl_rule(&KeySpace::new("a*b")?).ends_with("a\\*b:*"));
        Ok(())
    }
}
