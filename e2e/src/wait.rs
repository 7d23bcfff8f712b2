//! Waiting on the cluster's state, with a deadline and the last seen state on failure.

use std::{fmt::Debug, time::Duration};

use kube::{
    Api, Resource,
    api::ListParams,
    runtime::wait::{self, Condition},
};
use serde::{Serialize, de::DeserializeOwned};

use crate::Error;

/// How often [`await_list`] lists again; the API server is local, so this is cheap.
const LIST_INTERVAL: Duration = Duration::from_millis(250);

/// Waits until `cond` holds for the named object, or fails after `timeout` with the last seen state.
///
/// Watches the object, so it returns as soon as the change lands. If `cond` is satisfied by the
/// object's absence (e.g. [`kube::runtime::wait::conditions::is_deleted`]), this returns
/// [`Error::Missing`]; use [`await_deleted`] for that instead.
pub async fn await_condition<K>(
    api: Api<K>,
    name: &str,
    cond: impl Condition<K>,
    timeout: Duration,
) -> Result<K, Error>
where
    K: Resource + Clone + Debug + Send + Serialize + DeserializeOwned + 'static,
{
    match tokio::time::timeout(timeout, wait::await_condition(api.clone(), name, cond)).await {
        Ok(Ok(Some(object))) => Ok(object),
        Ok(Ok(None)) => Err(Error::Missing {
            kind: short_type_name::<K>(),
            name: name.to_owned(),
        }),
        Ok(Err(wait::Error::ProbeFailed(e))) => Err(Error::Timeout {
            what: format!("{} {name}", short_type_name::<K>()),
            timeout,
            last: format!("watch failed: {e}"),
        }),
        Err(_elapsed) => {
            let last = match api.get_opt(name).await {
                Ok(Some(object)) => to_yaml(&object),
                Ok(None) => "(object does not exist)".to_owned(),
                Err(e) => format!("(cannot read it: {e})"),
            };
            Err(Error::Timeout {
                what: format!("{} {name}", short_type_name::<K>()),
                timeout,
                last,
            })
        }
    }
}

/// Waits until the named object is gone (deleted and finalized), or fails after `timeout`.
pub async fn await_deleted<K>(api: Api<K>, name: &str, timeout: Duration) -> Result<(), Error>
where
    K: Resource + Clone + Debug + Send + Serialize + DeserializeOwned + 'static,
{
    let gone = |object: Option<&K>| object.is_none();
    match tokio::time::timeout(timeout, wait::await_condition(api.clone(), name, gone)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(wait::Error::ProbeFailed(e))) => Err(Error::Timeout {
            what: format!("deletion of {} {name}", short_type_name::<K>()),
            timeout,
            last: format!("watch failed: {e}"),
        }),
        Err(_elapsed) => {
            let last = match api.get_opt(name).await {
                Ok(Some(object)) => to_yaml(&object),
                Ok(None) => "(gone just now)".to_owned(),
                Err(e) => format!("(cannot read it: {e})"),
            };
            Err(Error::Timeout {
                what: format!("deletion of {} {name}", short_type_name::<K>()),
                timeout,
                last,
            })
        }
    }
}

/// Waits until `pred` holds for the objects `list_params` selects, and returns them; fails after
/// `timeout` with the names and statuses of the last list.
///
/// For conditions over several objects, like "two pods of this Deployment are Running".
pub async fn await_list<K>(
    api: &Api<K>,
    list_params: &ListParams,
    pred: impl Fn(&[K]) -> bool,
    timeout: Duration,
) -> Result<Vec<K>, Error>
where
    K: Resource + Clone + Debug + Serialize + DeserializeOwned,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match api.list(list_params).await {
            Ok(list) if pred(&list.items) => return Ok(list.items),
            Ok(list) => summarize(&list.items),
            Err(e) => format!("(list failed: {e})"),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: format!("a list of {}", short_type_name::<K>()),
                timeout,
                last,
            });
        }
        tokio::time::sleep(LIST_INTERVAL).await;
    }
}

/// Each object's name and status, which is what explains why a wait did not end.
fn summarize<K: Serialize>(items: &[K]) -> String {
    if items.is_empty() {
        return "(no objects)".to_owned();
    }
    let summary: Vec<serde_json::Value> = items
        .iter()
        .filter_map(|item| serde_json::to_value(item).ok())
        .map(|v| serde_json::json!({ "name": v["metadata"]["name"], "status": v["status"] }))
        .collect();
    to_yaml(&summary)
}

fn to_yaml<T: Serialize>(value: &T) -> String {
    serde_yaml::to_string(value).unwrap_or_else(|e| format!("(cannot render: {e})"))
}

fn short_type_name<K>() -> String {
    let full = std::any::type_name::<K>();
    full.rsplit("::").next().unwrap_or(full).to_owned()
}
