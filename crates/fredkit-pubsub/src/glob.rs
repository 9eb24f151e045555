//! Redis's glob rules (`stringmatchlen` in util.c), to route a `pmessage` to
//! the pattern subscriptions it matches: fred delivers the channel of a
//! pattern message but not the pattern.

/// Whether `text` matches the Redis glob `pattern` (`*`, `?`, `[abc]`,
/// `[^a-z]`, `\x`), byte-wise and case-sensitively, as PSUBSCRIBE does.
pub(crate) fn matches(pattern: &[u8], text: &[u8]) -> bool {
    // Iterative with single-star backtracking: linear-ish and no recursion,
    // so a hostile pattern cannot blow the stack.
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    while p < pattern.len() && pattern[p] == b'*' {
                        p += 1;
                    }
                    if p == pattern.len() {
                        return true;
                    }
                    star = Some((p, t));
                    continue;
                }
                b'?' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class(pattern, p, text[t]) {
                        if matched {
                            p = next;
                            t += 1;
                            continue;
                        }
                    }
                }
                b'\\' if p + 1 < pattern.len() => {
                    if pattern[p + 1] == text[t] {
                        p += 2;
                        t += 1;
                        continue;
                    }
                }
                c => {
                    if c == text[t] {
                        p += 1;
                        t += 1;
                        continue;
                    }
                }
            }
        }
        match star {
            Some((sp, st)) => {
                p = sp;
                t = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    while p < pattern.len() && pattern[p] == b'*' {
        p += 1;
    }
    p == pattern.len()
}

/// Matches one byte against the class starting at `pattern[start] == b'['`.
/// Returns (matched, index after the class), or None for an unterminated
/// class, which we treat as no match (Redis treats the rest of the pattern as
/// the class; a pattern that malformed is not worth imitating).
fn class(pattern: &[u8], start: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = pattern.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut matched = false;
    loop {
        let b = *pattern.get(i)?;
        if b == b']' {
            break;
        }
        if b == b'\\' && i + 1 < pattern.len() {
            if pattern[i + 1] == c {
                matched = true;
            }
            i += 2;
        } else if i + 2 < pattern.len() && pattern[i + 1] == b'-' && pattern[i + 2] != b']' {
            let (mut lo, mut hi) = (b, pattern[i + 2]);
            if lo > hi {
                std::mem::swap(&mut lo, &mut hi);
            }
            if (lo..=hi).contains(&c) {
                matched = true;
            }
            i += 3;
        } else {
            if b == c {
                matched = true;
            }
            i += 1;
        }
    }
    Some((matched != negate, i + 1))
}

#[cfg(test)]
mod tests {
    use super::matches;
    use rstest::rstest;

    #[rstest]
    #[case("news.*", "news.art", true)]
    #[case("news.*", "news.", true)]
    #[case("news.*", "new.art", false)]
    #[case("*", "", true)]
    #[case("h?llo", "hello", true)]
    #[case("h?llo", "hllo", false)]
    #[case("h[ae]llo", "hallo", true)]
    #[case("h[ae]llo", "hillo", false)]
    #[case("h[^e]llo", "hallo", true)]
    #[case("h[^e]llo", "hello", false)]
    #[case("h[a-c]llo", "hbllo", true)]
    #[case("h[c-a]llo", "hbllo", true)]
    #[case("h[a-c]llo", "hdllo", false)]
    #[case("a\\*b", "a*b", true)]
    #[case("a\\*b", "axb", false)]
    #[case("*a*b*c*", "xxaxxbxxcxx", true)]
    #[case("*a*b*c*", "xxaxxcxxbxx", false)]
    #[case("cache:inv:*", "cache:inv:users", true)]
    #[case("a*", "b", false)]
    #[case("[", "a", false)]
    fn redis_glob_rules(#[case] pattern: &str, #[case] text: &str, #[case] want: bool) {
        assert_eq!(
            matches(pattern.as_bytes(), text.as_bytes()),
            want,
            "{pattern} ~ {text}"
        );
    }

    #[test]
    fn pathological_patterns_finish() {
        let pattern = "*a".repeat(50) + "b";
        let text = "a".repeat(200);
        assert!(!matches(pattern.as_bytes(), text.as_bytes()));
    }
}
