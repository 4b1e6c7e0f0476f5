//! [`NodeKey`]: a node's id as the caller spells it, held inside the node when short.
//!
//! Interning a transaction's entities compares each id with the one stored in the node the
//! index points at. An id in its own heap allocation makes that a second dependent cache
//! miss after the node's; an id of up to [`INLINE`] bytes (every simulated id, IPv4 and
//! IPv6 addresses, most gateway ids; not a hyphenated UUID) is read with the node instead.

use std::fmt;

/// The longest id held inline.
pub const INLINE: usize = 30;

/// An entity id: inline up to [`INLINE`] bytes, on the heap beyond. Compares (with another
/// key or a `str`) and prints as the string it was made from.
#[derive(Clone, PartialEq, Eq)]
pub enum NodeKey {
    /// An id of at most [`INLINE`] bytes.
    Inline {
        /// Its length.
        len: u8,
        /// `bytes[..len]` is the id; the rest is zero.
        bytes: [u8; INLINE],
    },
    /// A longer id.
    Heap(Box<str>),
}

impl NodeKey {
    /// The id's bytes (UTF-8).
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            NodeKey::Inline { len, bytes } => &bytes[..usize::from(*len)],
            NodeKey::Heap(s) => s.as_bytes(),
        }
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        match self {
            // Made from a `&str` whole (never cut), so always valid.
            NodeKey::Inline { .. } => {
                std::str::from_utf8(self.as_bytes()).expect("made from a whole &str")
            }
            NodeKey::Heap(s) => s,
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// True for the empty id (an evicted node's tombstone).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Heap bytes held beyond the node (0 when inline).
    pub fn heap_bytes(&self) -> usize {
        match self {
            NodeKey::Inline { .. } => 0,
            NodeKey::Heap(s) => s.len(),
        }
    }
}

impl From<&str> for NodeKey {
    fn from(s: &str) -> Self {
        if s.len() <= INLINE {
            let mut bytes = [0; INLINE];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            NodeKey::Inline {
                len: s.len() as u8,
                bytes,
            }
        } else {
            NodeKey::Heap(s.into())
        }
    }
}

impl PartialEq<str> for NodeKey {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ids_are_inline_and_long_ones_on_the_heap_and_both_read_back() {
        let short = "acc_0123456789abcdef";
        let at_limit = "x".repeat(INLINE);
        let long = "2b9f8c1e-5a7d-4f3b-9e61-0c8d2a4b6f10";
        let multibyte = "gerät-ä-ö-ü-ß-€-🙂";
        for (id, inline) in [
            ("", true),
            (short, true),
            (at_limit.as_str(), true),
            (long, false),
            (multibyte, multibyte.len() <= INLINE),
        ] {
            let k = NodeKey::from(id);
            assert_eq!(matches!(k, NodeKey::Inline { .. }), inline, "{id}");
            assert_eq!(k.as_str(), id);
            assert!(k == *id);
            assert_eq!(k.len(), id.len());
            assert_eq!(k.is_empty(), id.is_empty());
            assert_eq!(k.heap_bytes(), if inline { 0 } else { id.len() });
            assert_eq!(k.to_string(), id);
        }
        let k = NodeKey::from(short);
        assert!(k != *"acc_0123456789abcdeF");
        assert!(k != *"acc_0123456789abcde");
        assert!(std::mem::size_of::<NodeKey>() <= 32);
    }
}
