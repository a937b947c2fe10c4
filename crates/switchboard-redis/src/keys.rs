//! Names of every Redis key and channel the backplane uses, in one place.
//!
//! Channels: `{p}:room:{room}` (one per room, subscribed while this node has
//! local members), `{p}:node:{node}` (addressed to one node: probes,
//! requests, replies), `{p}:ctl` (to every node: cluster-wide requests).
//! Keys of a room share the hash tag `{room}`, so a script touching several
//! of them stays within one slot. Nothing here performs I/O.

/// Key and channel names for one node under one prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
    room_channel_prefix: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
            room_channel_prefix: format!("{prefix}:room:"),
        }
    }

    /// The channel carrying `room`'s messages.
    pub(crate) fn room_channel(&self, room: &str) -> String {
        format!("{}{room}", self.room_channel_prefix)
    }

    /// The room a room channel belongs to.
    pub(crate) fn room_of<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel.strip_prefix(self.room_channel_prefix.as_str())
    }

    /// The channel addressed to `node`.
    pub(crate) fn node_channel(&self, node: &str) -> String {
        format!("{}:node:{node}", self.prefix)
    }

    /// The channel every node listens to.
    pub(crate) fn ctl_channel(&self) -> String {
        format!("{}:ctl", self.prefix)
    }

    /// Hash `{epoch, offset}` of `room`'s stream.
    pub(crate) fn meta(&self, room: &str) -> String {
        format!("{}:{{{room}}}:meta", self.prefix)
    }

    /// Stream of `room`'s recent messages (entry id = `offset-0`).
    pub(crate) fn log(&self, room: &str) -> String {
        format!("{}:{{{room}}}:log", self.prefix)
    }

    /// Hash `conn -> meta` of `node`'s members of `room` (expires unless
    /// refreshed).
    pub(crate) fn presence(&self, room: &str, node: &str) -> String {
        format!("{}{node}", self.presence_prefix(room))
    }

    /// `presence(room, node)` without the node.
    pub(crate) fn presence_prefix(&self, room: &str) -> String {
        format!("{}:{{{room}}}:presence:", self.prefix)
    }

    /// Set of nodes with members in `room`.
    pub(crate) fn room_nodes(&self, room: &str) -> String {
        format!("{}:{{{room}}}:nodes", self.prefix)
    }

    /// Set of nodes that registered themselves.
    pub(crate) fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// `alive(node)` without the node.
    pub(crate) fn alive_prefix(&self) -> String {
        format!("{}:alive:", self.prefix)
    }

    /// Key that exists while `node` keeps refreshing it.
    pub(crate) fn alive(&self, node: &str) -> String {
        format!("{}{node}", self.alive_prefix())
    }
}

#[cfg(test)]
mod tests {
    use super::Keys;

    #[test]
    fn names() {
        let k = Keys::new("sb");
        assert_eq!(k.room_channel("lobby"), "sb:room:lobby");
        assert_eq!(k.room_of("sb:room:a:b"), Some("a:b"));
        assert_eq!(k.room_of("sb:node:a"), None);
        assert_eq!(k.meta("lobby"), "sb:{lobby}:meta");
        assert_eq!(k.presence("lobby", "n1"), "sb:{lobby}:presence:n1");
        assert_eq!(k.alive("n1"), "sb:alive:n1");
    }
}
