//! Events (`events.k8s.io/v1`) about InferenceServices: a new Event for each distinct message,
//! repeats of one within [`SERIES_WINDOW`] counted on it as a series.
//!
//! kube's `Recorder` keeps every Event it publishes, whole, for six minutes and scans them all on
//! every publish: at 10,000 InferenceServices, each with its `Decided` Event, that was tens of
//! MiB and a scan of 10,000 entries per Event. This one remembers a bounded number of recent
//! Events ([`CAPACITY`], as client-go's correlator does) by the hash of what makes them the
//! same, and includes the note in it: a new decision's reason is a new Event, not a count on
//! the old one's text.

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
};

use k8s_openapi::{
    api::{core::v1::ObjectReference, events::v1::Event, events::v1::EventSeries},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, Client,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
};

use crate::controller::triggers::hash;

/// Events remembered for series; beyond this the oldest is forgotten (a repeat of it starts a
/// new Event).
pub const CAPACITY: usize = 4096;
/// Repeats within this window count on the same Event (the events API's own window).
pub const SERIES_WINDOW: SignedDuration = SignedDuration::from_mins(6);

/// Normal or Warning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Type {
    /// Something the user may want to know.
    Normal,
    /// Something that keeps the service from what was asked.
    Warning,
}

/// Publishes Events as the controller `controller` (instance `instance`).
pub struct Recorder {
    client: Client,
    controller: String,
    instance: String,
    recent: Mutex<Recent>,
}

/// The Event a repeat counts on.
#[derive(Clone, Debug, PartialEq)]
struct Published {
    name: String,
    count: i32,
    last: Timestamp,
}

/// Recently published Events by key, oldest first.
#[derive(Default)]
struct Recent {
    by_key: HashMap<u64, Published>,
    order: VecDeque<u64>,
}

impl Recent {
    /// The Event a repeat of `key` at `now` counts on, if it is recent enough.
    fn repeat_of(&mut self, key: u64, now: Timestamp) -> Option<Published> {
        let published = self.by_key.get_mut(&key)?;
        if now.duration_since(published.last) > SERIES_WINDOW {
            return None;
        }
        published.count = published.count.saturating_add(1);
        published.last = now;
        Some(published.clone())
    }

    fn remember(&mut self, key: u64, published: Published) {
        if self.by_key.insert(key, published).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > CAPACITY {
            if let Some(oldest) = self.order.pop_front() {
                self.by_key.remove(&oldest);
            }
        }
    }

    fn forget(&mut self, key: u64) {
        self.by_key.remove(&key);
        self.order.retain(|k| *k != key);
    }
}

impl Recorder {
    /// A recorder reporting as `controller`, instance `instance`.
    pub fn new(client: Client, controller: &str, instance: Option<String>) -> Self {
        Self {
            client,
            controller: controller.to_owned(),
            instance: instance.unwrap_or_else(|| controller.to_owned()),
            recent: Mutex::default(),
        }
    }

    /// Publishes an Event about `regarding`, or counts a repeat on the one published for the
    /// same object, type, reason and note within [`SERIES_WINDOW`].
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        type_: Type,
        reason: &str,
        note: &str,
    ) -> Result<(), kube::Error> {
        let key = hash(&(
            &regarding.uid,
            &regarding.namespace,
            &regarding.name,
            &regarding.kind,
            type_,
            reason,
            note,
        ));
        let now = Timestamp::now();
        let namespace = regarding.namespace.as_deref().unwrap_or("default");
        let events: Api<Event> = Api::namespaced(self.client.clone(), namespace);
        let repeat = lock(&self.recent).repeat_of(key, now);
        if let Some(repeat) = repeat {
            let series = serde_json::json!({ "series": EventSeries {
                count: repeat.count,
                last_observed_time: MicroTime(now),
            }});
            match events
                .patch(&repeat.name, &PatchParams::default(), &Patch::Merge(&series))
                .await
            {
                Ok(_) => return Ok(()),
                // Deleted meanwhile (events expire): publish it anew.
                Err(kube::Error::Api(s)) if s.code == 404 => lock(&self.recent).forget(key),
                Err(error) => return Err(error),
            }
        }
        let event = self.event(regarding, (type_, reason, note), now);
        let created = events.create(&PostParams::default(), &event).await?;
        let published = Published {
            name: created.metadata.name.unwrap_or_default(),
            count: 1,
            last: now,
        };
        lock(&self.recent).remember(key, published);
        Ok(())
    }

    fn event(
        &self,
        regarding: &ObjectReference,
        (type_, reason, note): (Type, &str, &str),
        now: Timestamp,
    ) -> Event {
        let owner = regarding.name.as_deref().unwrap_or(&self.controller);
        Event {
            metadata: ObjectMeta {
                name: Some(format!("{owner}.{:x}", now.as_nanosecond())),
                namespace: regarding.namespace.clone(),
                ..Default::default()
            },
            event_time: Some(MicroTime(now)),
            action: Some("Reconcile".into()),
            reason: Some(reason.to_owned()),
            // The events API refuses notes over 1 KiB; decisions can be longer.
            note: Some(note.chars().take(1000).collect()),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            type_: Some(
                match type_ {
                    Type::Normal => "Normal",
                    Type::Warning => "Warning",
                }
                .into(),
            ),
            ..Default::default()
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock left a map of plain values; it is still usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published(name: &str, last: Timestamp) -> Published {
        Published {
            name: name.into(),
            count: 1,
            last,
        }
    }

    #[test]
    fn a_repeat_within_the_window_counts_on_the_same_event() {
        let mut recent = Recent::default();
        let start = Timestamp::UNIX_EPOCH;
        recent.remember(1, published("chat.1", start));
        let repeat = recent.repeat_of(1, start + SignedDuration::from_mins(5));
        assert_eq!(repeat.map(|p| (p.name, p.count)), Some(("chat.1".into(), 2)));
        // The window runs from the last repeat.
        assert!(
            recent
                .repeat_of(1, start + SignedDuration::from_mins(10))
                .is_some()
        );
        assert!(
            recent
                .repeat_of(1, start + SignedDuration::from_mins(17))
                .is_none()
        );
        assert!(
            recent.repeat_of(2, start).is_none(),
            "another event is not a repeat"
        );
    }

    #[test]
    fn memory_is_bounded_and_forgets_the_oldest_first() {
        let mut recent = Recent::default();
        let now = Timestamp::UNIX_EPOCH;
        for key in 0..(CAPACITY as u64 + 10) {
            recent.remember(key, published("e", now));
        }
        assert_eq!((recent.by_key.len(), recent.order.len()), (CAPACITY, CAPACITY));
        assert!(recent.repeat_of(0, now).is_none());
        assert!(recent.repeat_of(CAPACITY as u64 + 9, now).is_some());
        recent.forget(CAPACITY as u64 + 9);
        assert_eq!(recent.by_key.len(), CAPACITY - 1);
    }
}
