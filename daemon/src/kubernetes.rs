//! What both daemons need to talk to the Kubernetes API: a client that names itself (a
//! User-Agent of component and version, which the API server's audit log and metrics show), and
//! Events on Services written as single `events.k8s.io/v1` objects.
//!
//! Events are created, never patched: kube's `Recorder` folds a repeat of (reason, object,
//! reporter) into the first event's series and keeps the first note, so a second AllocationFailed
//! with another reason would show the old one; and every grant a daemon holds must be one it
//! uses. FerroLB emits an event only when something changes, so the objects stay few.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};

/// The longest `reportingController` and `reportingInstance` the API server accepts.
pub const REPORTER_MAX: usize = 128;

/// A client from the environment (in a pod its service account, outside KUBECONFIG), sending
/// `User-Agent: <component>/<version>`.
pub async fn connect(component: &str, version: &str) -> Result<Client, kube::Error> {
    let mut config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    let agent = format!("{component}/{version}");
    if let Ok(value) = http::HeaderValue::from_str(&agent) {
        config.headers.push((http::header::USER_AGENT, value));
    }
    Client::try_from(config)
}

/// Normal or Warning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// Writes Events as one reporter: a component (`ferrolb-controller`) and an instance of it (a
/// replica's pod name, a speaker's node).
#[derive(Clone)]
pub struct Events {
    client: Client,
    controller: String,
    instance: String,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("controller", &self.controller)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl Events {
    pub fn new(client: Client, controller: &str, instance: &str) -> Self {
        Events {
            client,
            controller: reporter_name(controller),
            instance: reporter_name(instance),
        }
    }

    /// The reporting instance, as the API server stores it.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Records one event about Service `namespace/name`.
    pub async fn service(
        &self,
        namespace: &str,
        name: &str,
        type_: EventType,
        reason: &str,
        action: &str,
        note: &str,
    ) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let event = Event {
            metadata: ObjectMeta {
                // As kubectl and client-go name events: the object, then a unique suffix.
                name: Some(format!("{name}.{:x}", now.as_nanosecond())),
                namespace: Some(namespace.to_owned()),
                ..Default::default()
            },
            event_time: Some(MicroTime(now)),
            action: Some(action.to_owned()),
            reason: Some(reason.to_owned()),
            // The API server refuses notes longer than 1 kB.
            note: Some(truncate(note, 1024)),
            type_: Some(match type_ {
                EventType::Normal => "Normal".to_owned(),
                EventType::Warning => "Warning".to_owned(),
            }),
            regarding: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Service".into()),
                name: Some(name.to_owned()),
                namespace: Some(namespace.to_owned()),
                ..Default::default()
            }),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        };
        Api::<Event>::namespaced(self.client.clone(), namespace)
            .create(&PostParams::default(), &event)
            .await
            .map(drop)
    }
}

/// A reporter name the API server accepts: at most [`REPORTER_MAX`] characters; a longer one (a
/// node's FQDN may have 253) keeps its start and ends with a hash of the whole, so two long
/// names stay apart.
pub fn reporter_name(name: &str) -> String {
    if name.len() <= REPORTER_MAX {
        return name.to_owned();
    }
    let hash = fnv1a(name);
    let keep = REPORTER_MAX - 17;
    let mut cut = keep;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}-{hash:016x}", &name[..cut])
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text[..cut].to_owned()
}

/// FNV-1a, 64 bits: a stable short hash for names (not for security).
pub fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_reporter_names_are_cut_and_told_apart() {
        assert_eq!(reporter_name("n1"), "n1");
        let a = reporter_name(&format!("{}.a.example.com", "x".repeat(200)));
        let b = reporter_name(&format!("{}.b.example.com", "x".repeat(200)));
        assert_eq!(a.len(), REPORTER_MAX);
        assert_ne!(a, b);
        assert!(a.starts_with("xxxx"));
    }
}
