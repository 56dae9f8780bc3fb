//! TUF's attacks against a channel, one test each: every one ends in a typed error and
//! leaves the installed release as it was.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use kith_core::SecretKey;
use kith_store::collection;
use kith_store::{MemStore, StoreConfig};
use kith_update::metadata::{FileEntry, Release, ReleaseBody};
use kith_update::{Bundle, ChannelKeys, Installer, MetadataError};
use prost::Message;
use rand::SeedableRng;
use rand::rngs::StdRng;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

struct Lab {
    keys: ChannelKeys,
    store: MemStore,
    installer: Installer,
    _tmp: tempfile::TempDir,
}

impl Lab {
    fn new(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let keys = ChannelKeys::generate(&mut rng, (3, 2), (2, 2)).expect("keys");
        let tmp = tempfile::tempdir().expect("tmp");
        let installer = Installer::new(tmp.path().join("app")).expect("installer");
        Self {
            keys,
            store: MemStore::new(StoreConfig::default()),
            installer,
            _tmp: tmp,
        }
    }

    /// Imports `files` as a collection; returns its root and the metadata's file list.
    fn content(&self, files: &[(&str, &[u8])]) -> (kith_store::Hash, Vec<FileEntry>) {
        let dir = tempfile::tempdir().expect("tmp");
        for (p, b) in files {
            let path = dir.path().join(p);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, b).expect("write");
        }
        let root = collection::import_dir(&self.store, dir.path()).expect("import");
        let m = collection::read_manifest(&self.store, root).expect("manifest");
        let files = m
            .entries
            .iter()
            .map(|e| FileEntry {
                path: e.path.clone(),
                size: e.size,
                hash: e.hash.clone(),
                executable: e.executable,
            })
            .collect();
        (root, files)
    }

    fn body(&self, version: u64, root: kith_store::Hash, files: Vec<FileEntry>) -> ReleaseBody {
        ReleaseBody {
            channel: self.keys.channel().root.as_bytes().to_vec(),
            version,
            expires_ms: now_ms() + 3_600_000,
            collection: root.as_bytes().to_vec(),
            files,
            label: format!("v{version}"),
        }
    }

    fn bundle(&self, body: &ReleaseBody, signers: &[&SecretKey]) -> Vec<u8> {
        Bundle {
            roots: self.keys.roots.clone(),
            release: Some(Release::sign(body, signers)),
        }
        .encode_to_vec()
    }

    fn signed(&self, body: &ReleaseBody) -> Vec<u8> {
        let signers: Vec<&SecretKey> = self.keys.release.iter().collect();
        self.bundle(body, &signers)
    }

    /// What a follower does with bundle bytes: verify, then install.
    fn offer(&self, bytes: &[u8]) -> Result<u64, String> {
        let v = Bundle::decode_checked(bytes)
            .and_then(|b| b.verify(&self.keys.channel(), now_ms(), self.installer.current()))
            .map_err(|e| format!("{e:?}"))?;
        self.installer
            .install(&self.store, &v.release, bytes)
            .map_err(|e| format!("{e:?}"))?;
        Ok(v.release.body.version)
    }

    fn install_version(&self, version: u64) {
        let (root, files) = self.content(&[("app", format!("build {version}").as_bytes())]);
        let b = self.signed(&self.body(version, root, files));
        assert_eq!(self.offer(&b), Ok(version));
    }

    fn assert_unchanged(&self, version: u64) {
        assert_eq!(
            self.installer.verify_current().expect("intact"),
            Some(version)
        );
        let app = std::fs::read_to_string(self.installer.current_path().join("app")).expect("app");
        assert_eq!(app, format!("build {version}"));
    }
}

fn refused(r: Result<u64, String>, want: &str) {
    let e = r.expect_err("must be refused");
    assert!(e.contains(want), "{e} is not {want}");
}

#[test]
fn rollback_to_an_older_release_is_refused() {
    let lab = Lab::new(1);
    let (root1, files1) = lab.content(&[("app", b"build 1")]);
    let old = lab.signed(&lab.body(1, root1, files1));
    lab.install_version(2);
    // The genuine, validly signed version 1, replayed.
    refused(lab.offer(&old), "Rollback");
    lab.assert_unchanged(2);
}

#[test]
fn expired_metadata_is_refused_as_a_freeze() {
    let lab = Lab::new(2);
    lab.install_version(1);
    let (root, files) = lab.content(&[("app", b"build 2")]);
    let mut body = lab.body(2, root, files);
    body.expires_ms = now_ms() - 1;
    refused(lab.offer(&lab.signed(&body)), "Expired");
    lab.assert_unchanged(1);
}

#[test]
fn files_of_two_releases_are_refused() {
    let lab = Lab::new(3);
    lab.install_version(1);
    let (_, files_a) = lab.content(&[("app", b"build 2"), ("lib", b"lib 2")]);
    let (root_b, _) = lab.content(&[("app", b"build 2"), ("lib", b"lib 3")]);
    // Metadata naming release A's files over release B's collection.
    refused(
        lab.offer(&lab.signed(&lab.body(2, root_b, files_a))),
        "FileMismatch",
    );
    lab.assert_unchanged(1);
}

