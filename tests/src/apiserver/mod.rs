//! A small in-memory Kubernetes API server on loopback, so the controller's and speaker's real
//! kube-rs client code runs in tests: list, watch from a resourceVersion, 410 Gone after
//! compaction, the status subresource, 409 on stale writes, merge and JSON patches, events,
//! plus failure injection and a log of every request to assert on.
//!
//! Not a conformance server: server-side apply and strategic merge patches are treated as JSON
//! merge patches, and list pagination is ignored (everything comes in one page).

mod resources;
mod selector;
mod store;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{broadcast, oneshot};

pub use resources::{RESOURCES, Resource, Target, by_kind, parse_path};
pub use selector::Selector;
pub use store::{Change, Store, StoreError};

/// A request as the server saw it, for assertions such as "nothing was written".
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Value,
    pub status: u16,
}

impl Request {
    /// True for requests that change state.
    pub fn is_write(&self) -> bool {
        !matches!(self.method, Method::GET | Method::HEAD)
    }
}

/// An injected failure: the next `times` requests with this method whose path contains
/// `path_contains` get `status` instead of being served.
#[derive(Clone, Debug)]
pub struct Fault {
    pub method: Method,
    pub path_contains: String,
    pub status: u16,
    pub times: usize,
}

#[derive(Default)]
struct Shared {
    store: Mutex<Store>,
    requests: Mutex<Vec<Request>>,
    faults: Mutex<VecDeque<Fault>>,
}

/// The running server. Dropping it stops serving.
pub struct ApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    changes: broadcast::Sender<Change>,
    disconnects: Arc<tokio::sync::watch::Sender<u64>>,
    _stop: oneshot::Sender<()>,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("addr", &self.addr)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not take the server down with it.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Clone)]
struct App {
    shared: Arc<Shared>,
    changes: broadcast::Sender<Change>,
    /// Bumped to end every open watch, as an API server restart or a load balancer would.
    disconnects: Arc<tokio::sync::watch::Sender<u64>>,
}

