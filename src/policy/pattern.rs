//! Compiled wildcard patterns with policy variables, matched without allocating.
//!
//! A pattern is a list of tokens: literal bytes, `*` (any run of characters, including `/`),
//! `?` (exactly one character) and policy variables. A variable is replaced by its value *as a
//! literal*: a device id containing `*`, `?`, `+`, `#` or `/` never widens what a pattern
//! matches. MQTT's `+` and `#` are plain literal characters here, as in AWS IoT policies.

use super::context::Scope;
use super::vars::Var;

/// One token of a compiled pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Token {
    Literal(Box<[u8]>),
    Star,
    AnyChar,
    Var(Var),
}

/// A compiled pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Pattern {
    tokens: Box<[Token]>,
    /// No wildcard and no variable: a plain string comparison suffices.
    literal: Option<Box<[u8]>>,
    /// Compare ASCII letters case-insensitively (StringEqualsIgnoreCase).
    fold_case: bool,
}

/// The input a pattern is matched against: up to four slices read as one string, so a resource
/// ARN (`prefix` + `type` + `/` + `name`) is never concatenated into a new buffer.
#[derive(Clone, Copy)]
pub(crate) struct Haystack<'a> {
    parts: [&'a [u8]; 4],
    len: usize,
    /// The whole input when it is one slice: the common case, served by slice operations.
    contiguous: Option<&'a [u8]>,
}

impl<'a> Haystack<'a> {
    pub(crate) fn new(parts: [&'a [u8]; 4]) -> Self {
        let non_empty = parts.iter().filter(|p| !p.is_empty()).count();
        Haystack {
            len: parts.iter().map(|p| p.len()).sum(),
            contiguous: match non_empty {
                0 => Some(&[]),
                1 => parts.iter().copied().find(|p| !p.is_empty()),
                _ => None,
            },
            parts,
        }
    }

    pub(crate) fn single(s: &'a [u8]) -> Self {
        Haystack {
            parts: [s, &[], &[], &[]],
            len: s.len(),
            contiguous: Some(s),
        }
    }

    fn at(&self, mut i: usize) -> u8 {
        if let Some(s) = self.contiguous {
            return s[i];
        }
        for p in &self.parts {
            if i < p.len() {
                return p[i];
            }
            i -= p.len();
        }
        unreachable!("index checked against len by every caller")
    }

    fn starts_with_at(&self, pos: usize, needle: &[u8], fold_case: bool) -> bool {
        if pos + needle.len() > self.len {
            return false;
        }
        if let Some(s) = self.contiguous {
            let window = &s[pos..pos + needle.len()];
            return if fold_case {
                window.eq_ignore_ascii_case(needle)
            } else {
                window == needle
            };
        }
        needle.iter().enumerate().all(|(k, &b)| {
            let h = self.at(pos + k);
            h == b || (fold_case && h.eq_ignore_ascii_case(&b))
        })
    }

    fn ends_with(&self, needle: &[u8], fold_case: bool) -> bool {
        needle.len() <= self.len && self.starts_with_at(self.len - needle.len(), needle, fold_case)
    }

    /// The first position at or after `from` where `needle` starts (case-sensitive).
    fn find_from(&self, from: usize, needle: &[u8]) -> Option<usize> {
        let first = *needle.first()?;
        let mut pos = from;
        while pos + needle.len() <= self.len {
            let at = match self.contiguous {
                Some(s) => s[pos..].iter().position(|&b| b == first).map(|k| pos + k)?,
                None => pos,
            };
            if at + needle.len() > self.len {
                return None;
            }
            if self.starts_with_at(at, needle, false) {
                return Some(at);
            }
            pos = at + 1;
        }
        None
    }

    /// Length in bytes of the UTF-8 character starting at `pos` (1 for a stray byte).
    fn char_len_at(&self, pos: usize) -> usize {
        let b = self.at(pos);
        let n = match b {
            0x00..=0x7f => 1,
            0xc0..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf7 => 4,
            _ => 1,
        };
        n.min(self.len - pos)
    }

    fn eq_bytes(&self, other: &[u8], fold_case: bool) -> bool {
        self.len == other.len() && self.starts_with_at(0, other, fold_case)
    }
}

/// Why a pattern did not match, when the reason is a variable without a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Match {
    Yes,
    No,
    /// A variable in the pattern has no value for this principal: like AWS, the pattern
    /// then matches nothing.
    Unresolved(Var),
}

impl Pattern {
    pub(crate) fn new(tokens: Vec<Token>, fold_case: bool) -> Self {
        // Merge adjacent literals and collapse runs of stars so matching does less work.
        let mut merged: Vec<Token> = Vec::with_capacity(tokens.len());
        for t in tokens {
            match (merged.last_mut(), t) {
                (Some(Token::Literal(prev)), Token::Literal(next)) => {
                    let mut v = prev.to_vec();
                    v.extend_from_slice(&next);
                    *prev = v.into_boxed_slice();
                }
                (Some(Token::Star), Token::Star) => {}
                (_, t) => merged.push(t),
            }
        }
        let literal = match merged.as_slice() {
            [] => Some(Box::default()),
            [Token::Literal(l)] => Some(l.clone()),
            _ => None,
        };
        Pattern {
            tokens: merged.into_boxed_slice(),
            literal,
            fold_case,
        }
    }

