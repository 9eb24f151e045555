//! A real cluster forms correctly and heals after its masters are killed.

// Helpers outside #[test] functions are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use fredkit_testkit::{key_slot, ClusterOptions, RedisCluster, Reply, TestkitError, SLOT_COUNT};

fn cluster_info(node: &fredkit_testkit::RedisServer) -> String {
    node.command(&["CLUSTER", "INFO"])
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned()
}

/// Whole clusters and master kills: nextest runs `faults::` tests one at a time.
mod faults {
    use super::*;

    #[test]
    fn cluster_with_replicas_forms_with_every_slot_covered_and_replicas_in_sync() {
        let cluster =
            RedisCluster::start(ClusterOptions::default().replicas_per_master(1)).unwrap();
        assert_eq!(cluster.masters().len(), 3);
        assert_eq!(cluster.replicas().len(), 3);
        for node in cluster.nodes() {
            let info = cluster_info(node);
            assert!(info.contains("cluster_state:ok"), "{}: {info}", node.addr());
            assert!(info.contains("cluster_slots_ok:16384"), "{info}");
            assert!(info.contains("cluster_known_nodes:6"), "{info}");
        }
        for (i, master) in cluster.masters().iter().enumerate() {
            let replica = &cluster.replicas_of(i)[0];
            let repl = replica.command(&["INFO", "replication"]).unwrap();
            let repl = repl.as_str().unwrap();
            assert!(repl.contains("master_link_status:up"), "{repl}");
            assert!(
                repl.contains(&format!("master_port:{}", master.port())),
                "{repl}"
            );
        }
        // Slots are split evenly in master order.
        assert_eq!(cluster.master_index_for_slot(0).unwrap(), 0);
        assert_eq!(cluster.master_index_for_slot(8000).unwrap(), 1);
        assert_eq!(cluster.master_index_for_slot(SLOT_COUNT - 1).unwrap(), 2);
        assert!(matches!(
            cluster.master_index_for_slot(SLOT_COUNT),
            Err(TestkitError::InvalidOptions(_))
        ));
        // Our slot function agrees with the server's, hash tags included.
        for key in ["foo", "{user1000}.following", "a{b}c", "x{}y", ""] {
            let server = cluster.masters()[0]
                .command(&["CLUSTER", "KEYSLOT", key])
                .unwrap();
            assert_eq!(
                server,
                Reply::Int(i64::from(key_slot(key.as_bytes()))),
                "{key}"
            );
        }
        let url = cluster.url();
        let m = cluster.masters();
        assert_eq!(
            url,
            format!(
                "redis-cluster://{}?node={}&node={}",
                m[0].addr(),
                m[1].addr(),
                m[2].addr()
            )
        );
    }

    #[test]
    fn killing_the_master_of_a_slot_promotes_its_replica_and_the_old_master_rejoins_as_replica() {
        let mut cluster =
            RedisCluster::start(ClusterOptions::default().replicas_per_master(1)).unwrap();
        let slot = key_slot(b"some-key");
        let index = cluster.master_index_for_slot(slot).unwrap();
        let replica_addr = cluster.replicas_of(index)[0].addr();

        cluster.masters_mut()[index].kill().unwrap();
        cluster.wait_healthy(Duration::from_secs(30)).unwrap();

        assert_eq!(cluster.owner_of_slot(slot).unwrap().addr(), replica_addr);
        assert!(matches!(
            cluster.master_index_for_slot(slot),
            Err(TestkitError::SlotOwnerNotInMasters { .. })
        ));
        // Every surviving node agrees on the new owner.
        let promoted = cluster.owner_of_slot(slot).unwrap();
        let role = promoted.command(&["ROLE"]).unwrap();
        assert_eq!(role.as_array().unwrap()[0].as_str(), Some("master"));

        cluster.masters_mut()[index].restart().unwrap();
        cluster.wait_healthy(Duration::from_secs(30)).unwrap();
        let role = cluster.masters()[index].command(&["ROLE"]).unwrap();
        assert_eq!(role.as_array().unwrap()[0].as_str(), Some("slave"));
        assert_eq!(cluster.owner_of_slot(slot).unwrap().addr(), replica_addr);
    }
}
