//! One room: its members (for fan-out), presence metadata, and history.
//!
//! Members live in a `Vec` (fast iteration for fan-out) with an index map
//! (O(1) removal by swap). History is a ring of encoded frames with
//! per-room offsets, so replay re-sends the very frames that were
//! broadcast.

use std::{collections::HashMap, collections::VecDeque, sync::Arc};

use switchboard_proto::Frame;

use crate::hub::{subscription::Recipient, ConnId};

/// A member's entry in a room.
#[derive(Debug, Clone)]
pub(crate) struct RoomMember {
    pub(crate) id: ConnId,
    pub(crate) sender: Recipient,
    pub(crate) meta: Arc<serde_json::Value>,
}

/// One message kept for late joiners and reconnecting clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The message's offset in its room (1 for the first message).
    pub offset: u64,
    pub(crate) frame: Frame,
}

impl HistoryEntry {
    /// An entry for the message `frame` at `offset` (backplanes build them
    /// from the cluster's history).
    pub fn new(offset: u64, frame: Frame) -> HistoryEntry {
        HistoryEntry { offset, frame }
    }

    /// The encoded frame, ready to queue on a socket.
    pub fn frame(&self) -> &Frame {
        &self.frame
    }

    /// The message as sent.
    pub fn message(&self) -> crate::Message {
        crate::Message::from_frame(&self.frame)
    }
}

#[derive(Debug)]
pub(crate) struct Room {
    pub(crate) members: Vec<RoomMember>,
    index: HashMap<ConnId, usize>,
    pub(crate) history: VecDeque<HistoryEntry>,
    /// Offset of the last message published to this room (0: none yet).
    pub(crate) offset: u64,
    /// Identifies this incarnation of the room's history: offsets from
    /// another epoch cannot be resumed.
    pub(crate) epoch: Arc<str>,
    /// Hub-wide publish counter value at the last publish (for eviction).
    pub(crate) last_used: u64,
}

impl Room {
    pub(crate) fn new(epoch: Arc<str>, now: u64) -> Room {
        Room {
            members: Vec::new(),
            index: HashMap::new(),
            history: VecDeque::new(),
            offset: 0,
            epoch,
            last_used: now,
        }
    }

    /// Adds a member; false if it was already there.
    pub(crate) fn insert(&mut self, member: RoomMember) -> bool {
        if self.index.contains_key(&member.id) {
            return false;
        }
        self.index.insert(member.id, self.members.len());
        self.members.push(member);
        true
    }

    /// Removes a member; returns it if it was there.
    pub(crate) fn remove(&mut self, id: ConnId) -> Option<RoomMember> {
        let idx = self.index.remove(&id)?;
        let removed = self.members.swap_remove(idx);
        if let Some(moved) = self.members.get(idx) {
            self.index.insert(moved.id, idx);
        }
        Some(removed)
    }

    pub(crate) fn contains(&self, id: ConnId) -> bool {
        self.index.contains_key(&id)
    }

    /// Records a published frame; returns its offset.
    pub(crate) fn record(&mut self, frame: &Frame, keep: usize) -> u64 {
        self.offset += 1;
        if keep > 0 {
            if self.history.len() == keep {
                self.history.pop_front();
            }
            self.history.push_back(HistoryEntry {
                offset: self.offset,
                frame: frame.clone(),
            });
        }
        self.offset
    }
}
