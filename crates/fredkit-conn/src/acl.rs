//! The least-privilege ACL rule of a fredkit connection.

/// The commands every fredkit connection sends by itself, as ACL tokens: the
/// handshake of each new connection (`AUTH`, `SELECT`, `CLIENT ID`,
/// `INFO server`), the cluster topology reads (`CLUSTER SLOTS`, `CLUSTER
/// INFO`), the shared pool's watchdog and [`Redis::health`](crate::Redis::health)
/// (`PING`, `INFO`), and, behind Sentinel, the primary check (`ROLE`). Every
/// other fredkit crate's rule starts with these.
///
/// The sentinels themselves have their own ACL (`sentinelUsername`); a
/// fredkit client asks them `SENTINEL get-master-addr-by-name`,
/// `SENTINEL sentinels` and subscribes to `+switch-master`.
pub const ACL_COMMANDS: &str =
    "+ping +auth +select +client|id +info +role +cluster|slots +cluster|info";

/// The complete ACL rule a service needs to connect with fredkit-conn and do
/// nothing else: `-@all` and [`ACL_COMMANDS`], no keys, no channels.
///
/// Give it to `ACL SETUSER <user> on ><password> <rule>` (on every node of a
/// cluster). A command the rule does not allow fails with
/// [`ErrorKind::Permission`](crate::ErrorKind::Permission).
///
/// ```
/// assert!(fredkit_conn::acl_rule().starts_with("-@all +ping"));
/// ```
pub fn acl_rule() -> String {
    format!("-@all {ACL_COMMANDS}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn readme_shows_the_rule() {
        let readme = include_str!("../README.md");
        assert!(
            readme.contains(&super::acl_rule()),
            "README.md's 'Least privilege (ACL)' section must show: {}",
            super::acl_rule()
        );
    }
}
