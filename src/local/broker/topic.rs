//! MQTT 3.1.1 topic names and topic filters: validation, matching, and the broker's subscription
//! table.
//!
//! Rules (MQTT 3.1.1 §4.7):
//!
//! * Topics are split into *levels* by `/`. Empty levels are real levels: `a//b` has three levels,
//!   `/finance` has two (the first one empty), and `/` has two empty levels.
//! * `+` matches exactly one level, including an empty one; it must occupy a whole level.
//! * `#` matches the parent level and any number of child levels (`a/#` matches `a`, `a/` and
//!   `a/b/c`); it must be the whole last level.
//! * A filter whose **first** level is `+` or `#` never matches a topic name starting with `$`
//!   (§4.7.2), so `#` does not see `$SYS/...` or `$aws/...`, while `$SYS/#` and
//!   `$aws/things/+/shadow/#` do match their `$` topics.
//!
//! Matching is written here rather than taken from rumqttc: `rumqttc::mqttbytes::matches()` returns
//! `false` for every topic starting with `$`, even for filters such as `$aws/things/+/shadow/#`
//! that must match them, which would break every reserved-topic (dialect) service of the hub.
//!
//! [`SubscriptionTable`] is the broker's index from filters to subscribers. It is a trie keyed by
//! level, stored in an arena (`Vec` of nodes addressed by index) and walked with an explicit
//! stack, so a 30,000-level filter neither overflows the stack when matched nor when dropped.

use std::collections::HashMap;
use std::hash::Hash;

/// The longest topic name or filter, in bytes: MQTT strings carry a 16-bit length (§1.5.3).
pub(crate) const MAX_TOPIC_LEN: usize = 65_535;

/// Why a topic name or topic filter was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TopicError {
    /// The topic is the empty string (§4.7.3: at least one character).
    #[error("topic is empty; MQTT topics must be at least one character long")]
    Empty,
    /// The topic is longer than 65,535 bytes of UTF-8.
    #[error("topic is {len} bytes long; MQTT allows at most 65535")]
    TooLong {
        /// The topic's length in bytes.
        len: usize,
    },
    /// The topic contains the null character U+0000 (§1.5.3).
    #[error("topic contains the null character U+0000")]
    ContainsNul,
    /// A topic name (PUBLISH, will topic) contains `+` or `#`, which only filters may use.
    #[error(
        "topic name contains the wildcard '{wildcard}'; wildcards are allowed only in subscription filters"
    )]
    WildcardInTopicName {
        /// The wildcard found: `+` or `#`.
        wildcard: char,
    },
    /// A filter uses `#` other than as its whole last level (`a/#/b`, `a#`, `#a`).
    #[error("'#' must be the whole last level of a topic filter")]
    MisplacedHash,
    /// A filter uses `+` other than as a whole level (`a+`, `a/+b`).
    #[error("'+' must occupy a whole level of a topic filter")]
    MisplacedPlus,
}

/// Checks what a topic name and a topic filter have in common: non-empty and not too long.
fn check_length(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        Err(TopicError::Empty)
    } else if topic.len() > MAX_TOPIC_LEN {
        Err(TopicError::TooLong { len: topic.len() })
    } else {
        Ok(())
    }
}

/// Validates a topic name (the topic of a PUBLISH or of a will message).
///
/// It must be non-empty, at most 65,535 bytes, free of U+0000, and contain neither `+` nor `#`.
/// Control characters and non-characters, which the specification says a sender *should not* use
/// (§1.5.3), are accepted. Per-dialect limits such as depth are checked separately, with
/// [`level_count`].
pub(crate) fn validate_topic_name(topic: &str) -> Result<(), TopicError> {
    check_length(topic)?;
    // '\0', '+' and '#' are ASCII, so they never occur inside a multi-byte UTF-8 sequence.
    for &b in topic.as_bytes() {
        match b {
            0 => return Err(TopicError::ContainsNul),
            b'+' | b'#' => {
                return Err(TopicError::WildcardInTopicName {
                    wildcard: char::from(b),
                });
            }
            _ => {}
        }
    }
    Ok(())
}

/// Validates a topic filter (one entry of a SUBSCRIBE or UNSUBSCRIBE).
///
/// It must be non-empty, at most 65,535 bytes and free of U+0000; `#` may appear only as the
/// whole last level and `+` only as a whole level (§4.7.1).
pub(crate) fn validate_topic_filter(filter: &str) -> Result<(), TopicError> {
    check_length(filter)?;
    let bytes = filter.as_bytes();
    let starts_level = |i: usize| i == 0 || bytes[i - 1] == b'/';
    let ends_level = |i: usize| i + 1 == bytes.len() || bytes[i + 1] == b'/';
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            0 => return Err(TopicError::ContainsNul),
            b'+' if !(starts_level(i) && ends_level(i)) => return Err(TopicError::MisplacedPlus),
            b'#' if !(starts_level(i) && i + 1 == bytes.len()) => {
                return Err(TopicError::MisplacedHash);
            }
            _ => {}
        }
    }
    Ok(())
}

/// The number of levels of a topic name or filter: the number of `/` plus one.
///
/// `a` has 1 level, `a/b` 2, `/a` 2, `a//b` 3, `/` 2. (The empty string, which is not a valid
/// topic, counts as 1.) Used for per-dialect depth limits such as AWS IoT's 8 levels.
pub(crate) fn level_count(topic: &str) -> usize {
    topic.bytes().filter(|&b| b == b'/').count() + 1
}

