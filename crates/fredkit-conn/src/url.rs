//! Redis URLs: `redis://`, `rediss://`, `redis-cluster://`, `redis-sentinel://` (and their TLS forms).
//!
//! The accepted syntax is fred's (so URLs that work with fred work here) plus a
//! comma-separated host list, which many other clients use:
//!
//! ```text
//! redis[s]://[[user]:password@]host[:port][/db][?options]
//! redis[s]-cluster://[[user]:password@]host[:port][,host:port...][?node=host:port&...]
//! redis[s]-sentinel://[[user]:password@]host[:port][,host:port...][/db]?sentinelServiceName=NAME[&node=host:port...]
//! ```

use crate::config::{Node, RedisConfig, Topology};
use crate::duration::parse_duration;
use crate::secret::Secret;
use fredkit_core::{Error, Result};

const DEFAULT_PORT: u16 = 6379;
const DEFAULT_SENTINEL_PORT: u16 = 26379;

/// The URL with anything that may be a secret replaced by `***`, for error
/// messages: everything between the scheme and the **last** `@` (a password
/// may itself contain `/`, `?` or `@`), and the value of `sentinelPassword`.
/// Over-masking is fine here; leaking is not.
pub(crate) fn redact(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let rest = match rest.rfind('@') {
        Some(at) => format!("***@{}", &rest[at + 1..]),
        None => rest.to_string(),
    };
    let rest = mask_query_secrets(&rest);
    match scheme {
        Some(scheme) => format!("{scheme}://{rest}"),
        None => rest,
    }
}

fn mask_query_secrets(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("assword=") {
        let value_start = pos + "assword=".len();
        out.push_str(&rest[..value_start]);
        out.push_str("***");
        rest = &rest[value_start..];
        rest = rest.find('&').map_or("", |amp| &rest[amp..]);
    }
    out.push_str(rest);
    out
}

fn bad(url: &str, what: impl std::fmt::Display) -> Error {
    Error::config(format!("invalid Redis URL '{}': {what}", redact(url)))
}

fn percent_decode(url: &str, part: &str, what: &str) -> Result<String> {
    let bytes = part.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = part
                .get(i + 1..i + 3)
                .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| bad(url, format!("the {what} has a broken %-escape")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| bad(url, format!("the {what} is not UTF-8 after %-decoding")))
}

fn parse_node(url: &str, text: &str, default_port: u16) -> Result<Node> {
    let text = text.trim();
    if text.is_empty() {
        return Err(bad(url, "a host is empty (check for a stray comma)"));
    }
    // [v6 addr]:port, or host:port, or host
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| bad(url, format!("host '{text}' opens '[' without closing it")))?;
        match after.strip_prefix(':') {
            Some(p) => (h, Some(p)),
            None if after.is_empty() => (h, None),
            None => return Err(bad(url, format!("unexpected '{after}' after host '[{h}]'"))),
        }
    } else {
        match text.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        }
    };
    if host.is_empty() {
        return Err(bad(url, format!("host missing in '{text}'")));
    }
    if host.contains(':') && !text.starts_with('[') {
        return Err(bad(
            url,
            format!(
                "host '{text}' looks like an IPv6 address: write it in brackets, e.g. [::1]:6379"
            ),
        ));
    }
    if host.contains(['@', '/', '?', '#', ' ']) {
        return Err(bad(
            url,
            format!("host '{host}' contains a character a host cannot have"),
        ));
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => {
                return Err(bad(
                    url,
                    format!("port '{p}' of host '{host}' is not a number between 1 and 65535"),
                ))
            }
            Ok(n) => n,
        },
    };
    Ok(Node {
        host: host.to_string(),
        port,
    })
}

