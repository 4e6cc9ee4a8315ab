//! The matching index: every subscription (enabled and disabled), laid out
//! to hold a million in little memory and match an event at the cost of
//! its own matches.
//!
//! Each subscription keeps only what a fan-out needs of it (see
//! [`DeliveryTarget`]): its id, workspace, URL, settings and signing keys.
//! Names, descriptions, timestamps and the secrets' text stay in the
//! ledger. What many subscriptions share is stored once and referred to by
//! number: workspace ids, URLs, channels and settings. The signing keys
//! are decoded bytes in one buffer. A subscription is an [`Entry`] of 36
//! bytes plus its key (24 bytes for courier's own secrets).
//!
//! Matching looks up (workspace, event type) in one hash map, whose value
//! names the subscriptions that take every channel and, sorted by channel,
//! the lists of those that named channels: an event costs two hash
//! lookups (its workspace, its channel), one binary search among its
//! workspace's channels of that type, and its matches. Lists are runs of
//! entry numbers in one array, built by sorting once after loading rather
//! than growing a vector per list.

use std::collections::HashMap;
use std::fmt;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::signing::sign_with_key;
use crate::{
    Channel, DeliveryTarget, Event, EventType, Subscription, SubscriptionId, SubscriptionStatus,
    WebhookSettings, WebhookUrl, WorkspaceId,
};

/// Subscriptions (enabled and disabled) indexed by (workspace, event type)
/// and then by channel, so that matching an event costs its matches, not
/// every subscription of the workspace. Disabled ones are there so that
/// their deliveries are recorded, paused, instead of never existing.
///
/// Built by a [`SubscriptionIndexBuilder`] (or [`SubscriptionIndex::new`]);
/// a changed set is a new index.
#[derive(Default)]
pub struct SubscriptionIndex {
    /// Workspace id -> its number (position in `workspace_ids`).
    workspaces: HashMap<WorkspaceId, u32>,
    workspace_ids: Vec<WorkspaceId>,
    /// Every channel some subscription names -> its number.
    channels: HashMap<Channel, u32>,
    urls: Vec<WebhookUrl>,
    /// Distinct settings, without descriptions; number 0 is the default.
    settings: Vec<WebhookSettings>,
    entries: Vec<Entry>,
    /// The signing keys, decoded, back to back.
    keys: Vec<u8>,
    /// Previous secrets still in their grace period at load, by entry.
    previous: HashMap<u32, Previous>,
    /// (workspace number, event type) -> its listeners.
    groups: HashMap<(u32, EventType), Group>,
    /// The per-channel lists of every group, each group's sorted by
    /// channel number.
    by_channel: Vec<ChannelList>,
    /// Entry numbers; every list is a run of them.
    postings: Vec<u32>,
}

/// One subscription: 36 bytes.
#[derive(Clone, Copy)]
struct Entry {
    id: Uuid,
    workspace: u32,
    url: u32,
    settings: u32,
    /// Offset of its key in `keys`.
    key: u32,
    key_len: u8,
    enabled: bool,
}

/// A secret being rotated out and until when it still signs.
struct Previous {
    key: Box<[u8]>,
    until: DateTime<Utc>,
}

/// The subscriptions to one event type of one workspace.
#[derive(Clone, Copy)]
struct Group {
    /// Those that list no channels: every channel.
    every_channel: Run,
    /// Their lists in `by_channel`.
    channels: Run,
}

#[derive(Clone, Copy)]
struct ChannelList {
    channel: u32,
    /// In `postings`.
    subscriptions: Run,
}

/// `len` items from `start`.
#[derive(Clone, Copy, Default)]
struct Run {
    start: u32,
    len: u32,
}

impl Run {
    fn of<T>(self, items: &[T]) -> &[T] {
        let start = self.start as usize;
        &items[start..start + self.len as usize]
    }
}

/// The channel number of "no channels: every channel"; sorts after every
/// real channel.
const EVERY_CHANNEL: u32 = u32::MAX;

fn number(n: usize, what: &str) -> u32 {
    u32::try_from(n).unwrap_or_else(|_| panic!("more than 2^32 {what} in the index"))
}