    pub(crate) fn tokens(&self) -> &[Token] {
        &self.tokens
    }

    /// Whether the pattern is `*` alone.
    pub(crate) fn is_match_all(&self) -> bool {
        matches!(&*self.tokens, [Token::Star])
    }

    pub(crate) fn has_wildcard(&self) -> bool {
        self.tokens
            .iter()
            .any(|t| matches!(t, Token::Star | Token::AnyChar))
    }

    pub(crate) fn has_var(&self) -> bool {
        self.tokens.iter().any(|t| matches!(t, Token::Var(_)))
    }

    /// Matches `hay`, resolving variables from `principal`.
    ///
    /// The classic greedy wildcard algorithm with one backtrack point: correct for `*` and `?`
    /// because a later `*` can always absorb what an earlier one would have.
    pub(crate) fn matches(&self, hay: Haystack<'_>, scope: &Scope<'_>) -> Match {
        if let Some(lit) = &self.literal {
            return if hay.eq_bytes(lit, self.fold_case) {
                Match::Yes
            } else {
                Match::No
            };
        }
        let tokens = &self.tokens;
        // Cheap rejections first: most statements fail on their literal head or tail.
        if let Some(Token::Literal(head)) = tokens.first()
            && !hay.starts_with_at(0, head, self.fold_case)
        {
            return Match::No;
        }
        if let Some(Token::Literal(tail)) = tokens.last()
            && !hay.ends_with(tail, self.fold_case)
        {
            return Match::No;
        }
        let (mut t, mut p) = (0usize, 0usize);
        let mut backtrack: Option<(usize, usize)> = None;
        loop {
            if t < tokens.len() {
                let advanced = match &tokens[t] {
                    Token::Star => {
                        // Skip straight to where the next literal can start.
                        if let (Some(Token::Literal(next)), false) =
                            (tokens.get(t + 1), self.fold_case)
                        {
                            match hay.find_from(p, next) {
                                Some(at) => p = at,
                                None => return Match::No,
                            }
                        }
                        backtrack = Some((t + 1, p));
                        t += 1;
                        continue;
                    }
                    Token::AnyChar => {
                        if p < hay.len {
                            p += hay.char_len_at(p);
                            true
                        } else {
                            false
                        }
                    }
                    Token::Literal(lit) => {
                        if hay.starts_with_at(p, lit, self.fold_case) {
                            p += lit.len();
                            true
                        } else {
                            false
                        }
                    }
                    Token::Var(var) => match scope.resolve(*var) {
                        None => return Match::Unresolved(*var),
                        Some(value) => {
                            if hay.starts_with_at(p, value.as_bytes(), self.fold_case) {
                                p += value.len();
                                true
                            } else {
                                false
                            }
                        }
                    },
                };
                if advanced {
                    t += 1;
                    continue;
                }
            } else if p == hay.len {
                return Match::Yes;
            }
            // Mismatch (or tokens exhausted with input left): let the last star eat one more char.
            match backtrack {
                Some((bt, bp)) if bp < hay.len => {
                    let mut np = bp + hay.char_len_at(bp);
                    if let (Some(Token::Literal(next)), false) = (tokens.get(bt), self.fold_case) {
                        match hay.find_from(np, next) {
                            Some(at) => np = at,
                            None => return Match::No,
                        }
                    }
                    backtrack = Some((bt, np));
                    t = bt;
                    p = np;
                }
                _ => return Match::No,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pat(s: &str) -> Pattern {
        super::super::vars::parse_pattern(s).unwrap()
    }

    fn m(p: &str, s: &str) -> bool {
        pat(p).matches(Haystack::single(s.as_bytes()), &Scope::empty()) == Match::Yes
    }

    #[test]
    fn wildcards() {
        assert!(m("*", ""));
        assert!(m("*", "a/b/c"));
        assert!(m("a*", "a"));
        assert!(m("a*c", "abbbc"));
        assert!(!m("a*c", "abbbd"));
        assert!(m("a?c", "abc"));
        assert!(!m("a?c", "ac"));
        assert!(m("a?c", "aéc"));
        assert!(m("*b*b*", "abxbx"));
        assert!(!m("*b*b", "abxbx"));
        assert!(m("topic/sensors/*", "topic/sensors/a/b"));
        assert!(!m("topic/sensors/*", "topic/sensorsX"));
        assert!(m("exact", "exact"));
        assert!(!m("exact", "exact2"));
        assert!(!m("exact", "exac"));
    }

    #[test]
    fn mqtt_wildcards_are_literal() {
        assert!(m("sensors/+/temp", "sensors/+/temp"));
        assert!(!m("sensors/+/temp", "sensors/x/temp"));
        assert!(!m("sensors/#", "sensors/x"));
        assert!(m("sensors/#", "sensors/#"));
    }

    #[test]
    fn split_haystack() {
        let p = pat("arn:aws:iot:*:*:topic/a/*");
        let hay = Haystack::new([b"arn:aws:iot:r:1:", b"topic", b"/", b"a/b"]);
        assert_eq!(p.matches(hay, &Scope::empty()), Match::Yes);
        let hay = Haystack::new([b"arn:aws:iot:r:1:", b"topic", b"/", b"b/b"]);
        assert_eq!(p.matches(hay, &Scope::empty()), Match::No);
    }
}
