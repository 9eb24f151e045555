//! ACL users on the shared deployments, for least-privilege tests.
//!
//! Redis keeps ACL users per process: a cluster needs the same `ACL SETUSER`
//! on every node. [`set_acl_user`] does that for the shared deployment of a
//! [`Topology`] (see [`crate::shared_url`]), and [`url_as`] gives the URL that
//! connects as the user.

use std::time::Duration;

use crate::error::{Result, TestkitError};
use crate::resp::{Connection, Reply};
use crate::shared::{shared_url, Topology};

const TIMEOUT: Duration = Duration::from_secs(5);

/// The loopback ports of the nodes a shared URL names
/// (`redis://127.0.0.1:P`, `redis-cluster://127.0.0.1:P1?node=127.0.0.1:P2&...`).
fn ports_of(url: &str) -> Vec<u16> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, rest)| rest);
    rest.split(['?', '&', ','])
        .map(|part| part.strip_prefix("node=").unwrap_or(part))
        .filter_map(|addr| addr.split('/').next())
        .filter_map(|addr| addr.rsplit_once(':'))
        .filter_map(|(_, port)| port.parse().ok())
        .collect()
}

/// The ports of every node of the shared deployment of `topology`.
fn nodes(topology: Topology) -> Result<Vec<u16>> {
    if topology == Topology::Sentinel {
        return Err(TestkitError::Io {
            context: "ACL users are set up on the standalone and cluster deployments only".into(),
            source: std::io::Error::from(std::io::ErrorKind::Unsupported),
        });
    }
    Ok(ports_of(&shared_url(topology)?))
}

fn call(port: u16, args: &[&str], what: &str) -> Result<Reply> {
    let reply = Connection::open(port, TIMEOUT, None)?.call(args)?;
    match reply {
        Reply::Error(message) => Err(TestkitError::Server {
            addr: format!("127.0.0.1:{port}"),
            command: what.to_owned(),
            message,
        }),
        reply => Ok(reply),
    }
}

/// Creates (or replaces) the ACL user `user` with `password` and exactly the
/// rules in `rule` (space-separated ACL tokens such as `-@all +get ~app:*
/// &app:*`) on every node of the shared deployment of `topology`:
/// `ACL SETUSER user reset on >password <rule...>`.
///
/// # Errors
/// The server's error when it rejects a token (the message names it; the
/// password is not repeated), or [`TestkitError::Io`] for
/// [`Topology::Sentinel`].
pub fn set_acl_user(topology: Topology, user: &str, password: &str, rule: &str) -> Result<()> {
    let pass = format!(">{password}");
    let mut args = vec!["ACL", "SETUSER", user, "reset", "on", pass.as_str()];
    args.extend(rule.split_whitespace());
    for port in nodes(topology)? {
        call(
            port,
            &args,
            &format!("ACL SETUSER {user} reset on >*** {rule}"),
        )?;
    }
    Ok(())
}

/// Removes the ACL user `user` from every node (`ACL DELUSER`).
///
/// # Errors
/// As [`set_acl_user`].
pub fn delete_acl_user(topology: Topology, user: &str) -> Result<()> {
    for port in nodes(topology)? {
        call(port, &["ACL", "DELUSER", user], "ACL DELUSER")?;
    }
    Ok(())
}

/// The URL of the shared deployment of `topology`, connecting as `user`
/// with `password`.
///
/// # Errors
/// As [`shared_url`].
pub fn url_as(topology: Topology, user: &str, password: &str) -> Result<String> {
    let url = shared_url(topology)?;
    Ok(match url.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{user}:{password}@{rest}"),
        None => url,
    })
}

/// What the ACL refused to `user` on any node of `topology`, from `ACL LOG`:
/// one line per entry, `reason object (context)` — e.g. `command
/// client|setname (toplevel)` or `key app:x (lua)`. For diagnosing a rule
/// that is too narrow.
///
/// # Errors
/// As [`set_acl_user`].
pub fn acl_denials(topology: Topology, user: &str) -> Result<Vec<String>> {
    let mut denials = Vec::new();
    for port in nodes(topology)? {
        let log = call(port, &["ACL", "LOG", "128"], "ACL LOG")?;
        for entry in log.as_array().unwrap_or_default() {
            let fields = entry.as_array().unwrap_or_default();
            let field = |name: &str| {
                fields
                    .chunks(2)
                    .find(|pair| pair.first().and_then(Reply::as_str) == Some(name))
                    .and_then(|pair| pair.get(1))
                    .and_then(Reply::as_str)
                    .unwrap_or("?")
                    .to_owned()
            };
            if field("username") == user {
                denials.push(format!(
                    "{} {} ({})",
                    field("reason"),
                    field("object"),
                    field("context")
                ));
            }
        }
    }
    Ok(denials)
}

#[cfg(test)]
mod tests {
    use super::ports_of;

    #[test]
    fn ports_of_shared_urls() {
        assert_eq!(ports_of("redis://127.0.0.1:16001"), vec![16001]);
        assert_eq!(
            ports_of("redis-cluster://u:p@127.0.0.1:1?node=127.0.0.1:2&node=127.0.0.1:3"),
            vec![1, 2, 3]
        );
    }
}
