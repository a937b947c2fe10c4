//! Path patterns and route lookup.
//!
//! A pattern is a sequence of segments: literals, `{name}` (one segment) and
//! a final `{*name}` (the rest of the path, possibly empty). Lookup tries
//! every route and keeps the most specific match (most literal segments, then
//! no catch-all), so `/ws/echo` wins over `/ws/{room}` whatever the
//! registration order. Route tables are small, so a linear scan is simpler
//! than a radix tree and as fast in practice; [`RouteIndex`] narrows the
//! scan to the routes that share the path's first segment.

use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
    CatchAll(String),
}

/// A parsed route pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pattern {
    raw: String,
    segments: Vec<Segment>,
}

impl Pattern {
    /// Parses `pattern`; panics with a clear message on a malformed pattern,
    /// since routes are fixed at startup (a programming error, like axum).
    pub(crate) fn parse(pattern: &str) -> Pattern {
        assert!(
            pattern.starts_with('/'),
            "route {pattern:?} must start with '/'"
        );
        let parts: Vec<&str> = pattern[1..].split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let seg = if let Some(inner) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}'))
            {
                if let Some(name) = inner.strip_prefix('*') {
                    assert!(
                        i == parts.len() - 1,
                        "catch-all must be last in {pattern:?}"
                    );
                    Segment::CatchAll(name.to_owned())
                } else {
                    Segment::Param(inner.to_owned())
                }
            } else {
                assert!(
                    !part.contains('{') && !part.contains('}'),
                    "malformed segment {part:?} in route {pattern:?}"
                );
                Segment::Literal((*part).to_owned())
            };
            if let Segment::Param(n) | Segment::CatchAll(n) = &seg {
                assert!(!n.is_empty(), "empty parameter name in route {pattern:?}");
            }
            segments.push(seg);
        }
        Pattern {
            raw: pattern.to_owned(),
            segments,
        }
    }

    /// The pattern as written.
    pub(crate) fn as_str(&self) -> &str {
        &self.raw
    }

    /// Matches `path`; on success returns the percent-decoded parameters and
    /// a specificity score.
    #[cfg(test)]
    pub(crate) fn matches(&self, path: &str) -> Option<(Vec<(String, String)>, usize)> {
        let mut params = Vec::new();
        let score = self.walk(path, Some(&mut params))?;
        Some((params, score))
    }

    /// The specificity score of a match of `path`, without decoding or
    /// allocating anything (a lookup scores every route; only the winner's
    /// parameters are extracted, by [`Pattern::params`]).
    pub(crate) fn score(&self, path: &str) -> Option<usize> {
        self.walk(path, None)
    }

    /// The percent-decoded parameters of `path`, which [`Pattern::score`]
    /// accepted.
    fn params(&self, path: &str) -> Params {
        let mut params = Vec::new();
        let _ = self.walk(path, Some(&mut params));
        params
    }

    /// Matches `path` segment by segment (as `split('/')` would cut it, but
    /// without a searcher per segment: most routes fail on their first
    /// literal), collecting the decoded parameters into `params` if given.
    fn walk(&self, path: &str, mut params: Option<&mut Params>) -> Option<usize> {
        let mut rest = path.strip_prefix('/')?;
        // Whether the last segment of the path was consumed.
        let mut done = false;
        let mut literals = 0;
        for seg in &self.segments {
            match seg {
                Segment::CatchAll(name) => {
                    let remainder = if done { "" } else { rest };
                    if let Some(params) = params.as_deref_mut() {
                        params.push((name.clone(), percent_decode(remainder)?));
                    } else if remainder.contains('%') {
                        percent_decode(remainder)?;
                    }
                    return Some(literals * 2);
                }
                Segment::Literal(lit) => {
                    if done {
                        return None;
                    }
                    let after = rest.strip_prefix(lit.as_str())?;
                    match after.as_bytes().first() {
                        None => done = true,
                        Some(b'/') => rest = &after[1..],
                        Some(_) => return None,
                    }
                    literals += 1;
                }
                Segment::Param(name) => {
                    if done {
                        return None;
                    }
                    let end = rest.bytes().position(|b| b == b'/');
                    let part = &rest[..end.unwrap_or(rest.len())];
                    if part.is_empty() {
                        return None;
                    }
                    if let Some(params) = params.as_deref_mut() {
                        params.push((name.clone(), percent_decode(part)?));
                    } else if part.contains('%') {
                        percent_decode(part)?;
                    }
                    match end {
                        Some(i) => rest = &rest[i + 1..],
                        None => done = true,
                    }
                }
            }
        }
        if !done {
            return None;
        }
        Some(literals * 2 + 1)
    }
}

