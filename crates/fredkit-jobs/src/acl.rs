//! The least-privilege ACL rule of this crate.

use fredkit_core::KeySpace;

/// The commands this crate sends, as ACL tokens: the job scripts
/// (`EVALSHA`, `EVAL` after `NOSCRIPT`, and every command they call,
/// whichever branch runs), `HGETALL` ([`Queue::job`](crate::Queue::job)),
/// `BZPOPMIN` (idle workers), `TIME` (schedulers). The complete rule is
/// [`acl_rule`]. A queue with a rate limit also needs fredkit-ratelimit's
/// rule for the limiter's prefix.
pub const ACL_COMMANDS: &str = "+evalsha +eval +time +type +exists +del +hget +hset +hdel +hexists +hincrby +hmget +hgetall +zadd +zrem +zcard +zscore +zrange +zrangebyscore +zpopmin +bzpopmin";

/// The complete ACL rule a service needs to use queues under `keys` and
/// nothing else: `-@all`, the connection's commands
/// ([`fredkit_conn::ACL_COMMANDS`]), [`ACL_COMMANDS`], and `~prefix:*` (its
/// keys), with the glob characters of the prefix escaped.
///
/// Give it to `ACL SETUSER <user> on ><password> <rule>` (on every node of a
/// cluster). Anything outside it fails with
/// [`ErrorKind::Permission`](crate::ErrorKind::Permission).
///
/// ```
/// use fredkit_core::KeySpace;
/// let rule = fredkit_jobs::acl_rule(&KeySpace::new("app:jobs")?);
/// assert!(rule.starts_with("-@all ") && rule.ends_with("app:jobs:*"));
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
        let rule = acl_rule(&KeySpace::new("app:jobs")?);
        assert!(
            include_str!("../README.md").contains(&rule),
            "README.md's 'Least privilege (ACL)' section must show: {rule}"
        );
        Ok(())
    }
}
