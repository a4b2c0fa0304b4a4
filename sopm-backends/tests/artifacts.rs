//! Artifacts named by content: the canonical tar and its digest, checked unpacking of
//! hostile tars, the local store, and the OCI store against a real `docker-registry`
//! (two nodes with their own caches, tampering, eviction, concurrent fetches, the
//! registry down).
//!
//! Run with: `SOPM_REQUIRE_INTEGRATION=1 cargo test -p sopm-backends --features oci --test artifacts`
#![cfg(feature = "artifacts")]

#[cfg(feature = "oci")]
#[path = "support/oci_registry.rs"]
mod oci_registry;
#[cfg(feature = "oci")]
#[path = "support/programs.rs"]
mod programs;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sopm_backends::artifacts::{canonical_digest, unpack_verified, LocalArtifactStore};
use sopm_core::{Artifact, ArtifactStore, Digest, Error};

/// What a tree holds, as a sorted list of (path, kind, mode, content or link target).
fn listing(root: &Path) -> Vec<(String, &'static str, u32, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, &'static str, u32, Vec<u8>)>) {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let meta = fs::symlink_metadata(&path).unwrap();
            let mode = meta.permissions().mode() & 0o777;
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&path).unwrap();
                out.push((
                    rel,
                    "symlink",
                    0,
                    target.to_string_lossy().as_bytes().to_vec(),
                ));
            } else if meta.is_dir() {
                out.push((rel, "dir", mode, Vec::new()));
                walk(root, &path, out);
            } else {
                out.push((rel, "file", mode, fs::read(&path).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn write_file(path: &Path, content: &[u8], mode: u32, mtime: SystemTime) {
    fs::write(path, content).unwrap();
    set_mode(path, mode);
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
}

/// A function-like tree: files of several modes, nested and read-only directories, an
/// empty directory, symlinks inside the tree (one dangling), a larger file. `seed`
/// changes one file's content so trees differ; `reverse` creates in the other order
/// with other mtimes.
fn make_tree(root: &Path, seed: &str, reverse: bool) {
    let mtime = if reverse {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000)
    } else {
        SystemTime::now()
    };
    let big: Vec<u8> = (0..150_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut steps: Vec<Box<dyn Fn()>> = vec![
        Box::new(|| fs::create_dir_all(root.join("lib/pkg")).unwrap()),
        Box::new(|| fs::create_dir_all(root.join("empty")).unwrap()),
        Box::new(move || {
            write_file(
                &root.join("main.py"),
                format!("print('{seed}')\n").as_bytes(),
                0o644,
                mtime,
            )
        }),
        Box::new(move || write_file(&root.join("run.sh"), b"#!/bin/sh\necho hi\n", 0o755, mtime)),
        Box::new(move || write_file(&root.join("secret.txt"), b"only me\n", 0o600, mtime)),
        Box::new(move || write_file(&root.join("lib/pkg/data.bin"), &big, 0o644, mtime)),
        Box::new(move || write_file(&root.join("lib/pkg/__init__.py"), b"", 0o444, mtime)),
        Box::new(|| symlink("pkg/data.bin", root.join("lib/link")).unwrap()),
        Box::new(|| symlink("../missing", root.join("lib/dangling")).unwrap()),
    ];
    if reverse {
        // Directories must exist first; the rest goes in the other order.
        let dirs: Vec<_> = steps.drain(..2).collect();
        steps.reverse();
        for step in dirs.iter().chain(steps.iter()) {
            step();
        }
    } else {
        for step in &steps {
            step();
        }
    }
    set_mode(&root.join("lib/pkg"), 0o555);
    set_mode(&root.join("empty"), 0o750);
}

fn make_tree_at(parent: &Path, name: &str, seed: &str) -> PathBuf {
    let dir = parent.join(name);
    fs::create_dir(&dir).unwrap();
    make_tree(&dir, seed, false);
    dir
}

#[test]
fn the_canonical_digest_is_the_same_for_the_same_tree_and_differs_for_another() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    fs::create_dir(&a).unwrap();
    fs::create_dir(&b).unwrap();
    make_tree(&a, "one", false);
    make_tree(&b, "one", true);
    let digest = canonical_digest(&a).unwrap();
    assert_eq!(
        digest,
        canonical_digest(&b).unwrap(),
        "order and mtimes must not count"
    );

    // A mode, a link target or a byte of content changes the digest.
    set_mode(&b.join("run.sh"), 0o700);
    let moded = canonical_digest(&b).unwrap();
    assert_ne!(digest, moded);
    set_mode(&b.join("run.sh"), 0o755);
    assert_eq!(digest, canonical_digest(&b).unwrap());
    fs::remove_file(b.join("lib/link")).unwrap();
    symlink("pkg/__init__.py", b.join("lib/link")).unwrap();
    assert_ne!(digest, canonical_digest(&b).unwrap());
    let c = make_tree_at(tmp.path(), "c", "two");
    assert_ne!(digest, canonical_digest(&c).unwrap());
}

#[test]
fn only_files_directories_and_symlinks_inside_the_tree_go_into_an_artifact() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("ok"), b"x").unwrap();
    let _listener = std::os::unix::net::UnixListener::bind(dir.join("sock")).unwrap();
    let err = canonical_digest(&dir).unwrap_err();
    assert_eq!(err.code(), "invalid_input", "{err}");
    assert!(err.to_string().contains("sock"), "{err}");
    drop(_listener);
    fs::remove_file(dir.join("sock")).unwrap();
    assert!(canonical_digest(&dir).is_ok());

    // Links another node would refuse to unpack are refused where the artifact is made.
    for (name, target) in [
        ("abs", "/usr/bin/python3"),
        ("up", "../outside"),
        ("via", "sub/../../x"),
    ] {
        fs::create_dir_all(dir.join("sub")).unwrap();
        symlink(target, dir.join(name)).unwrap();
        let err = canonical_digest(&dir).unwrap_err();
        assert_eq!(err.code(), "invalid_input", "{name}: {err}");
        assert!(
            err.to_string().contains("outside the artifact"),
            "{name}: {err}"
        );
        fs::remove_file(dir.join(name)).unwrap();
    }
}

