//! The admin API: compare-and-set, typed errors, audit; least privilege.

use std::time::Duration;

use fredkit_flags::{
    acl_rule, AdminError, Context, ErrorKind, Expect, FlagAdmin, FlagDef, Flags, KeySpace, Write,
};
use fredkit_testkit::{acl_denials, connect, set_acl_user, unique_prefix, url_as, Topology};
use rstest::rstest;

use crate::{conn, instance};

/// Two admins on two connections update one flag from the same revision at
/// once: exactly one wins, the other gets a Conflict naming the revision it
/// found; then 2 × 15 concurrent read-modify-writes that retry on conflict
/// lose nothing, and the audit trail holds every write once.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_admins_one_wins_the_other_gets_a_conflict(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    let prefix = unique_prefix("flags_cas");
    let one = FlagAdmin::new(&conn(topology).await, prefix.as_str()).unwrap();
    let two = FlagAdmin::new(&conn(topology).await, prefix.as_str()).unwrap();
    let created = one
        .set(
            "f",
            &FlagDef::on().percent(10.0),
            &Write::by("one").expect(Expect::Absent),
        )
        .await
        .unwrap();
    assert_eq!(created.rev, 1);
    let again = two
        .set(
            "f",
            &FlagDef::on(),
            &Write::by("two").expect(Expect::Absent),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            again,
            AdminError::Conflict {
                actual: Some(1),
                ..
            }
        ),
        "{again}"
    );

    let w1 = Write::by("one").expect(Expect::Rev(1));
    let w2 = Write::by("two").expect(Expect::Rev(1));
    let d1 = FlagDef::on().percent(20.0);
    let d2 = FlagDef::on().percent(30.0);
    let (r1, r2) = tokio::join!(one.set("f", &d1, &w1), two.set("f", &d2, &w2));
    let (winner, loser) = match (r1, r2) {
        (Ok(w), Err(e)) => ((w, 20.0), e),
        (Err(e), Ok(w)) => ((w, 30.0), e),
        other => panic!("expected one win and one conflict, got {other:?}"),
    };
    assert!(
        matches!(&loser, AdminError::Conflict { expected: 1, actual: Some(2), flag } if flag == "f"),
        "{loser}"
    );
    assert!(loser.is_conflict() && loser.to_string().contains("read it again"));
    assert_eq!(winner.0.rev, 2);
    let stored = one.get("f").await.unwrap().unwrap();
    assert_eq!((stored.rev, stored.def.percent), (2, winner.1));

    // Read-modify-write with retries from two admins: nothing lost.
    let worker = |admin: FlagAdmin, who: &'static str| async move {
        let mut conflicts = 0u32;
        for i in 0..15 {
            let user = format!("{who}-{i}");
            loop {
                match admin
                    .modify("f", &Write::by(who), |d| d.allow_users.push(user.clone()))
                    .await
                {
                    Ok(_) => break,
                    Err(e) if e.is_conflict() => conflicts += 1,
                    Err(e) => panic!("{e}"),
                }
            }
        }
        conflicts
    };
    let (c1, c2) = tokio::join!(worker(one.clone(), "one"), worker(two.clone(), "two"));
    let stored = one.get("f").await.unwrap().unwrap();
    assert_eq!(
        stored.def.allow_users.len(),
        30,
        "lost updates ({} conflicts)",
        c1 + c2
    );
    assert_eq!(stored.rev, 2 + 30);
    let audit = one.audit(100).await.unwrap();
    assert_eq!(audit.len(), 32, "one audit entry per write");
    assert_eq!(audit[0].version, 32);
    assert_eq!(audit.last().unwrap().op, "set");
    assert_eq!(audit.last().unwrap().by, "one");
    assert!(audit.last().unwrap().old.is_empty());
    assert!(audit[0].old.contains("\"rev\":31") && audit[0].new.contains("\"rev\":32"));
}

