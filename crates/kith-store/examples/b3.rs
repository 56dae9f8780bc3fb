//! Imports a file into a temporary filesystem store and prints its content id, which is
//! what `b3sum FILE` prints.
//!
//! ```text
//! cargo run --release -p kith-store --example b3 -- FILE
//! ```

use std::path::PathBuf;

use kith_store::{FsStore, Store, StoreConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(file) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: b3 FILE");
        std::process::exit(2);
    };
    let dir = tempfile::tempdir()?;
    let store = FsStore::open(dir.path(), StoreConfig::default())?;
    let hash = store.import_file(&file)?;
    let status = store.status(hash)?.ok_or("imported blob is missing")?;
    eprintln!("{} bytes, {} groups", status.size, status.bitfield.len());
    println!("{hash}");
    Ok(())
}