/// Whether `filter` matches the topic name `topic`, per MQTT 3.1.1 §4.7.
///
/// Both inputs are expected to be valid ([`validate_topic_filter`], [`validate_topic_name`]); for
/// invalid inputs the result is unspecified, but this never panics. Runs in time linear in the
/// shorter input and does not allocate.
pub(crate) fn filter_matches(filter: &str, topic: &str) -> bool {
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    let dollar = topic.starts_with('$');
    let mut first = true;
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            // `#` matches the parent and everything below it, except `$` topics at the top.
            (Some("#"), _) => return !(first && dollar),
            (Some("+"), Some(_)) if first && dollar => return false,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
        first = false;
    }
}

/// Index of a node in [`SubscriptionTable::nodes`].
type NodeId = usize;

/// The root node: the empty prefix. It always exists and is never freed.
const ROOT: NodeId = 0;

/// Maps whose length drops below a quarter of their capacity are shrunk once they are this big,
/// so a burst of subscriptions does not pin its peak memory forever. Shrinking costs O(len) and
/// happens at most once per `capacity / 2` removals, so it is amortized O(1).
const SHRINK_ABOVE: usize = 64;

/// Releases memory from a map that has become mostly empty (see [`SHRINK_ABOVE`]).
fn maybe_shrink<A: Eq + Hash, B>(map: &mut HashMap<A, B>) {
    if map.capacity() > SHRINK_ABOVE && map.len() < map.capacity() / 4 {
        map.shrink_to(map.len() * 2);
    }
}

/// Up to this many matched (key, QoS) pairs are deduplicated by a linear scan of the output,
/// avoiding a hash map allocation for the common small fan-out.
const LINEAR_DEDUP_MAX: usize = 16;

/// One level of the subscription trie: the filters that share a prefix.
#[derive(Debug)]
struct Node<K> {
    /// Children for literal levels (including the empty level).
    literal: HashMap<Box<str>, NodeId>,
    /// The child for a `+` level.
    plus: Option<NodeId>,
    /// The child for a `#` level; it only ever holds subscribers, never children.
    hash: Option<NodeId>,
    /// Subscribers whose filter ends exactly at this node, with their granted QoS.
    subs: HashMap<K, u8>,
}

impl<K> Node<K> {
    /// A node with no children and no subscribers; allocates nothing.
    fn new() -> Self {
        Node {
            literal: HashMap::new(),
            plus: None,
            hash: None,
            subs: HashMap::new(),
        }
    }

    /// No subscribers and no children: the node can be pruned.
    fn is_unused(&self) -> bool {
        self.subs.is_empty()
            && self.literal.is_empty()
            && self.plus.is_none()
            && self.hash.is_none()
    }
}

/// The broker's subscriptions: which session key subscribed to which filter at which QoS.
///
/// `K` identifies a subscriber (a client id or session handle). Each (filter, key) pair is stored
/// once; subscribing again to the same filter replaces its QoS (§3.8.4). [`matches`] returns
/// every subscriber of a topic once, at the highest QoS of its matching subscriptions (§3.3.5).
///
/// Filters must be valid ([`validate_topic_filter`]); checking them is the caller's job, since
/// the caller also owns the SUBACK failure code. In debug builds an invalid filter panics.
///
/// Memory: trie nodes that lose their last subscriber and child are pruned and their slots
/// reused, so churn does not grow the table; when the last subscription goes, the arena is
/// released entirely.
///
/// [`matches`]: SubscriptionTable::matches
#[derive(Debug)]
pub(crate) struct SubscriptionTable<K> {
    /// Arena of trie nodes; `nodes[ROOT]` is the root. Free slots are reset to empty nodes.
    nodes: Vec<Node<K>>,
    /// Indices of free slots in `nodes`, reused before the arena grows.
    free: Vec<NodeId>,
    /// Each key's filters and QoS, so removing a client costs O(its subscriptions).
    by_key: HashMap<K, HashMap<String, u8>>,
    /// Number of (filter, key) pairs.
    len: usize,
}

impl<K: Clone + Eq + Hash> Default for SubscriptionTable<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Clone + Eq + Hash> SubscriptionTable<K> {
    /// An empty table.
    pub(crate) fn new() -> Self {
        SubscriptionTable {
            nodes: vec![Node::new()],
            free: Vec::new(),
            by_key: HashMap::new(),
            len: 0,
        }
    }

