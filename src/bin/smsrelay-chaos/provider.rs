//! The faulty provider: a loopback HTTP server speaking the webhook
//! provider's protocol, answering the nth request it reads for each message
//! as the seed says, and recording every request it read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::checks::ProviderRequest;
use crate::seeded::{Behaviour, behaviour};

/// A running faulty provider.
pub struct FaultyProvider {
    pub port: u16,
    log: Arc<Mutex<Log>>,
    stop: CancellationToken,
}

impl FaultyProvider {
    /// Listens on 127.0.0.1; `timeout` is the daemons' provider timeout (slow answers come after it).
    pub async fn start(seed: u64, timeout: Duration) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("faulty provider: bind 127.0.0.1")?;
        let port = listener.local_addr()?.port();
        let log = Arc::new(Mutex::new(Log::default()));
        let stop = CancellationToken::new();
        let server = Server {
            seed,
            timeout,
            log: log.clone(),
        };
        let token = stop.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = token.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                if let Ok((stream, _)) = accepted {
                    let server = server.clone();
                    let token = token.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = token.cancelled() => {}
                            _ = server.connection(stream) => {}
                        }
                    });
                }
            }
        });
        Ok(Self { port, log, stop })
    }

    /// Every request read so far.
    pub fn requests(&self) -> Vec<ProviderRequest> {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .requests
            .clone()
    }
}

impl Drop for FaultyProvider {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Every request read, and how many each message has had (its next draw).
#[derive(Default)]
struct Log {
    requests: Vec<ProviderRequest>,
    seen: HashMap<i64, u32>,
}

impl Log {
    /// Logs `request` and draws its answer: the nth request for a message gets the nth draw.
    fn answer(&mut self, seed: u64, request: &Request) -> Behaviour {
        let nth = self.seen.entry(request.sms_id).or_default();
        *nth += 1;
        let behaviour = behaviour(seed, request.sms_id, *nth);
        self.requests.push(ProviderRequest {
            instance: request.instance,
            generation: request.generation,
            sms_id: request.sms_id,
            attempt: request.attempt,
            nth: *nth,
            received_ms: crate::now_ms(),
            behaviour,
        });
        behaviour
    }
}

#[derive(Clone)]
struct Server {
    seed: u64,
    timeout: Duration,
    log: Arc<Mutex<Log>>,
}

/// What the provider needs of one request.
struct Request {
    instance: u32,
    generation: u32,
    sms_id: i64,
    attempt: i64,
}

impl Server {
    /// Serves the requests of one connection (the daemons keep connections alive).
    async fn connection(&self, mut stream: TcpStream) {
        let mut buffer = Vec::new();
        loop {
            let request = match read_request(&mut stream, &mut buffer).await {
                Ok(Some(request)) => request,
                Ok(None) => return,
                Err(why) => {
                    let _ = respond(&mut stream, 400, &[], &why).await;
                    return;
                }
            };
            let behaviour = self
                .log
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .answer(self.seed, &request);
            let id = format!(r#"{{"id":"chaos-{}-{}"}}"#, request.sms_id, request.attempt);
            let answered = match behaviour {
                Behaviour::Accept => respond(&mut stream, 200, &[], &id).await,
                Behaviour::ServerError => respond(&mut stream, 500, &[], "chaos: 500").await,
                Behaviour::Throttle { secs } => {
                    let header = format!("Retry-After: {secs}");
                    respond(&mut stream, 429, &[&header], "chaos: slow down").await
                }
                Behaviour::Slow => {
                    tokio::time::sleep(self.timeout + Duration::from_millis(500)).await;
                    let _ = respond(&mut stream, 200, &[], &id).await;
                    return;
                }
                Behaviour::Reset => {
                    // Zero linger: closing sends RST, not FIN.
                    let _ = stream.set_zero_linger();
                    return;
                }
                Behaviour::AcceptThenHang => {
                    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 64\r\n\r\n{";
                    let _ = stream.write_all(head.as_bytes()).await;
                    tokio::time::sleep(self.timeout * 3).await;
                    return;
                }
            };
            if answered.is_err() {
                return;
            }
        }
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: u16,
    headers: &[&str],
    body: &str,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        429 => "Too Many Requests",
        _ => "Internal Server Error",
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for header in headers {
        head.push_str(header);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await
}

/// Reads one request: `None` when the client closed the connection between requests.
async fn read_request(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
) -> Result<Option<Request>, String> {
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        if buffer.len() > 64 * 1024 {
            return Err("headers too long".into());
        }
        let mut chunk = [0u8; 8192];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) if buffer.is_empty() => return Ok(None),
            Ok(0) | Err(_) => return Err("connection closed mid-request".into()),
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let path = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .ok_or("no request line")?;
    let (instance, generation) =
        parse_path(path).ok_or("path is not /sms/<instance>/<generation>")?;
    let mut length = 0usize;
    let mut attempt = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse().map_err(|_| "bad Content-Length")?;
        } else if name.eq_ignore_ascii_case("x-smsrelay-attempt") {
            attempt = Some(value.parse::<i64>().map_err(|_| "bad X-Smsrelay-Attempt")?);
        }
    }
    while buffer.len() < head_end + length {
        let mut chunk = [0u8; 8192];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Err("connection closed mid-body".into()),
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
    let body: Vec<u8> = buffer.drain(..head_end + length).skip(head_end).collect();
    let sms_id = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|json| json.get("id").and_then(serde_json::Value::as_i64))
        .ok_or("body has no numeric id")?;
    Ok(Some(Request {
        instance,
        generation,
        sms_id,
        attempt: attempt.ok_or("no X-Smsrelay-Attempt header")?,
    }))
}

fn parse_path(path: &str) -> Option<(u32, u32)> {
    let rest = path.strip_prefix("/sms/")?;
    let (instance, generation) = rest.split_once('/')?;
    Some((instance.parse().ok()?, generation.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(sms_id: i64, attempt: i64) -> Request {
        Request {
            instance: 0,
            generation: 0,
            sms_id,
            attempt,
        }
    }

    #[test]
    fn a_message_resent_after_a_429_with_the_same_attempt_gets_a_fresh_draw() {
        let seed = 1;
        // A message whose first request draws a 429 and whose second does not.
        let sms_id = (1..10_000)
            .find(|&id| {
                matches!(behaviour(seed, id, 1), Behaviour::Throttle { .. })
                    && !matches!(behaviour(seed, id, 2), Behaviour::Throttle { .. })
            })
            .expect("some message draws a 429 first");
        let mut log = Log::default();
        let first = log.answer(seed, &request(sms_id, 1));
        assert!(matches!(first, Behaviour::Throttle { .. }));
        // The daemon hands a 429 back unspent: the resend carries attempt 1 again.
        let second = log.answer(seed, &request(sms_id, 1));
        assert!(!matches!(second, Behaviour::Throttle { .. }));
        let nths: Vec<u32> = log.requests.iter().map(|r| r.nth).collect();
        assert_eq!(nths, vec![1, 2]);
        // Another message's count is its own.
        log.answer(seed, &request(sms_id + 1, 1));
        assert_eq!(log.requests[2].nth, 1);
    }
}