/// Decodes `%XX` escapes; `None` for malformed escapes or non-UTF-8 results.
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_owned());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Matched path parameters, in route order.
pub(crate) type Params = Vec<(String, String)>;

/// Route positions grouped by the first segment of their pattern, so a
/// lookup scores only the routes that can match a path: those whose first
/// segment is that literal, and those that start with a parameter or a
/// catch-all. Positions come out in registration order, so the first of
/// equally specific routes still wins.
#[derive(Debug, Default)]
pub(crate) struct RouteIndex {
    by_first: HashMap<String, Vec<usize>>,
    any_first: Vec<usize>,
}

impl RouteIndex {
    /// Indexes `patterns` by their position.
    pub(crate) fn new<'a>(patterns: impl Iterator<Item = &'a Pattern>) -> RouteIndex {
        let mut index = RouteIndex::default();
        for (i, pattern) in patterns.enumerate() {
            match pattern.segments.first() {
                Some(Segment::Literal(lit)) => {
                    index.by_first.entry(lit.clone()).or_default().push(i);
                }
                _ => index.any_first.push(i),
            }
        }
        index
    }

    /// The positions of the routes that may match `path`, ascending.
    pub(crate) fn candidates(&self, path: &str) -> impl Iterator<Item = usize> + '_ {
        let first = path
            .strip_prefix('/')
            .map(|rest| rest.split_once('/').map_or(rest, |(first, _)| first));
        let literal = first
            .and_then(|f| self.by_first.get(f))
            .map_or(&[][..], Vec::as_slice);
        let (mut a, mut b) = (literal.iter().peekable(), self.any_first.iter().peekable());
        std::iter::from_fn(move || match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if x < y => a.next().copied(),
            (Some(_), None) => a.next().copied(),
            _ => b.next().copied(),
        })
    }
}

