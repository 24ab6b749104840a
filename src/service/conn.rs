//! Connection discipline for `agregat serve`: how long a client may take to
//! send a request head, how long a kept-alive connection may sit idle, how
//! many connections may be open (overall and per client address), and a
//! shutdown that never waits on a client that is not in a request.
//!
//! Each accepted connection is served by hyper's HTTP/1 server with a
//! watchdog next to it. The watchdog knows, per connection, whether a
//! request is in flight (from the moment hyper hands the request to the
//! router until the last byte of the response body is written) and when
//! the connection last read a byte:
//!
//! - **header read timeout** ([`ConnConfig::header_read`], 10 s by
//!   default): a request head must be complete within this time of the
//!   connection being opened (first request), or of its first byte
//!   (later requests on a kept-alive connection). A client trickling
//!   header bytes, or one that connects and sends nothing, is closed then.
//! - **idle timeout** ([`ConnConfig::idle`], 60 s): a kept-alive connection
//!   with no request in flight and no byte of a new one is closed this
//!   long after its last response.
//! - **body read timeout** ([`ConnConfig::body_read`], 30 s): a request's
//!   body (at most the body limit) must arrive within this time of its
//!   head. The body is read here, before the router sees the request; a
//!   client that trickles or stalls it is answered `408` with a problem
//!   document (`request_timeout`) and the connection is closed. The
//!   refusal is counted like the unauthenticated ones (per address and
//!   minute, [`super::refusals`]), not written one audit row each.
//! - A connection with a request in flight is otherwise never closed by
//!   either timeout: the body read timeout, the query timeout and the body
//!   limit bound the request itself.
//! - hyper's own header-read timer is set to the sum of both, as a
//!   backstop.
//!
//! **Caps.** At most [`ConnConfig::max_connections`] connections are open,
//! and [`ConnConfig::max_per_address`] per client IP address (IPv6 by /64,
//! since one host holds a whole /64). Both stay below the process's
//! file-descriptor soft limit, which [`raise_fd_limit`] raises towards the
//! hard limit at start. When a cap is reached, the new connection is
//! admitted by **closing the connection that has been idle longest**
//! (no request in flight): an idle or half-sent connection costs its client
//! nothing to reopen, so an attacker holding idle sockets cannot lock
//! anybody out, and `/healthz` still answers. Only when every connection
//! under the cap is in a request is the new connection refused (closed at
//! once).
//!
//! **Shutdown.** On SIGTERM the listener closes; connections with no
//! request in flight are closed at once; the others finish their response
//! (keep-alive off) within the grace period.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tower::ServiceExt;

/// File descriptors kept for everything that is not a client connection:
/// snapshot files, the state database, spill files, the runtime.
pub const FD_RESERVE: u64 = 256;

/// The connection limits in force.
#[derive(Debug, Clone, Copy)]
pub struct ConnConfig {
    /// A request head must be complete within this of the connection
    /// opening (first request) or of its first byte (later requests).
    pub header_read: Duration,
    /// A kept-alive connection with no request is closed after this.
    pub idle: Duration,
    /// A request body must be complete within this of its head, or 408.
    pub body_read: Duration,
    /// Open connections at most, below the file-descriptor soft limit.
    pub max_connections: usize,
    /// Open connections per client address (IPv6: per /64) at most.
    pub max_per_address: usize,
}

impl ConnConfig {
    /// The limits of the configuration, with the caps kept below the
    /// current file-descriptor soft limit (`fd_soft`); `0` for
    /// `max_connections` means "as many as the limit allows".
    pub fn from_limits(l: &super::ServiceLimits, fd_soft: Option<u64>) -> ConnConfig {
        let room = fd_soft.map(|s| s.saturating_sub(FD_RESERVE).max(16) as usize);
        let max_connections = match (l.max_connections, room) {
            (0, Some(r)) => r,
            (0, None) => 4096,
            (n, Some(r)) => n.min(r),
            (n, None) => n,
        }
        .max(1);
        ConnConfig {
            header_read: Duration::from_secs(l.header_read_timeout_seconds.max(1)),
            idle: Duration::from_secs(l.idle_timeout_seconds.max(1)),
            body_read: Duration::from_secs(l.body_read_timeout_seconds.max(1)),
            max_connections,
            max_per_address: l.max_connections_per_address.clamp(1, max_connections),
        }
    }
}

