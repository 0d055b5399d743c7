//! An etcd v3 client over etcd's JSON gateway (`POST /v3/...`): the key-value calls, leases
//! and watches the cluster mode needs, nothing more.
//!
//! The gateway speaks the gRPC messages as JSON: keys and values base64, 64-bit integers as
//! strings, and fields holding zero, false or nothing are left out. Every call has a deadline;
//! a connection error moves on to the next endpoint, so a three-member cluster survives the
//! loss of any one member.
//!
//! A member cut off from the network (its host axed, a partition) neither answers nor resets
//! a connection: an attempt on it only ends at its deadline. So calls start at the endpoint
//! that answered last (after a failure, at the next one, never back at the first by default),
//! a connection attempt gets only its share of the time left among the endpoints not tried
//! yet, and so does a request that is safe to send twice (a read, a keepalive, a grant, a
//! put, a revoke): one member that hangs leaves the call time to reach another. A request
//! that is not (a txn, a delete: its reply says what it did) waits out its deadline on one
//! member, as sending it again elsewhere could apply it twice.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::http::{Closer, Conn, Endpoint, HttpError, Stream};

/// Why an etcd call failed.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint was given.
    #[error("no etcd endpoint given")]
    NoEndpoints,
    /// An endpoint could not be parsed.
    #[error(transparent)]
    Endpoint(HttpError),
    /// No endpoint answered before the deadline.
    #[error("no etcd endpoint answered {path} within {timeout:?} (last: {last})")]
    Unreachable {
        /// The call.
        path: String,
        /// Its deadline.
        timeout: Duration,
        /// The last endpoint's failure.
        last: HttpError,
    },
    /// etcd refused the call.
    #[error("etcd refused {path}: {message} (code {code})")]
    Refused {
        /// The call.
        path: String,
        /// The gRPC status code.
        code: i64,
        /// etcd's message.
        message: String,
    },
    /// The reply did not parse.
    #[error("etcd's reply to {path} did not parse: {why}")]
    Decode {
        /// The call.
        path: String,
        /// The parser's complaint.
        why: String,
    },
}

/// A lease's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LeaseId(pub i64);

/// A key and its value with etcd's revisions.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Kv {
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// The revision that created the key (since its last deletion): unique and increasing.
    pub create_revision: i64,
    /// The revision of its last change.
    pub mod_revision: i64,
    /// The lease it is attached to, 0 for none.
    pub lease: i64,
}

/// What a conditional create found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Created {
    /// The key was absent and is now ours: its create_revision.
    Won(i64),
    /// The key exists: its current holder.
    Held(Kv),
}

/// A change seen by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    /// The key was created or changed.
    Put(Kv),
    /// The key was deleted (or its lease expired) at this revision.
    Delete {
        /// The key.
        key: Vec<u8>,
        /// The deletion's revision.
        mod_revision: i64,
    },
}

/// Whether a request may be sent again to another member after one that did not answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resend {
    /// Sending it twice leaves etcd as sending it once (a read, a keepalive, a put, a revoke;
    /// a second grant makes a lease that nobody keeps and that expires): each member gets a
    /// share of the deadline.
    Safe,
    /// Its reply tells what it did (a txn, a delete): it waits out the deadline on the member
    /// it was sent to.
    Once,
}

/// Where the next call goes first.
#[derive(Debug, Default)]
struct Kept {
    /// The endpoint that answered last, or the one after the last that failed.
    preferred: usize,
    /// A connection to `preferred`, kept between calls.
    conn: Option<Conn>,
}

/// A client for one etcd cluster.
#[derive(Debug)]
pub struct Client {
    endpoints: Vec<Endpoint>,
    kept: Mutex<Kept>,
    timeout: Duration,
}

