//! What a flag is: [`FlagDef`] (what an administrator writes) and
//! [`StoredFlag`] (what Redis holds: the definition plus its revision,
//! expiry and author), with the validation of every field.

use serde::{Deserialize, Serialize};

use crate::admin::AdminError;

/// The rollout is decided over this many buckets: a percentage has a
/// resolution of 0.001 %.
pub const BUCKETS: u32 = 100_000;

/// Longest flag name, in bytes.
pub const MAX_NAME_LEN: usize = 128;
/// Longest user id or group name in an allow or deny list, in bytes.
pub const MAX_ID_LEN: usize = 256;
/// Most entries in one allow or deny list.
pub const MAX_LIST_LEN: usize = 100_000;
/// Largest encoded definition (its JSON), in bytes.
pub const MAX_DEF_BYTES: usize = 4 << 20;

/// A flag's definition: what an administrator sets through
/// [`FlagAdmin`](crate::FlagAdmin) or the `fredkit-flags` CLI.
///
/// How a flag is evaluated for a [`Context`](crate::Context), first match wins:
///
/// 1. past its expiry (by the server's clock): the **default from code**
///    ([`FlagsOptions::default_enabled`](crate::FlagsOptions::default_enabled));
/// 2. `enabled == false`: off for everyone (a kill switch; the lists are
///    kept but ignored);
/// 3. the user is in `deny_users`, or one of the context's groups is in
///    `deny_groups`: off;
/// 4. the user is in `allow_users`, or a group is in `allow_groups`: on;
/// 5. otherwise on for `percent` % of users, chosen by a stable hash of
///    (flag name, user id): a user who is in at 20 % stays in at 30 %. A
///    context without a user id is on only at 100 %.
///
/// The value a user gets from [`Flags::variant`](crate::Flags::variant)
/// when the flag is on for them: one of `variants` (weighted, sticky per
/// user, by a second hash) when there are any, else `value`; when it is off,
/// or `value` is `None`, the default from code.
///
/// ```
/// use fredkit_flags::FlagDef;
/// let def = FlagDef::on()
///     .percent(20.0)
///     .allow_user("42")
///     .deny_group("banned")
///     .value(serde_json::json!("blue"));
/// assert!(def.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct FlagDef {
    /// Whether the flag is live at all; `false` turns it off for everyone.
    pub enabled: bool,
    /// The share of users (0 to 100, with 0.001 resolution) for whom the
    /// flag is on when no list decides. Default 100.
    pub percent: f64,
    /// User ids for whom the flag is on (unless denied).
    pub allow_users: Vec<String>,
    /// User ids for whom the flag is off, whatever else says.
    pub deny_users: Vec<String>,
    /// Groups whose members have the flag on (unless denied).
    pub allow_groups: Vec<String>,
    /// Groups whose members have the flag off, whatever else says.
    pub deny_groups: Vec<String>,
    /// The value served when the flag is on and there are no `variants`.
    pub value: Option<serde_json::Value>,
    /// Weighted values served when the flag is on (an A/B split): each user
    /// always gets the same one while the weights stay the same.
    pub variants: Vec<WeightedVariant>,
    /// Free text for people (shown by the CLI).
    pub description: String,
}

impl Default for FlagDef {
    /// Off, percent 100, no lists, no value.
    fn default() -> Self {
        FlagDef {
            enabled: false,
            percent: 100.0,
            allow_users: Vec::new(),
            deny_users: Vec::new(),
            allow_groups: Vec::new(),
            deny_groups: Vec::new(),
            value: None,
            variants: Vec::new(),
            description: String::new(),
        }
    }
}

/// One of a flag's weighted [`variants`](FlagDef::variants).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct WeightedVariant {
    /// Its name (reported by [`Variant::name`](crate::Variant::name)).
    pub name: String,
    /// Its relative weight (1 to 100 000).
    pub weight: u32,
    /// The value served.
    pub value: serde_json::Value,
}

impl WeightedVariant {
    /// A variant `name` of relative `weight` serving `value`.
    pub fn new(name: impl Into<String>, weight: u32, value: serde_json::Value) -> Self {
        WeightedVariant {
            name: name.into(),
            weight,
            value,
        }
    }
}