/// The file-descriptor limit: soft and hard.
#[derive(Debug, Clone, Copy)]
pub struct FdLimit {
    /// The soft limit: the one in force for the process.
    pub soft: u64,
    /// The hard limit up to which the soft one may be raised; `None`:
    /// unlimited.
    pub hard: Option<u64>,
}

/// The current `RLIMIT_NOFILE` (`None` off Unix or when unknown).
// `rlim_t` is u64 on Linux but not on every Unix: the casts stay.
#[allow(clippy::unnecessary_cast)]
pub fn fd_limit() -> Option<FdLimit> {
    #[cfg(unix)]
    {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct it is given.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
            return None;
        }
        let finite = |v: libc::rlim_t| (v != libc::RLIM_INFINITY).then_some(v as u64);
        Some(FdLimit {
            soft: finite(r.rlim_cur).unwrap_or(u64::MAX),
            hard: finite(r.rlim_max),
        })
    }
    #[cfg(not(unix))]
    None
}

/// Raises the file-descriptor soft limit to the hard limit (at most
/// 1,048,576) where the system allows it, and returns the limit in force
/// afterwards with the soft limit found before.
#[allow(clippy::unnecessary_cast)]
pub fn raise_fd_limit() -> Option<(u64, FdLimit)> {
    let before = fd_limit()?;
    #[cfg(unix)]
    {
        let target = before.hard.unwrap_or(1 << 20).min(1 << 20);
        if target > before.soft {
            let r = libc::rlimit {
                rlim_cur: target as libc::rlim_t,
                rlim_max: before
                    .hard
                    .map_or(libc::RLIM_INFINITY, |h| h as libc::rlim_t),
            };
            // SAFETY: setrlimit only reads the struct it is given.
            unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) };
        }
    }
    Some((before.soft, fd_limit()?))
}

/// The key a per-address cap counts under: the IPv4 address, or the /64
/// of an IPv6 address.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

/// What the watchdog knows about one connection.
struct ConnState {
    id: u64,
    key: IpAddr,
    opened: Instant,
    /// Requests handed to the router whose response is not fully written.
    in_flight: AtomicUsize,
    /// Requests started on this connection.
    requests: AtomicU64,
    /// Milliseconds since `opened`: when the connection last became idle
    /// (its last response was written), and when it first read a byte
    /// since then (`u64::MAX`: none yet).
    idle_since_ms: AtomicU64,
    first_read_ms: AtomicU64,
    close: tokio::sync::Notify,
}

