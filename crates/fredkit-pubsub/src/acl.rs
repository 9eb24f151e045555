//! The least-privilege ACL rule of this crate.

use fredkit_core::KeySpace;

/// The commands this crate sends, as ACL tokens: `PUBLISH`/`SPUBLISH` for [`Publisher`](crate::Publisher), and the (un)subscribe commands of [`Subscriber`](crate::Subscriber), sharded ones on a cluster. The complete
/// rule is [`acl_rule`].
pub const ACL_COMMANDS: &str = "+publish +spublish +subscribe +ssubscribe +psubscribe +unsubscribe +sunsubscribe +punsubscribe";

/// The complete ACL rule a service needs to use this crate under `channels`
/// and nothing else: `-@all`, the connection's commands
/// ([`fredkit_conn::ACL_COMMANDS`]), [`ACL_COMMANDS`], and
/// `&prefix:*` (its channels), with the glob characters of the prefix escaped.
///
/// `channels` is the space the service's channel names are under (`app:events` for `app:events:orders`, ...); the rule allows no key (`-@all` and no `~` pattern).
///
/// Give it to `ACL SETUSER <user> on ><password> <rule>` (on every node of a
/// cluster). Anything outside it fails with
/// [`ErrorKind::Permission`](crate::ErrorKind::Permission), naming the command
/// and, for a script, the keys.
///
/// ```
/// use fredkit_core::KeySpace;
/// let rule = fredkit_pubsub::acl_rule(&KeySpace::new("app:events")?);
/// assert!(rule.starts_with("-@all ") && rule.ends_with("app:events:*"));
/// # Ok::<(), fredkit_core::Error>(())
/// ```
pub fn acl_rule(channels: &KeySpace) -> String {
    let pattern = channels.scan_pattern();
    format!(
        "-@all {} {ACL_COMMANDS} &{pattern}",
        fredkit_conn::ACL_COMMANDS
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readme_shows_the_rule() -> fredkit_core::Result<()> {
        let rule = acl_rule(&KeySpace::new("app:events")?);
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
