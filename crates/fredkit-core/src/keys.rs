//! Cluster-safe key names: [`KeySpace`].

use std::{fmt, sync::Arc};

use crate::{Error, Result};

/// The separator between the prefix and the parts of a key.
pub const SEPARATOR: char = ':';

/// Builds Redis key names from a fixed prefix and caller-supplied parts.
///
/// No fredkit crate formats a key by hand: every key is
/// `prefix:part:part…`, optionally with a hash tag right after the prefix
/// (`prefix:{tag}:part…`) so that every key of one logical entity lands in the
/// same cluster slot and one script or transaction can touch them all.
///
/// # The escaping policy
///
/// Parts (and tags) are arbitrary user data — user ids, URLs, e-mail
/// addresses. Three characters in them would break the scheme: `{` and `}`
/// could move a key to another cluster slot, and `:` would make two different
/// part lists produce the same key. So:
///
/// - [`key`](Self::key) and [`tagged`](Self::tagged) **escape**: `%`, `{`, `}`
///   and `:` in a part are written as `%25`, `%7B`, `%7D` and `%3A`. Every
///   input is accepted, distinct part lists give distinct keys, and a part never
///   changes the slot of a key.
/// - [`try_key`](Self::try_key) and [`try_tagged`](Self::try_tagged)
///   **reject** a part holding any of those four characters with
///   [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput). When they
///   accept, they return exactly what `key`/`tagged` return, so the two styles
///   can be mixed freely.
///
/// Parts that need no escaping (the usual ASCII ids) come out unchanged, so
/// keys stay readable in `redis-cli`.
///
/// The prefix is chosen by the developer and validated once by
/// [`KeySpace::new`]. Nested spaces share keys on purpose:
/// `KeySpace::new("a")?.key(["b", "c"])` is `a:b:c`, the same as
/// `KeySpace::new("a:b")?.key(["c"])` — give unrelated features unrelated
/// prefixes.
///
/// # Example
///
/// ```
/// use fredkit_core::KeySpace;
///
/// let ks = KeySpace::new("app:cache")?;
/// assert_eq!(ks.key(["user", "42"]), "app:cache:user:42");
/// // A hash tag keeps every key of user 42 in one slot.
/// assert_eq!(ks.tagged("user42", ["rl", "1s"])?, "app:cache:{user42}:rl:1s");
/// // User data cannot escape its part.
/// assert_eq!(ks.key(["a:b", "{x}"]), "app:cache:a%3Ab:%7Bx%7D");
/// assert!(ks.try_key(["a:b"]).is_err());
/// // SCAN MATCH pattern for everything under the space.
/// assert_eq!(ks.scan_pattern(), "app:cache:*");
/// # Ok::<(), fredkit_core::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeySpace {
    prefix: Arc<str>,
}

impl KeySpace {
    /// A key space under `prefix`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) when the
    /// prefix is empty, holds `{` or `}` (they would hijack the hash tag), holds
    /// whitespace or control characters, or has an empty `:`-separated segment
    /// (a leading or doubled `:`, or `:` alone).
    ///
    /// One trailing `:` is dropped, since prefixes are often written that way:
    /// `"app:cache:"` is the space `"app:cache"` (its keys are `app:cache:…`),
    /// and so is what `fredkit_testkit::unique_prefix` returns.
    pub fn new(prefix: impl Into<String>) -> Result<KeySpace> {
        let mut prefix = prefix.into();
        if prefix.len() > 1 && prefix.ends_with(SEPARATOR) {
            prefix.pop();
        }
        validate_prefix(&prefix)?;
        Ok(KeySpace {
            prefix: prefix.into(),
        })
    }