/// Finds the most specific route for `path` among `patterns`.
pub(crate) fn best_match<'a, T>(
    routes: impl Iterator<Item = (&'a Pattern, T)>,
    path: &str,
) -> Option<(T, Params)> {
    let mut best: Option<(usize, &Pattern, T)> = None;
    for (pattern, value) in routes {
        if let Some(score) = pattern.score(path) {
            if best.as_ref().is_none_or(|(s, _, _)| score > *s) {
                best = Some((score, pattern, value));
            }
        }
    }
    best.map(|(_, pattern, v)| (v, pattern.params(path)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, path: &str) -> Option<Vec<(String, String)>> {
        Pattern::parse(p).matches(path).map(|(p, _)| p)
    }

    #[test]
    fn literals_params_and_catch_all() {
        assert_eq!(m("/health", "/health"), Some(vec![]));
        assert_eq!(m("/health", "/health/"), None);
        assert_eq!(
            m("/ws/{room}", "/ws/general"),
            Some(vec![("room".into(), "general".into())])
        );
        assert_eq!(m("/ws/{room}", "/ws/"), None);
        assert_eq!(m("/ws/{room}", "/ws/a/b"), None);
        assert_eq!(
            m("/files/{*path}", "/files/a/b/c"),
            Some(vec![("path".into(), "a/b/c".into())])
        );
        assert_eq!(
            m("/files/{*path}", "/files/"),
            Some(vec![("path".into(), "".into())])
        );
        assert_eq!(
            m("/u/{name}", "/u/j%C3%B6rg"),
            Some(vec![("name".into(), "jörg".into())])
        );
        assert_eq!(m("/u/{name}", "/u/bad%zz"), None);
        assert_eq!(m("/", "/"), Some(vec![]));
        assert_eq!(m("/", "/x"), None);
        assert_eq!(m("/health", "/healthz"), None);
        assert_eq!(m("/health", "/"), None);
        assert_eq!(m("/a/b", "/a"), None);
        assert_eq!(m("/a/b", "/a/"), None);
        assert_eq!(m("/a/{x}", "/a//"), None);
        assert_eq!(
            m("/a/{x}/b", "/a/1/b"),
            Some(vec![("x".into(), "1".into())])
        );
        assert_eq!(m("/a/{x}/b", "/a/1/b/"), None);
        assert_eq!(m("/a/{x}/{y}", "/a/1"), None);
        assert_eq!(
            m("/files/{*path}", "/files"),
            Some(vec![("path".into(), "".into())])
        );
        assert_eq!(
            m("/files/{*path}", "/files/a%2Fb/c%20d"),
            Some(vec![("path".into(), "a/b/c d".into())])
        );
        assert_eq!(m("/files/{*path}", "/files/a/%zz"), None);
        assert_eq!(m("/files/{*path}", "/filesx/a"), None);
    }

    /// The matcher as first written (split on '/', decode every
    /// parameter), kept as the reference for [`Pattern::walk`].
    fn reference(p: &Pattern, path: &str) -> Option<(Vec<(String, String)>, usize)> {
        let rest = path.strip_prefix('/')?;
        let mut parts = rest.split('/');
        let mut params = Vec::new();
        let mut literals = 0;
        for seg in &p.segments {
            match seg {
                Segment::CatchAll(name) => {
                    let remainder: Vec<&str> = parts.by_ref().collect();
                    params.push((name.clone(), percent_decode(&remainder.join("/"))?));
                    return Some((params, literals * 2));
                }
                Segment::Literal(lit) => {
                    if parts.next()? != lit {
                        return None;
                    }
                    literals += 1;
                }
                Segment::Param(name) => {
                    let part = parts.next()?;
                    if part.is_empty() {
                        return None;
                    }
                    params.push((name.clone(), percent_decode(part)?));
                }
            }
        }
        if parts.next().is_some() {
            return None;
        }
        Some((params, literals * 2 + 1))
    }

    #[test]
    fn walk_agrees_with_the_split_matcher() {
        let patterns = [
            "/",
            "/a",
            "/a/",
            "/a/b",
            "/{x}",
            "/a/{x}",
            "/a/{x}/b",
            "/{x}/{y}",
            "/{*r}",
            "/a/{*r}",
            "/a/{x}/{*r}",
            "//a",
            "/ab",
        ]
        .map(Pattern::parse);
        let pieces = ["", "a", "b", "ab", "%41", "%zz", "%C3%B6", "%FF"];
        let mut paths = vec!["".to_owned(), "a".to_owned()];
        for a in pieces {
            paths.push(format!("/{a}"));
            for b in pieces {
                paths.push(format!("/{a}/{b}"));
                for c in pieces {
                    paths.push(format!("/{a}/{b}/{c}"));
                }
            }
        }
        for p in &patterns {
            for path in &paths {
                let expected = reference(p, path);
                assert_eq!(p.matches(path), expected, "{} {path:?}", p.as_str());
                assert_eq!(
                    p.score(path),
                    expected.map(|(_, s)| s),
                    "{} {path:?}",
                    p.as_str()
                );
            }
        }
    }

    #[test]
    fn most_specific_wins_regardless_of_order() {
        let pats = [
            Pattern::parse("/ws/{room}"),
            Pattern::parse("/{*rest}"),
            Pattern::parse("/ws/echo"),
        ];
        let pick = |path| best_match(pats.iter().map(|p| (p, p.as_str())), path).map(|(v, _)| v);
        assert_eq!(pick("/ws/echo"), Some("/ws/echo"));
        assert_eq!(pick("/ws/chat"), Some("/ws/{room}"));
        assert_eq!(pick("/other/x"), Some("/{*rest}"));
    }

    #[test]
    fn the_index_finds_what_a_full_scan_finds() {
        let patterns = [
            "/", "/a", "/a/", "/a/b", "/{x}", "/a/{x}", "/b/{x}/c", "/{x}/{y}", "/{*r}", "/a/{*r}",
            "//a", "/ab", "/a/b",
        ]
        .map(Pattern::parse);
        let index = RouteIndex::new(patterns.iter());
        let pieces = ["", "a", "b", "ab", "c", "%41"];
        let mut paths = vec!["".to_owned(), "a".to_owned()];
        for a in pieces {
            paths.push(format!("/{a}"));
            for b in pieces {
                paths.push(format!("/{a}/{b}"));
                for c in pieces {
                    paths.push(format!("/{a}/{b}/{c}"));
                }
            }
        }
        for path in &paths {
            let candidates: Vec<usize> = index.candidates(path).collect();
            assert!(candidates.windows(2).all(|w| w[0] < w[1]), "{path:?}");
            let full = best_match(patterns.iter().enumerate().map(|(i, p)| (p, i)), path);
            let indexed = best_match(candidates.iter().map(|&i| (&patterns[i], i)), path);
            assert_eq!(full, indexed, "{path:?}");
        }
    }

    #[test]
    #[should_panic(expected = "catch-all must be last")]
    fn catch_all_must_be_last() {
        Pattern::parse("/{*a}/b");
    }
}
