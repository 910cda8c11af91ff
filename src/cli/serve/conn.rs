//! The server's accept loop: hyper's HTTP/1 connections with timeouts, under a cap on open
//! connections computed from the process's file-descriptor limit.
//!
//! * The request head must arrive within `--header-timeout` seconds; hyper starts that clock
//!   whenever it waits for a head, so the same timeout closes an idle keep-alive connection
//!   and a connection that never sends anything. The body of `POST /v1/videos` must arrive
//!   within `--body-timeout` (the handler's own deadline, [`super::http`]).
//! * At most [`connection_cap`] connections are served at once. That leaves [`HEADROOM`]
//!   descriptors below `RLIMIT_NOFILE` for the worker (the video it writes), the job records
//!   and the answers to connections over the cap.
//! * A connection over the cap is accepted and answered at once: `GET /health` with the health
//!   object, anything else with 503 and `Retry-After` (then closed). Accepting keeps the
//!   listen queue from filling with connections nobody answers, and a client sees why. At
//!   most [`OVERFLOW`] such answers are in flight (each waits at most [`OVERFLOW_READ`] for
//!   the request line and 1 s to write); when all are busy the accept loop waits for one to
//!   end (a bounded wait: new connections stay in the listen queue, none is dropped
//!   unanswered). An accept error (no descriptor left) waits a little instead of spinning.
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::error::{Error, Result};

/// Descriptors kept free below the limit: the worker's video and records, the loaded model's
/// files, the over-cap answers ([`OVERFLOW`]) and the runtime's own.
pub const HEADROOM: u64 = 24;
/// Over-cap connections answered at the same time.
pub const OVERFLOW: usize = 16;
/// How long an over-cap connection may take to send its request line.
pub const OVERFLOW_READ: Duration = Duration::from_millis(200);

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub header_timeout: Duration,
    pub max_connections: usize,
}

/// The soft `RLIMIT_NOFILE` of this process.
pub fn fd_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own; no other memory is touched.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    if rc != 0 || r.rlim_cur == libc::RLIM_INFINITY {
        return 1 << 20;
    }
    r.rlim_cur
}

/// Descriptors this process has open now (the entries of /proc/self/fd).
pub fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(16, |d| d.count() as u64)
}

/// The most connections served at once: `wanted` (`--max-connections`), lowered to what the
/// descriptor limit leaves after the descriptors open now and [`HEADROOM`]. An error when
/// fewer than 4 remain (the limit is too low to serve anything).
pub fn connection_cap(wanted: usize) -> Result<usize> {
    let (limit, open) = (fd_limit(), open_fds());
    let room = limit.saturating_sub(open + HEADROOM + OVERFLOW as u64);
    if room < 4 {
        return Err(Error::Input(format!(
            "the file-descriptor limit (ulimit -n) is {limit} and {open} are open: the server needs at least {} (raise it with `ulimit -n`)",
            open + HEADROOM + OVERFLOW as u64 + 4
        )));
    }
    Ok(wanted.min(room as usize))
}

/// Serves `app` on `listener` until the runtime stops. `health` gives the body of
/// `GET /health` for the answers over the cap.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    lim: Limits,
    health: Arc<dyn Fn() -> String + Send + Sync>,
) -> std::io::Result<()> {
    let conns = Arc::new(Semaphore::new(lim.max_connections));
    let overflow = Arc::new(Semaphore::new(OVERFLOW));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(_) => {
                // EMFILE, ENFILE, ECONNABORTED...: the connection stays in the listen queue
                // (or is gone); try again shortly rather than spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        if let Ok(permit) = conns.clone().try_acquire_owned() {
            let app = app.clone();
            tokio::spawn(async move {
                let svc = hyper_util::service::TowerToHyperService::new(app);
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(lim.header_timeout)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                let _ = conn.await;
                drop(permit);
            });
        } else {
            // Over the cap: wait for one of the OVERFLOW answer slots (each is free again
            // within OVERFLOW_READ + 1 s + OVERFLOW_READ); meanwhile new connections wait in
            // the listen queue instead of being dropped unanswered.
            let Ok(permit) = overflow.clone().acquire_owned().await else {
                continue;
            };
            let health = health.clone();
            tokio::spawn(async move {
                let _ = answer_over_cap(stream, &*health).await;
                drop(permit);
            });
        }
    }
}

/// The answer to a connection over the cap (see the module's comment).
async fn answer_over_cap(
    mut s: TcpStream,
    health: &(dyn Fn() -> String + Send + Sync),
) -> std::io::Result<()> {
    let mut buf = [0u8; 512];
    let mut n = 0;
    let _ = tokio::time::timeout(OVERFLOW_READ, async {
        while n < buf.len() && !buf[..n].contains(&b'\n') {
            match s.read(&mut buf[n..]).await {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
    })
    .await;
    let line = String::from_utf8_lossy(&buf[..n]);
    let is_health = line.starts_with("GET /health ") || line.starts_with("GET /health?");
    let (status, body, extra) = if is_health {
        ("200 OK", health(), "")
    } else {
        (
            "503 Service Unavailable",
            serde_json::json!({"error": {
                "message": "too many open connections; try again shortly",
                "type": "server_error", "param": null, "code": "server_busy"}})
            .to_string(),
            "Retry-After: 2\r\n",
        )
    };
    let text = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    );
    tokio::time::timeout(Duration::from_secs(1), s.write_all(text.as_bytes()))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let _ = s.shutdown().await;
    // Read what the client still sends (its body) for a moment before closing: closing with
    // unread data would reset the connection, and the client could lose the answer.
    let _ = tokio::time::timeout(OVERFLOW_READ, async {
        let mut sink = [0u8; 4096];
        while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
    Ok(())
}