#[test]
fn a_file_larger_than_declared_is_refused() {
    let lab = Lab::new(4);
    lab.install_version(1);
    let (root, mut files) = lab.content(&[("app", &[7u8; 100_000][..])]);
    files[0].size = 10;
    refused(
        lab.offer(&lab.signed(&lab.body(2, root, files))),
        "FileMismatch",
    );
    lab.assert_unchanged(1);
}

#[test]
fn wrong_and_below_threshold_signatures_are_refused() {
    let lab = Lab::new(5);
    lab.install_version(1);
    let (root, files) = lab.content(&[("app", b"build 2")]);
    let body = lab.body(2, root, files);
    // One of the two release signatures needed.
    refused(
        lab.offer(&lab.bundle(&body, &[&lab.keys.release[0]])),
        "BelowThreshold",
    );
    // The same key twice counts once.
    let k = &lab.keys.release[0];
    refused(lab.offer(&lab.bundle(&body, &[k, k])), "BelowThreshold");
    // Keys the root does not list.
    let evil = [
        SecretKey::from_bytes(&[66; 32]),
        SecretKey::from_bytes(&[67; 32]),
    ];
    refused(
        lab.offer(&lab.bundle(&body, &[&evil[0], &evil[1]])),
        "BelowThreshold",
    );
    // Valid signatures over a body changed afterwards.
    let mut b = Bundle::decode(lab.signed(&body).as_slice()).expect("decode");
    let mut tampered = body.clone();
    tampered.version = 3;
    b.release.as_mut().expect("release").body = tampered.encode_to_vec();
    refused(lab.offer(&b.encode_to_vec()), "BelowThreshold");
    // Root keys are not release keys.
    let roots: Vec<&SecretKey> = lab.keys.root.iter().collect();
    refused(lab.offer(&lab.bundle(&body, &roots)), "BelowThreshold");
    lab.assert_unchanged(1);
}

#[test]
fn a_root_rotation_needs_the_old_threshold() {
    let mut lab = Lab::new(6);
    lab.install_version(1);
    let mut rng = StdRng::seed_from_u64(60);
    // Signed by one old root key (two needed) and every new one.
    let err = lab
        .keys
        .clone()
        .rotate(&mut rng, 1, (3, 2), (2, 2))
        .expect_err("refused");
    assert!(
        matches!(
            err,
            kith_update::KeysError::Metadata(MetadataError::BelowThreshold { role, .. })
                if role.starts_with("root rotation")
        ),
        "{err:?}"
    );
    // An attacker's new root, with all its own keys but none of the old ones.
    let mut forged = lab.keys.clone();
    assert!(forged.rotate(&mut rng, 0, (3, 2), (2, 2)).is_err());

    // A proper rotation: old threshold and new keys sign. Releases signed by the new
    // release keys install; the old release keys no longer count.
    let old_release = lab.keys.release.clone();
    lab.keys
        .rotate(&mut rng, 2, (4, 3), (3, 2))
        .expect("rotate");
    let (root, files) = lab.content(&[("app", b"build 2")]);
    let body = lab.body(2, root, files);
    let stale: Vec<&SecretKey> = old_release.iter().collect();
    refused(lab.offer(&lab.bundle(&body, &stale)), "BelowThreshold");
    lab.assert_unchanged(1);
    assert_eq!(lab.offer(&lab.signed(&body)), Ok(2));
    lab.assert_unchanged(2);
    // The channel's name did not change: it is the first root's.
    assert_eq!(lab.keys.check().expect("chain").body.version, 2);
}

#[test]
fn another_channel_is_refused() {
    let lab = Lab::new(7);
    let other = Lab::new(8);
    lab.install_version(1);
    let (root, files) = other.content(&[("app", b"build 2")]);
    let body = other.body(2, root, files);
    refused(lab.offer(&other.signed(&body)), "WrongChannel");
    lab.assert_unchanged(1);
}

#[test]
fn garbage_bundles_are_refused() {
    let lab = Lab::new(9);
    lab.install_version(1);
    refused(lab.offer(b"\xff\xff\xff"), "Malformed");
    refused(lab.offer(&vec![0u8; (1 << 20) + 1]), "TooLarge");
    lab.assert_unchanged(1);
}

#[test]
fn keys_round_trip_through_their_directory() {
    let lab = Lab::new(10);
    let dir = tempfile::tempdir().expect("tmp");
    lab.keys.save(dir.path()).expect("save");
    let back = ChannelKeys::load(dir.path()).expect("load");
    assert_eq!(back.channel(), lab.keys.channel());
    assert_eq!(back.channel().to_string().parse(), Ok(lab.keys.channel()));
    assert!(Path::new(&dir.path().join("announce.key")).exists());
}