impl ApiServer {
    /// Starts serving on 127.0.0.1 on a free port, on the current tokio runtime.
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let (changes, _) = broadcast::channel(4096);
        let disconnects = Arc::new(tokio::sync::watch::channel(0u64).0);
        let app = App {
            shared: shared.clone(),
            changes: changes.clone(),
            disconnects: disconnects.clone(),
        };
        let router = Router::new().fallback(handle).with_state(app);
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(err) = axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
            {
                eprintln!("fake API server on {addr} stopped: {err}");
            }
        });
        Ok(ApiServer {
            addr,
            shared,
            changes,
            disconnects,
            _stop: stop,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube client talking to this server, default namespace `default`.
    pub fn client(&self) -> Result<kube::Client, kube::Error> {
        let url = self.url().parse().map_err(|err| {
            kube::Error::Service(format!("bad fake API server URL: {err}").into())
        })?;
        kube::Client::try_from(kube::Config::new(url))
    }

    /// Creates or replaces an object directly, as another client would; returns it as stored.
    pub fn apply(&self, object: Value) -> Result<Value, StoreError> {
        self.apply_inner(object, true)
    }

    /// Like [`ApiServer::apply`], but open watches miss the change, as if their connection had
    /// dropped. With [`ApiServer::compact`] and [`ApiServer::disconnect_watches`] this forces
    /// the "410 Gone, list again" path deterministically.
    pub fn apply_unseen(&self, object: Value) -> Result<Value, StoreError> {
        self.apply_inner(object, false)
    }

    fn apply_inner(&self, object: Value, publish: bool) -> Result<Value, StoreError> {
        let api_version = object["apiVersion"].as_str().unwrap_or_default();
        let kind = object["kind"].as_str().unwrap_or_default();
        let resource = by_kind(api_version, kind)
            .ok_or_else(|| StoreError::Invalid(format!("unknown kind {api_version} {kind}")))?;
        let namespace = object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let mut store = lock(&self.shared.store);
        let ns = namespace.as_deref();
        let (stored, change) = if store.get(resource, ns, &name).is_some() {
            let mut object = object;
            if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.remove("resourceVersion");
            }
            let (main, change) = store.replace(resource, ns, &name, object.clone(), false)?;
            let (stored, status_change) = if object.get("status").is_some() {
                store.replace(resource, ns, &name, object, true)?
            } else {
                (main, None)
            };
            (stored, status_change.or(change))
        } else {
            let (_, created) = store.create(resource, ns, object.clone(), &now())?;
            let (stored, change) = if object.get("status").is_some() {
                store.replace(resource, ns, &name, object, true)?
            } else {
                (created.object.clone(), None)
            };
            (stored, change.or(Some(created)))
        };
        if let Some(change) = change.filter(|_| publish) {
            let _ = self.changes.send(change);
        }
        Ok(stored)
    }

    /// Reads an object as stored.
    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let resource = by_kind(api_version, kind)?;
        lock(&self.shared.store)
            .get(resource, namespace, name)
            .cloned()
    }

    /// All objects of a kind.
    pub fn list(&self, api_version: &str, kind: &str) -> Vec<Value> {
        by_kind(api_version, kind)
            .map(|r| lock(&self.shared.store).list(r, None))
            .unwrap_or_default()
    }

    /// Deletes an object directly, as another client would.
    pub fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<(), StoreError> {
        self.delete_inner(api_version, kind, namespace, name, true)
    }

    /// Like [`ApiServer::delete`], but open watches miss it (see [`ApiServer::apply_unseen`]).
    pub fn delete_unseen(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<(), StoreError> {
        self.delete_inner(api_version, kind, namespace, name, false)
    }

    fn delete_inner(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
        publish: bool,
    ) -> Result<(), StoreError> {
        let resource = by_kind(api_version, kind)
            .ok_or_else(|| StoreError::Invalid(format!("unknown kind {api_version} {kind}")))?;
        let (_, change) = lock(&self.shared.store).delete(resource, namespace, name)?;
        if publish {
            let _ = self.changes.send(change);
        }
        Ok(())
    }

    /// Forgets the change history: every watch resuming from an older resourceVersion gets
    /// 410 Gone and must list again.
    pub fn compact(&self) {
        lock(&self.shared.store).compact();
    }

    /// Ends every open watch; clients resume from the last resourceVersion they saw.
    pub fn disconnect_watches(&self) {
        self.disconnects.send_modify(|n| *n += 1);
    }

    pub fn inject(&self, fault: Fault) {
        lock(&self.shared.faults).push_back(fault);
    }

    /// Every request served so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.shared.requests).clone()
    }

    pub fn clear_requests(&self) {
        lock(&self.shared.requests).clear();
    }

    /// Waits until `check` holds on the requests seen, or the timeout passes.
    pub async fn wait_for_requests(
        &self,
        timeout: Duration,
        check: impl Fn(&[Request]) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changes = self.changes.subscribe();
        loop {
            if check(&lock(&self.shared.requests)) {
                return true;
            }
            // Requests that change nothing publish no change, so also poll at a short interval.
            let wait = tokio::time::sleep(Duration::from_millis(20));
            tokio::select! {
                _ = changes.recv() => {}
                _ = wait => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return check(&lock(&self.shared.requests));
            }
        }
    }
}