impl ConnState {
    fn ms(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.opened).as_millis() as u64
    }

    fn at(&self, ms: u64) -> Instant {
        self.opened + Duration::from_millis(ms)
    }

    fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) == 0
    }

    fn read_some(&self) {
        if self.is_idle() && self.first_read_ms.load(Ordering::Relaxed) == u64::MAX {
            let now = self.ms(Instant::now());
            let _ = self.first_read_ms.compare_exchange(
                u64::MAX,
                now,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.requests.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }

    /// When the connection is to be closed if nothing changes; `None`
    /// while a request is in flight.
    fn deadline(&self, cfg: &ConnConfig) -> Option<Instant> {
        if !self.is_idle() {
            return None;
        }
        if self.requests.load(Ordering::Relaxed) == 0 {
            return Some(self.opened + cfg.header_read);
        }
        match self.first_read_ms.load(Ordering::Relaxed) {
            u64::MAX => Some(self.at(self.idle_since_ms.load(Ordering::Relaxed)) + cfg.idle),
            ms => Some(self.at(ms) + cfg.header_read),
        }
    }

    /// Since when the connection has been idle (for eviction order).
    fn idle_since(&self) -> Instant {
        self.at(self.idle_since_ms.load(Ordering::Relaxed))
    }
}

/// A request in flight; dropped when its response body is done.
struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let s = &self.0;
        let now = s.ms(Instant::now());
        s.idle_since_ms.store(now, Ordering::Relaxed);
        s.first_read_ms.store(u64::MAX, Ordering::Relaxed);
        s.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that ends the request's [`InFlight`] when it is done
/// (written out or dropped).
struct TrackedBody {
    inner: Body,
    _in_flight: InFlight,
}

impl http_body::Body for TrackedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, noting when the connection reads.
struct Watched {
    stream: TcpStream,
    state: Arc<ConnState>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.state.read_some();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The open connections.
#[derive(Default)]
pub struct Connections {
    inner: Mutex<Registry>,
    /// Connections refused because every one under a cap was in a request.
    refused: AtomicU64,
    /// Idle connections closed to make room for a new one.
    evicted: AtomicU64,
    /// Connections closed by the header-read, body-read or idle timeout.
    timed_out: AtomicU64,
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    open: HashMap<u64, Arc<ConnState>>,
    per_key: HashMap<IpAddr, usize>,
}

/// Counts of the connection layer, for `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnCounts {
    /// Client connections open now.
    pub open: usize,
    /// Connections refused at a cap because every connection was in a
    /// request (none could be evicted).
    pub refused: u64,
    /// Idle connections closed to admit a new one at a cap.
    pub evicted: u64,
    /// Connections closed by the header-read, body-read or idle timeout.
    pub timed_out: u64,
}

impl Connections {
    /// The counts now, read at scrape time.
    pub fn counts(&self) -> ConnCounts {
        ConnCounts {
            open: self.lock().open.len(),
            refused: self.refused.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
            timed_out: self.timed_out.load(Ordering::Relaxed),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new connection from `ip`, first closing the longest
    /// idle one (of the address, or overall) when a cap is reached;
    /// `None` when nothing can be closed.
    fn admit(&self, ip: IpAddr, cfg: &ConnConfig) -> Option<Arc<ConnState>> {
        let key = address_key(ip);
        let mut r = self.lock();
        let of_key = r.per_key.get(&key).copied().unwrap_or(0);
        let victim_of = |r: &Registry, same_key: bool| {
            r.open
                .values()
                .filter(|c| c.is_idle() && (!same_key || c.key == key))
                .min_by_key(|c| c.idle_since())
                .cloned()
        };
        let mut victims = Vec::new();
        if of_key >= cfg.max_per_address {
            victims.push(victim_of(&r, true)?);
        }
        if r.open.len() - victims.len() >= cfg.max_connections {
            let v = r
                .open
                .values()
                .filter(|c| c.is_idle() && !victims.iter().any(|x| x.id == c.id))
                .min_by_key(|c| c.idle_since())
                .cloned()?;
            victims.push(v);
        }
        for v in victims {
            // Gone from the registry now, so it is not picked twice; its
            // task closes the socket at once.
            Self::forget(&mut r, v.id, v.key);
            v.close.notify_one();
            self.evicted.fetch_add(1, Ordering::Relaxed);
        }
        let id = r.next_id;
        r.next_id += 1;
        let state = Arc::new(ConnState {
            id,
            key,
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            first_read_ms: AtomicU64::new(u64::MAX),
            close: tokio::sync::Notify::new(),
        });
        r.open.insert(id, Arc::clone(&state));
        *r.per_key.entry(key).or_insert(0) += 1;
        Some(state)
    }

    fn forget(r: &mut Registry, id: u64, key: IpAddr) {
        if r.open.remove(&id).is_some()
            && let Some(n) = r.per_key.get_mut(&key)
        {
            *n -= 1;
            if *n == 0 {
                r.per_key.remove(&key);
            }
        }
    }

    fn remove(&self, state: &ConnState) {
        Self::forget(&mut self.lock(), state.id, state.key);
    }
}

/// Accepts connections until `shutdown` turns true, then closes idle
/// connections at once and waits for the others to finish their request.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<super::AppState>,
    cfg: ConnConfig,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let app = super::router(Arc::clone(&state));
    let conns = Arc::clone(&state.metrics.connections);
    let mut tasks = tokio::task::JoinSet::new();
    let mut accept_errors = 0u64;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors or a connection reset before
                // accept: say so (not on every repeat) and back off a little
                // rather than spin.
                accept_errors += 1;
                if accept_errors.is_power_of_two() {
                    eprintln!("agregat: cannot accept a connection ({e}); {accept_errors} so far");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let Some(conn) = conns.admit(peer.ip(), &cfg) else {
            conns.refused.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        tasks.spawn(serve_one(
            stream,
            peer,
            Served {
                app: app.clone(),
                state: Arc::clone(&state),
            },
            cfg,
            conn,
            Arc::clone(&conns),
            shutdown.clone(),
        ));
    }
    drop(listener);
    while tasks.join_next().await.is_some() {}
}

/// What a connection serves: the router, and the state for the limit
/// before authentication.
struct Served {
    app: Router,
    state: Arc<super::AppState>,
}

impl Served {
    /// The 429 of an address whose unauthenticated refusals are used up,
    /// before the router (and authentication) sees the request.
    fn refuse_before_auth(
        &self,
        req: &hyper::Request<hyper::body::Incoming>,
        peer: SocketAddr,
    ) -> Option<axum::response::Response> {
        let per_minute = self
            .state
            .config
            .limits
            .unauthenticated_per_address_per_minute;
        if per_minute == 0 || !req.uri().path().starts_with("/v1") {
            return None;
        }
        let addr = address_key(peer.ip()).to_string();
        let retry_after = self
            .state
            .address_limiter
            .peek(&addr, per_minute, Instant::now())
            .err()?;
        let e = super::problem::ApiError::AddressRateLimited {
            address: addr.clone(),
            per_minute,
            retry_after,
        };
        self.state
            .refusals
            .record(self.state.clock.now(), &addr, e.code());
        self.state
            .metrics
            .observe("pre-authentication", 429, Some(e.code()), Duration::ZERO);
        let id = self.state.ids.next();
        let mut resp = e.response_for(&id);
        if let Ok(v) = axum::http::HeaderValue::from_str(&id) {
            resp.headers_mut().insert("x-request-id", v);
        }
        Some(resp)
    }
}

/// A problem document (RFC 9457) answered outside the router, with the
/// request id as `instance` and in `x-request-id`.
pub(super) fn problem_response(
    status: axum::http::StatusCode,
    code: &'static str,
    detail: String,
    request_id: &str,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let problem = super::problem::Problem {
        r#type: format!("urn:agregat:problem:{code}"),
        title: status.canonical_reason().unwrap_or("Error").to_string(),
        status: status.as_u16(),
        detail,
        code: code.to_string(),
        instance: format!("urn:agregat:request:{request_id}"),
        param: None,
    };
    let mut resp = (
        status,
        [(
            axum::http::header::CONTENT_TYPE,
            super::problem::PROBLEM_JSON,
        )],
        serde_json::to_vec(&problem).unwrap_or_default(),
    )
        .into_response();
    if let Ok(v) = axum::http::HeaderValue::from_str(request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// A request body as read within the body-read timeout.
enum BodyRead {
    /// The whole body, or its first `limit + 1` bytes when it is longer
    /// (the router refuses it as too large).
    Read(axum::body::Bytes),
    /// Not complete within the timeout.
    TimedOut,
    /// The client broke off or sent a malformed body.
    Broken(String),
}

/// Reads at most `limit + 1` bytes of `body`, giving up at `deadline`.
async fn read_body_within(
    mut body: hyper::body::Incoming,
    limit: usize,
    deadline: tokio::time::Instant,
) -> BodyRead {
    use http_body::Body as _;
    let mut buf: Vec<u8> = Vec::new();
    if body.is_end_stream() {
        return BodyRead::Read(buf.into());
    }
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx));
        match tokio::time::timeout_at(deadline, frame).await {
            Err(_) => return BodyRead::TimedOut,
            Ok(None) => break,
            Ok(Some(Err(e))) => return BodyRead::Broken(e.to_string()),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    let room = (limit + 1).saturating_sub(buf.len());
                    buf.extend_from_slice(&data[..data.len().min(room)]);
                    if buf.len() > limit {
                        break;
                    }
                }
            }
        }
    }
    BodyRead::Read(buf.into())
}