/// Parses a Redis URL into a configuration with default timeouts.
pub(crate) fn parse(url: &str) -> Result<RedisConfig> {
    let url = url.trim();
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad(url, "missing '://' (expected e.g. redis://localhost:6379)"))?;
    let (kind, tls) = match scheme.to_ascii_lowercase().as_str() {
        "redis" | "valkey" => ("standalone", false),
        "rediss" | "valkeys" => ("standalone", true),
        "redis-cluster" | "valkey-cluster" => ("cluster", false),
        "rediss-cluster" | "valkeys-cluster" => ("cluster", true),
        "redis-sentinel" | "valkey-sentinel" => ("sentinel", false),
        "rediss-sentinel" | "valkeys-sentinel" => ("sentinel", true),
        other => {
            return Err(bad(
                url,
                format!(
                    "unknown scheme '{other}' (use redis, rediss, redis-cluster, rediss-cluster, redis-sentinel or rediss-sentinel)"
                ),
            ))
        }
    };
    // A password with a raw '/' or '?' would be split into host/path/query
    // parts, and their error messages would echo pieces of it.
    if let (Some(at), Some(end)) = (rest.rfind('@'), rest.find(['/', '?'])) {
        if at > end && !rest[..at].contains('=') {
            return Err(bad(
                url,
                "the user/password part contains '/' or '?': percent-encode them (%2F, %3F)",
            ));
        }
    }
    if rest.contains('#') {
        return Err(bad(
            url,
            "a fragment ('#...') has no meaning in a Redis URL",
        ));
    }
    let (before_query, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match before_query.find('/') {
        Some(i) => (&before_query[..i], Some(&before_query[i + 1..])),
        None => (before_query, None),
    };
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
        None => (None, authority),
    };

    let mut config = RedisConfig {
        tls,
        ..RedisConfig::default()
    };

    if let Some(info) = userinfo {
        let (user, pass) = match info.split_once(':') {
            Some((u, p)) => (u, Some(p)),
            None => (info, None),
        };
        // `redis://secret@host` is the common shorthand for a password alone.
        let (user, pass) = match pass {
            None => ("", Some(user)),
            Some(p) => (user, Some(p)),
        };
        if !user.is_empty() {
            config.username = Some(percent_decode(url, user, "username")?);
        }
        if let Some(p) = pass {
            if !p.is_empty() {
                config.password = Some(Secret::new(percent_decode(url, p, "password")?));
            }
        }
    }

    let default_port = if kind == "sentinel" {
        DEFAULT_SENTINEL_PORT
    } else {
        DEFAULT_PORT
    };
    let mut nodes = Vec::new();
    if hosts.is_empty() {
        if kind == "standalone" {
            nodes.push(Node {
                host: "127.0.0.1".into(),
                port: DEFAULT_PORT,
            });
        }
    } else {
        for h in hosts.split(',') {
            nodes.push(parse_node(url, h, default_port)?);
        }
    }

    if let Some(p) = path {
        let p = p.trim_end_matches('/');
        if !p.is_empty() {
            if kind == "cluster" {
                return Err(bad(
                    url,
                    format!("a cluster has no databases, but the path selects '{p}'"),
                ));
            }
            let db: u8 = p.parse().map_err(|_| {
                bad(
                    url,
                    format!("database '{p}' in the path is not a number between 0 and 255"),
                )
            })?;
            config.database = Some(db);
        }
    }

    let mut service_name = None;
    let mut sentinel_username = None;
    let mut sentinel_password = None;
    if let Some(q) = query {
        for pair in q.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(url, v, &format!("value of '{k}'"))?;
            let dur =
                |v: &str| parse_duration(v).map_err(|e| bad(url, format!("option '{k}': {e}")));
            match k {
                "node" => nodes.push(parse_node(url, &v, default_port)?),
                "sentinelServiceName" | "service_name" | "serviceName" => service_name = Some(v),
                "sentinelUsername" | "sentinel_username" => sentinel_username = Some(v),
                "sentinelPassword" | "sentinel_password" => sentinel_password = Some(Secret::new(v)),
                "connect_timeout" => config.connect_timeout = dur(&v)?,
                "command_timeout" => config.command_timeout = dur(&v)?,
                "pool_size" => {
                    config.pool_size = v
                        .parse()
                        .ok()
                        .filter(|n: &usize| *n >= 1 && *n <= 256)
                        .ok_or_else(|| bad(url, format!("pool_size '{v}' must be a number from 1 to 256")))?
                }
                "lazy" => {
                    config.lazy = match v.as_str() {
                        "true" | "1" | "yes" => true,
                        "false" | "0" | "no" => false,
                        _ => return Err(bad(url, format!("lazy '{v}' must be true or false"))),
                    }
                }
                // ca_file, client_cert_file, client_key_file, tls_server_name
                other if config.tls_options.set_url_option(other, v.clone()) => {}
                other => {
                    return Err(bad(
                        url,
                        format!(
                            "unknown option '{other}' (known: node, sentinelServiceName, sentinelUsername, sentinelPassword, connect_timeout, command_timeout, pool_size, lazy, {})",
                            crate::tls::TlsOptions::URL_OPTIONS
                        ),
                    ))
                }
            }
        }
    }

    if nodes.is_empty() {
        return Err(bad(url, "no host given"));
    }

    config.topology = match kind {
        "standalone" => {
            if nodes.len() > 1 {
                return Err(bad(
                    url,
                    "several hosts given for a standalone server (use redis-cluster:// or redis-sentinel://)",
                ));
            }
            let node = nodes.remove(0);
            Topology::Standalone(node)
        }
        "cluster" => {
            if service_name.is_some() || sentinel_username.is_some() || sentinel_password.is_some()
            {
                return Err(bad(url, "sentinel options given for a cluster URL"));
            }
            Topology::Cluster(nodes)
        }
        _ => {
            let service_name = service_name.ok_or_else(|| {
                bad(
                    url,
                    "a sentinel URL needs the service name: add ?sentinelServiceName=NAME",
                )
            })?;
            if service_name.is_empty() {
                return Err(bad(url, "sentinelServiceName is empty"));
            }
            Topology::Sentinel {
                sentinels: nodes,
                service_name,
                sentinel_username,
                sentinel_password,
            }
        }
    };
    Ok(config)
}