    /// The prefix, without a trailing separator.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A nested space, `prefix:part` with `part` escaped like in
    /// [`key`](Self::key).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) when `part`
    /// is empty or holds whitespace or control characters (a prefix may not).
    pub fn child(&self, part: &str) -> Result<KeySpace> {
        if part.is_empty() {
            // Checked here: `KeySpace::new` drops one trailing ':', so it
            // would take `prefix:` for `prefix` itself.
            return Err(Error::invalid_input(format!(
                "the part of a nested key space under {:?} is empty; give it a name",
                self.prefix
            )));
        }
        let mut prefix = String::with_capacity(self.prefix.len() + 1 + part.len());
        prefix.push_str(&self.prefix);
        prefix.push(SEPARATOR);
        push_escaped(&mut prefix, part);
        KeySpace::new(prefix)
    }

    /// `prefix:part:part…`, each part escaped (see the type docs). Never fails;
    /// with no parts it is the prefix itself.
    pub fn key<I>(&self, parts: I) -> String
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let mut key = String::with_capacity(self.prefix.len() + 32);
        key.push_str(&self.prefix);
        for part in parts {
            key.push(SEPARATOR);
            push_escaped(&mut key, part.as_ref());
        }
        key
    }

    /// Like [`key`](Self::key), but rejects parts that would need escaping
    /// instead of escaping them.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) naming the
    /// first part that holds `%`, `{`, `}` or `:`.
    pub fn try_key<I>(&self, parts: I) -> Result<String>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let mut key = String::with_capacity(self.prefix.len() + 32);
        key.push_str(&self.prefix);
        for part in parts {
            let part = part.as_ref();
            check_plain("key part", part)?;
            key.push(SEPARATOR);
            key.push_str(part);
        }
        Ok(key)
    }

    /// `prefix:{tag}:part…`: the tag and the parts escaped, so every key with
    /// the same tag maps to the same cluster slot whatever the parts hold.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) when the
    /// tag is empty: Redis ignores an empty `{}` and would hash the whole key.
    pub fn tagged<I>(&self, tag: &str, parts: I) -> Result<String>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        check_tag(tag)?;
        let mut key = self.tagged_head(tag);
        for part in parts {
            key.push(SEPARATOR);
            push_escaped(&mut key, part.as_ref());
        }
        Ok(key)
    }

    /// Like [`tagged`](Self::tagged), but rejects a tag or part that would
    /// need escaping instead of escaping it.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) when the
    /// tag is empty or the tag or a part holds `%`, `{`, `}` or `:`.
    pub fn try_tagged<I>(&self, tag: &str, parts: I) -> Result<String>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        check_tag(tag)?;
        check_plain("hash tag", tag)?;
        let mut key = self.tagged_head(tag);
        for part in parts {
            let part = part.as_ref();
            check_plain("key part", part)?;
            key.push(SEPARATOR);
            key.push_str(part);
        }
        Ok(key)
    }

    /// A `SCAN … MATCH` pattern for every key under this space
    /// (`prefix:*`), with the glob characters `*?[]\` of the prefix escaped.
    ///
    /// The key equal to the bare prefix (`key` with no parts) is not matched.
    pub fn scan_pattern(&self) -> String {
        let mut pattern = String::with_capacity(self.prefix.len() + 2);
        for c in self.prefix.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push(SEPARATOR);
        pattern.push('*');
        pattern
    }

    fn tagged_head(&self, tag: &str) -> String {
        let mut key = String::with_capacity(self.prefix.len() + tag.len() + 32);
        key.push_str(&self.prefix);
        key.push(SEPARATOR);
        key.push('{');
        push_escaped(&mut key, tag);
        key.push('}');
        key
    }
}

impl fmt::Debug for KeySpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("KeySpace").field(&self.prefix).finish()
    }
}

impl fmt::Display for KeySpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.prefix)
    }
}

/// Characters a part may not carry verbatim.
fn needs_escape(c: char) -> bool {
    matches!(c, '%' | '{' | '}' | SEPARATOR)
}

