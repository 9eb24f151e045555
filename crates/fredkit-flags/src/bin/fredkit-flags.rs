//! `fredkit-flags`: list, read and change the feature flags of a namespace
//! from the command line (feature `cli`). Reads `REDIS_URL`.
//!
//! Exit codes: 0 done, 1 error, 2 usage, 3 conflict (someone else changed
//! the flag meanwhile: nothing was written), 4 no such flag (`get`).

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use fredkit_flags::{AdminError, Expect, Expiry, FlagAdmin, FlagDef, StoredFlag, Write};

#[derive(Parser, Debug)]
#[command(
    name = "fredkit-flags",
    version,
    about = "Feature flags in Redis (fredkit-flags)"
)]
struct Cli {
    /// The namespace prefix.
    #[arg(
        long,
        env = "FREDKIT_FLAGS_PREFIX",
        default_value = "fredkit:flags",
        global = true
    )]
    prefix: String,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Who makes the change (kept in the audit trail); default $USER.
    #[arg(long, global = true)]
    by: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Every flag, sorted by name.
    List,
    /// One flag.
    Get { name: String },
    /// Creates or replaces a flag.
    Set {
        name: String,
        /// On for everyone (subject to lists and --percent).
        #[arg(long, conflicts_with = "off")]
        on: bool,
        /// Off for everyone.
        #[arg(long)]
        off: bool,
        /// Rollout percentage, 0-100.
        #[arg(long)]
        percent: Option<f64>,
        /// Value served when on (JSON: '"blue"', 3, '{"a":1}').
        #[arg(long)]
        value: Option<String>,
        /// Description.
        #[arg(long)]
        description: Option<String>,
    },
    /// Turns a flag on (optionally for a percentage of users).
    Enable {
        name: String,
        #[arg(long)]
        percent: Option<f64>,
    },
    /// Turns a flag off for everyone (a kill switch; lists are kept).
    Disable { name: String },
    /// Adds `user:ID` or `group:NAME` to the allow list.
    Allow { name: String, target: String },
    /// Adds `user:ID` or `group:NAME` to the deny list.
    Deny { name: String, target: String },
    /// Removes `user:ID` or `group:NAME` from both lists.
    Remove { name: String, target: String },
    /// Sets the expiry: `30s`, `15m`, `12h`, `7d`, `2w`, or `never`.
    Expire { name: String, after: String },
    /// Deletes a flag.
    Delete { name: String },
    /// The newest audit entries.
    Audit {
        #[arg(short = 'n', default_value_t = 20)]
        count: u64,
    },
}

enum Target {
    User(String),
    Group(String),
}

fn target(s: &str) -> Result<Target, String> {
    match s.split_once(':') {
        Some(("user", id)) if !id.is_empty() => Ok(Target::User(id.to_string())),
        Some(("group", g)) if !g.is_empty() => Ok(Target::Group(g.to_string())),
        _ => Err(format!("invalid target '{s}': write user:ID or group:NAME")),
    }
}

