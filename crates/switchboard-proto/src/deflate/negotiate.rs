//! permessage-deflate negotiation (RFC 7692 §7): our policy
//! ([`DeflateConfig`]), the server's choice among a client's offers, the
//! client's check of the answer, and the agreed [`DeflateParams`].
//!
//! Pure string and number work on parsed `Sec-WebSocket-Extensions` offers;
//! a malformed offer is declined, never an error or a panic.

use super::{MAX_WINDOW_BITS, MIN_WINDOW_BITS, PERMESSAGE_DEFLATE};
use crate::{handshake::ExtensionOffer, Role};

/// Our permessage-deflate policy, for either role.
///
/// As a server, it says what to accept and ask for; as a client (see
/// [`DeflateConfig::offer`]), what to offer. "Server" and "client" name the
/// direction of the data: `server_*` settings govern what the server
/// compresses, `client_*` what the client compresses.
///
/// Defaults, and why:
/// - `server_no_context_takeover` **on**: the server compresses each message
///   on its own. Slightly worse ratios than keeping the window across
///   messages, but a broadcast can be compressed once and shared by every
///   recipient (frame-once), and no compressor (~370 KiB) is held per
///   connection between messages.
/// - `client_no_context_takeover` off: clients may keep their window, which
///   compresses chatty client traffic well; it costs the server an inflater
///   (~46 KiB) per connection that sent a compressed message.
/// - window bits 15 both ways (the RFC default), unless the peer asks for
///   less.
/// - compression level 1: real-time traffic prefers CPU to the last few
///   percent of ratio (see `docs/compression.md` for the numbers).
/// - threshold 1024 bytes (as `ws` for Node): smaller messages gain little
///   and are sent as they are.
///
/// ```
/// use switchboard_proto::DeflateConfig;
/// let cfg = DeflateConfig::default().level(6).threshold(256).server_max_window_bits(12);
/// assert_eq!(cfg.get_threshold(), 256);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[must_use]
pub struct DeflateConfig {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: u8,
    client_max_window_bits: u8,
    level: u8,
    threshold: usize,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        DeflateConfig {
            server_no_context_takeover: true,
            client_no_context_takeover: false,
            server_max_window_bits: MAX_WINDOW_BITS,
            client_max_window_bits: MAX_WINDOW_BITS,
            level: 1,
            threshold: 1024,
        }
    }
}

impl DeflateConfig {
    /// Whether the server resets its compressor after every message (default
    /// true). A client that asks for it gets it regardless.
    pub fn server_no_context_takeover(mut self, on: bool) -> Self {
        self.server_no_context_takeover = on;
        self
    }

    /// Whether the client must reset its compressor after every message
    /// (default false). As a client, whether we do.
    pub fn client_no_context_takeover(mut self, on: bool) -> Self {
        self.client_no_context_takeover = on;
        self
    }

    /// Largest window the server compresses with, 8 to 15 (default 15;
    /// clamped). A client's lower request wins.
    pub fn server_max_window_bits(mut self, bits: u8) -> Self {
        self.server_max_window_bits = bits.clamp(MIN_WINDOW_BITS, MAX_WINDOW_BITS);
        self
    }

    /// Largest window the client may compress with, 8 to 15 (default 15;
    /// clamped). Only sent when the client offered `client_max_window_bits`.
    pub fn client_max_window_bits(mut self, bits: u8) -> Self {
        self.client_max_window_bits = bits.clamp(MIN_WINDOW_BITS, MAX_WINDOW_BITS);
        self
    }

    /// Compression level, 0 (store) to 9 (best), default 1 (clamped).
    pub fn level(mut self, level: u8) -> Self {
        self.level = level.min(9);
        self
    }

    /// Messages shorter than this many bytes are sent uncompressed
    /// (default 1024).
    pub fn threshold(mut self, bytes: usize) -> Self {
        self.threshold = bytes;
        self
    }

    /// The compression level.
    pub fn get_level(&self) -> u8 {
        self.level
    }

