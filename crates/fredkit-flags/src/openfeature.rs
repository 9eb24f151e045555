//! An OpenFeature provider (feature `openfeature`, crate `open-feature`
//! 0.3): [`FredkitProvider`].
//!
//! ```no_run
//! use fredkit_flags::{openfeature::FredkitProvider, Flags};
//! use open_feature::{EvaluationContext, OpenFeature};
//! # async fn run(redis: fredkit_conn::Redis) -> fredkit_core::Result<()> {
//! let flags = Flags::new(&redis, "shop:flags").await?;
//! let mut api = OpenFeature::singleton_mut().await;
//! api.set_provider(FredkitProvider::new(flags)).await;
//! let client = api.create_client();
//! drop(api);
//! let ctx = EvaluationContext::default()
//!     .with_targeting_key("42")
//!     .with_custom_field("groups", "beta,staff");
//! let on = client.get_bool_value("new-checkout", Some(&ctx), None).await.unwrap_or(false);
//! # Ok(()) }
//! ```

use std::collections::HashMap;

use open_feature::provider::{
    FeatureProvider, ProviderMetadata, ProviderStatus, ResolutionDetails,
};
use open_feature::{
    EvaluationContext, EvaluationError, EvaluationErrorCode, EvaluationReason, EvaluationResult,
    StructValue, Value,
};

use crate::{Context, Flags, Reason, Variant};

/// Resolves OpenFeature flags from a [`Flags`] snapshot: local, no round
/// trip (the provider's futures are ready at once).
///
/// - The context's targeting key is the user id; its `groups` field (a
///   string, comma-separated) the groups.
/// - Boolean flags: [`Flags::evaluate`]. Other types: [`Flags::variant`].
/// - A flag missing from the snapshot without a default from code is
///   `FLAG_NOT_FOUND` (the call site's default applies); a value of another
///   type `TYPE_MISMATCH`.
/// - Reasons: `TARGETING_MATCH` (allow/deny lists), `SPLIT` (rollout),
///   `STATIC` (on for everyone), `DISABLED`, `DEFAULT` (expired, or a
///   default from code).
#[derive(Debug, Clone)]
pub struct FredkitProvider {
    flags: Flags,
    metadata: ProviderMetadata,
}

impl FredkitProvider {
    /// A provider answering from `flags`.
    pub fn new(flags: Flags) -> FredkitProvider {
        FredkitProvider {
            flags,
            metadata: ProviderMetadata::new("fredkit-flags"),
        }
    }
}

fn reason(r: Reason) -> EvaluationReason {
    match r {
        Reason::Allowed | Reason::Denied => EvaluationReason::TargetingMatch,
        Reason::Rollout => EvaluationReason::Split,
        Reason::On => EvaluationReason::Static,
        Reason::Disabled => EvaluationReason::Disabled,
        _ => EvaluationReason::Default,
    }
}

fn error(code: EvaluationErrorCode, message: String) -> EvaluationError {
    EvaluationError {
        code,
        message: Some(message),
    }
}

fn with_context<T>(ctx: &EvaluationContext, f: impl FnOnce(&Context<'_>) -> T) -> T {
    let groups_field = ctx
        .custom_fields
        .get("groups")
        .and_then(|g| g.as_str())
        .unwrap_or("");
    let groups: Vec<&str> = groups_field
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .collect();
    let c = match ctx.targeting_key.as_deref() {
        Some(user) => Context::user(user),
        None => Context::anonymous(),
    };
    f(&c.groups(&groups))
}

fn to_value(v: &serde_json::Value) -> Option<Value> {
    Some(match v {
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64()?),
        },
        serde_json::Value::String(s) => Value::String(s.clone()),
        serde_json::Value::Array(a) => Value::Array(a.iter().filter_map(to_value).collect()),
        serde_json::Value::Object(o) => Value::Struct(StructValue {
            fields: o
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), to_value(v)?)))
                .collect::<HashMap<_, _>>(),
        }),
        serde_json::Value::Null => return None,
    })
}

impl FredkitProvider {
    fn resolve<T>(
        &self,
        flag: &str,
        ctx: &EvaluationContext,
        convert: impl FnOnce(&serde_json::Value) -> Option<T>,
    ) -> EvaluationResult<ResolutionDetails<T>> {
        let v: Variant = with_context(ctx, |c| self.flags.variant(flag, c));
        let Some(json) = v.json() else {
            return Err(error(
                EvaluationErrorCode::FlagNotFound,
                format!(
                    "flag '{flag}' serves no value (unknown, or off without a default from code)"
                ),
            ));
        };
        let value = convert(json).ok_or_else(|| {
            error(
                EvaluationErrorCode::TypeMismatch,
                format!("flag '{flag}' serves {json}, not the requested type"),
            )
        })?;
        Ok(ResolutionDetails {
            value,
            variant: v.name().map(str::to_string),
            reason: Some(reason(v.reason())),
            flag_metadata: None,
        })
    }
}

#[async_trait::async_trait]
impl FeatureProvider for FredkitProvider {
    fn metadata(&self) -> &ProviderMetadata {
        &self.metadata
    }

    fn status(&self) -> ProviderStatus {
        ProviderStatus::Ready
    }

    async fn resolve_bool_value(
        &self,
        flag_key: &str,
        evaluation_context: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<bool>> {
        let e = with_context(evaluation_context, |c| self.flags.evaluate(flag_key, c));
        if e.reason == Reason::Unknown && !self.flags.has_default(flag_key) {
            // No flag and no default from code for it: the call site decides.
            return Err(error(
                EvaluationErrorCode::FlagNotFound,
                format!("flag '{flag_key}' is not in the snapshot"),
            ));
        }
        Ok(ResolutionDetails {
            value: e.enabled,
            variant: None,
            reason: Some(reason(e.reason)),
            flag_metadata: None,
        })
    }

    async fn resolve_int_value(
        &self,
        flag_key: &str,
        evaluation_context: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<i64>> {
        self.resolve(flag_key, evaluation_context, serde_json::Value::as_i64)
    }

    async fn resolve_float_value(
        &self,
        flag_key: &str,
        evaluation_context: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<f64>> {
        self.resolve(flag_key, evaluation_context, serde_json::Value::as_f64)
    }

    async fn resolve_string_value(
        &self,
        flag_key: &str,
        evaluation_context: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<String>> {
        self.resolve(flag_key, evaluation_context, |v| {
            v.as_str().map(str::to_string)
        })
    }

    async fn resolve_struct_value(
        &self,
        flag_key: &str,
        evaluation_context: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<StructValue>> {
        self.resolve(flag_key, evaluation_context, |v| match to_value(v)? {
            Value::Struct(s) => Some(s),
            _ => None,
        })
    }
}
