//! The least-privilege ACL rule of this crate.

use fredkit_core::KeySpace;

/// The commands this crate sends, as ACL tokens: its scripts (`EVALSHA`,
/// `EVAL` after `NOSCRIPT`, and every command they call, whichever branch
/// runs) and the plain commands of [`delete`](crate::Sessions::delete),
/// [`revoke`](crate::Sessions::revoke) and
/// [`sessions_of`](crate::Sessions::sessions_of). The complete rule is
/// [`acl_rule`].
pub const ACL_COMMANDS: &str = "+evalsha +eval +time +exists +unlink +pexpire +pexpireat +pttl +hget +hmget +hgetall +hset +hdel +hincrby +zadd +zrem +zrange +zremrangebyrank";

/// The complete ACL rule a service needs to use this crate under `keys`
/// and nothing else: `-@all`, the connection's commands
/// ([`fredkit_conn::ACL_COMMANDS`]), [`ACL_COMMANDS`], and `~prefix:*` (its
/// keys), with the glob characters of the prefix escaped.
///
/// `keys` is the store's prefix (what [`Sessions::new`](crate::Sessions::new)
/// or `TowerSessionStore::new` was given).
///
/// Give it to `ACL SETUSER <user> on ><password> <rule>` (on every node of a
/// cluster). Anything outside it fails with
/// [`ErrorKind::Permission`](crate::ErrorKind::Permission).
///
/// ```
/// use fredkit_core::KeySpace;
/// let rule = fredkit_session::acl_rule(&KeySpace::new("app:session")?);
/// assert!(rule.starts_with("-@all ") && rule.ends_with("app:session:*"));
/// # Ok::<(), fredkit_core::Error>(())
/// ```
pub fn acl_rule(keys: &KeySpace) -> String {
    let pattern = keys.scan_pattern();
    format!(
        "-@all {} {ACL_COMMANDS} ~{pattern}",
        fredkit_conn::ACL_COMMANDS
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readme_shows_the_rule() -> fredkit_core::Result<()> {
        let rule = acl_rule(&KeySpace::new("app:session")?);
        assert!(
            include_str!("../README.md").contains(&rule),
            "README.md's 'Least privilege (ACL)' section must show: {rule}"
        );
        Ok(())
    }
}
