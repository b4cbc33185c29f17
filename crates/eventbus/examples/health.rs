//! A readiness endpoint with nothing but tokio: `GET /health` answers 200 while the bus is
//! ready (connected, not closing, every subscription consuming) and 503 otherwise, with a
//! small JSON body. Any web framework's handler would do the same with `bus.health()`.
//!
//! `cargo run -p eventbus --example health` serves on a free port, asks itself once, closes
//! the bus, asks again (now 503) and exits. `-- --serve 127.0.0.1:8080` serves there until
//! Ctrl-C instead (`curl -i 127.0.0.1:8080/health`).

use std::time::Duration;

use eventbus::{BoxError, Delivery, EventBus, Health, MemoryTransport, handler_fn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let bus = EventBus::new(MemoryTransport::new());
    let sub = bus
        .subscribe(
            "orders",
            "billing",
            handler_fn(|_d: Delivery| async { Ok::<_, BoxError>(()) }),
        )
        .await?;

    let serve_at = std::env::args().skip_while(|a| a != "--serve").nth(1);
    let listener = TcpListener::bind(serve_at.as_deref().unwrap_or("127.0.0.1:0")).await?;
    let addr = listener.local_addr()?;
    println!("serving http://{addr}/health");
    let server = tokio::spawn(serve(listener, bus.clone()));

    if serve_at.is_some() {
        tokio::signal::ctrl_c().await?;
    } else {
        println!("{}", get(addr, "/health").await?);
    }
    // A closing bus is not ready: probes see 503 while it drains, so traffic moves elsewhere.
    sub.close().await;
    bus.close().await?;
    if serve_at.is_none() {
        println!("{}", get(addr, "/health").await?);
    }
    server.abort();
    Ok(())
}

/// Answers each connection on a task of its own.
async fn serve(listener: TcpListener, bus: EventBus) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let bus = bus.clone();
        tokio::spawn(async move {
            // A client that sends nothing does not hold a task for long.
            let answered = tokio::time::timeout(Duration::from_secs(5), respond(stream, &bus));
            if let Ok(Err(e)) = answered.await {
                eprintln!("health: {e}");
            }
        });
    }
}

/// Reads one request and answers it.
async fn respond(mut stream: TcpStream, bus: &EventBus) -> std::io::Result<()> {
    let mut request = Vec::new();
    let mut buf = [0; 1024];
    // The request line and headers end with an empty line; a probe sends no body.
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&request);
    let (status, body) = if line.starts_with("GET /health ") {
        let health = bus.health().await;
        let status = if health.is_ready() {
            "200 OK"
        } else {
            "503 Service Unavailable"
        };
        (status, body(&health))
    } else {
        ("404 Not Found", r#"{"error":"not found"}"#.to_owned())
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// What a probe or a person reads: readiness and why not. Topic and group names need no
/// escaping (letters, digits, `.`, `_`, `-`); error messages do.
fn body(h: &Health) -> String {
    let subscriptions: Vec<String> = h
        .subscriptions
        .iter()
        .map(|s| {
            format!(
                r#"{{"topic":"{}","group":"{}","running":{},"lag":{},"retrying":{}}}"#,
                s.topic,
                s.group,
                s.running,
                s.lag.map_or("null".to_owned(), |l| l.to_string()),
                s.retrying_total
            )
        })
        .collect();
    format!(
        r#"{{"ready":{},"transport":"{}","connection":"{:?}","closed":{},"last_error":{},"subscriptions":[{}]}}"#,
        h.is_ready(),
        h.transport,
        h.connection.state,
        h.closed,
        h.last_error().map_or("null".to_owned(), |(_, e)| quoted(e)),
        subscriptions.join(",")
    )
}

/// `s` as a JSON string.
fn quoted(s: &str) -> String {
    let mut out = String::from('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A client's `GET path`: the status line and the body.
async fn get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response.lines().next().unwrap_or_default().to_owned();
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    Ok(format!("{status}\n{body}"))
}
