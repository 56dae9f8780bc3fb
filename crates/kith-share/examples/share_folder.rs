//! Shares a folder from one node and fetches it by ticket on another, over QUIC on
//! loopback, then checks the copy byte for byte.
//!
//! ```sh
//! cargo run -p kith-share --example share_folder            # a generated folder
//! cargo run -p kith-share --example share_folder -- ./docs  # or one of yours
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kith_core::{SecretKey, Transport};
use kith_share::{DownloadEvent, DownloadOptions, Share, ShareConfig, SharedStore};
use kith_store::{FsStore, StoreConfig};
use kith_transport::{Endpoint, EndpointConfig};

async fn node(dir: &Path) -> Result<(Endpoint, Share), Box<dyn std::error::Error>> {
    let ep = Endpoint::bind(
        SecretKey::generate(&mut rand::rngs::OsRng),
        EndpointConfig::loopback(),
    )
    .await?;
    let store: SharedStore = Arc::new(FsStore::open(dir, StoreConfig::default())?);
    let transport: Arc<dyn Transport> = Arc::new(ep.clone());
    let share = Share::spawn(transport, store, None, ShareConfig::default())?;
    Ok((ep, share))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let src: PathBuf = match std::env::args().nth(1) {
        Some(p) => p.into(),
        None => {
            let d = tmp.path().join("folder");
            std::fs::create_dir_all(d.join("sub"))?;
            for i in 0..20u32 {
                let bytes: Vec<u8> = (0..(i * 50_000)).map(|j| (j % 251) as u8).collect();
                std::fs::write(d.join("sub").join(format!("file{i}.bin")), bytes)?;
            }
            std::fs::write(d.join("hello.txt"), b"hello from kith\n")?;
            d
        }
    };
    let (ep_a, alice) = node(&tmp.path().join("a")).await?;
    let (ep_b, bob) = node(&tmp.path().join("b")).await?;

    let ticket = alice.add_dir(&src).await?;
    println!("ticket: {ticket}");

    let mut download = bob.download(&ticket.to_string().parse()?, DownloadOptions::default());
    while let Some(ev) = download.next_event().await {
        if let DownloadEvent::Progress(p) = ev {
            eprintln!(
                "  {:>10} / {} bytes verified",
                p.verified_bytes, p.total_bytes
            );
        }
    }
    let stats = download.finish().await?;
    let out = tmp.path().join("copy");
    bob.export_dir(ticket.root, &out).await?;
    println!(
        "fetched {} bytes from {} provider(s) in {:?}; copy written to {}",
        stats.fetched_bytes,
        stats.per_peer.len(),
        stats.elapsed,
        out.display()
    );
    ep_b.close().await;
    ep_a.close().await;
    Ok(())
}
