//! Path patterns and route lookup.
//!
//! A pattern is a sequence of segments: literals, `{name}` (one segment) and
//! a final `{*name}` (the rest of the path, possibly empty). Lookup tries
//! every route and keeps the most specific match (most literal segments, then
//! no catch-all), so `/ws/echo` wins over `/ws/{room}` whatever the
//! registration order. Route tables are small, so a linear scan is simpler
//! than a radix tree and as fast in practice.

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
    pub(crate) fn matches(&self, path: &str) -> Option<(Vec<(String, String)>, usize)> {
        let rest = path.strip_prefix('/')?;
        let mut parts = rest.split('/');
        let mut params = Vec::new();
        let mut literals = 0;
        for seg in &self.segments {
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

/// Finds the most specific route for `path` among `patterns`.
pub(crate) fn best_match<'a, T>(
    routes: impl Iterator<Item = (&'a Pattern, T)>,
    path: &str,
) -> Option<(T, Params)> {
    let mut best: Option<(usize, T, Params)> = None;
    for (pattern, value) in routes {
        if let Some((params, score)) = pattern.matches(path) {
            if best.as_ref().is_none_or(|(s, _, _)| score > *s) {
                best = Some((score, value, params));
            }
        }
    }
    best.map(|(_, v, p)| (v, p))
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
    #[should_panic(expected = "catch-all must be last")]
    fn catch_all_must_be_last() {
        Pattern::parse("/{*a}/b");
    }
}
