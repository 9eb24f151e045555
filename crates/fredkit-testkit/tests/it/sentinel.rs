//! A real sentinel group forms and fails over on request.

// Helpers outside #[test] functions are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use fredkit_testkit::SentinelGroup;

/// A failover: nextest runs `faults::` tests one at a time.
mod faults {
    use super::*;

    #[test]
    fn forced_failover_makes_the_replica_the_master_reported_by_every_sentinel() {
        let group = SentinelGroup::start().unwrap();
        assert_eq!(group.service_name(), "mymaster");
        assert_eq!(group.master_addr().unwrap(), group.master().addr());
        let s = group.sentinels();
        assert_eq!(
            group.url(),
            format!(
                "redis-sentinel://{}?node={}&node={}&sentinelServiceName=mymaster",
                s[0].addr(),
                s[1].addr(),
                s[2].addr()
            )
        );
        group
            .master()
            .command(&["SET", "before-failover", "1"])
            .unwrap();
        group.master().command(&["WAIT", "1", "5000"]).unwrap();

        let new_master = group.failover().unwrap();

        assert_eq!(new_master, group.replica().addr());
        for sentinel in group.sentinels() {
            let reply = sentinel
                .command(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster"])
                .unwrap();
            let parts = reply.as_array().unwrap();
            assert_eq!(
                format!(
                    "{}:{}",
                    parts[0].as_str().unwrap(),
                    parts[1].as_str().unwrap()
                ),
                new_master
            );
        }
        let current = group.current_master().unwrap();
        assert_eq!(current.addr(), new_master);
        assert_eq!(
            current
                .command(&["GET", "before-failover"])
                .unwrap()
                .as_str(),
            Some("1")
        );
        // The sentinels turn the old master into a replica of the new one.
        group.wait_healthy(Duration::from_secs(60)).unwrap();
        let role = group.master().command(&["ROLE"]).unwrap();
        assert_eq!(role.as_array().unwrap()[0].as_str(), Some("slave"));
    }
}