    /// The number of (filter, key) subscriptions.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no subscriptions at all.
    #[allow(
        dead_code,
        reason = "the natural pair of `len`; the broker does not need it yet"
    )]
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Subscribes `key` to `filter` with maximum QoS `qos`.
    ///
    /// Returns `true` if this is a new subscription, `false` if `key` was already subscribed to
    /// exactly this filter, in which case its QoS is replaced (§3.8.4).
    pub(crate) fn subscribe(&mut self, filter: &str, key: K, qos: u8) -> bool {
        debug_assert!(
            validate_topic_filter(filter).is_ok(),
            "SubscriptionTable::subscribe called with invalid filter {filter:?}"
        );
        let is_new = match self.by_key.get_mut(&key) {
            Some(filters) => match filters.get_mut(filter) {
                Some(old) => {
                    *old = qos;
                    false
                }
                None => {
                    filters.insert(filter.to_owned(), qos);
                    true
                }
            },
            None => {
                self.by_key
                    .insert(key.clone(), HashMap::from([(filter.to_owned(), qos)]));
                true
            }
        };
        let node = self.insert_path(filter);
        self.nodes[node].subs.insert(key, qos);
        if is_new {
            self.len += 1;
        }
        is_new
    }

    /// Removes `key`'s subscription to exactly `filter` (not to filters it overlaps).
    ///
    /// Returns whether there was such a subscription.
    pub(crate) fn unsubscribe(&mut self, filter: &str, key: &K) -> bool {
        let Some(filters) = self.by_key.get_mut(key) else {
            return false;
        };
        if filters.remove(filter).is_none() {
            return false;
        }
        if filters.is_empty() {
            self.by_key.remove(key);
            maybe_shrink(&mut self.by_key);
        } else {
            maybe_shrink(filters);
        }
        self.remove_from_trie(filter, key);
        self.len -= 1;
        self.release_if_empty();
        true
    }

    /// Removes every subscription of `key` (a client that disconnected with a clean session, or
    /// whose session expired), pruning the trie nodes that become unused.
    pub(crate) fn remove_key(&mut self, key: &K) {
        let Some(filters) = self.by_key.remove(key) else {
            return;
        };
        maybe_shrink(&mut self.by_key);
        for filter in filters.keys() {
            self.remove_from_trie(filter, key);
        }
        self.len -= filters.len();
        self.release_if_empty();
    }

    /// The filters `key` is subscribed to, with their QoS, sorted by filter (for persisting and
    /// restoring a session).
    pub(crate) fn filters_of(&self, key: &K) -> Vec<(String, u8)> {
        let mut filters: Vec<(String, u8)> = self
            .by_key
            .get(key)
            .map(|m| m.iter().map(|(f, &q)| (f.clone(), q)).collect())
            .unwrap_or_default();
        filters.sort_unstable();
        filters
    }

    /// Appends to `out` every key with a subscription matching the topic name `topic`, each key
    /// once, with the highest QoS among its matching subscriptions (§3.3.5).
    ///
    /// `out` is not cleared, so a caller can reuse one buffer; the order of the appended pairs is
    /// unspecified. Filters whose first level is `+` or `#` do not match topics starting with `$`
    /// (§4.7.2). `topic` is expected to be a valid topic name; for an invalid one the result is
    /// unspecified.
    pub(crate) fn matches(&self, topic: &str, out: &mut Vec<(K, u8)>) {
        let dollar = topic.starts_with('$');
        let end = topic.len();
        // Nodes whose subscribers match. A node is reached at most once per topic: each trie
        // path corresponds to one filter, and a filter matches a topic in at most one way.
        let mut hits: Vec<NodeId> = Vec::new();
        // (node, byte offset of the next topic level); an offset past the end means every level
        // has been consumed.
        let mut stack: Vec<(NodeId, usize)> = vec![(ROOT, 0)];
        while let Some((id, pos)) = stack.pop() {
            let node = &self.nodes[id];
            if pos > end {
                // The filter prefix of this node equals the whole topic: its own subscribers
                // match, and so does `<prefix>/#` (a `#` also matches its parent level).
                if !node.subs.is_empty() {
                    hits.push(id);
                }
                hits.extend(node.hash);
                continue;
            }
            let rest = &topic[pos..];
            let (level, next) = match rest.find('/') {
                Some(i) => (&rest[..i], pos + i + 1),
                None => (rest, end + 1),
            };
            // §4.7.2: wildcards in the first level do not match `$` topics. Only the root is
            // visited at offset 0, so this is the root's wildcard children.
            if !(dollar && id == ROOT) {
                hits.extend(node.hash);
                if let Some(plus) = node.plus {
                    stack.push((plus, next));
                }
            }
            if let Some(&child) = node.literal.get(level) {
                stack.push((child, next));
            }
        }
        self.collect(&hits, out);
    }

    /// Appends the subscribers of `hits` to `out`, each key once at its highest QoS.
    fn collect(&self, hits: &[NodeId], out: &mut Vec<(K, u8)>) {
        let total: usize = hits.iter().map(|&h| self.nodes[h].subs.len()).sum();
        out.reserve(total);
        match hits {
            [] => {}
            // Keys are unique within one node: nothing to merge.
            [only] => out.extend(self.nodes[*only].subs.iter().map(|(k, &q)| (k.clone(), q))),
            _ if total <= LINEAR_DEDUP_MAX => {
                let start = out.len();
                for &h in hits {
                    for (k, &q) in &self.nodes[h].subs {
                        match out[start..].iter_mut().find(|(seen, _)| seen == k) {
                            Some((_, best)) => *best = (*best).max(q),
                            None => out.push((k.clone(), q)),
                        }
                    }
                }
            }
            _ => {
                let mut best: HashMap<&K, u8> = HashMap::with_capacity(total);
                for &h in hits {
                    for (k, &q) in &self.nodes[h].subs {
                        best.entry(k).and_modify(|b| *b = (*b).max(q)).or_insert(q);
                    }
                }
                out.extend(best.into_iter().map(|(k, q)| (k.clone(), q)));
            }
        }
    }

    /// Takes a free slot (or grows the arena) for a new empty node.
    fn alloc(&mut self) -> NodeId {
        match self.free.pop() {
            Some(id) => id,
            None => {
                self.nodes.push(Node::new());
                self.nodes.len() - 1
            }
        }
    }

    /// Returns a pruned node's slot to the free list, dropping its (empty) maps' memory.
    fn release(&mut self, id: NodeId) {
        debug_assert_ne!(id, ROOT);
        self.nodes[id] = Node::new();
        self.free.push(id);
    }

    /// Once the last subscription is gone, gives the whole arena back.
    fn release_if_empty(&mut self) {
        if self.len == 0 {
            self.nodes = vec![Node::new()];
            self.free = Vec::new();
            self.by_key = HashMap::new();
        }
    }

    /// The child of `id` for one filter level, if it exists.
    fn child(&self, id: NodeId, level: &str) -> Option<NodeId> {
        let node = &self.nodes[id];
        match level {
            "+" => node.plus,
            "#" => node.hash,
            _ => node.literal.get(level).copied(),
        }
    }

    /// Walks `filter` from the root, creating missing nodes, and returns its last node.
    fn insert_path(&mut self, filter: &str) -> NodeId {
        let mut cur = ROOT;
        for level in filter.split('/') {
            cur = match self.child(cur, level) {
                Some(next) => next,
                None => {
                    let next = self.alloc();
                    let node = &mut self.nodes[cur];
                    match level {
                        "+" => node.plus = Some(next),
                        "#" => node.hash = Some(next),
                        _ => {
                            node.literal.insert(level.into(), next);
                        }
                    }
                    next
                }
            };
        }
        cur
    }

    /// Removes `key` from `filter`'s node and prunes the nodes left unused, bottom-up.
    fn remove_from_trie(&mut self, filter: &str, key: &K) {
        // path[i] is the node after i levels; path[0] is the root.
        let mut path = Vec::with_capacity(level_count(filter) + 1);
        path.push(ROOT);
        let mut cur = ROOT;
        for level in filter.split('/') {
            let Some(next) = self.child(cur, level) else {
                debug_assert!(false, "side map lists {filter:?} but the trie does not");
                return;
            };
            cur = next;
            path.push(cur);
        }
        let node = &mut self.nodes[cur];
        node.subs.remove(key);
        maybe_shrink(&mut node.subs);
        // Walk back up: rsplit yields the levels last-first, pairing each node with the level
        // that leads to it from its parent.
        for (depth, level) in (1..path.len()).rev().zip(filter.rsplit('/')) {
            let id = path[depth];
            if !self.nodes[id].is_unused() {
                break;
            }
            let parent = &mut self.nodes[path[depth - 1]];
            match level {
                "+" => parent.plus = None,
                "#" => parent.hash = None,
                _ => {
                    parent.literal.remove(level);
                    maybe_shrink(&mut parent.literal);
                }
            }
            self.release(id);
        }
    }

    /// The number of live trie nodes, not counting the root.
    #[cfg(test)]
    fn node_count(&self) -> usize {
        self.nodes.len() - 1 - self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use proptest::prelude::*;

    use super::*;

    // ----- reference implementations -------------------------------------------------------

    /// Naive matcher over level slices, written straight from §4.7.
    fn reference_matches(filter: &str, topic: &str) -> bool {
        fn levels(f: &[&str], t: &[&str]) -> bool {
            match (f.first(), t.first()) {
                (Some(&"#"), _) => true,
                (None, None) => true,
                (Some(&"+"), Some(_)) => levels(&f[1..], &t[1..]),
                (Some(a), Some(b)) => a == b && levels(&f[1..], &t[1..]),
                _ => false,
            }
        }
        let f: Vec<&str> = filter.split('/').collect();
        let t: Vec<&str> = topic.split('/').collect();
        if topic.starts_with('$') && (f[0] == "+" || f[0] == "#") {
            return false;
        }
        levels(&f, &t)
    }

    /// Naive filter validity, level by level.
    fn reference_filter_ok(filter: &str) -> bool {
        let levels: Vec<&str> = filter.split('/').collect();
        !filter.is_empty()
            && filter.len() <= MAX_TOPIC_LEN
            && !filter.contains('\0')
            && levels.iter().enumerate().all(|(i, l)| {
                (*l == "#" && i == levels.len() - 1)
                    || *l == "+"
                    || (!l.contains('#') && !l.contains('+'))
            })
    }

    /// Expected `matches` output from a flat model of (filter, key) -> QoS, sorted.
    fn reference_table(model: &HashMap<(String, u8), u8>, topic: &str) -> Vec<(u8, u8)> {
        let mut best: HashMap<u8, u8> = HashMap::new();
        for ((filter, key), &qos) in model {
            if reference_matches(filter, topic) {
                let b = best.entry(*key).or_insert(qos);
                *b = (*b).max(qos);
            }
        }
        let mut v: Vec<(u8, u8)> = best.into_iter().collect();
        v.sort_unstable();
        v
    }

    fn sorted_matches<K: Clone + Eq + Hash + Ord>(
        table: &SubscriptionTable<K>,
        topic: &str,
    ) -> Vec<(K, u8)> {
        let mut out = Vec::new();
        table.matches(topic, &mut out);
        out.sort_unstable();
        out
    }

    /// The trie and the side map agree, counts add up, and no unused node survives.
    fn check_invariants<K: Clone + Eq + Hash + std::fmt::Debug>(table: &SubscriptionTable<K>) {
        let pairs: usize = table.by_key.values().map(HashMap::len).sum();
        assert_eq!(pairs, table.len);
        assert!(table.by_key.values().all(|m| !m.is_empty()));
        let free: HashSet<NodeId> = table.free.iter().copied().collect();
        assert_eq!(free.len(), table.free.len(), "free list has duplicates");
        let mut in_trie = 0;
        for (id, node) in table.nodes.iter().enumerate() {
            if free.contains(&id) {
                assert!(node.is_unused());
                continue;
            }
            if id != ROOT {
                assert!(!node.is_unused(), "node {id} should have been pruned");
            }
            in_trie += node.subs.len();
        }
        assert_eq!(in_trie, table.len);
        for (key, filters) in &table.by_key {
            for (filter, qos) in filters {
                let mut cur = ROOT;
                for level in filter.split('/') {
                    cur = table.child(cur, level).expect("path exists");
                }
                assert_eq!(
                    table.nodes[cur].subs.get(key),
                    Some(qos),
                    "{filter} {key:?}"
                );
            }
        }
    }

    // ----- validation ----------------------------------------------------------------------

    #[test]
    fn topic_name_validation() {
        for ok in [
            "a",
            "/",
            "//",
            "sport/tennis/player1",
            "/finance",
            "$SYS/broker/clients",
            "$aws/things/dev-1/shadow/update",
            "with space/UTF-8 ✓",
        ] {
            assert_eq!(validate_topic_name(ok), Ok(()), "{ok:?}");
        }
        assert_eq!(validate_topic_name(""), Err(TopicError::Empty));
        assert_eq!(validate_topic_name("a\0b"), Err(TopicError::ContainsNul));
        assert_eq!(
            validate_topic_name("a/+/b"),
            Err(TopicError::WildcardInTopicName { wildcard: '+' })
        );
        assert_eq!(
            validate_topic_name("a/#"),
            Err(TopicError::WildcardInTopicName { wildcard: '#' })
        );
        assert_eq!(
            validate_topic_name("a#b"),
            Err(TopicError::WildcardInTopicName { wildcard: '#' })
        );
    }

    #[test]
    fn topic_length_limits() {
        let max = "a".repeat(MAX_TOPIC_LEN);
        assert_eq!(validate_topic_name(&max), Ok(()));
        assert_eq!(validate_topic_filter(&max), Ok(()));
        let over = "a".repeat(MAX_TOPIC_LEN + 1);
        let err = Err(TopicError::TooLong {
            len: MAX_TOPIC_LEN + 1,
        });
        assert_eq!(validate_topic_name(&over), err);
        assert_eq!(validate_topic_filter(&over), err);
        // Length is in bytes, not characters.
        let multibyte = "é".repeat(MAX_TOPIC_LEN / 2 + 1);
        assert!(matches!(
            validate_topic_name(&multibyte),
            Err(TopicError::TooLong { .. })
        ));
    }

    #[test]
    fn topic_filter_validation_spec_examples() {
        // §4.7.1.2 / §4.7.1.3 valid filters.
        for ok in [
            "sport/tennis/player1/#",
            "sport/#",
            "#",
            "+",
            "+/tennis/#",
            "sport/+/player1",
            "+/+",
            "/+",
            "/#",
            "a//b",
            "/",
            "+/+/+",
            "$SYS/#",
            "$aws/things/+/shadow/#",
        ] {
            assert_eq!(validate_topic_filter(ok), Ok(()), "{ok:?}");
        }
        assert_eq!(validate_topic_filter(""), Err(TopicError::Empty));
        assert_eq!(validate_topic_filter("a/\0"), Err(TopicError::ContainsNul));
        for bad_hash in [
            "sport/tennis#",
            "sport/tennis/#/ranking",
            "#/a",
            "a/#/",
            "##",
            "a/b#",
        ] {
            assert_eq!(
                validate_topic_filter(bad_hash),
                Err(TopicError::MisplacedHash),
                "{bad_hash:?}"
            );
        }
        for bad_plus in ["sport+", "a/+b", "+a", "a/b+/c", "++"] {
            assert_eq!(
                validate_topic_filter(bad_plus),
                Err(TopicError::MisplacedPlus),
                "{bad_plus:?}"
            );
        }
    }

    #[test]
    fn topic_error_display_and_error_trait() {
        let e: Box<dyn std::error::Error> = Box::new(TopicError::MisplacedHash);
        assert!(e.to_string().contains('#'));
        assert!(
            TopicError::TooLong { len: 70_000 }
                .to_string()
                .contains("70000")
        );
        assert!(
            TopicError::WildcardInTopicName { wildcard: '+' }
                .to_string()
                .contains("'+'")
        );
    }

    #[test]
    fn level_counts() {
        assert_eq!(level_count("a"), 1);
        assert_eq!(level_count("a/b"), 2);
        assert_eq!(level_count("/a"), 2);
        assert_eq!(level_count("/"), 2);
        assert_eq!(level_count("a//b"), 3);
        assert_eq!(level_count("$aws/things/t/shadow/name/n/update/delta"), 8);
    }

    // ----- filter_matches ------------------------------------------------------------------

    #[test]
    fn spec_multi_level_wildcard_examples() {
        // §4.7.1.2
        let f = "sport/tennis/player1/#";
        assert!(filter_matches(f, "sport/tennis/player1"));
        assert!(filter_matches(f, "sport/tennis/player1/ranking"));
        assert!(filter_matches(f, "sport/tennis/player1/score/wimbledon"));
        assert!(!filter_matches(f, "sport/tennis/player2"));
        assert!(!filter_matches(f, "sport/tennis"));
        assert!(filter_matches("sport/#", "sport"));
        assert!(filter_matches("sport/#", "sport/"));
        assert!(filter_matches("#", "sport/tennis"));
        assert!(filter_matches("#", "/finance"));
        assert!(filter_matches("a/#", "a"));
        assert!(filter_matches("a/#", "a/"));
        assert!(filter_matches("a/#", "a/b/c"));
        assert!(!filter_matches("a/#", "ab"));
    }

    #[test]
    fn spec_single_level_wildcard_examples() {
        // §4.7.1.3
        let f = "sport/tennis/+";
        assert!(filter_matches(f, "sport/tennis/player1"));
        assert!(filter_matches(f, "sport/tennis/player2"));
        assert!(!filter_matches(f, "sport/tennis/player1/ranking"));
        assert!(!filter_matches("sport/+", "sport"));
        assert!(filter_matches("sport/+", "sport/"));
        assert!(filter_matches("+/+", "/finance"));
        assert!(filter_matches("/+", "/finance"));
        assert!(!filter_matches("+", "/finance"));
        assert!(filter_matches("+", "finance"));
        assert!(filter_matches("a/+/b", "a//b"));
        assert!(filter_matches("+/+", "/"));
        assert!(filter_matches("/#", "/"));
        assert!(filter_matches("+/tennis/#", "sport/tennis/player1"));
    }

    #[test]
    fn empty_levels_and_case_are_significant() {
        assert!(filter_matches("a//b", "a//b"));
        assert!(!filter_matches("a/b", "a//b"));
        assert!(!filter_matches("a//b", "a/b"));
        assert!(!filter_matches("a", "a/"));
        assert!(!filter_matches("a/", "a"));
        assert!(!filter_matches("ACCOUNTS", "Accounts"));
        assert!(filter_matches("with space", "with space"));
    }

    #[test]
    fn dollar_topics_and_leading_wildcards() {
        // §4.7.2
        assert!(!filter_matches("#", "$SYS/monitor/Clients"));
        assert!(!filter_matches("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(!filter_matches("+", "$SYS"));
        assert!(!filter_matches("#", "$"));
        assert!(filter_matches("$SYS/#", "$SYS/monitor/Clients"));
        assert!(filter_matches("$SYS/#", "$SYS"));
        assert!(filter_matches("$SYS/monitor/+", "$SYS/monitor/Clients"));
        // The case rumqttc 0.25's `matches()` gets wrong.
        assert!(filter_matches(
            "$aws/things/+/shadow/#",
            "$aws/things/dev-1/shadow/update"
        ));
        assert!(filter_matches(
            "$aws/things/+/shadow/#",
            "$aws/things/dev-1/shadow/name/cfg/get/accepted"
        ));
        // Only the first level is special.
        assert!(filter_matches("a/+", "a/$b"));
        assert!(filter_matches("a/#", "a/$b/c"));
        assert!(filter_matches("+/$b", "a/$b"));
        // A `$` elsewhere in the first level does not make a reserved topic.
        assert!(filter_matches("#", "a$"));
    }

    // ----- SubscriptionTable ---------------------------------------------------------------

    #[test]
    fn table_subscribe_and_replace_qos() {
        let mut t = SubscriptionTable::new();
        assert!(t.is_empty());
        assert!(t.subscribe("a/b", "c1", 0));
        assert!(!t.subscribe("a/b", "c1", 1), "same filter and key replaces");
        assert_eq!(t.len(), 1);
        assert_eq!(sorted_matches(&t, "a/b"), vec![("c1", 1)]);
        assert!(t.subscribe("a/b", "c2", 0));
        assert!(t.subscribe("a/+", "c1", 0));
        assert_eq!(t.len(), 3);
        assert_eq!(
            t.filters_of(&"c1"),
            vec![("a/+".into(), 0), ("a/b".into(), 1)]
        );
        assert_eq!(t.filters_of(&"nobody"), vec![]);
        check_invariants(&t);
    }

    #[test]
    fn table_overlapping_subscriptions_deliver_once_at_max_qos() {
        let mut t = SubscriptionTable::new();
        t.subscribe("sport/tennis/player1", "c1", 0);
        t.subscribe("sport/#", "c1", 1);
        t.subscribe("sport/tennis/+", "c1", 0);
        t.subscribe("#", "c1", 0);
        t.subscribe("sport/tennis/+", "c2", 1);
        t.subscribe("+/tennis/player1", "c2", 0);
        t.subscribe("sport/tennis/player2", "c3", 1);
        assert_eq!(
            sorted_matches(&t, "sport/tennis/player1"),
            vec![("c1", 1), ("c2", 1)]
        );
        assert_eq!(sorted_matches(&t, "sport"), vec![("c1", 1)]);
        // The buffer is appended to, not cleared.
        let mut out = vec![("earlier", 2)];
        t.matches("sport/tennis/player2", &mut out);
        out.sort_unstable();
        assert_eq!(out, vec![("c1", 1), ("c2", 1), ("c3", 1), ("earlier", 2)]);
    }

    #[test]
    fn table_dedup_with_large_fan_out() {
        // More matches than the linear-scan threshold: exercises the hash-map merge.
        let mut t = SubscriptionTable::new();
        for key in 0..100u32 {
            t.subscribe("a/b", key, 0);
            t.subscribe("a/+", key, u8::from(key % 2 == 0));
            if key % 3 == 0 {
                t.subscribe("#", key, 2);
            }
        }
        let got = sorted_matches(&t, "a/b");
        let want: Vec<(u32, u8)> = (0..100u32)
            .map(|k| (k, if k % 3 == 0 { 2 } else { u8::from(k % 2 == 0) }))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn table_dollar_rule() {
        let mut t = SubscriptionTable::new();
        t.subscribe("#", "all", 0);
        t.subscribe("+/things/+/shadow/#", "plus", 0);
        t.subscribe("$aws/things/+/shadow/#", "shadow", 1);
        t.subscribe("$SYS/#", "sys", 0);
        t.subscribe("$aws/#", "aws", 0);
        assert_eq!(
            sorted_matches(&t, "$aws/things/d1/shadow/update"),
            vec![("aws", 0), ("shadow", 1)]
        );
        assert_eq!(sorted_matches(&t, "$SYS"), vec![("sys", 0)]);
        assert_eq!(
            sorted_matches(&t, "x/things/d1/shadow/get"),
            vec![("all", 0), ("plus", 0)]
        );
    }

    #[test]
    fn table_hash_matches_parent_and_empty_levels() {
        let mut t = SubscriptionTable::new();
        t.subscribe("a/#", 1u8, 0);
        t.subscribe("a/+", 2u8, 0);
        t.subscribe("a//b", 3u8, 0);
        t.subscribe("+/+", 4u8, 0);
        assert_eq!(sorted_matches(&t, "a"), vec![(1, 0)]);
        assert_eq!(sorted_matches(&t, "a/"), vec![(1, 0), (2, 0), (4, 0)]);
        assert_eq!(sorted_matches(&t, "a//b"), vec![(1, 0), (3, 0)]);
        assert_eq!(sorted_matches(&t, "/finance"), vec![(4, 0)]);
        assert_eq!(sorted_matches(&t, "b"), vec![]);
    }

    #[test]
    fn table_unsubscribe() {
        let mut t = SubscriptionTable::new();
        t.subscribe("a/+", "c1", 1);
        t.subscribe("a/b", "c1", 0);
        t.subscribe("a/+", "c2", 0);
        assert!(
            !t.unsubscribe("a/#", &"c1"),
            "not subscribed to that filter"
        );
        assert!(!t.unsubscribe("a/+", &"c3"), "unknown key");
        assert!(t.unsubscribe("a/+", &"c1"));
        assert!(!t.unsubscribe("a/+", &"c1"), "already gone");
        assert_eq!(t.len(), 2);
        assert_eq!(sorted_matches(&t, "a/b"), vec![("c1", 0), ("c2", 0)]);
        assert_eq!(sorted_matches(&t, "a/c"), vec![("c2", 0)]);
        check_invariants(&t);
        assert!(t.unsubscribe("a/b", &"c1"));
        assert!(t.unsubscribe("a/+", &"c2"));
        assert!(t.is_empty());
        assert_eq!(t.node_count(), 0);
        assert_eq!(t.filters_of(&"c1"), vec![]);
    }

    #[test]
    fn table_remove_key_prunes_nodes() {
        let mut t = SubscriptionTable::new();
        t.subscribe("a/b/c", "c1", 0);
        t.subscribe("a/+/#", "c1", 1);
        t.subscribe("$aws/things/+/shadow/#", "c1", 1);
        t.subscribe("a/b", "c2", 0);
        let with_both = t.node_count();
        t.remove_key(&"c1");
        check_invariants(&t);
        assert_eq!(t.len(), 1);
        assert_eq!(t.node_count(), 2, "only a and a/b remain");
        assert!(t.node_count() < with_both);
        assert_eq!(sorted_matches(&t, "a/b"), vec![("c2", 0)]);
        assert_eq!(sorted_matches(&t, "a/b/c"), vec![]);
        t.remove_key(&"c1"); // no-op
        t.remove_key(&"c2");
        assert!(t.is_empty());
        assert_eq!(t.node_count(), 0);
        assert_eq!(t.nodes.len(), 1, "arena released");
        check_invariants(&t);
    }

    #[test]
    fn table_churn_does_not_grow_arena() {
        let mut t = SubscriptionTable::new();
        t.subscribe("keep/alive", u32::MAX, 0); // keeps the table non-empty throughout
        for round in 0..50u32 {
            for c in 0..20u32 {
                let key = round * 100 + c;
                t.subscribe(&format!("dev/{key}/cmd/#"), key, 1);
                t.subscribe(&format!("dev/{key}/+/x"), key, 0);
            }
            for c in 0..20u32 {
                t.remove_key(&(round * 100 + c));
            }
        }
        check_invariants(&t);
        assert_eq!(t.len(), 1);
        assert_eq!(t.node_count(), 2);
        // Peak usage of one round: dev + 20 × (id, cmd, #, +, x) + keep/alive.
        assert!(t.nodes.len() <= 1 + 1 + 20 * 5 + 2, "{}", t.nodes.len());
    }

    #[test]
    fn deep_filters_do_not_overflow_the_stack() {
        // ~30,000 levels: recursion over the trie, or a Box-linked trie's drop, would overflow.
        let filter = vec!["a"; 30_000].join("/");
        let plus = vec!["+"; 30_000].join("/");
        assert_eq!(validate_topic_filter(&filter), Ok(()));
        let mut t = SubscriptionTable::new();
        t.subscribe(&filter, 1u8, 0);
        t.subscribe(&plus, 2u8, 1);
        t.subscribe("a/#", 3u8, 0);
        assert_eq!(sorted_matches(&t, &filter), vec![(1, 0), (2, 1), (3, 0)]);
        assert!(filter_matches(&plus, &filter));
        t.remove_key(&1);
        assert_eq!(sorted_matches(&t, &filter), vec![(2, 1), (3, 0)]);
        check_invariants(&t);
        drop(t);
    }

    // ----- property tests ------------------------------------------------------------------

    /// Topic levels from a small alphabet: empty, plain and `$`-prefixed or -containing.
    const TOPIC_LEVELS: &[&str] = &["", "a", "b", "ab", "$", "$a", "a$"];
    /// Filter levels: the topic levels plus both wildcards.
    const FILTER_LEVELS: &[&str] = &["", "a", "b", "ab", "$", "$a", "a$", "+", "#"];

    /// Valid filters of 1 to `max_levels` levels: anything after the first `#` is cut off, and
    /// the empty string (one empty level) is skipped.
    fn filter_strategy(max_levels: usize) -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(FILTER_LEVELS), 1..=max_levels)
            .prop_map(|mut levels| {
                if let Some(hash) = levels.iter().position(|l| *l == "#") {
                    levels.truncate(hash + 1);
                }
                levels.join("/")
            })
            .prop_filter("empty filter", |f| !f.is_empty())
    }

    /// Valid topic names of 1 to 5 levels.
    fn topic_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(TOPIC_LEVELS), 1..=5)
            .prop_map(|levels| levels.join("/"))
            .prop_filter("empty topic", |t| !t.is_empty())
    }

    #[derive(Clone, Debug)]
    enum Op {
        Subscribe(String, u8, u8),
        Unsubscribe(String, u8),
        RemoveKey(u8),
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        // Few short filters and keys, so operations collide often.
        let filter = || {
            prop::collection::vec(prop::sample::select(&["", "a", "$", "+", "#"][..]), 1..=3)
                .prop_map(|l| l.join("/"))
        };
        prop_oneof![
            4 => (filter(), 0..4u8, 0..3u8).prop_map(|(f, k, q)| Op::Subscribe(f, k, q)),
            2 => (filter(), 0..4u8).prop_map(|(f, k)| Op::Unsubscribe(f, k)),
            1 => (0..4u8).prop_map(Op::RemoveKey),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn prop_validation_agrees_with_reference(s in "[ab$/+#\u{0}]{0,10}") {
            prop_assert_eq!(validate_topic_filter(&s).is_ok(), reference_filter_ok(&s));
            let name_ok = !s.is_empty() && !s.contains(['+', '#', '\0']);
            prop_assert_eq!(validate_topic_name(&s).is_ok(), name_ok);
            // Every valid topic name is a valid filter that matches itself.
            if name_ok {
                prop_assert!(validate_topic_filter(&s).is_ok());
                prop_assert!(filter_matches(&s, &s));
            }
        }

        #[test]
        fn prop_filter_matches_agrees_with_reference(
            filter in filter_strategy(5),
            topic in topic_strategy(),
        ) {
            prop_assert_eq!(validate_topic_filter(&filter), Ok(()));
            prop_assert_eq!(validate_topic_name(&topic), Ok(()));
            prop_assert_eq!(
                filter_matches(&filter, &topic),
                reference_matches(&filter, &topic),
                "filter {:?} topic {:?}", filter, topic
            );
        }

        #[test]
        fn prop_table_matches_agrees_with_reference(
            subs in prop::collection::vec((filter_strategy(4), 0..6u8, 0..3u8), 0..24),
            topics in prop::collection::vec(topic_strategy(), 1..8),
        ) {
            let mut table = SubscriptionTable::new();
            let mut model: HashMap<(String, u8), u8> = HashMap::new();
            for (filter, key, qos) in subs {
                let is_new = model.insert((filter.clone(), key), qos).is_none();
                prop_assert_eq!(table.subscribe(&filter, key, qos), is_new);
            }
            prop_assert_eq!(table.len(), model.len());
            for topic in &topics {
                let got = sorted_matches(&table, topic);
                prop_assert_eq!(&got, &reference_table(&model, topic), "topic {:?}", topic);
                // Each subscription alone agrees with filter_matches.
                for (filter, _) in model.keys() {
                    prop_assert_eq!(
                        filter_matches(filter, topic),
                        reference_matches(filter, topic)
                    );
                }
            }
        }

        #[test]
        fn prop_table_operations_agree_with_model(
            ops in prop::collection::vec(op_strategy(), 0..60),
            topics in prop::collection::vec(topic_strategy(), 1..6),
        ) {
            let mut table = SubscriptionTable::new();
            let mut model: HashMap<(String, u8), u8> = HashMap::new();
            for op in ops {
                match op {
                    Op::Subscribe(filter, key, qos) => {
                        if validate_topic_filter(&filter).is_err() {
                            continue;
                        }
                        let is_new = model.insert((filter.clone(), key), qos).is_none();
                        prop_assert_eq!(table.subscribe(&filter, key, qos), is_new);
                    }
                    Op::Unsubscribe(filter, key) => {
                        let existed = model.remove(&(filter.clone(), key)).is_some();
                        prop_assert_eq!(table.unsubscribe(&filter, &key), existed);
                    }
                    Op::RemoveKey(key) => {
                        model.retain(|(_, k), _| *k != key);
                        table.remove_key(&key);
                    }
                }
                prop_assert_eq!(table.len(), model.len());
                check_invariants(&table);
            }
            for key in 0..4u8 {
                let mut want: Vec<(String, u8)> = model
                    .iter()
                    .filter(|((_, k), _)| *k == key)
                    .map(|((f, _), q)| (f.clone(), *q))
                    .collect();
                want.sort_unstable();
                prop_assert_eq!(table.filters_of(&key), want);
            }
            for topic in &topics {
                prop_assert_eq!(sorted_matches(&table, topic), reference_table(&model, topic));
            }
            for key in 0..4u8 {
                table.remove_key(&key);
            }
            prop_assert!(table.is_empty());
            prop_assert_eq!(table.node_count(), 0);
        }
    }
}