impl Served {
    /// A problem document answered by the connection layer itself (no
    /// router, no audit row: the refusal is counted per address and
    /// minute), closing the connection.
    fn refuse_body(
        &self,
        peer: SocketAddr,
        status: axum::http::StatusCode,
        code: &'static str,
        detail: String,
        took: Duration,
    ) -> axum::response::Response {
        let addr = address_key(peer.ip()).to_string();
        self.state
            .refusals
            .record(self.state.clock.now(), &addr, code);
        self.state
            .metrics
            .observe("body-read", status.as_u16(), Some(code), took);
        let id = self.state.ids.next();
        let mut resp = problem_response(status, code, detail, &id);
        resp.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
        resp
    }

    /// The request with its body read within the body-read timeout, or
    /// the response that refuses it.
    async fn with_body(
        &self,
        req: hyper::Request<hyper::body::Incoming>,
        peer: SocketAddr,
        timeout: Duration,
    ) -> Result<axum::extract::Request, axum::response::Response> {
        let started = tokio::time::Instant::now();
        let limit = self.state.config.limits.max_body_bytes;
        let (parts, body) = req.into_parts();
        match read_body_within(body, limit, started + timeout).await {
            BodyRead::Read(bytes) => Ok(axum::extract::Request::from_parts(
                parts,
                Body::from(bytes),
            )),
            BodyRead::TimedOut => Err(self.refuse_body(
                peer,
                axum::http::StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "the request body did not arrive within {} s of the request head; send the whole body at once (at most {limit} bytes)",
                    timeout.as_secs()
                ),
                started.elapsed(),
            )),
            BodyRead::Broken(e) => Err(self.refuse_body(
                peer,
                axum::http::StatusCode::BAD_REQUEST,
                "bad_body",
                format!("cannot read the request body: {e}"),
                started.elapsed(),
            )),
        }
    }
}

