//! The data directory and the database are private to the server's user: the
//! directory `0700`, `sopm.db` and its `-wal`/`-shm` `0600`, including when an older
//! server left them readable by others.

#![cfg(unix)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use sopm_server::config::{ServerConfig, Storage};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn open(data_dir: &Path) -> sopm_server::server::Services {
    let c = ServerConfig {
        storage: Storage::Sqlite,
        data_dir: data_dir.to_path_buf(),
        ..Default::default()
    };
    sopm_server::server::build_services(&c).unwrap()
}

#[tokio::test]
async fn a_new_data_dir_and_database_are_private() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("a/sopm-data");
    let services = open(&data);
    // A write, so the WAL and its index exist.
    let tenant = sopm_core::TenantId::new("alice").unwrap();
    services.keys.create(&tenant, "").await.unwrap();
    assert_eq!(mode(&data), 0o700, "data dir");
    for name in ["sopm.db", "sopm.db-wal", "sopm.db-shm"] {
        let p = data.join(name);
        assert!(p.exists(), "{name} missing");
        assert_eq!(mode(&p), 0o600, "{name}");
    }
}

#[tokio::test]
async fn a_data_dir_left_readable_is_made_private_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("sopm-data");
    drop(open(&data));
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    for name in ["sopm.db", "sopm.db-wal", "sopm.db-shm"] {
        let p = data.join(name);
        if p.exists() {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    let services = open(&data);
    let tenant = sopm_core::TenantId::new("alice").unwrap();
    services.keys.create(&tenant, "").await.unwrap();
    assert_eq!(mode(&data), 0o700);
    for name in ["sopm.db", "sopm.db-wal", "sopm.db-shm"] {
        assert_eq!(mode(&data.join(name)), 0o600, "{name}");
    }
}