fn now() -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    format!("{}Z", now.strftime("%Y-%m-%dT%H:%M:%S"))
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    });
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn ok_json(code: StatusCode, value: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (b, hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(decoded)) => {
                out.push(decoded);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle(
    State(app): State<App>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let query = uri.query().unwrap_or_default().to_owned();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let parsed_body: Value = serde_json::from_slice(&body)
        .or_else(|_| serde_yaml_ng::from_slice(&body))
        .unwrap_or(Value::Null);

    let fault = {
        let mut faults = lock(&app.shared.faults);
        let hit = faults
            .iter_mut()
            .find(|f| f.method == method && path.contains(&f.path_contains) && f.times > 0);
        hit.map(|f| {
            f.times -= 1;
            f.status
        })
    };
    let response = match fault {
        Some(code) => status(
            code,
            "Injected",
            &format!("injected failure {code} for {method} {path}"),
        ),
        None => serve(
            &app,
            &method,
            &path,
            &query,
            &content_type,
            parsed_body.clone(),
        ),
    };
    lock(&app.shared.requests).push(Request {
        method,
        path,
        query,
        content_type,
        body: parsed_body,
        status: response.status().as_u16(),
    });
    response
}

fn serve(
    app: &App,
    method: &Method,
    path: &str,
    query: &str,
    content_type: &str,
    body: Value,
) -> Response {
    let Some(target) = parse_path(path) else {
        return status(
            404,
            "NotFound",
            &format!("the server could not find the requested resource ({path})"),
        );
    };
    let ns = target.namespace.as_deref();
    let resource = target.resource;
    let status_only = target.subresource.as_deref() == Some("status");
    let publish = |change: Option<Change>| {
        if let Some(change) = change {
            let _ = app.changes.send(change);
        }
    };
    let result = match (method.clone(), target.name.as_deref()) {
        (Method::GET, None)
            if query_param(query, "watch").is_some_and(|w| w == "true" || w == "1") =>
        {
            return watch(app, &target, query);
        }
        (Method::GET, None) => return list(app, &target, query),
        (Method::GET, Some(name)) => lock(&app.shared.store)
            .get(resource, ns, name)
            .cloned()
            .ok_or_else(|| StoreError::NotFound(format!("{} {name} not found", resource.plural)))
            .map(|o| (StatusCode::OK, o)),
        (Method::POST, None) => {
            let created = lock(&app.shared.store).create(resource, ns, body, &now());
            created.map(|(object, change)| {
                publish(Some(change));
                (StatusCode::CREATED, object)
            })
        }
        (Method::PUT, Some(name)) => {
            let replaced = lock(&app.shared.store).replace(resource, ns, name, body, status_only);
            replaced.map(|(object, change)| {
                publish(change);
                (StatusCode::OK, object)
            })
        }
        (Method::PATCH, Some(name)) => {
            let mut store = lock(&app.shared.store);
            let patched = patch(
                &mut store,
                resource,
                ns,
                name,
                content_type,
                body,
                status_only,
            );
            drop(store);
            patched.map(|(code, object, change)| {
                publish(change);
                (code, object)
            })
        }
        (Method::DELETE, Some(name)) => {
            let deleted = lock(&app.shared.store).delete(resource, ns, name);
            deleted.map(|(object, change)| {
                publish(Some(change));
                (StatusCode::OK, object)
            })
        }
        _ => {
            return status(
                405,
                "MethodNotAllowed",
                &format!("{method} is not supported on {path}"),
            );
        }
    };
    match result {
        Ok((code, object)) => ok_json(code, &object),
        Err(err) => status(err.code(), err.reason(), err.message()),
    }
}

type Patched = (StatusCode, Value, Option<Change>);

fn patch(
    store: &mut Store,
    resource: Resource,
    ns: Option<&str>,
    name: &str,
    content_type: &str,
    body: Value,
    status_only: bool,
) -> Result<Patched, StoreError> {
    let apply = content_type.starts_with("application/apply-patch");
    let current = match store.get(resource, ns, name) {
        Some(current) => current.clone(),
        // Server-side apply creates what does not exist.
        None if apply => {
            let (object, change) = store.create(resource, ns, body.clone(), &now())?;
            let (object, status_change) = if body.get("status").is_some() {
                store.replace(resource, ns, name, body, true)?
            } else {
                (object, None)
            };
            return Ok((StatusCode::CREATED, object, status_change.or(Some(change))));
        }
        None => {
            return Err(StoreError::NotFound(format!(
                "{} {name} not found",
                resource.plural
            )));
        }
    };
    // A resourceVersion the patch did not set must not act as a precondition.
    let precondition = body.pointer("/metadata/resourceVersion").is_some();
    let mut patched = current.clone();
    if content_type.starts_with("application/json-patch") {
        let ops: json_patch::Patch = serde_json::from_value(body)
            .map_err(|err| StoreError::Invalid(format!("bad JSON patch: {err}")))?;
        json_patch::patch(&mut patched, &ops)
            .map_err(|err| StoreError::Invalid(format!("JSON patch failed: {err}")))?;
    } else {
        // merge-patch, strategic-merge-patch and apply-patch alike: RFC 7386 merge.
        json_patch::merge(&mut patched, &body);
    }
    if !precondition && let Some(meta) = patched.get_mut("metadata").and_then(Value::as_object_mut)
    {
        meta.remove("resourceVersion");
    }
    let (object, change) = store.replace(resource, ns, name, patched, status_only)?;
    Ok((StatusCode::OK, object, change))
}

fn selectors(query: &str) -> Result<(Selector, Selector), Box<Response>> {
    let parse = |key| Selector::parse(&query_param(query, key).unwrap_or_default());
    match (parse("labelSelector"), parse("fieldSelector")) {
        (Ok(labels), Ok(fields)) => Ok((labels, fields)),
        (Err(err), _) | (_, Err(err)) => Err(Box::new(status(400, "BadRequest", &err))),
    }
}

fn list(app: &App, target: &Target, query: &str) -> Response {
    let (labels, fields) = match selectors(query) {
        Ok(s) => s,
        Err(response) => return *response,
    };
    let store = lock(&app.shared.store);
    let items: Vec<Value> = store
        .list(target.resource, target.namespace.as_deref())
        .into_iter()
        .filter(|o| labels.matches_labels(o) && fields.matches_fields(o))
        .collect();
    let body = json!({
        "apiVersion": target.resource.api_version,
        "kind": format!("{}List", target.resource.kind),
        "metadata": {"resourceVersion": store.resource_version().to_string()},
        "items": items,
    });
    ok_json(StatusCode::OK, &body)
}

fn watch_event(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn watch(app: &App, target: &Target, query: &str) -> Response {
    let (labels, fields) = match selectors(query) {
        Ok(s) => s,
        Err(response) => return *response,
    };
    let since = query_param(query, "resourceVersion").unwrap_or_default();
    let timeout = query_param(query, "timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map_or(Duration::from_secs(300), Duration::from_secs);
    let namespace = target.namespace.clone();
    let resource = target.resource;
    let wanted = move |change: &Change| {
        change.resource == resource
            && namespace
                .as_ref()
                .is_none_or(|ns| change.namespace.as_ref() == Some(ns))
            && labels.matches_labels(&change.object)
            && fields.matches_fields(&change.object)
    };

    // Subscribe before reading the backlog so nothing falls between the two.
    let mut live = app.changes.subscribe();
    let (backlog, mut last) = {
        let store = lock(&app.shared.store);
        match since.parse::<u64>() {
            Ok(rv) if rv > 0 && rv < store.compacted_below().saturating_sub(1) => {
                let gone = json!({
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": format!("too old resource version: {rv} ({})", store.compacted_below()),
                    "reason": "Expired", "code": 410,
                });
                return (StatusCode::OK, Body::from(watch_event("ERROR", &gone))).into_response();
            }
            Ok(rv) if rv > 0 => {
                let changes: Vec<Change> = store
                    .changes_since(resource, rv)
                    .into_iter()
                    .filter(|c| wanted(c))
                    .collect();
                (changes, store.resource_version())
            }
            // No resourceVersion, or 0: the current state as ADDED events, then changes.
            _ => {
                let current = store
                    .list(resource, None)
                    .into_iter()
                    .map(|object| Change {
                        resource_version: store.resource_version(),
                        resource,
                        namespace: object
                            .pointer("/metadata/namespace")
                            .and_then(Value::as_str)
                            .map(str::to_owned),
                        kind: "ADDED",
                        object,
                    })
                    .filter(|c| wanted(c))
                    .collect();
                (current, store.resource_version())
            }
        }
    };

    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::convert::Infallible>>(256);
    let mut disconnect = app.disconnects.subscribe();
    tokio::spawn(async move {
        for change in backlog {
            if tx
                .send(Ok(watch_event(change.kind, &change.object)))
                .await
                .is_err()
            {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = disconnect.changed() => return,
                change = live.recv() => match change {
                    Ok(change) if change.resource_version > last && wanted(&change) => {
                        last = change.resource_version;
                        if tx.send(Ok(watch_event(change.kind, &change.object))).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    // Lagged or closed: end the watch; the client resumes from what it saw.
                    Err(_) => return,
                },
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}