impl SubscriptionIndex {
    pub fn new(subscriptions: impl IntoIterator<Item = Subscription>) -> Self {
        let mut builder = SubscriptionIndexBuilder::default();
        for sub in subscriptions {
            builder.insert(&sub);
        }
        builder.build()
    }

    /// Subscriptions indexed.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The subscriptions that listen to the event
    /// ([`Subscription::listens_to`]), disabled ones included: first those
    /// that take every channel, then those that named the event's, each
    /// list in the order the subscriptions were inserted.
    pub fn matching(&self, event: &Event) -> Vec<Indexed<'_>> {
        let Some(&workspace) = self.workspaces.get(&event.workspace_id) else {
            return Vec::new();
        };
        let Some(group) = self.groups.get(&(workspace, event.event_type)) else {
            return Vec::new();
        };
        let every = group.every_channel.of(&self.postings);
        let of_channel = event
            .channel
            .as_ref()
            .and_then(|c| self.channels.get(c))
            .and_then(|&channel| {
                let lists = group.channels.of(&self.by_channel);
                let at = lists.binary_search_by_key(&channel, |l| l.channel).ok()?;
                Some(lists[at].subscriptions.of(&self.postings))
            })
            .unwrap_or(&[]);
        // Each subscription is in at most one of the two lists.
        let mut matches = Vec::with_capacity(every.len() + of_channel.len());
        matches.extend(
            every
                .iter()
                .chain(of_channel)
                .map(|&entry| Indexed { index: self, entry }),
        );
        matches
    }

    fn entry(&self, entry: u32) -> &Entry {
        &self.entries[entry as usize]
    }
}

impl fmt::Debug for SubscriptionIndex {
    /// Sizes only: the index holds signing keys.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionIndex")
            .field("subscriptions", &self.entries.len())
            .field("workspaces", &self.workspace_ids.len())
            .field("urls", &self.urls.len())
            .field("groups", &self.groups.len())
            .finish_non_exhaustive()
    }
}

/// A subscription as the index has it: what a fan-out needs to deliver
/// to it ([`DeliveryTarget`]), and whether it is enabled.
#[derive(Clone, Copy)]
pub struct Indexed<'a> {
    index: &'a SubscriptionIndex,
    entry: u32,
}

impl<'a> Indexed<'a> {
    fn get(&self) -> &'a Entry {
        self.index.entry(self.entry)
    }

    pub fn id(&self) -> SubscriptionId {
        SubscriptionId(self.get().id)
    }

    pub fn workspace_id(&self) -> &'a WorkspaceId {
        &self.index.workspace_ids[self.get().workspace as usize]
    }

    pub fn url(&self) -> &'a WebhookUrl {
        &self.index.urls[self.get().url as usize]
    }

    /// Its settings, without the description.
    pub fn settings(&self) -> &'a WebhookSettings {
        &self.index.settings[self.get().settings as usize]
    }

    pub fn is_enabled(&self) -> bool {
        self.get().enabled
    }

    pub fn status(&self) -> SubscriptionStatus {
        if self.is_enabled() {
            SubscriptionStatus::Enabled
        } else {
            SubscriptionStatus::Disabled
        }
    }

    fn key(&self) -> &'a [u8] {
        let entry = self.get();
        let start = entry.key as usize;
        &self.index.keys[start..start + usize::from(entry.key_len)]
    }
}

impl DeliveryTarget for Indexed<'_> {
    fn id(&self) -> SubscriptionId {
        Indexed::id(self)
    }

    fn workspace_id(&self) -> &WorkspaceId {
        Indexed::workspace_id(self)
    }

    fn url(&self) -> &WebhookUrl {
        Indexed::url(self)
    }

    fn settings(&self) -> &WebhookSettings {
        Indexed::settings(self)
    }

    /// As [`Subscription::signing_secrets`]: the current key, and the
    /// previous one while its grace period lasts.
    fn signature(&self, msg_id: &str, at: DateTime<Utc>, body: &[u8]) -> String {
        let timestamp = at.timestamp();
        let mut header = sign_with_key(self.key(), msg_id, timestamp, body);
        if let Some(previous) = self.index.previous.get(&self.entry)
            && at < previous.until
        {
            header.push(' ');
            header.push_str(&sign_with_key(&previous.key, msg_id, timestamp, body));
        }
        header
    }
}

