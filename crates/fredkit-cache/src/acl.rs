//! The least-privilege ACL rule of this crate.

use fredkit_core::KeySpace;

/// The commands this crate sends, as ACL tokens: the fill-lock and garbage scripts (`EVALSHA`, `EVAL` after `NOSCRIPT`, and every command they call, whichever branch runs), reads and writes of entries, `SCAN` for `invalidate_prefix`, and `PUBLISH`/`SUBSCRIBE` on `prefix:invalidations` for the L1. The complete
/// rule is [`acl_rule`].
pub const ACL_COMMANDS: &str =
    "+evalsha +eval +get +mget +set +del +unlink +pexpire +pttl +incr +type +scan";

/// The complete ACL rule a service needs to use this crate under `keys`
/// and nothing else: `-@all`, the connection's commands
/// ([`fredkit_conn::ACL_COMMANDS`]) and [`fredkit_pubsub::ACL_COMMANDS`] (its pub/sub), [`ACL_COMMANDS`], and
/// `~prefix:*` (its keys) and `&prefix:*` (its channels), with the glob characters of the prefix escaped.
///
/// `keys` is the cache's prefix (what [`CacheOptions::builder`](crate::CacheOptions::builder) was given).
///
/// Give it to `ACL SETUSER <user> on ><password> <rule>` (on every node of a
/// cluster). Anything outside it fails with
/// [`ErrorKind::Permission`](crate::ErrorKind::Permission), naming the command
/// and, for a script, the keys.
///
/// ```
/// use fredkit_core::KeySpace;
/// let rule = fredkit_cache::acl_rule(&KeySpace::new("shop:product")?);
/// assert!(rule.starts_with("-@all ") && rule.ends_with("shop:product:*"));
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
        let rule = acl_rule(&KeySpace::new("shop:product")?);
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