    /// The size threshold in bytes.
    pub fn get_threshold(&self) -> usize {
        self.threshold
    }

    /// The `Sec-WebSocket-Extensions` value a client sends: always offers
    /// `client_max_window_bits` (we can compress with any window the server
    /// picks), and asks for what this config sets on the server's side.
    ///
    /// ```
    /// use switchboard_proto::DeflateConfig;
    /// assert_eq!(
    ///     DeflateConfig::default().offer(),
    ///     "permessage-deflate; server_no_context_takeover; client_max_window_bits"
    /// );
    /// ```
    pub fn offer(&self) -> String {
        let mut s = String::from(PERMESSAGE_DEFLATE);
        if self.server_no_context_takeover {
            s.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            s.push_str("; client_no_context_takeover");
        }
        if self.server_max_window_bits < MAX_WINDOW_BITS {
            s.push_str(&format!(
                "; server_max_window_bits={}",
                self.server_max_window_bits
            ));
        }
        s.push_str("; client_max_window_bits");
        if self.client_max_window_bits < MAX_WINDOW_BITS {
            s.push_str(&format!("={}", self.client_max_window_bits));
        }
        s
    }
}

/// Why a server's permessage-deflate answer is unacceptable to a client
/// (RFC 7692 §7: the client must fail the connection).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid Sec-WebSocket-Extensions response: {0}")]
pub struct DeflateResponseError(&'static str);

impl DeflateResponseError {
    /// An error with this reason.
    pub fn new(reason: &'static str) -> Self {
        DeflateResponseError(reason)
    }
}

/// The parameters both sides agreed on, from the handshake.
///
/// ```
/// use http::HeaderMap;
/// use switchboard_proto::{parse_extensions, DeflateConfig, DeflateParams};
/// let mut h = HeaderMap::new();
/// h.insert(
///     "sec-websocket-extensions",
///     "permessage-deflate; server_max_window_bits=7, permessage-deflate; client_max_window_bits"
///         .parse()
///         .unwrap(),
/// );
/// let offers = parse_extensions(&h).unwrap();
/// // The first offer is malformed (7 bits), so the second is accepted.
/// let params = DeflateParams::negotiate(&offers, &DeflateConfig::default()).unwrap();
/// assert_eq!(params.header_value(), "permessage-deflate; server_no_context_takeover");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeflateParams {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: u8,
    client_max_window_bits: u8,
    /// The answer names `server_max_window_bits`: the offer had it (§7.1.2.1
    /// requires answering it) or we chose a smaller window.
    name_server_bits: bool,
    /// The answer names `client_max_window_bits` (only if offered).
    name_client_bits: bool,
}

/// One offer or response, checked against RFC 7692 §7.1.
#[derive(Debug, Default)]
struct Parsed {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: present without a value (allowed in offers only).
    client_max_window_bits: Option<Option<u8>>,
}

/// Window bits: plain decimal 8 to 15, no leading zero, no sign (§7.1.2).
fn window_bits(value: &str) -> Option<u8> {
    match value.as_bytes() {
        [b'8'] => Some(8),
        [b'9'] => Some(9),
        [b'1', d @ b'0'..=b'5'] => Some(10 + (d - b'0')),
        _ => None,
    }
}

fn parse_params(
    params: &[(String, Option<String>)],
    response: bool,
) -> Result<Parsed, &'static str> {
    let mut p = Parsed::default();
    let mut seen = [false; 4];
    for (name, value) in params {
        let slot = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" => 0,
            "client_no_context_takeover" => 1,
            "server_max_window_bits" => 2,
            "client_max_window_bits" => 3,
            _ => return Err("unknown permessage-deflate parameter"),
        };
        if std::mem::replace(&mut seen[slot], true) {
            return Err("repeated permessage-deflate parameter");
        }
        match (slot, value.as_deref()) {
            (0, None) => p.server_no_context_takeover = true,
            (1, None) => p.client_no_context_takeover = true,
            (0 | 1, Some(_)) => return Err("a context takeover parameter has a value"),
            (2, Some(v)) => {
                p.server_max_window_bits = Some(window_bits(v).ok_or("invalid window bits")?)
            }
            (2, None) => return Err("server_max_window_bits without a value"),
            (_, Some(v)) => {
                p.client_max_window_bits = Some(Some(window_bits(v).ok_or("invalid window bits")?))
            }
            (_, None) if response => return Err("client_max_window_bits without a value"),
            (_, None) => p.client_max_window_bits = Some(None),
        }
    }
    Ok(p)
}