/// Invalid input is a typed error naming the field, and writes nothing;
/// an update of a missing flag is UnknownFlag.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_input_is_a_typed_error_naming_the_field(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    let prefix = unique_prefix("flags_invalid");
    let admin = FlagAdmin::new(&conn(topology).await, prefix.as_str()).unwrap();
    let w = Write::by("t");
    let field = |r: Result<_, AdminError>| match r {
        Err(AdminError::Invalid { field, .. }) => field,
        other => panic!("expected Invalid, got {other:?}"),
    };
    assert_eq!(
        field(admin.set("f", &FlagDef::on().percent(101.0), &w).await),
        "percent"
    );
    assert_eq!(
        field(admin.set("f", &FlagDef::on().percent(-1.0), &w).await),
        "percent"
    );
    assert_eq!(field(admin.set("a b", &FlagDef::on(), &w).await), "name");
    assert_eq!(field(admin.set("", &FlagDef::on(), &w).await), "name");
    assert_eq!(
        field(admin.set("f", &FlagDef::on().deny_user(""), &w).await),
        "deny_users"
    );
    assert_eq!(
        field(
            admin
                .set("f", &FlagDef::on(), &w.clone().expire_in(Duration::ZERO))
                .await
        ),
        "expire_in"
    );
    assert_eq!(
        field(admin.set("f", &FlagDef::on(), &Write::by("")).await),
        "by"
    );
    let e = admin.update("f", &FlagDef::on(), &w).await.unwrap_err();
    assert!(
        matches!(&e, AdminError::UnknownFlag { flag } if flag == "f"),
        "{e}"
    );
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(matches!(
        admin.delete("f", &w).await,
        Err(AdminError::UnknownFlag { .. })
    ));
    assert!(matches!(
        admin.modify("f", &w, |_| {}).await,
        Err(AdminError::UnknownFlag { .. })
    ));
    // Nothing was written.
    assert!(admin.list().await.unwrap().is_empty());
    assert!(admin.audit(10).await.unwrap().is_empty());
}

/// The crate's ACL rule suffices (instance, admin, change message); another
/// prefix is refused with ErrorKind::Permission.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_privilege_rule_suffices_and_other_prefixes_are_refused(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    let prefix = unique_prefix("flags_acl");
    let keys = KeySpace::new(prefix.as_str()).unwrap();
    let user = format!("flags-{}", rand_suffix());
    set_acl_user(topology, &user, "pw", &acl_rule(&keys)).unwrap();
    let limited = connect(&url_as(topology, &user, "pw").unwrap())
        .await
        .unwrap();
    let admin = FlagAdmin::new(&limited, &keys).unwrap();
    let flags = Flags::new(&limited, &keys).await.unwrap();
    let other = instance(topology, &prefix).await;
    let w = admin
        .set(
            "f",
            &FlagDef::on().allow_user("1"),
            &Write::by("t").expire_in(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    admin
        .modify("f", &Write::by("t"), |d| d.percent = 0.0)
        .await
        .unwrap();
    admin.list().await.unwrap();
    admin.audit(5).await.unwrap();
    flags.reload().await.unwrap();
    assert!(
        flags
            .wait_for_version(w.version + 1, Duration::from_secs(10))
            .await
    );
    assert!(
        other
            .wait_for_version(w.version + 1, Duration::from_secs(10))
            .await
    );
    assert!(flags.is_enabled("f", &Context::user("1")));
    admin.delete("f", &Write::by("t")).await.unwrap();
    assert_eq!(acl_denials(topology, &user).unwrap(), Vec::<String>::new());

    let elsewhere = unique_prefix("flags_acl_other");
    let e = FlagAdmin::new(&limited, elsewhere.as_str())
        .unwrap()
        .set("f", &FlagDef::on(), &Write::by("t"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Permission, "{e}");
    let e = Flags::new(&limited, elsewhere.as_str()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Permission, "{e}");
}

fn rand_suffix() -> String {
    let p = unique_prefix("u");
    p.trim_end_matches(':')
        .rsplit(':')
        .next()
        .unwrap_or("x")
        .to_string()
}