impl Client {
    /// A client for `endpoints` (`http://HOST:PORT[,http://HOST:PORT...]`), each call bounded
    /// by `timeout`.
    pub fn new(endpoints: &str, timeout: Duration) -> Result<Self, EtcdError> {
        let endpoints: Vec<Endpoint> = endpoints
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Endpoint::parse)
            .collect::<Result<_, _>>()
            .map_err(EtcdError::Endpoint)?;
        if endpoints.is_empty() {
            return Err(EtcdError::NoEndpoints);
        }
        Ok(Self {
            endpoints,
            kept: Mutex::new(Kept::default()),
            timeout,
        })
    }

    /// The endpoints, as given.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// Grants a lease of `ttl` seconds.
    pub fn grant(&self, ttl: i64) -> Result<(LeaseId, i64), EtcdError> {
        #[derive(Deserialize)]
        struct R {
            #[serde(rename = "ID", default, deserialize_with = "int")]
            id: i64,
            #[serde(rename = "TTL", default, deserialize_with = "int")]
            ttl: i64,
        }
        let r: R = self.call(
            "/v3/lease/grant",
            &json!({ "TTL": ttl.to_string() }),
            Resend::Safe,
        )?;
        Ok((LeaseId(r.id), r.ttl))
    }

    /// Refreshes a lease: its new TTL in seconds, or `None` if it has expired or was revoked.
    pub fn keepalive(&self, lease: LeaseId) -> Result<Option<i64>, EtcdError> {
        #[derive(Deserialize)]
        struct R {
            result: Option<Inner>,
        }
        #[derive(Deserialize)]
        struct Inner {
            #[serde(rename = "TTL", default, deserialize_with = "int")]
            ttl: i64,
        }
        // The gateway answers a keepalive as a stream of one message.
        let r: R = self.call(
            "/v3/lease/keepalive",
            &json!({ "ID": lease.0.to_string() }),
            Resend::Safe,
        )?;
        Ok(r.result.map(|i| i.ttl).filter(|&ttl| ttl > 0))
    }

    /// Revokes a lease, deleting its keys at once; revoking a lease that is gone is no error.
    pub fn revoke(&self, lease: LeaseId) -> Result<(), EtcdError> {
        match self.call::<Value>(
            "/v3/lease/revoke",
            &json!({ "ID": lease.0.to_string() }),
            Resend::Safe,
        ) {
            Ok(_) => Ok(()),
            // NotFound: expired or revoked already.
            Err(EtcdError::Refused { code: 5, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The key's current value, and the store's revision.
    pub fn get(&self, key: &[u8]) -> Result<(Option<Kv>, i64), EtcdError> {
        let r: RangeResponse = self.call(
            "/v3/kv/range",
            &json!({ "key": B64.encode(key) }),
            Resend::Safe,
        )?;
        let rev = r.header.revision;
        let kv = r.kvs.into_iter().next().map(Kv::try_from).transpose()?;
        Ok((kv, rev))
    }

    /// Every key under `prefix`, and the store's revision.
    pub fn get_prefix(&self, prefix: &[u8]) -> Result<(Vec<Kv>, i64), EtcdError> {
        let r: RangeResponse = self.call(
            "/v3/kv/range",
            &json!({ "key": B64.encode(prefix), "range_end": B64.encode(prefix_end(prefix)) }),
            Resend::Safe,
        )?;
        let rev = r.header.revision;
        let kvs = r
            .kvs
            .into_iter()
            .map(Kv::try_from)
            .collect::<Result<_, _>>()?;
        Ok((kvs, rev))
    }

    /// Sets a key (attached to `lease` if given); the store's new revision.
    pub fn put(&self, key: &[u8], value: &[u8], lease: Option<LeaseId>) -> Result<i64, EtcdError> {
        let mut req = json!({ "key": B64.encode(key), "value": B64.encode(value) });
        if let Some(l) = lease {
            req["lease"] = json!(l.0.to_string());
        }
        let r: WithHeader = self.call("/v3/kv/put", &req, Resend::Safe)?;
        Ok(r.header.revision)
    }

    /// Deletes a key; whether it existed.
    pub fn delete(&self, key: &[u8]) -> Result<bool, EtcdError> {
        #[derive(Deserialize)]
        struct R {
            #[serde(default, deserialize_with = "int")]
            deleted: i64,
        }
        let r: R = self.call(
            "/v3/kv/deleterange",
            &json!({ "key": B64.encode(key) }),
            Resend::Once,
        )?;
        Ok(r.deleted > 0)
    }

    /// Creates `key` only if it does not exist (one txn: `create_revision(key) == 0`).
    pub fn create(
        &self,
        key: &[u8],
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> Result<Created, EtcdError> {
        let k = B64.encode(key);
        let mut put = json!({ "key": k, "value": B64.encode(value) });
        if let Some(l) = lease {
            put["lease"] = json!(l.0.to_string());
        }
        let r: TxnResponse = self.call(
            "/v3/kv/txn",
            &json!({
                "compare": [{ "target": "CREATE", "key": k, "result": "EQUAL", "create_revision": "0" }],
                "success": [{ "request_put": put }],
                "failure": [{ "request_range": { "key": k } }],
            }),
            Resend::Once,
        )?;
        if r.succeeded {
            // The put's revision is the key's create_revision.
            return Ok(Created::Won(r.header.revision));
        }
        let kv = r
            .responses
            .into_iter()
            .find_map(|op| op.response_range)
            .and_then(|range| range.kvs.into_iter().next());
        match kv {
            Some(kv) => Ok(Created::Held(Kv::try_from(kv)?)),
            // Deleted between the compare and the range: that cannot be, a txn is atomic; the
            // key was there at the compare and the range ran in the same revision.
            None => Err(EtcdError::Decode {
                path: "/v3/kv/txn".to_owned(),
                why: "a failed create returned no holder".to_owned(),
            }),
        }
    }

    /// Deletes `key` only if its create_revision is `create_revision` (it is still the same
    /// incarnation); whether it was deleted.
    pub fn delete_if_created(&self, key: &[u8], create_revision: i64) -> Result<bool, EtcdError> {
        let k = B64.encode(key);
        let r: TxnResponse = self.call(
            "/v3/kv/txn",
            &json!({
                "compare": [{ "target": "CREATE", "key": k, "result": "EQUAL",
                              "create_revision": create_revision.to_string() }],
                "success": [{ "request_delete_range": { "key": k } }],
            }),
            Resend::Once,
        )?;
        Ok(r.succeeded)
    }

    /// Watches `key` (or every key under it, with `prefix`) from revision `start` on.
    pub fn watch(&self, key: &[u8], prefix: bool, start: i64) -> Result<Watch, EtcdError> {
        let mut create = json!({ "key": B64.encode(key), "start_revision": start.to_string() });
        if prefix {
            create["range_end"] = json!(B64.encode(prefix_end(key)));
        }
        let body = serde_json::to_vec(&json!({ "create_request": create })).map_err(|e| {
            EtcdError::Decode {
                path: "/v3/watch".to_owned(),
                why: e.to_string(),
            }
        })?;
        let deadline = Instant::now() + self.timeout;
        let start = self.lock().preferred;
        let n = self.endpoints.len();
        let mut last = None;
        for k in 0..n {
            let i = (start + k) % n;
            let Some(until) = share(deadline, n - k) else {
                break;
            };
            let endpoint = &self.endpoints[i];
            let attempt = Conn::connect(endpoint, until)
                .and_then(|c| c.post_stream("/v3/watch", &body, until));
            match attempt {
                Ok(stream) => {
                    let mut w = Watch {
                        stream,
                        created: false,
                    };
                    // The first message confirms the watch.
                    w.next(until)?;
                    if !w.created {
                        return Err(EtcdError::Decode {
                            path: "/v3/watch".to_owned(),
                            why: "the watch was not confirmed".to_owned(),
                        });
                    }
                    self.answered(i, None);
                    return Ok(w);
                }
                Err(e) => {
                    tracing::debug!(%endpoint, error = %e, "etcd watch failed");
                    self.failed(&mut self.lock(), i);
                    last = Some(e);
                }
            }
        }
        Err(self.unreachable("/v3/watch", last))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Endpoint `i` answered: calls go there first (on `conn`, if given).
    fn answered(&self, i: usize, conn: Option<Conn>) {
        let mut kept = self.lock();
        if kept.preferred != i || conn.is_some() {
            kept.conn = conn;
        }
        kept.preferred = i;
    }

    /// Endpoint `i` failed: calls go to the next one first (its connection, if kept, is gone).
    fn failed(&self, kept: &mut Kept, i: usize) {
        if kept.preferred == i {
            kept.conn = None;
            kept.preferred = (i + 1) % self.endpoints.len();
        }
    }

    fn unreachable(&self, path: &str, last: Option<HttpError>) -> EtcdError {
        match last {
            Some(last) => EtcdError::Unreachable {
                path: path.to_owned(),
                timeout: self.timeout,
                last,
            },
            None => EtcdError::NoEndpoints,
        }
    }

    /// One unary call: on the preferred endpoint's kept connection, else on each endpoint in
    /// turn from the preferred one (see the module's notes on members that hang).
    fn call<T: DeserializeOwned>(
        &self,
        path: &str,
        req: &Value,
        resend: Resend,
    ) -> Result<T, EtcdError> {
        let body = serde_json::to_vec(req).map_err(|e| EtcdError::Decode {
            path: path.to_owned(),
            why: e.to_string(),
        })?;
        let deadline = Instant::now() + self.timeout;
        let mut kept = self.lock();
        let start = kept.preferred;
        let n = self.endpoints.len();
        let mut last = None;
        // The kept connection may have gone stale while its member is fine: the preferred
        // endpoint gets a fresh try at the end too.
        for k in 0..=n {
            let i = (start + k) % n;
            // Its share of the time left among the endpoints not tried yet.
            let Some(until) = share(deadline, n.saturating_sub(k).max(1)) else {
                break;
            };
            let endpoint = &self.endpoints[i];
            let conn = match kept.conn.take() {
                Some(conn) if k == 0 => conn,
                _ => match Conn::connect(endpoint, until) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(%endpoint, error = %e, path, "etcd connection failed");
                        self.failed(&mut kept, i);
                        last = Some(e);
                        continue;
                    }
                },
            };
            let mut conn = conn;
            let post_until = match resend {
                Resend::Safe => until,
                Resend::Once => deadline,
            };
            match conn.post(path, &body, post_until) {
                Ok((status, reply)) => {
                    kept.preferred = i;
                    kept.conn = Some(conn);
                    return decode(path, status, &reply);
                }
                Err(e) if e.is_connection() => {
                    tracing::debug!(%endpoint, error = %e, path, "etcd call failed");
                    self.failed(&mut kept, i);
                    last = Some(e);
                }
                Err(e) => return Err(self.unreachable(path, Some(e))),
            }
        }
        Err(self.unreachable(path, last))
    }
}

/// The deadline of one attempt among `tries` left before `deadline`: an equal share of the
/// time left (a member that hangs costs the call only its share); `None` once it has passed.
fn share(deadline: Instant, tries: usize) -> Option<Instant> {
    let left = deadline.checked_duration_since(Instant::now())?;
    if left.is_zero() {
        return None;
    }
    let tries = u32::try_from(tries.max(1)).unwrap_or(u32::MAX);
    Some(Instant::now() + left / tries)
}

/// A watch stream.
#[derive(Debug)]
pub struct Watch {
    stream: Stream,
    created: bool,
}

impl Watch {
    /// The next batch of events, waiting until `deadline`: empty when it passed with none.
    pub fn next(&mut self, deadline: Instant) -> Result<Vec<WatchEvent>, EtcdError> {
        #[derive(Deserialize)]
        struct Msg {
            result: Option<WatchResponse>,
            error: Option<Value>,
        }
        #[derive(Deserialize)]
        struct WatchResponse {
            #[serde(default)]
            created: bool,
            #[serde(default)]
            canceled: bool,
            #[serde(default)]
            cancel_reason: String,
            #[serde(default)]
            events: Vec<RawEvent>,
        }
        #[derive(Deserialize)]
        struct RawEvent {
            #[serde(rename = "type", default)]
            kind: String,
            kv: RawKv,
        }
        let path = "/v3/watch";
        let msg = match self.stream.next_message(deadline) {
            Ok(Some(msg)) => msg,
            Ok(None) => return Ok(Vec::new()),
            Err(e) => {
                return Err(EtcdError::Unreachable {
                    path: path.to_owned(),
                    timeout: Duration::ZERO,
                    last: e,
                });
            }
        };
        let msg: Msg = serde_json::from_slice(&msg).map_err(|e| EtcdError::Decode {
            path: path.to_owned(),
            why: e.to_string(),
        })?;
        if let Some(err) = msg.error {
            return Err(EtcdError::Refused {
                path: path.to_owned(),
                code: err.get("grpc_code").and_then(Value::as_i64).unwrap_or(-1),
                message: err.get("message").map(Value::to_string).unwrap_or_default(),
            });
        }
        let Some(r) = msg.result else {
            return Ok(Vec::new());
        };
        if r.created {
            self.created = true;
        }
        if r.canceled {
            return Err(EtcdError::Refused {
                path: path.to_owned(),
                code: -1,
                message: format!("the watch was cancelled: {}", r.cancel_reason),
            });
        }
        r.events
            .into_iter()
            .map(|e| {
                let kv = Kv::try_from(e.kv)?;
                Ok(if e.kind == "DELETE" {
                    WatchEvent::Delete {
                        key: kv.key,
                        mod_revision: kv.mod_revision,
                    }
                } else {
                    WatchEvent::Put(kv)
                })
            })
            .collect()
    }

    /// A handle that ends this watch from another thread.
    pub fn closer(&self) -> Result<Closer, EtcdError> {
        self.stream.closer().map_err(|e| EtcdError::Unreachable {
            path: "/v3/watch".to_owned(),
            timeout: Duration::ZERO,
            last: e,
        })
    }
}

/// The key just past every key that starts with `prefix` (etcd's `range_end`).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): every key from the prefix on.
    vec![0]
}

fn decode<T: DeserializeOwned>(path: &str, status: u16, reply: &[u8]) -> Result<T, EtcdError> {
    if status != 200 {
        #[derive(Deserialize)]
        struct E {
            #[serde(default)]
            code: i64,
            #[serde(default, alias = "error")]
            message: String,
        }
        let e: E = serde_json::from_slice(reply).unwrap_or(E {
            code: -1,
            message: String::from_utf8_lossy(reply).into_owned(),
        });
        return Err(EtcdError::Refused {
            path: path.to_owned(),
            code: e.code,
            message: format!("HTTP {status}: {}", e.message),
        });
    }
    serde_json::from_slice(reply).map_err(|e| EtcdError::Decode {
        path: path.to_owned(),
        why: e.to_string(),
    })
}

#[derive(Deserialize, Default)]
struct Header {
    #[serde(default, deserialize_with = "int")]
    revision: i64,
}

#[derive(Deserialize)]
struct WithHeader {
    #[serde(default)]
    header: Header,
}

#[derive(Deserialize)]
struct RangeResponse {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    kvs: Vec<RawKv>,
}

#[derive(Deserialize)]
struct TxnResponse {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    succeeded: bool,
    #[serde(default)]
    responses: Vec<OpResponse>,
}

#[derive(Deserialize)]
struct OpResponse {
    response_range: Option<RangeResponse>,
}

#[derive(Deserialize)]
struct RawKv {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
    #[serde(default, deserialize_with = "int")]
    create_revision: i64,
    #[serde(default, deserialize_with = "int")]
    mod_revision: i64,
    #[serde(default, deserialize_with = "int")]
    lease: i64,
}

impl TryFrom<RawKv> for Kv {
    type Error = EtcdError;

    fn try_from(raw: RawKv) -> Result<Self, EtcdError> {
        let b64 = |s: &str| {
            B64.decode(s).map_err(|e| EtcdError::Decode {
                path: "a key-value".to_owned(),
                why: format!("{s:?} is not base64: {e}"),
            })
        };
        Ok(Kv {
            key: b64(&raw.key)?,
            value: b64(&raw.value)?,
            create_revision: raw.create_revision,
            mod_revision: raw.mod_revision,
            lease: raw.lease,
        })
    }
}

/// An int64 as the gateway writes it: a string (or, leniently, a number).
fn int<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        S(String),
        I(i64),
    }
    match N::deserialize(d)? {
        N::I(i) => Ok(i),
        N::S(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }

    #[test]
    fn gateway_integers_parse_from_strings_and_absent_fields_are_zero() {
        let r: RangeResponse = serde_json::from_str(
            r#"{"header":{"revision":"7"},"kvs":[{"key":"YQ==","create_revision":"5","mod_revision":"6"}]}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.header.revision, 7);
        let kv = Kv::try_from(r.kvs.into_iter().next().unwrap_or_else(|| panic!("no kv")))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(kv.key, b"a");
        assert_eq!(kv.value, b"");
        assert_eq!((kv.create_revision, kv.mod_revision, kv.lease), (5, 6, 0));
    }
}