impl fmt::Debug for Indexed<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Indexed")
            .field("id", &self.id())
            .field("workspace_id", self.workspace_id())
            .field("url", &self.url().as_str())
            .field("enabled", &self.is_enabled())
            .finish_non_exhaustive()
    }
}

/// Builds a [`SubscriptionIndex`] from subscriptions inserted one at a time
/// (as the ledger streams them), keeping of each only what the index
/// does, plus 16 bytes per (event type, channel) it listens to until
/// [`build`](Self::build).
#[derive(Default)]
pub struct SubscriptionIndexBuilder {
    index: SubscriptionIndex,
    urls: HashMap<String, u32>,
    settings: HashMap<WebhookSettings, u32>,
    links: Vec<Link>,
}

/// Entry `entry` listens to (workspace, event type, channel); sorting
/// brings each list together, in insertion order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Link {
    workspace: u32,
    event_type: EventType,
    channel: u32,
    entry: u32,
}

impl SubscriptionIndexBuilder {
    /// Subscriptions inserted so far.
    pub fn len(&self) -> usize {
        self.index.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.entries.is_empty()
    }

    /// Adds one subscription.
    pub fn insert(&mut self, sub: &Subscription) {
        let index = &mut self.index;
        let entry = number(index.entries.len(), "subscriptions");
        let workspace = match index.workspaces.get(&sub.workspace_id) {
            Some(&n) => n,
            None => {
                let n = number(index.workspace_ids.len(), "workspaces");
                index.workspaces.insert(sub.workspace_id.clone(), n);
                index.workspace_ids.push(sub.workspace_id.clone());
                n
            }
        };
        let url = match self.urls.get(sub.url.as_str()) {
            Some(&n) => n,
            None => {
                let n = number(index.urls.len(), "URLs");
                self.urls.insert(sub.url.as_str().to_owned(), n);
                index.urls.push(sub.url.clone());
                n
            }
        };
        if index.settings.is_empty() {
            index.settings.push(WebhookSettings::default());
        }
        let settings = if sub.settings == WebhookSettings::default() {
            0
        } else {
            let kept = WebhookSettings {
                description: None,
                ..sub.settings.clone()
            };
            match self.settings.get(&kept) {
                Some(&n) => n,
                None if kept == WebhookSettings::default() => 0,
                None => {
                    let n = number(index.settings.len(), "settings");
                    index.settings.push(kept.clone());
                    self.settings.insert(kept, n);
                    n
                }
            }
        };
        let key = sub.secret.key();
        let key_at = number(index.keys.len(), "key bytes");
        index.keys.extend_from_slice(key);
        index.entries.push(Entry {
            id: sub.id.0,
            workspace,
            url,
            settings,
            key: key_at,
            key_len: u8::try_from(key.len()).expect("secrets decode to at most 64 bytes"),
            enabled: sub.status == SubscriptionStatus::Enabled,
        });
        if let (Some(previous), Some(until)) =
            (&sub.previous_secret, sub.previous_secret_expires_at)
        {
            index.previous.insert(
                entry,
                Previous {
                    key: previous.key().into(),
                    until,
                },
            );
        }
        let mut channels = Vec::with_capacity(sub.channels.len().max(1));
        if sub.channels.is_empty() {
            channels.push(EVERY_CHANNEL);
        }
        for channel in &sub.channels {
            let n = match index.channels.get(channel) {
                Some(&n) => n,
                None => {
                    let n = number(index.channels.len(), "channels");
                    index.channels.insert(channel.clone(), n);
                    n
                }
            };
            channels.push(n);
        }
        for &event_type in &sub.event_types {
            for &channel in &channels {
                self.links.push(Link {
                    workspace,
                    event_type,
                    channel,
                    entry,
                });
            }
        }
    }

