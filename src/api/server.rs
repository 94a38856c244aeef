//! The connection loop under the router: at most `api.max_connections` served
//! at once, and a connection that stalls is closed (headers too slow, or idle
//! between requests), so a client cannot hold file descriptors forever.
//! `axum::serve` offers neither limit.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::service::Service as _;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::settings::ApiSettings;

/// How long connections may stall, and how many are served at once.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// From the first byte of a request to the end of its headers.
    pub header_read_timeout: Duration,
    /// With no request in progress and no bytes moving.
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl ConnectionLimits {
    pub fn from_settings(api: &ApiSettings) -> Self {
        Self {
            header_read_timeout: api.header_read_timeout,
            idle_timeout: api.idle_timeout,
            max_connections: api.max_connections,
        }
    }

    /// How often a connection checks its clocks: a tenth of the shorter limit.
    fn check_every(&self) -> Duration {
        (self.header_read_timeout.min(self.idle_timeout) / 10)
            .clamp(Duration::from_millis(10), Duration::from_secs(1))
    }
}

/// Serves until `stop`, then lets requests in progress finish and closes idle connections.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    stop: CancellationToken,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    loop {
        // Wait for a free slot before accepting: extra clients wait in the listen backlog.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            _ = stop.cancelled() => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before accept: pause, go on.
                    tracing::warn!(error = %e, "API accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        connections.spawn(serve_connection(
            stream,
            router.clone(),
            limits,
            stop.clone(),
            slot,
        ));
    }
    connections.close();
    connections.wait().await;
    Ok(())
}

/// What a connection is doing, for its stall clocks.
struct Activity {
    /// Requests handed to the router and not yet answered.
    in_flight: usize,
    /// When the first byte of the next request's headers arrived.
    head_started: Option<Instant>,
    /// When a byte last moved either way, or the last request was answered.
    last_active: Instant,
}

#[derive(Clone)]
struct Watch(Arc<Mutex<Activity>>);

/// Why a connection should be closed now, if it should.
enum Stall {
    Headers,
    Idle,
}

impl Watch {
    fn new() -> Self {
        Watch(Arc::new(Mutex::new(Activity {
            in_flight: 0,
            head_started: None,
            last_active: Instant::now(),
        })))
    }

    fn update<T>(&self, f: impl FnOnce(&mut Activity) -> T) -> T {
        // The data stays consistent even if a holder panicked: take it anyway.
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn read(&self) {
        self.update(|a| {
            let now = Instant::now();
            a.last_active = now;
            if a.in_flight == 0 && a.head_started.is_none() {
                a.head_started = Some(now);
            }
        });
    }

    fn wrote(&self) {
        self.update(|a| a.last_active = Instant::now());
    }

    fn request_started(&self) {
        self.update(|a| {
            a.in_flight += 1;
            a.head_started = None;
        });
    }

    fn request_ended(&self) {
        self.update(|a| {
            a.in_flight = a.in_flight.saturating_sub(1);
            a.last_active = Instant::now();
        });
    }

    fn stalled(&self, limits: &ConnectionLimits) -> Option<Stall> {
        self.update(|a| {
            if a.in_flight > 0 {
                return None;
            }
            match a.head_started {
                Some(started) if started.elapsed() >= limits.header_read_timeout => {
                    Some(Stall::Headers)
                }
                Some(_) => None,
                None if a.last_active.elapsed() >= limits.idle_timeout => Some(Stall::Idle),
                None => None,
            }
        })
    }
}

/// Ends a request's count when the router answers, or when hyper drops it.
struct InFlight(Watch);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

async fn serve_connection(
    stream: TcpStream,
    router: Router,
    limits: ConnectionLimits,
    stop: CancellationToken,
    _slot: OwnedSemaphorePermit,
) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "TCP_NODELAY not set");
    }
    metrics::gauge!("smsrelay_api_connections").increment(1.0);
    let watch = Watch::new();
    let io = TokioIo::new(Watched {
        stream,
        watch: watch.clone(),
    });
    let service = {
        let watch = watch.clone();
        let router = TowerToHyperService::new(router);
        hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            watch.request_started();
            let in_flight = InFlight(watch.clone());
            let response = router.call(request);
            async move {
                let response = response.await;
                drop(in_flight);
                response
            }
        })
    };
    // The header timeout is ours (hyper's would also cut keep-alive waits short).
    let connection = hyper::server::conn::http1::Builder::new()
        .header_read_timeout(None)
        .serve_connection(io, service);
    tokio::pin!(connection);
    let mut clock = tokio::time::interval(limits.check_every());
    let mut closing = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "API connection ended with an error");
                }
                break;
            }
            _ = stop.cancelled(), if !closing => {
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
            _ = clock.tick() => match watch.stalled(&limits) {
                // Half-sent headers: there is no request to answer, just hang up.
                Some(Stall::Headers) => {
                    tracing::debug!("API connection closed: headers not received within api.header_read_timeout");
                    break;
                }
                Some(Stall::Idle) if !closing => {
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
                _ => {}
            },
        }
    }
    metrics::gauge!("smsrelay_api_connections").decrement(1.0);
}

/// A TCP stream that tells its [`Watch`] when bytes move.
struct Watched {
    stream: TcpStream,
    watch: Watch,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.watch.read();
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.stream).poll_write(cx, data);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.watch.wrote();
        }
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.stream).poll_write_vectored(cx, data);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.watch.wrote();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