fn push_escaped(out: &mut String, part: &str) {
    if !part.contains(needs_escape) {
        out.push_str(part);
        return;
    }
    for c in part.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            SEPARATOR => out.push_str("%3A"),
            c => out.push(c),
        }
    }
}

fn check_plain(what: &str, part: &str) -> Result<()> {
    match part.chars().find(|c| needs_escape(*c)) {
        Some(c) => Err(Error::invalid_input(format!(
            "{what} {part:?} contains {c:?}; '%', '{{', '}}' and ':' are not allowed in key parts \
             (use KeySpace::key / KeySpace::tagged to escape them instead)"
        ))),
        None => Ok(()),
    }
}

fn check_tag(tag: &str) -> Result<()> {
    if tag.is_empty() {
        return Err(Error::invalid_input(
            "hash tag is empty; Redis would ignore '{}' and hash the whole key, give the entity's id",
        ));
    }
    Ok(())
}

/// What every fredkit primitive takes as its key prefix: a `&str` or `String`
/// (validated by [`KeySpace::new`] when the primitive is built) or a ready
/// [`KeySpace`] (owned or borrowed).
///
/// So `LockManager::new(&redis, "app:locks")`, `…new(&redis, ks.clone())`
/// and `…new(&redis, &unique_prefix("t"))` all work the same way, and a
/// service can keep one `KeySpace` per feature and hand it around.
///
/// ```
/// use fredkit_core::{IntoKeySpace, KeySpace};
///
/// fn space(prefix: impl IntoKeySpace) -> fredkit_core::Result<KeySpace> {
///     prefix.into_key_space()
/// }
/// let ks = KeySpace::new("app:cart")?;
/// assert_eq!(space("app:cart")?, ks);
/// assert_eq!(space("app:cart:".to_string())?, ks);
/// assert_eq!(space(&ks)?, ks);
/// assert!(space("bad{tag}").is_err());
/// # Ok::<(), fredkit_core::Error>(())
/// ```
pub trait IntoKeySpace {
    /// The key space.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) for a
    /// string prefix [`KeySpace::new`] rejects, naming it.
    fn into_key_space(self) -> Result<KeySpace>;
}

impl IntoKeySpace for KeySpace {
    fn into_key_space(self) -> Result<KeySpace> {
        Ok(self)
    }
}

impl IntoKeySpace for &KeySpace {
    fn into_key_space(self) -> Result<KeySpace> {
        Ok(self.clone())
    }
}

impl IntoKeySpace for &str {
    fn into_key_space(self) -> Result<KeySpace> {
        KeySpace::new(self)
    }
}

impl IntoKeySpace for String {
    fn into_key_space(self) -> Result<KeySpace> {
        KeySpace::new(self)
    }
}

impl IntoKeySpace for &String {
    fn into_key_space(self) -> Result<KeySpace> {
        KeySpace::new(self.as_str())
    }
}

