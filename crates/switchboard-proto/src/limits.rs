//! Size limits the decoder enforces before it allocates.
//!
//! Defaults, and where peers put theirs (see `docs/limits.md`):
//!
//! | limit | Switchboard | tungstenite | ws (Node) | uWebSockets |
//! |---|---|---|---|---|
//! | message | 4 MiB | 64 MiB | 100 MiB | 16 KiB |
//! | frame | 4 MiB | 16 MiB | (message) | (message) |
//! | fragments | 1024 | unlimited | unlimited | unlimited |
//!
//! A server must hold a whole message in memory before handing it to the
//! application, so the message limit bounds memory per connection; 4 MiB is
//! far above chat and JSON traffic yet keeps 10 000 sockets under a worst case
//! of 40 GiB only if every one of them is mid-message at once — pick lower for
//! big fan-in. The fragment cap stops a peer from making a message out of
//! millions of tiny frames, each costing a header parse.

/// Limits on incoming frames and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame payload accepted, in bytes (exceeding it closes with 1009).
    pub max_frame_size: usize,
    /// Largest message accepted after reassembly (and decompression), in bytes
    /// (exceeding it closes with 1009).
    pub max_message_size: usize,
    /// Most frames one message may be split into (exceeding it closes with 1009).
    pub max_fragments: usize,
}

impl Limits {
    /// 4 MiB messages and frames, 1024 fragments.
    pub const DEFAULT: Limits = Limits {
        max_frame_size: 4 << 20,
        max_message_size: 4 << 20,
        max_fragments: 1024,
    };

    /// The profile Autobahn's group 9 needs: single-frame messages of up to
    /// 16 MiB (9.1, 9.2; plus headroom) and 4 MiB messages sent in 65 536
    /// fragments of 64 bytes (9.3, 9.4).
    pub const AUTOBAHN: Limits = Limits {
        max_frame_size: 20 << 20,
        max_message_size: 20 << 20,
        max_fragments: 1 << 20,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}