#[test]
fn a_tar_unpacks_to_the_same_tree_and_a_wrong_digest_unpacks_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let src = make_tree_at(tmp.path(), "src", "one");
    let tar_path = tmp.path().join("t.tar");
    let digest =
        sopm_backends::artifacts::canonical_tar(&src, fs::File::create(&tar_path).unwrap())
            .unwrap();
    assert_eq!(digest, canonical_digest(&src).unwrap());
    let out = tmp.path().join("out/copy");
    unpack_verified(&tar_path, &digest, &out).unwrap();
    assert_eq!(listing(&src), listing(&out));
    assert_eq!(canonical_digest(&out).unwrap(), digest);

    let other = Digest::of(b"something else");
    let dest = tmp.path().join("out/other");
    let err = unpack_verified(&tar_path, &other, &dest).unwrap_err();
    assert!(matches!(err, Error::Storage(_)), "{err}");
    assert!(!dest.exists());
    assert_eq!(
        fs::read_dir(tmp.path().join("out")).unwrap().count(),
        1,
        "only the first copy"
    );
}

/// A tar entry written byte by byte (so names the `tar` crate would refuse get in).
fn raw_entry(tar: &mut Vec<u8>, name: &[u8], kind: tar::EntryType, link: &[u8], data: &[u8]) {
    let mut header = tar::Header::new_gnu();
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    header.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    header.set_entry_type(kind);
    header.set_mode(0o644);
    header.set_size(data.len() as u64);
    header.set_cksum();
    tar.extend_from_slice(header.as_bytes());
    tar.extend_from_slice(data);
    tar.resize(tar.len().div_ceil(512) * 512, 0);
}