impl DeflateParams {
    /// Server side: the first acceptable `permessage-deflate` offer in the
    /// client's order of preference, shaped by `config`; `None` when there
    /// is none. Offers of other extensions and malformed offers (unknown or
    /// repeated parameters, bad values) are skipped.
    pub fn negotiate(offers: &[ExtensionOffer], config: &DeflateConfig) -> Option<DeflateParams> {
        offers
            .iter()
            .filter(|o| o.name.eq_ignore_ascii_case(PERMESSAGE_DEFLATE))
            .find_map(|o| {
                let p = parse_params(&o.params, false).ok()?;
                let server_bits = p
                    .server_max_window_bits
                    .map_or(config.server_max_window_bits, |b| {
                        b.min(config.server_max_window_bits)
                    });
                let (client_bits, name_client_bits) = match p.client_max_window_bits {
                    // Not offered: the client may use any window; we may not
                    // name one.
                    None => (MAX_WINDOW_BITS, false),
                    Some(offered) => {
                        let limit = offered.unwrap_or(MAX_WINDOW_BITS);
                        let bits = limit.min(config.client_max_window_bits);
                        (bits, bits < limit)
                    }
                };
                Some(DeflateParams {
                    server_no_context_takeover: config.server_no_context_takeover
                        || p.server_no_context_takeover,
                    // The offer's flag is only a hint that the client resets
                    // anyway; we rely on it only when we answer it.
                    client_no_context_takeover: config.client_no_context_takeover,
                    server_max_window_bits: server_bits,
                    client_max_window_bits: client_bits,
                    name_server_bits: p.server_max_window_bits.is_some()
                        || server_bits < MAX_WINDOW_BITS,
                    name_client_bits,
                })
            })
    }

    /// Client side: checks the server's `Sec-WebSocket-Extensions` answer
    /// (parsed with [`parse_extensions`](crate::parse_extensions)) against
    /// what [`DeflateConfig::offer`] offered. `Ok(None)`: the server declined.
    pub fn from_response(
        response: &[ExtensionOffer],
        config: &DeflateConfig,
    ) -> Result<Option<DeflateParams>, DeflateResponseError> {
        let err = DeflateResponseError;
        let mut found = None;
        for ext in response {
            if !ext.name.eq_ignore_ascii_case(PERMESSAGE_DEFLATE) {
                return Err(err("the server accepted an extension that was not offered"));
            }
            if found.is_some() {
                return Err(err("permessage-deflate accepted twice"));
            }
            found = Some(parse_params(&ext.params, true).map_err(err)?);
        }
        let Some(p) = found else {
            return Ok(None);
        };
        let server_bits = p.server_max_window_bits.unwrap_or(MAX_WINDOW_BITS);
        if server_bits > config.server_max_window_bits {
            return Err(err("server_max_window_bits above the offered value"));
        }
        let client_bits = p
            .client_max_window_bits
            .flatten()
            .unwrap_or(MAX_WINDOW_BITS)
            .min(config.client_max_window_bits);
        Ok(Some(DeflateParams {
            // A server may announce this unasked (RFC 7692 errata 4982); if it
            // ignores our request we can still inflate with its window.
            server_no_context_takeover: p.server_no_context_takeover,
            client_no_context_takeover: p.client_no_context_takeover
                || config.client_no_context_takeover,
            server_max_window_bits: server_bits,
            client_max_window_bits: client_bits,
            name_server_bits: p.server_max_window_bits.is_some(),
            name_client_bits: p.client_max_window_bits.is_some(),
        }))
    }