fn duration(s: &str) -> Result<Option<Duration>, String> {
    if s == "never" {
        return Ok(None);
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("invalid expiry '{s}': write e.g. 7d, 12h, 30m, 45s or never"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" | "" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("invalid expiry unit in '{s}': use s, m, h, d or w")),
    };
    Ok(Some(Duration::from_secs(n.saturating_mul(secs))))
}

fn state(f: &StoredFlag) -> String {
    let d = &f.def;
    if !d.enabled {
        "off".to_string()
    } else if d.percent >= 100.0 {
        "on".to_string()
    } else {
        format!("on {}%", d.percent)
    }
}

fn line(f: &StoredFlag, now_ms: u64) -> String {
    let d = &f.def;
    let mut parts = vec![format!("{:<24} {:<10}", f.name, state(f))];
    let lists = [
        ("allow users", &d.allow_users),
        ("deny users", &d.deny_users),
        ("allow groups", &d.allow_groups),
        ("deny groups", &d.deny_groups),
    ];
    for (label, list) in lists {
        if !list.is_empty() {
            parts.push(format!("{label}: {}", list.join(",")));
        }
    }
    if let Some(v) = &d.value {
        parts.push(format!("value: {v}"));
    }
    if !d.variants.is_empty() {
        let v: Vec<String> = d
            .variants
            .iter()
            .map(|v| format!("{}={}", v.name, v.weight))
            .collect();
        parts.push(format!("variants: {}", v.join(",")));
    }
    match f.expires_at {
        Some(at) if at <= now_ms => parts.push("EXPIRED (serves the default)".to_string()),
        Some(at) => parts.push(format!("expires in {}", human(at.saturating_sub(now_ms)))),
        None => {}
    }
    parts.push(format!("rev {} by {}", f.rev, f.updated_by));
    parts.join("  ")
}

fn human(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[derive(Debug)]
enum Failure {
    Admin(AdminError),
    Other(String),
    NotFound(String),
}

impl From<AdminError> for Failure {
    fn from(e: AdminError) -> Self {
        Failure::Admin(e)
    }
}

impl From<fredkit_flags::Error> for Failure {
    fn from(e: fredkit_flags::Error) -> Self {
        Failure::Admin(AdminError::Redis(e))
    }
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<(), Failure> {
    let s = serde_json::to_string_pretty(v).map_err(|e| Failure::Other(e.to_string()))?;
    println!("{s}");
    Ok(())
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let redis = fredkit_conn::Redis::from_env().await?;
    redis.wait_connected().await?;
    let admin = FlagAdmin::new(&redis, cli.prefix.as_str())?;
    let by = cli
        .by
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "fredkit-flags-cli".to_string());
    let w = Write::by(by);
    let changed = |name: &str, written: fredkit_flags::Written| {
        if cli.json {
            print_json(
                &serde_json::json!({"flag": name, "rev": written.rev, "version": written.version}),
            )
        } else {
            println!(
                "{name}: written (rev {}, version {})",
                written.rev, written.version
            );
            Ok(())
        }
    };
    match cli.command {
        Command::List => {
            let all = admin.list().await?;
            if cli.json {
                print_json(&all)?;
            } else if all.is_empty() {
                println!("(no flags under {})", cli.prefix);
            } else {
                let now = now_ms();
                for f in &all {
                    println!("{}", line(f, now));
                }
            }
        }
        Command::Get { name } => match admin.get(&name).await? {
            Some(f) if cli.json => print_json(&f)?,
            Some(f) => println!("{}", line(&f, now_ms())),
            None => return Err(Failure::NotFound(name)),
        },
        Command::Set {
            name,
            on,
            off: _,
            percent,
            value,
            description,
        } => {
            let mut def = if on { FlagDef::on() } else { FlagDef::off() };
            if let Some(p) = percent {
                def = def.percent(p);
            }
            if let Some(v) = value {
                let v = serde_json::from_str(&v).map_err(|e| {
                    Failure::Admin(AdminError::Invalid {
                        field: "value",
                        reason: format!("not JSON ({e}); quote strings: '\"blue\"'"),
                    })
                })?;
                def = def.value(v);
            }
            if let Some(d) = description {
                def = def.description(d);
            }
            let written = admin.set(&name, &def, &w).await?;
            changed(&name, written)?;
        }
        Command::Enable { name, percent } => {
            let written = admin
                .modify(&name, &w, |d| {
                    d.enabled = true;
                    d.percent = percent.unwrap_or(100.0);
                })
                .await?;
            changed(&name, written)?;
        }
        Command::Disable { name } => {
            let written = admin.modify(&name, &w, |d| d.enabled = false).await?;
            changed(&name, written)?;
        }
        Command::Allow { name, target: t } => {
            let t = target(&t).map_err(Failure::Other)?;
            let written = admin
                .modify(&name, &w, |d| match t {
                    Target::User(u) => push(&mut d.allow_users, u),
                    Target::Group(g) => push(&mut d.allow_groups, g),
                })
                .await?;
            changed(&name, written)?;
        }
        Command::Deny { name, target: t } => {
            let t = target(&t).map_err(Failure::Other)?;
            let written = admin
                .modify(&name, &w, |d| match t {
                    Target::User(u) => push(&mut d.deny_users, u),
                    Target::Group(g) => push(&mut d.deny_groups, g),
                })
                .await?;
            changed(&name, written)?;
        }
        Command::Remove { name, target: t } => {
            let t = target(&t).map_err(Failure::Other)?;
            let written = admin
                .modify(&name, &w, |d| match t {
                    Target::User(u) => {
                        d.allow_users.retain(|x| *x != u);
                        d.deny_users.retain(|x| *x != u);
                    }
                    Target::Group(g) => {
                        d.allow_groups.retain(|x| *x != g);
                        d.deny_groups.retain(|x| *x != g);
                    }
                })
                .await?;
            changed(&name, written)?;
        }
        Command::Expire { name, after } => {
            let expiry = match duration(&after).map_err(Failure::Other)? {
                Some(d) => Expiry::In(d),
                None => Expiry::Never,
            };
            let current = admin
                .get(&name)
                .await?
                .ok_or_else(|| Failure::Admin(AdminError::UnknownFlag { flag: name.clone() }))?;
            let written = admin
                .update(
                    &name,
                    &current.def,
                    &w.clone().expect(Expect::Rev(current.rev)).expiry(expiry),
                )
                .await?;
            changed(&name, written)?;
        }
        Command::Delete { name } => {
            let written = admin.delete(&name, &w).await?;
            if cli.json {
                print_json(
                    &serde_json::json!({"flag": name, "deleted": true, "version": written.version}),
                )?;
            } else {
                println!("{name}: deleted (version {})", written.version);
            }
        }
        Command::Audit { count } => {
            let entries = admin.audit(count).await?;
            if cli.json {
                print_json(&entries)?;
            } else {
                for e in &entries {
                    println!(
                        "{} {:<6} {:<24} by {} (version {})",
                        e.id, e.op, e.flag, e.by, e.version
                    );
                }
            }
        }
    }
    Ok(())
}

fn push(list: &mut Vec<String>, id: String) {
    if !list.contains(&id) {
        list.push(id);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fredkit-flags: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Admin(e)) if e.is_conflict() => {
            eprintln!("fredkit-flags: {e}");
            ExitCode::from(3)
        }
        Err(Failure::NotFound(name)) => {
            eprintln!("fredkit-flags: no flag '{name}'");
            ExitCode::from(4)
        }
        Err(Failure::Admin(e)) => {
            eprintln!("fredkit-flags: {e}");
            ExitCode::from(1)
        }
        Err(Failure::Other(m)) => {
            eprintln!("fredkit-flags: {m}");
            ExitCode::from(1)
        }
    }
}