#[test]
fn hostile_tars_are_refused_and_leave_nothing_behind() {
    use tar::EntryType::{Block, Char, Directory, Fifo, Link, Regular, Symlink};
    type Entry = (&'static [u8], tar::EntryType, &'static [u8]);
    let cases: Vec<(&str, &str, Vec<Entry>)> = vec![
        ("a .. path", "has '..'", vec![(b"../evil", Regular, b"")]),
        (
            "a .. inside a path",
            "has '..'",
            vec![(b"a", Directory, b""), (b"a/../../evil", Regular, b"")],
        ),
        (
            "an absolute path",
            "is absolute",
            vec![(b"/tmp/evil", Regular, b"")],
        ),
        (
            "a symlink out of the tree",
            "points out of the tree",
            vec![(b"up", Symlink, b"../../etc")],
        ),
        (
            "an absolute symlink",
            "absolute path",
            vec![(b"abs", Symlink, b"/etc/passwd")],
        ),
        (
            "a symlink out through another symlink",
            "points out of the tree",
            vec![
                (b"d", Directory, b""),
                (b"d/e", Directory, b""),
                (b"d/e/top", Symlink, b"../.."),
                (b"x", Symlink, b"d/e/top/.."),
            ],
        ),
        (
            "an entry under a symlink",
            "under a symlink",
            vec![
                (b"sub", Directory, b""),
                (b"l", Symlink, b"sub"),
                (b"l/f", Regular, b""),
            ],
        ),
        (
            "a character device",
            "a character device",
            vec![(b"null", Char, b"")],
        ),
        (
            "a block device",
            "a block device",
            vec![(b"sda", Block, b"")],
        ),
        ("a fifo", "a fifo", vec![(b"pipe", Fifo, b"")]),
        (
            "a hard link",
            "a hard link",
            vec![(b"f", Regular, b""), (b"h", Link, b"f")],
        ),
        (
            "a path twice",
            "appears twice",
            vec![(b"f", Regular, b""), (b"f", Regular, b"")],
        ),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    fs::create_dir(&out).unwrap();
    for (what, reason, entries) in cases {
        let mut tar = Vec::new();
        for (name, kind, link) in entries {
            let data: &[u8] = if kind == Regular { b"payload" } else { b"" };
            raw_entry(&mut tar, name, kind, link, data);
        }
        tar.extend_from_slice(&[0u8; 1024]);
        let tar_path = tmp.path().join("hostile.tar");
        fs::write(&tar_path, &tar).unwrap();
        let digest = Digest::of(&tar);
        let dest = out.join("dest");
        let err = unpack_verified(&tar_path, &digest, &dest).expect_err(what);
        assert!(matches!(err, Error::Storage(_)), "{what}: {err}");
        assert!(err.to_string().contains("refused"), "{what}: {err}");
        assert!(err.to_string().contains(reason), "{what}: {err}");
        assert_eq!(
            fs::read_dir(&out).unwrap().count(),
            0,
            "{what}: left something"
        );
        assert!(!tmp.path().join("evil").exists(), "{what}");
    }
}

#[test]
fn a_symlink_that_stays_inside_through_other_symlinks_is_kept() {
    use tar::EntryType::{Directory, Regular, Symlink};
    let mut tar = Vec::new();
    raw_entry(&mut tar, b"d", Directory, b"", b"");
    raw_entry(&mut tar, b"d/e", Directory, b"", b"");
    raw_entry(&mut tar, b"d/e/f", Regular, b"", b"payload");
    raw_entry(&mut tar, b"d/e/up", Symlink, b"..", b"");
    raw_entry(&mut tar, b"x", Symlink, b"d/e/up/e/f", b"");
    tar.extend_from_slice(&[0u8; 1024]);
    let tmp = tempfile::tempdir().unwrap();
    let tar_path = tmp.path().join("ok.tar");
    fs::write(&tar_path, &tar).unwrap();
    let dest = tmp.path().join("dest");
    unpack_verified(&tar_path, &Digest::of(&tar), &dest).unwrap();
    assert_eq!(fs::read(dest.join("x")).unwrap(), b"payload");
}

#[tokio::test]
async fn the_local_store_keeps_moves_verifies_and_removes_by_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("artifacts");
    let store = LocalArtifactStore::new(&root);
    let reference = make_tree_at(tmp.path(), "reference", "one");
    let build = make_tree_at(tmp.path(), "build", "one");
    let digest = canonical_digest(&reference).unwrap();

    let artifact = store.put_directory(&build).await.unwrap();
    let expected_path = root.join("sha256").join(digest.hex());
    assert_eq!(
        artifact,
        Artifact::Directory {
            path: expected_path.to_string_lossy().into_owned(),
            digest: Some(digest.clone()),
        }
    );
    assert!(
        !build.exists(),
        "the build directory is moved into the store"
    );
    assert_eq!(listing(&reference), listing(&expected_path));
    for dir in [&root, &root.join("sha256")] {
        assert_eq!(
            fs::metadata(dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }

    // The same content again: the same artifact, the second copy dropped.
    let again = make_tree_at(tmp.path(), "again", "one");
    assert_eq!(store.put_directory(&again).await.unwrap(), artifact);
    assert!(!again.exists());

    // Another node's record (another path) resolves to this store's copy.
    let recorded = Artifact::Directory {
        path: "/elsewhere/never".into(),
        digest: Some(digest.clone()),
    };
    assert_eq!(store.fetch(&recorded).await.unwrap(), artifact);

    // Tampering goes unseen by the cheap fetch and is caught by a verifying one.
    set_mode(&expected_path.join("lib/pkg"), 0o755);
    fs::write(expected_path.join("lib/pkg/data.bin"), b"changed").unwrap();
    assert!(store.fetch(&artifact).await.is_ok());
    let err = store
        .clone()
        .verify_on_fetch(true)
        .fetch(&artifact)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Storage(_)), "{err}");

    // Two puts of the content (two versions): the first remove leaves it for the other.
    store.remove(&artifact).await.unwrap();
    assert!(
        expected_path.exists(),
        "another version still names this content"
    );
    assert!(store.fetch(&artifact).await.is_ok());
    store.remove(&artifact).await.unwrap();
    assert!(!expected_path.exists());
    assert_eq!(
        store.fetch(&artifact).await.unwrap_err().code(),
        "not_found"
    );
    store.remove(&artifact).await.unwrap();
    assert!(!root.join("refs").join(digest.hex()).exists());

    // Images pass through; undigested directories are found where they are.
    let image = Artifact::Image {
        reference: "example/image:1".into(),
    };
    assert_eq!(store.fetch(&image).await.unwrap(), image);
    let old = Artifact::Directory {
        path: reference.to_string_lossy().into_owned(),
        digest: None,
    };
    assert_eq!(store.fetch(&old).await.unwrap(), old);
}