fn validate_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty() {
        return Err(Error::invalid_input(
            "key prefix is empty; give the service or feature name, e.g. \"app:cache\"",
        ));
    }
    if let Some(c) = prefix
        .chars()
        .find(|c| matches!(c, '{' | '}') || c.is_whitespace() || c.is_control())
    {
        return Err(Error::invalid_input(format!(
            "key prefix {prefix:?} contains {c:?}; braces would move keys to another cluster slot \
             and whitespace or control characters make keys hard to read, remove them"
        )));
    }
    if prefix.split(SEPARATOR).any(str::is_empty) {
        return Err(Error::invalid_input(format!(
            "key prefix {prefix:?} has an empty ':'-separated segment; remove the leading, \
             trailing or doubled ':'"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use fred::util::redis_keyslot;
    use rstest::rstest;
    use std::collections::HashMap;

    fn ks() -> KeySpace {
        KeySpace::new("app:cache").unwrap()
    }

    #[rstest]
    #[case::simple("app")]
    #[case::nested("app:cache:v2")]
    #[case::glob_chars("app*[x]?")]
    #[case::percent("app%")]
    #[case::unicode("äpp")]
    fn valid_prefixes_are_accepted(#[case] prefix: &str) {
        assert_eq!(KeySpace::new(prefix).unwrap().prefix(), prefix);
    }

    #[rstest]
    #[case::one_level("app:", "app")]
    #[case::nested("app:cache:", "app:cache")]
    #[case::testkit_style("t:my_test:0a1b2c3d:", "t:my_test:0a1b2c3d")]
    fn one_trailing_separator_is_dropped(#[case] prefix: &str, #[case] want: &str) {
        let ks = KeySpace::new(prefix).unwrap();
        assert_eq!(ks.prefix(), want);
        assert_eq!(ks.key(["k"]), format!("{want}:k"));
    }

    #[rstest]
    #[case::empty("")]
    #[case::open_brace("app{")]
    #[case::close_brace("app}x")]
    #[case::tag("app:{x}")]
    #[case::space("my app")]
    #[case::newline("app\n")]
    #[case::nul("app\0")]
    #[case::leading_separator(":app")]
    #[case::separator_alone(":")]
    #[case::two_trailing_separators("app::")]
    #[case::double_separator("app::cache")]
    fn prefixes_that_could_break_keys_are_rejected(#[case] prefix: &str) {
        let err = KeySpace::new(prefix).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    }

    #[rstest]
    #[case::no_parts(&[], "app:cache")]
    #[case::plain(&["user", "42"], "app:cache:user:42")]
    #[case::empty_part(&[""], "app:cache:")]
    #[case::separator(&["a:b"], "app:cache:a%3Ab")]
    #[case::braces(&["{x}"], "app:cache:%7Bx%7D")]
    #[case::percent(&["100%"], "app:cache:100%25")]
    #[case::already_escaped_looking(&["a%3Ab"], "app:cache:a%253Ab")]
    #[case::unicode(&["ü ß"], "app:cache:ü ß")]
    fn key_escapes_only_the_four_special_characters(#[case] parts: &[&str], #[case] want: &str) {
        assert_eq!(ks().key(parts), want);
    }

    #[rstest]
    #[case::separator("a:b")]
    #[case::open_brace("{x")]
    #[case::close_brace("x}")]
    #[case::percent("50%")]
    fn try_key_rejects_parts_that_need_escaping(#[case] part: &str) {
        let err = ks().try_key(["ok", part]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }

    #[rstest]
    #[case(&[])]
    #[case(&["user", "42"])]
    #[case(&["", "x y", "ü"])]
    fn try_key_equals_key_when_it_accepts(#[case] parts: &[&str]) {
        assert_eq!(ks().try_key(parts).unwrap(), ks().key(parts));
    }

    #[rstest]
    #[case::plain("user42", &["rl", "1s"], "app:cache:{user42}:rl:1s")]
    #[case::no_parts("user42", &[], "app:cache:{user42}")]
    #[case::tag_with_braces("a}b", &["x"], "app:cache:{a%7Db}:x")]
    #[case::tag_with_separator("a:b", &["x"], "app:cache:{a%3Ab}:x")]
    #[case::part_with_braces("t", &["{evil}"], "app:cache:{t}:%7Bevil%7D")]
    fn tagged_puts_the_escaped_tag_right_after_the_prefix(
        #[case] tag: &str,
        #[case] parts: &[&str],
        #[case] want: &str,
    ) {
        assert_eq!(ks().tagged(tag, parts).unwrap(), want);
    }

    #[test]
    fn empty_hash_tag_is_rejected() {
        assert_eq!(
            ks().tagged("", ["x"]).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        assert_eq!(
            ks().try_tagged("", ["x"]).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }

    #[rstest]
    #[case::tag("a{b", "x")]
    #[case::part("ab", "x}")]
    #[case::tag_separator("a:b", "x")]
    fn try_tagged_rejects_tags_and_parts_that_need_escaping(#[case] tag: &str, #[case] part: &str) {
        assert_eq!(
            ks().try_tagged(tag, [part]).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }

    #[test]
    fn try_tagged_equals_tagged_when_it_accepts() {
        assert_eq!(
            ks().try_tagged("u1", ["a", "b"]).unwrap(),
            ks().tagged("u1", ["a", "b"]).unwrap()
        );
    }

    /// Parts chosen to collide under naive joining.
    const TRICKY: &[&str] = &[
        "", "a", "b", ":", "a:b", "a%3Ab", "%", "%25", "%3A", "{", "}", "{a}", "%7B", "::", "a:",
        ":b",
    ];

    fn part_lists() -> Vec<Vec<&'static str>> {
        let mut lists = vec![vec![]];
        for a in TRICKY {
            lists.push(vec![*a]);
            for b in TRICKY {
                lists.push(vec![*a, *b]);
                for c in &TRICKY[..6] {
                    lists.push(vec![*a, *b, *c]);
                }
            }
        }
        lists
    }

    #[test]
    fn distinct_part_lists_never_collide() {
        let mut seen: HashMap<String, Vec<&str>> = HashMap::new();
        for parts in part_lists() {
            let key = ks().key(&parts);
            if let Some(previous) = seen.insert(key.clone(), parts.clone()) {
                panic!("{previous:?} and {parts:?} both map to {key}");
            }
        }
    }

    #[test]
    fn distinct_tagged_keys_never_collide() {
        let mut seen: HashMap<String, (&str, Vec<&str>)> = HashMap::new();
        for tag in TRICKY.iter().filter(|t| !t.is_empty()) {
            for parts in part_lists().into_iter().take(300) {
                let key = ks().tagged(tag, &parts).unwrap();
                if let Some(previous) = seen.insert(key.clone(), (tag, parts.clone())) {
                    panic!("{previous:?} and {:?} both map to {key}", (tag, parts));
                }
            }
        }
    }

    #[test]
    fn a_part_never_changes_the_slot_of_a_tagged_key() {
        for tag in ["user42", "a}b", "{x}", "%", "ü"] {
            let slot = redis_keyslot(ks().tagged(tag, ["base"]).unwrap().as_bytes());
            for parts in part_lists() {
                let key = ks().tagged(tag, &parts).unwrap();
                assert_eq!(redis_keyslot(key.as_bytes()), slot, "{key}");
            }
        }
    }

    #[test]
    fn tagged_key_hashes_like_its_tag() {
        let key = ks().tagged("user42", ["rl"]).unwrap();
        assert_eq!(redis_keyslot(key.as_bytes()), redis_keyslot(b"user42"));
    }

    #[test]
    fn a_part_cannot_introduce_a_hash_tag_into_an_untagged_key() {
        let key = ks().key(["{user42}"]);
        assert!(!key.contains('{') && !key.contains('}'), "{key}");
    }

    #[rstest]
    #[case::plain("app:cache", "app:cache:*")]
    #[case::glob_chars("a*b?c[d]e\\f", "a\\*b\\?c\\[d\\]e\\\\f:*")]
    fn scan_pattern_escapes_glob_characters_of_the_prefix(
        #[case] prefix: &str,
        #[case] want: &str,
    ) {
        assert_eq!(KeySpace::new(prefix).unwrap().scan_pattern(), want);
    }

    #[test]
    fn child_nests_the_escaped_part_under_the_prefix() {
        let child = ks().child("us:er").unwrap();
        assert_eq!(child.prefix(), "app:cache:us%3Aer");
        assert_eq!(child.key(["1"]), ks().key(["us:er", "1"]));
        assert_eq!(ks().child("").unwrap_err().kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn display_and_debug_show_the_prefix() {
        assert_eq!(ks().to_string(), "app:cache");
        assert_eq!(format!("{:?}", ks()), "KeySpace(\"app:cache\")");
    }
}