impl FlagDef {
    /// A flag that is on for everyone (until lists or `percent` say otherwise).
    pub fn on() -> FlagDef {
        FlagDef {
            enabled: true,
            ..FlagDef::default()
        }
    }

    /// A flag that is off for everyone.
    pub fn off() -> FlagDef {
        FlagDef::default()
    }

    /// Sets [`percent`](Self::percent).
    #[must_use]
    pub fn percent(mut self, percent: f64) -> Self {
        self.percent = percent;
        self
    }

    /// Adds a user id to [`allow_users`](Self::allow_users).
    #[must_use]
    pub fn allow_user(mut self, id: impl Into<String>) -> Self {
        push_unique(&mut self.allow_users, id.into());
        self
    }

    /// Adds a user id to [`deny_users`](Self::deny_users).
    #[must_use]
    pub fn deny_user(mut self, id: impl Into<String>) -> Self {
        push_unique(&mut self.deny_users, id.into());
        self
    }

    /// Adds a group to [`allow_groups`](Self::allow_groups).
    #[must_use]
    pub fn allow_group(mut self, group: impl Into<String>) -> Self {
        push_unique(&mut self.allow_groups, group.into());
        self
    }

    /// Adds a group to [`deny_groups`](Self::deny_groups).
    #[must_use]
    pub fn deny_group(mut self, group: impl Into<String>) -> Self {
        push_unique(&mut self.deny_groups, group.into());
        self
    }

    /// Sets [`value`](Self::value).
    #[must_use]
    pub fn value(mut self, value: serde_json::Value) -> Self {
        self.value = Some(value);
        self
    }

    /// Adds a weighted variant.
    #[must_use]
    pub fn variant(
        mut self,
        name: impl Into<String>,
        weight: u32,
        value: serde_json::Value,
    ) -> Self {
        self.variants
            .push(WeightedVariant::new(name, weight, value));
        self
    }

    /// Sets [`description`](Self::description).
    #[must_use]
    pub fn description(mut self, text: impl Into<String>) -> Self {
        self.description = text.into();
        self
    }