    /// The `Sec-WebSocket-Extensions` value that states these parameters
    /// (the server's answer).
    pub fn header_value(&self) -> String {
        let mut s = String::from(PERMESSAGE_DEFLATE);
        if self.server_no_context_takeover {
            s.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            s.push_str("; client_no_context_takeover");
        }
        if self.name_server_bits {
            s.push_str(&format!(
                "; server_max_window_bits={}",
                self.server_max_window_bits
            ));
        }
        if self.name_client_bits {
            s.push_str(&format!(
                "; client_max_window_bits={}",
                self.client_max_window_bits
            ));
        }
        s
    }

    /// Whether the server resets its compressor after every message.
    pub fn server_no_context_takeover(&self) -> bool {
        self.server_no_context_takeover
    }

    /// Whether the client resets its compressor after every message.
    pub fn client_no_context_takeover(&self) -> bool {
        self.client_no_context_takeover
    }

    /// The server's window, in bits.
    pub fn server_max_window_bits(&self) -> u8 {
        self.server_max_window_bits
    }

    /// The client's window, in bits.
    pub fn client_max_window_bits(&self) -> u8 {
        self.client_max_window_bits
    }

    /// What `role` compresses with: (window bits, no context takeover).
    pub fn outgoing(&self, role: Role) -> (u8, bool) {
        match role {
            Role::Server => (self.server_max_window_bits, self.server_no_context_takeover),
            Role::Client => (self.client_max_window_bits, self.client_no_context_takeover),
        }
    }

