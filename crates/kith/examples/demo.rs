//! kith's out-of-the-box demo: echo by NodeId across four local nodes, then a 60 Hz
//! datagram session among three. No configuration; everything runs on loopback.
//!
//! Run: `cargo run --release -p kith --example demo`

#[allow(dead_code)]
#[path = "echo.rs"]
mod echo;
#[allow(dead_code)]
#[path = "game.rs"]
mod game;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    println!("== kith demo: peers named by Ed25519 keys, QUIC with mutual TLS ==");
    println!("-- echo: 4 nodes, every node greets every other by NodeId --");
    let mut rtts = echo::run(4).await?;
    rtts.sort();
    println!(
        "echo ok: {} exchanges, median {:.2?} (first contact incl. handshake)",
        rtts.len(),
        rtts[rtts.len() / 2]
    );
    println!("-- game: 3 nodes send position updates as datagrams at 60 Hz for 2 s --");
    let r = game::run(3, 2).await?;
    let loss = 1.0 - r.received as f64 / r.sent.max(1) as f64;
    println!(
        "game ok: sent {}, received {}, loss {:.2} %, one-way latency p50 {:.2?}, p99 {:.2?}",
        r.sent,
        r.received,
        loss * 100.0,
        r.p50,
        r.p99
    );
    println!("demo finished");
    Ok(())
}