async fn serve_one(
    stream: TcpStream,
    peer: SocketAddr,
    served: Served,
    cfg: ConnConfig,
    state: Arc<ConnState>,
    conns: Arc<Connections>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let served = Arc::new(served);
    let io = hyper_util::rt::TokioIo::new(Watched {
        stream,
        state: Arc::clone(&state),
    });
    let svc_state = Arc::clone(&state);
    let svc_conns = Arc::clone(&conns);
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        let in_flight = svc_state.begin();
        req.extensions_mut().insert(ConnectInfo(peer));
        let served = Arc::clone(&served);
        let timed_out = Arc::clone(&svc_conns);
        async move {
            let resp = match served.refuse_before_auth(&req, peer) {
                Some(r) => r,
                None => match served.with_body(req, peer, cfg.body_read).await {
                    Err(refused) => {
                        if refused.status() == axum::http::StatusCode::REQUEST_TIMEOUT {
                            timed_out.timed_out.fetch_add(1, Ordering::Relaxed);
                        }
                        refused
                    }
                    Ok(req) => match served.app.clone().oneshot(req).await {
                        Ok(r) => r,
                        Err(never) => match never {},
                    },
                },
            };
            Ok::<_, Infallible>(resp.map(|inner| {
                Body::new(TrackedBody {
                    inner,
                    _in_flight: in_flight,
                })
            }))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(cfg.header_read + cfg.idle);
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    let mut stopping = *shutdown.borrow();
    loop {
        if stopping && state.is_idle() {
            break;
        }
        let deadline = state.deadline(&cfg);
        let wake = match deadline {
            Some(d) => tokio::time::Instant::from_std(d),
            // In a request: look again in a second.
            None => tokio::time::Instant::now() + Duration::from_secs(1),
        };
        tokio::select! {
            _ = conn.as_mut() => break,
            _ = state.close.notified() => break,
            _ = shutdown.wait_for(|s| *s), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep_until(wake) => {
                if state.deadline(&cfg).is_some_and(|d| d <= Instant::now()) {
                    conns.timed_out.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
    }
    conns.remove(&state);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_stay_below_the_descriptor_limit() {
        let l = super::super::ServiceLimits::default();
        let c = ConnConfig::from_limits(&l, Some(1024));
        assert_eq!(c.max_connections, 1024 - FD_RESERVE as usize);
        assert!(c.max_per_address <= c.max_connections);
        let l = super::super::ServiceLimits {
            max_connections: 100_000,
            ..l
        };
        assert_eq!(
            ConnConfig::from_limits(&l, Some(4096)).max_connections,
            4096 - FD_RESERVE as usize
        );
        assert_eq!(ConnConfig::from_limits(&l, None).max_connections, 100_000);
    }

    #[test]
    fn ipv6_counts_by_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        let m: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(address_key(m), "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[tokio::test]
    async fn a_full_house_closes_the_longest_idle_connection() {
        let cfg = ConnConfig {
            header_read: Duration::from_secs(1),
            idle: Duration::from_secs(1),
            body_read: Duration::from_secs(1),
            max_connections: 3,
            max_per_address: 2,
        };
        let conns = Connections::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = conns.admit(a, &cfg).unwrap();
        let _busy = a1.begin();
        let a2 = conns.admit(a, &cfg).unwrap();
        // a's cap: a2 (idle) makes room, a1 (in a request) is kept.
        let a3 = conns.admit(a, &cfg).unwrap();
        assert_eq!(conns.counts().evicted, 1);
        assert!(!conns.lock().open.contains_key(&a2.id));
        let _busy3 = a3.begin();
        // a is at its cap with both in requests: refused.
        assert!(conns.admit(a, &cfg).is_none());
        let b1 = conns.admit(b, &cfg).unwrap();
        // Overall cap (3): b1 is the only idle one.
        let _b2 = conns.admit(b, &cfg).unwrap();
        assert!(!conns.lock().open.contains_key(&b1.id));
        assert_eq!(conns.counts().open, 3);
    }
}