    /// The index of everything inserted.
    pub fn build(self) -> SubscriptionIndex {
        let Self {
            mut index,
            mut links,
            ..
        } = self;
        links.sort_unstable();
        // A type or channel listed twice links an entry twice: once is
        // enough.
        links.dedup();
        index.postings = Vec::with_capacity(links.len());
        let mut rest = &links[..];
        while let Some(first) = rest.first() {
            let group_len = rest
                .iter()
                .take_while(|l| (l.workspace, l.event_type) == (first.workspace, first.event_type))
                .count();
            let (group_links, after) = rest.split_at(group_len);
            rest = after;
            let mut group = Group {
                every_channel: Run::default(),
                channels: Run {
                    start: number(index.by_channel.len(), "lists"),
                    len: 0,
                },
            };
            let mut lists = group_links;
            while let Some(head) = lists.first() {
                let len = lists
                    .iter()
                    .take_while(|l| l.channel == head.channel)
                    .count();
                let run = Run {
                    start: number(index.postings.len(), "links"),
                    len: number(len, "links"),
                };
                index.postings.extend(lists[..len].iter().map(|l| l.entry));
                if head.channel == EVERY_CHANNEL {
                    group.every_channel = run;
                } else {
                    index.by_channel.push(ChannelList {
                        channel: head.channel,
                        subscriptions: run,
                    });
                }
                lists = &lists[len..];
            }
            group.channels.len = number(index.by_channel.len(), "lists") - group.channels.start;
            index
                .groups
                .insert((first.workspace, first.event_type), group);
        }
        drop(links);
        index.entries.shrink_to_fit();
        index.keys.shrink_to_fit();
        index.by_channel.shrink_to_fit();
        index.workspace_ids.shrink_to_fit();
        index.workspaces.shrink_to_fit();
        index.channels.shrink_to_fit();
        index.groups.shrink_to_fit();
        index
    }
}