    /// Checks every field; the admin API calls it before any write.
    ///
    /// # Errors
    /// [`AdminError::Invalid`] naming the first field that is wrong: a
    /// `percent` outside 0-100 (or not a number), an empty or too long
    /// (> 256 bytes) user id or group, a list of more than 100 000 entries,
    /// a variant with an empty name or a weight outside 1-100 000.
    pub fn validate(&self) -> Result<(), AdminError> {
        if !self.percent.is_finite() || !(0.0..=100.0).contains(&self.percent) {
            return Err(AdminError::invalid(
                "percent",
                format!("must be between 0 and 100, got {}", self.percent),
            ));
        }
        for (field, list) in [
            ("allow_users", &self.allow_users),
            ("deny_users", &self.deny_users),
            ("allow_groups", &self.allow_groups),
            ("deny_groups", &self.deny_groups),
        ] {
            if list.len() > MAX_LIST_LEN {
                return Err(AdminError::invalid(
                    field,
                    format!("holds {} entries, at most {MAX_LIST_LEN}", list.len()),
                ));
            }
            if let Some(bad) = list
                .iter()
                .find(|id| id.is_empty() || id.len() > MAX_ID_LEN)
            {
                return Err(AdminError::invalid(
                    field,
                    format!(
                        "entries must be 1 to {MAX_ID_LEN} bytes, got one of {} bytes",
                        bad.len()
                    ),
                ));
            }
        }
        for v in &self.variants {
            if v.name.is_empty() || v.name.len() > MAX_NAME_LEN {
                return Err(AdminError::invalid(
                    "variants",
                    format!("a variant name must be 1 to {MAX_NAME_LEN} bytes"),
                ));
            }
            if v.weight == 0 || v.weight > BUCKETS {
                return Err(AdminError::invalid(
                    "variants",
                    format!(
                        "variant '{}': weight must be between 1 and {BUCKETS}, got {}",
                        v.name, v.weight
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn push_unique(list: &mut Vec<String>, id: String) {
    if !list.contains(&id) {
        list.push(id);
    }
}

/// Checks a flag name: 1 to 128 bytes of ASCII letters, digits, `_`, `-`
/// and `.`.
///
/// # Errors
/// [`AdminError::Invalid`] naming the field `name`.
pub fn validate_name(name: &str) -> Result<(), AdminError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(AdminError::invalid(
            "name",
            format!("must be 1 to {MAX_NAME_LEN} bytes, got {}", name.len()),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(AdminError::invalid(
            "name",
            format!("'{name}' holds {c:?}: use ASCII letters, digits, '_', '-' and '.'"),
        ));
    }
    Ok(())
}

/// A flag as stored in Redis: its definition, its revision and who set it
/// when. Returned by [`FlagAdmin::get`](crate::FlagAdmin::get) and
/// [`FlagAdmin::list`](crate::FlagAdmin::list).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StoredFlag {
    /// The flag's name.
    pub name: String,
    /// Its revision: 1 when created, +1 at every write. Give it back as
    /// [`Expect::Rev`](crate::Expect::Rev) to update it safely.
    pub rev: u64,
    /// When it reverts to the default from code, in Unix milliseconds of the
    /// server's clock; `None` = never.
    pub expires_at: Option<u64>,
    /// When it was last written, Unix milliseconds (server clock).
    pub updated_at: u64,
    /// Who wrote it last (the `by` of the write).
    pub updated_by: String,
    /// The definition.
    pub def: FlagDef,
}

impl StoredFlag {
    /// Whether its expiry has passed at `server_now_ms` (Unix milliseconds
    /// of the server's clock).
    pub fn is_expired_at(&self, server_now_ms: u64) -> bool {
        self.expires_at.is_some_and(|e| server_now_ms >= e)
    }
}

/// The record layout in the hash field (written by `scripts/write.lua`:
/// the field order is fixed, the script reads `rev`, `wid` and
/// `expires_at` by position).
#[derive(Debug, Deserialize)]
pub(crate) struct Record {
    pub(crate) rev: u64,
    #[allow(dead_code)]
    pub(crate) wid: String,
    pub(crate) expires_at: Option<u64>,
    pub(crate) updated_at: u64,
    pub(crate) by: String,
    pub(crate) def: FlagDef,
}

/// Parses the record stored under `name`; `Err` says why it is malformed.
pub(crate) fn parse_record(name: &str, raw: &[u8]) -> Result<StoredFlag, String> {
    let r: Record = serde_json::from_slice(raw).map_err(|e| e.to_string())?;
    r.def.validate().map_err(|e| e.to_string())?;
    Ok(StoredFlag {
        name: name.to_string(),
        rev: r.rev,
        expires_at: r.expires_at,
        updated_at: r.updated_at,
        updated_by: r.by,
        def: r.def,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn invalid_fields_are_named() {
        let e = FlagDef::on().percent(120.0).validate().unwrap_err();
        assert!(e.to_string().contains("percent"), "{e}");
        let e = FlagDef::on().percent(f64::NAN).validate().unwrap_err();
        assert!(matches!(
            e,
            AdminError::Invalid {
                field: "percent",
                ..
            }
        ));
        let e = FlagDef::on().allow_user("").validate().unwrap_err();
        assert!(matches!(
            e,
            AdminError::Invalid {
                field: "allow_users",
                ..
            }
        ));
        let e = FlagDef::on()
            .variant("a", 0, serde_json::json!(1))
            .validate()
            .unwrap_err();
        assert!(matches!(
            e,
            AdminError::Invalid {
                field: "variants",
                ..
            }
        ));
        assert!(matches!(
            validate_name("a:b").unwrap_err(),
            AdminError::Invalid { field: "name", .. }
        ));
        assert!(validate_name("new-checkout_v2.1").is_ok());
    }

    #[test]
    fn a_record_parses_and_garbage_does_not() {
        let raw = br#"{"rev":3,"wid":"ab","expires_at":null,"updated_at":5,"by":"me","def":{"enabled":true,"percent":20}}"#;
        let f = parse_record("x", raw).unwrap();
        assert_eq!((f.rev, f.def.percent, f.expires_at), (3, 20.0, None));
        assert!(parse_record("x", b"{not json").is_err());
        let bad = br#"{"rev":3,"wid":"ab","expires_at":null,"updated_at":5,"by":"me","def":{"percent":200}}"#;
        assert!(parse_record("x", bad).is_err());
    }
}