    /// Whether `role`'s peer resets its compressor after every message.
    pub fn incoming_no_context_takeover(&self, role: Role) -> bool {
        match role {
            Role::Server => self.client_no_context_takeover,
            Role::Client => self.server_no_context_takeover,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Deflate;
    use http::HeaderMap;

    fn offers(value: &str) -> Vec<ExtensionOffer> {
        let mut h = HeaderMap::new();
        h.insert("sec-websocket-extensions", value.parse().unwrap());
        crate::parse_extensions(&h).unwrap()
    }

    fn answer(value: &str, config: &DeflateConfig) -> Option<String> {
        DeflateParams::negotiate(&offers(value), config).map(|p| p.header_value())
    }

    fn plain() -> DeflateConfig {
        DeflateConfig::default().server_no_context_takeover(false)
    }

    #[test]
    fn negotiates_the_plain_offer() {
        assert_eq!(
            answer("permessage-deflate", &plain()).as_deref(),
            Some("permessage-deflate")
        );
        // Default config: server_no_context_takeover announced unasked.
        assert_eq!(
            answer("permessage-deflate", &DeflateConfig::default()).as_deref(),
            Some("permessage-deflate; server_no_context_takeover")
        );
        assert_eq!(answer("x-webkit-deflate-frame", &plain()), None);
    }

    #[test]
    fn browser_offer() {
        // What Chromium and Firefox send.
        let p = DeflateParams::negotiate(
            &offers("permessage-deflate; client_max_window_bits"),
            &DeflateConfig::default(),
        )
        .unwrap();
        assert_eq!(
            p.header_value(),
            "permessage-deflate; server_no_context_takeover"
        );
        assert_eq!(p.outgoing(Role::Server), (15, true));
        assert!(!p.incoming_no_context_takeover(Role::Server));
    }

    #[test]
    fn all_four_parameters() {
        let v = "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
                 server_max_window_bits=10; client_max_window_bits=12";
        let p = DeflateParams::negotiate(&offers(v), &plain()).unwrap();
        assert!(p.server_no_context_takeover());
        // The client's hint is not echoed: we do not need it.
        assert!(!p.client_no_context_takeover());
        assert_eq!(p.server_max_window_bits(), 10);
        assert_eq!(p.client_max_window_bits(), 12);
        assert_eq!(
            p.header_value(),
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=10"
        );
        // Our own limits are stated when smaller than the client's.
        let cfg = plain()
            .client_no_context_takeover(true)
            .server_max_window_bits(9)
            .client_max_window_bits(11);
        assert_eq!(
            answer(v, &cfg).as_deref(),
            Some(
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
                 server_max_window_bits=9; client_max_window_bits=11"
            )
        );
        // client_max_window_bits is never named unless offered.
        assert_eq!(
            answer("permessage-deflate", &cfg).as_deref(),
            Some("permessage-deflate; client_no_context_takeover; server_max_window_bits=9")
        );
    }

    #[test]
    fn offered_server_window_is_always_answered() {
        assert_eq!(
            answer("permessage-deflate; server_max_window_bits=15", &plain()).as_deref(),
            Some("permessage-deflate; server_max_window_bits=15")
        );
        let p = DeflateParams::negotiate(
            &offers("permessage-deflate; server_max_window_bits=8"),
            &plain(),
        )
        .unwrap();
        assert_eq!(p.server_max_window_bits(), 8);
        // Accepted, but we cannot compress with 256 bytes: we never do.
        let mut d = Deflate::for_connection(&p, Role::Server, &plain());
        assert!(!d.is_active());
        assert_eq!(d.compress(&[b'a'; 4096]), None);
    }

    #[test]
    fn malformed_offers_are_skipped_for_the_next() {
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; server_max_window_bits=+9",
            "permessage-deflate; client_max_window_bits=0",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover=true",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
            "permessage-deflate; mystery",
        ] {
            assert_eq!(answer(bad, &plain()), None, "{bad}");
            let two = format!("{bad}, permessage-deflate; client_max_window_bits=9");
            let p = DeflateParams::negotiate(&offers(&two), &plain()).expect(bad);
            assert_eq!(p.client_max_window_bits(), 9, "{bad}");
        }
        // Quoted values are values (RFC 7692 §7.1 allows quoted-string).
        assert_eq!(
            answer(
                "permessage-deflate; server_max_window_bits=\"10\"",
                &plain()
            )
            .as_deref(),
            Some("permessage-deflate; server_max_window_bits=10")
        );
    }

    #[test]
    fn first_acceptable_offer_wins() {
        // Autobahn 13.7's offers: the first one is taken.
        let v = "permessage-deflate; client_no_context_takeover; client_max_window_bits; \
                 server_no_context_takeover; server_max_window_bits=9, \
                 permessage-deflate; client_no_context_takeover; client_max_window_bits; \
                 server_no_context_takeover, permessage-deflate";
        let p = DeflateParams::negotiate(&offers(v), &plain()).unwrap();
        assert_eq!(p.outgoing(Role::Server), (9, true));
    }

    #[test]
    fn client_checks_the_answer() {
        let cfg = DeflateConfig::default();
        let check = |v: &str| DeflateParams::from_response(&offers(v), &cfg);
        let p = check("permessage-deflate; server_no_context_takeover")
            .unwrap()
            .unwrap();
        assert_eq!(p.outgoing(Role::Client), (15, false));
        assert!(p.incoming_no_context_takeover(Role::Client));
        let p = check("permessage-deflate; client_max_window_bits=10; client_no_context_takeover")
            .unwrap()
            .unwrap();
        assert_eq!(p.outgoing(Role::Client), (10, true));
        assert_eq!(DeflateParams::from_response(&[], &cfg), Ok(None));
        for bad in [
            "x-foo",
            "permessage-deflate, permessage-deflate",
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; server_max_window_bits=20",
            "permessage-deflate; bogus",
        ] {
            assert!(check(bad).is_err(), "{bad}");
        }
        // Above what we asked for is refused.
        let small = cfg.server_max_window_bits(10);
        assert_eq!(
            small.offer(),
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=10; \
             client_max_window_bits"
        );
        assert!(DeflateParams::from_response(
            &offers("permessage-deflate; server_max_window_bits=12"),
            &small
        )
        .is_err());
    }
}