impl fmt::Debug for SubscriptionIndexBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionIndexBuilder")
            .field("subscriptions", &self.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subscription::tests::{event, sub};
    use crate::{Disabled, DisabledReason, RateLimit, WebhookSecret};
    use EventType::*;

    fn ids(matches: &[Indexed<'_>]) -> Vec<SubscriptionId> {
        matches.iter().map(|m| m.id()).collect()
    }

    #[test]
    fn an_id_matches_only_in_its_own_workspace() {
        // The same channels, types and URL in two workspaces whose ids
        // share a prefix.
        let a = sub("acme", &[OrderCreated], &["amazon"], true);
        let a_all = sub("acme", &[OrderCreated], &[], true);
        let b = sub("acme2", &[OrderCreated], &["amazon"], true);
        let b_all = sub("acme2", &[OrderCreated], &[], true);
        let index = SubscriptionIndex::new([a.clone(), a_all.clone(), b.clone(), b_all.clone()]);
        assert_eq!(
            ids(&index.matching(&event("acme", OrderCreated, Some("amazon")))),
            [a_all.id, a.id]
        );
        assert_eq!(
            ids(&index.matching(&event("acme2", OrderCreated, Some("amazon")))),
            [b_all.id, b.id]
        );
        assert_eq!(
            ids(&index.matching(&event("acme2", OrderCreated, None))),
            [b_all.id]
        );
        for m in index.matching(&event("acme", OrderCreated, Some("amazon"))) {
            assert_eq!(m.workspace_id().as_str(), "acme");
        }
        // A workspace the index does not know, and a type nobody listens to.
        assert!(
            index
                .matching(&event("acme3", OrderCreated, Some("amazon")))
                .is_empty()
        );
        assert!(
            index
                .matching(&event("acme", OrderCanceled, Some("amazon")))
                .is_empty()
        );
    }

    #[test]
    fn a_match_carries_what_an_attempt_needs() {
        let mut s = sub("acme", &[OrderCreated, OrderCreated], &["x", "x"], true);
        s.url = WebhookUrl::parse("https://erp.example.com/hooks?a=1").unwrap();
        s.settings = WebhookSettings {
            description: Some("the ERP".into()),
            timeout_ms: Some(800),
            max_attempts: Some(3),
            headers: vec![("x-tenant".into(), "acme".into())],
            rate_limit: Some(RateLimit {
                per_second: 5,
                burst: 10,
            }),
        };
        let now = Utc::now();
        let mut rotated = sub("acme", &[OrderCreated], &[], false);
        rotated.previous_secret = Some(WebhookSecret::generate());
        rotated.previous_secret_expires_at = Some(now + chrono::Duration::hours(1));
        rotated.disabled = Some(Disabled {
            reason: DisabledReason::Failing,
            at: now,
        });
        let index = SubscriptionIndex::new([s.clone(), rotated.clone()]);
        let matches = index.matching(&event("acme", OrderCreated, Some("x")));
        // Listed twice, matched once.
        assert_eq!(ids(&matches), [rotated.id, s.id]);
        let (r, m) = (&matches[0], &matches[1]);

        assert!(m.is_enabled());
        assert_eq!(m.status(), SubscriptionStatus::Enabled);
        assert_eq!(m.url(), &s.url);
        assert_eq!(m.workspace_id(), &s.workspace_id);
        let target: &dyn DeliveryTarget = m;
        assert_eq!(
            target.settings(),
            &WebhookSettings {
                description: None,
                ..s.settings.clone()
            }
        );
        for at in [now, now + chrono::Duration::hours(2)] {
            assert_eq!(
                target.signature("msg", at, b"{}"),
                s.signature("msg", at, b"{}")
            );
        }

        // Disabled, still there; the previous secret signs during its grace
        // period only, as the subscription's own.
        assert!(!r.is_enabled());
        assert_eq!(r.status(), SubscriptionStatus::Disabled);
        assert_eq!(r.settings(), &WebhookSettings::default());
        for at in [now, now + chrono::Duration::hours(2)] {
            assert_eq!(
                DeliveryTarget::signature(r, "msg", at, b"{}"),
                rotated.signature("msg", at, b"{}")
            );
        }
        assert_eq!(r.signature("m", now, b"").split(' ').count(), 2);
        assert_eq!(
            r.signature("m", now + chrono::Duration::hours(2), b"")
                .split(' ')
                .count(),
            1
        );
    }

    #[test]
    fn shared_values_are_stored_once() {
        let subs: Vec<Subscription> = (0..300)
            .map(|i| {
                let mut s = sub(
                    &format!("w{}", i % 3),
                    &[OrderCreated, OrderCanceled],
                    &[&format!("c{}", i % 10)],
                    i % 7 != 0,
                );
                s.settings.description = Some(format!("hook {i}"));
                s
            })
            .collect();
        let index = SubscriptionIndex::new(subs.clone());
        assert_eq!(index.len(), 300);
        assert_eq!(index.workspace_ids.len(), 3);
        assert_eq!(index.urls.len(), 1);
        assert_eq!(index.channels.len(), 10);
        // Descriptions are not kept: every one has the default settings.
        assert_eq!(index.settings.len(), 1);
        assert_eq!(index.groups.len(), 6);
        assert_eq!(index.postings.len(), 600);
        // Each event matches what the rule says, in insertion order.
        for w in 0..3 {
            for c in 0..11 {
                for ty in [OrderCreated, OrderCanceled, ShipmentCreated] {
                    let e = event(&format!("w{w}"), ty, Some(&format!("c{c}")));
                    let expected: Vec<_> = subs
                        .iter()
                        .filter(|s| s.listens_to(&e))
                        .map(|s| (s.id, s.status == SubscriptionStatus::Enabled))
                        .collect();
                    let got: Vec<_> = index
                        .matching(&e)
                        .iter()
                        .map(|m| (m.id(), m.is_enabled()))
                        .collect();
                    assert_eq!(got, expected, "w{w} c{c} {ty}");
                }
            }
        }
        assert!(format!("{index:?}").contains("subscriptions: 300"));
    }

    #[test]
    fn empty_index() {
        let index = SubscriptionIndex::default();
        assert!(index.is_empty());
        assert!(
            index
                .matching(&event("a", OrderCreated, Some("x")))
                .is_empty()
        );
        let built = SubscriptionIndexBuilder::default().build();
        assert!(built.is_empty());
        assert!(built.matching(&event("a", OrderCreated, None)).is_empty());
    }
}