#[cfg(feature = "oci")]
mod oci {
    use super::*;
    use oci_registry::OciRegistry;
    use sopm_backends::artifacts::{OciArtifactStore, OciConfig};

    fn node(registry: &OciRegistry, cache: &Path, max_bytes: u64) -> OciArtifactStore {
        OciArtifactStore::new(OciConfig::new(registry.url(), cache).with_cache_max_bytes(max_bytes))
            .unwrap()
    }

    fn digest_of(artifact: &Artifact) -> Digest {
        match artifact {
            Artifact::Directory {
                digest: Some(d), ..
            } => d.clone(),
            other => panic!("not a digested directory: {other:?}"),
        }
    }

    fn path_of(artifact: &Artifact) -> PathBuf {
        match artifact {
            Artifact::Directory { path, .. } => PathBuf::from(path),
            other => panic!("not a directory: {other:?}"),
        }
    }

    fn remote(digest: &Digest) -> Artifact {
        Artifact::Directory {
            path: "/on/another/node".into(),
            digest: Some(digest.clone()),
        }
    }

    fn cache_entries(cache: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(cache.join("sha256"))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_directory_pushed_by_one_node_is_fetched_by_another_identical() {
        let Some(registry) = OciRegistry::start("oci_push_fetch") else {
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        let a = node(&registry, &tmp.path().join("cache-a"), 1 << 30);
        let b = node(&registry, &tmp.path().join("cache-b"), 1 << 30);
        let reference = make_tree_at(tmp.path(), "reference", "one");
        let build = make_tree_at(tmp.path(), "build", "one");

        let put = a.put_directory(&build).await.unwrap();
        let digest = digest_of(&put);
        assert_eq!(digest, canonical_digest(&reference).unwrap());
        assert!(
            !build.exists(),
            "the build directory became node A's cached copy"
        );
        assert_eq!(listing(&reference), listing(&path_of(&put)));
        assert_eq!(
            registry.status(
                "HEAD",
                &format!("/v2/sopm/artifacts/manifests/sha256-{}", digest.hex())
            ),
            200,
            "tagged sha256-<hex> in the registry"
        );

        let fetched = b.fetch(&remote(&digest)).await.unwrap();
        assert_eq!(digest_of(&fetched), digest);
        let local = path_of(&fetched);
        assert!(local.starts_with(tmp.path().join("cache-b")));
        assert_eq!(
            listing(&reference),
            listing(&local),
            "byte-identical, modes and symlinks"
        );
        assert_eq!(b.downloads(), 1);

        // Node A has it already; a second fetch on B is a cache hit.
        assert_eq!(a.fetch(&remote(&digest)).await.unwrap(), put);
        assert_eq!(a.downloads(), 0);
        b.fetch(&remote(&digest)).await.unwrap();
        assert_eq!(b.downloads(), 1);

        // A store made afresh over B's cache directory finds what is there.
        let b2 = node(&registry, &tmp.path().join("cache-b"), 1 << 30);
        assert_eq!(b2.fetch(&remote(&digest)).await.unwrap(), fetched);
        assert_eq!(b2.downloads(), 0);

        // The same content pushed again is fine.
        let again = make_tree_at(tmp.path(), "again", "one");
        assert_eq!(a.put_directory(&again).await.unwrap(), put);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tampered_blob_is_refused_and_nothing_is_kept() {
        let Some(registry) = OciRegistry::start("oci_tampered") else {
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        let a = node(&registry, &tmp.path().join("cache-a"), 1 << 30);
        let build = make_tree_at(tmp.path(), "build", "one");
        let digest = digest_of(&a.put_directory(&build).await.unwrap());

        let blob = registry.blob_file(digest.hex());
        let mut bytes = fs::read(&blob).expect("the layer blob is on the registry's disk");
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        fs::write(&blob, &bytes).unwrap();

        let cache_b = tmp.path().join("cache-b");
        let b = node(&registry, &cache_b, 1 << 30);
        let err = b.fetch(&remote(&digest)).await.unwrap_err();
        assert!(matches!(err, Error::Storage(_)), "{err}");
        assert!(err.to_string().contains("digest"), "{err}");
        assert!(
            cache_entries(&cache_b).is_empty(),
            "nothing kept in the cache"
        );
        assert_eq!(
            fs::read_dir(cache_b.join("tmp")).unwrap().count(),
            0,
            "no download left"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_cache_evicts_the_least_recently_used_by_size() {
        let Some(registry) = OciRegistry::start("oci_eviction") else {
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        let a = node(&registry, &tmp.path().join("cache-a"), 1 << 30);
        let mut digests = Vec::new();
        for i in 0..3 {
            let dir = tmp.path().join(format!("build-{i}"));
            fs::create_dir(&dir).unwrap();
            fs::write(dir.join("data"), vec![i as u8; 10_000]).unwrap();
            digests.push(digest_of(&a.put_directory(&dir).await.unwrap()));
        }
        // Room for two artifacts of 10,000 bytes, not three.
        let cache_b = tmp.path().join("cache-b");
        let b = node(&registry, &cache_b, 25_000);
        b.fetch(&remote(&digests[0])).await.unwrap();
        b.fetch(&remote(&digests[1])).await.unwrap();
        b.fetch(&remote(&digests[0])).await.unwrap(); // 0 is now used after 1
        assert_eq!(b.downloads(), 2);
        b.fetch(&remote(&digests[2])).await.unwrap();
        let mut kept = vec![digests[0].hex().to_string(), digests[2].hex().to_string()];
        kept.sort();
        assert_eq!(
            cache_entries(&cache_b),
            kept,
            "1 was the least recently used"
        );
        assert_eq!(b.cache_bytes(), 20_000);

        // 1 comes back by downloading again, and pushes out 0 (now the oldest).
        b.fetch(&remote(&digests[1])).await.unwrap();
        assert_eq!(b.downloads(), 4);
        let mut kept = vec![digests[1].hex().to_string(), digests[2].hex().to_string()];
        kept.sort();
        assert_eq!(cache_entries(&cache_b), kept);

        // One artifact larger than the whole cache is still kept (the newest stays).
        let tiny = node(&registry, &tmp.path().join("cache-tiny"), 1);
        let big = tiny.fetch(&remote(&digests[0])).await.unwrap();
        assert!(path_of(&big).is_dir());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_fetches_of_one_digest_download_once() {
        let Some(registry) = OciRegistry::start("oci_concurrent") else {
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        let a = node(&registry, &tmp.path().join("cache-a"), 1 << 30);
        let build = make_tree_at(tmp.path(), "build", "one");
        // Larger than one 4 MiB push chunk, so the layer goes up in several.
        let big: Vec<u8> = (0..9_500_000u32).map(|i| (i % 253) as u8).collect();
        fs::write(build.join("big.bin"), &big).unwrap();
        let reference = tmp.path().join("reference");
        fs::create_dir(&reference).unwrap();
        make_tree(&reference, "one", true);
        fs::write(reference.join("big.bin"), &big).unwrap();
        let digest = digest_of(&a.put_directory(&build).await.unwrap());

        let b = node(&registry, &tmp.path().join("cache-b"), 1 << 30);
        let fetches = (0..16).map(|_| {
            let b = b.clone();
            let artifact = remote(&digest);
            tokio::spawn(async move { b.fetch(&artifact).await })
        });
        let results = futures::future::join_all(fetches).await;
        let results: Vec<Artifact> = results
            .into_iter()
            .map(|r| {
                r.unwrap()
                    .unwrap_or_else(|e| panic!("a concurrent fetch failed: {e}"))
            })
            .collect();
        let first = results[0].clone();
        assert!(results.iter().all(|r| *r == first));
        assert_eq!(b.downloads(), 1, "sixteen fetches, one download");
        assert_eq!(listing(&reference), listing(&path_of(&first)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn remove_drops_the_local_copy_and_keeps_the_shared_manifest() {
        let Some(registry) = OciRegistry::start("oci_remove") else {
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        let a = node(&registry, &tmp.path().join("cache-a"), 1 << 30);
        let build = make_tree_at(tmp.path(), "build", "one");
        let put = a.put_directory(&build).await.unwrap();
        let digest = digest_of(&put);
        let manifest = format!("/v2/sopm/artifacts/manifests/sha256-{}", digest.hex());
        assert_eq!(registry.status("HEAD", &manifest), 200);

        // Another version with the same files (here: another node's) names the same
        // content; removing one leaves the registry's copy for the other.
        let b = node(&registry, &tmp.path().join("cache-b"), 1 << 30);
        a.remove(&put).await.unwrap();
        assert!(!path_of(&put).exists());
        assert_eq!(registry.status("HEAD", &manifest), 200);
        let fetched = b.fetch(&remote(&digest)).await.unwrap();
        assert!(
            path_of(&fetched).is_dir(),
            "the other version still fetches it"
        );
        a.remove(&put).await.unwrap();

        // An operator who knows no version names it any more deletes it explicitly.
        a.delete_manifest(&digest).await.unwrap();
        assert_eq!(registry.status("HEAD", &manifest), 404);
        a.delete_manifest(&digest).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreachable_registry_is_unavailable_and_named() {
        let Some(mut registry) = OciRegistry::start("oci_unreachable") else {
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        let a = node(&registry, &tmp.path().join("cache-a"), 1 << 30);
        let build = make_tree_at(tmp.path(), "build", "one");
        let digest = canonical_digest(&build).unwrap();
        registry.kill();

        let err = a.put_directory(&build).await.unwrap_err();
        assert_eq!(err.code(), "unavailable", "{err}");
        assert!(
            err.to_string().contains(&registry.addr.to_string()),
            "{err}"
        );
        assert!(build.exists(), "a failed put keeps the build directory");

        let started = std::time::Instant::now();
        let err = a.fetch(&remote(&digest)).await.unwrap_err();
        eprintln!(
            "fetch from a registry that is down failed after {:?}",
            started.elapsed()
        );
        assert_eq!(err.code(), "unavailable", "{err}");
        assert!(
            err.to_string().contains(&registry.addr.to_string()),
            "{err}"
        );
        assert!(cache_entries(&tmp.path().join("cache-a")).is_empty());
    }

    #[test]
    fn configs_are_checked_and_secrets_kept_out_of_debug() {
        let ok = OciArtifactStore::new(
            OciConfig::new("http://127.0.0.1:5000", "/tmp/c").with_basic_auth("u", "hunter2"),
        )
        .unwrap();
        assert!(!format!("{ok:?}").contains("hunter2"));
        let config =
            OciConfig::new("registry.example.com", "/tmp/c").with_basic_auth("u", "hunter2");
        assert!(!format!("{config:?}").contains("hunter2"));
        for bad in ["ftp://x", "http://", "https://host/path"] {
            let err = OciArtifactStore::new(OciConfig::new(bad, "/tmp/c")).unwrap_err();
            assert_eq!(err.code(), "invalid_input", "{bad}");
        }
        let err = OciArtifactStore::new(
            OciConfig::new("http://127.0.0.1:5000", "/tmp/c").with_repository("Bad Repo"),
        )
        .unwrap_err();
        assert_eq!(err.code(), "invalid_input");
    }
}
