//! Hostile builds against the real `sopm serve`: one tenant uploads functions whose
//! dependency's build code is a fork bomb, a memory hog or a disk filler (served by a
//! private package index), while the server goes on serving built-ins and another
//! tenant's function. Each build ends `failed` naming the limit it hit, and nothing of
//! it is left running.
//!
//! Needs bubblewrap, pip, openssl and writable cgroups: without them the test skips
//! with a printed reason, unless `SOPM_REQUIRE_INTEGRATION=1`, where it fails instead.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use support::server::{Server, ServerOptions};
use support::skip::{bwrap_missing, pip_missing, skipped};

#[path = "../../sopm-backends/tests/support/hostile_index.rs"]
mod hostile_index;

use hostile_index::HostileIndex;

/// Uploads a python function `name` of `tenant` and returns its id.
fn upload(
    server: &Server,
    tenant: &str,
    name: &str,
    files: Value,
    requirements: Option<String>,
) -> String {
    let mut body = json!({
        "name": name, "runtime": "python", "handler": "main.handle",
        "files": files, "user_id": tenant,
    });
    if let Some(r) = requirements {
        body["requirements"] = r.into();
    }
    let (st, v) = server.post_json("/api/user-functions", &body);
    assert_eq!(st, 202, "{v}");
    v["id"].as_str().unwrap().to_string()
}

/// The function `id` of `tenant`, as the API shows it now.
fn function(server: &Server, tenant: &str, id: &str) -> Value {
    let (st, v) = server.get(&format!("/api/user-functions/{id}?user_id={tenant}"));
    assert_eq!(st, 200, "{v}");
    v
}

/// Why the hostile builds cannot run here, if they cannot.
fn missing() -> Option<&'static str> {
    bwrap_missing().or_else(pip_missing).or_else(|| {
        if !HostileIndex::tools_present() {
            Some("openssl or python3 is missing (the hostile package index needs them)")
        } else if !Path::new("/sys/fs/cgroup/pids").is_dir()
            && !Path::new("/sys/fs/cgroup/cgroup.controllers").is_file()
        {
            Some("no cgroup hierarchy (the memory and process limits need one)")
        } else {
            None
        }
    })
}

#[test]
fn hostile_builds_stop_at_their_limits_while_the_server_serves_others() {
    if skipped(missing()) {
        return;
    }
    let index = HostileIndex::start();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        ServerOptions::new()
            .data_dir(dir.path())
            .env("SOPM_BUILD_PIP_INDEX_URL", &index.url)
            .env("SOPM_BUILD_CA_BUNDLE", &index.ca_bundle)
            .env("SOPM_BUILD_CONCURRENCY", "3")
            .env("SOPM_BUILD_MAX_PROCESSES", "64")
            .env("SOPM_BUILD_MEMORY_MB", "192")
            .env("SOPM_BUILD_DISK_MB", "32")
            .env("SOPM_BUILD_TIMEOUT_SECS", "240"),
    );

    // Bob's function, built and warm before the hostile builds start.
    let echo = upload(
        &server,
        "bob",
        "echo",
        json!({"main.py": "def handle(event, context):\n    return {'echo': event}\n"}),
        None,
    );
    let built = server.built_function(&format!("/api/user-functions/{echo}?user_id=bob"));
    assert_eq!(built["status"], "ready");
    let serves_others = |round: u64| {
        let (st, v) = server.post_json(
            "/api/execute",
            &json!({"function": "math.add", "input": {"a": round, "b": 1}}),
        );
        assert_eq!((st, &v["output"]), (200, &json!(round + 1)), "{v}");
        let (st, v) = server.post_json(
            &format!("/api/user-functions/{echo}/execute?user_id=bob"),
            &json!({"input": {"round": round}}),
        );
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["output"], json!({"echo": {"round": round}}));
    };
    serves_others(0);

    let hostile = [
        (hostile_index::FORK_BOMB, "process limit of 64 reached"),
        (hostile_index::MEMORY_HOG, "memory limit of 192 MiB reached"),
        (hostile_index::DISK_FILLER, "disk limit of 32 MiB reached"),
    ];
    let ids: Vec<String> = hostile
        .iter()
        .map(|(package, _)| {
            upload(
                &server,
                "alice",
                package.comm,
                json!({"main.py": "def handle(event, context):\n    return 1\n"}),
                Some(format!("{}==1.0\n", package.name)),
            )
        })
        .collect();

    // Built-ins and Bob's calls go on while Alice's builds run and end.
    let mut rounds_during_builds = 0;
    let mut round = 1;
    support::poll(Duration::from_secs(300), Duration::from_millis(100), || {
        let building = ids
            .iter()
            .filter(|id| function(&server, "alice", id)["status"] == "building")
            .count();
        if building == 0 {
            return Ok(());
        }
        serves_others(round);
        rounds_during_builds += 1;
        round += 1;
        Err("the hostile builds did not end".into())
    });
    assert!(rounds_during_builds > 0);

    for ((package, stopped), id) in hostile.iter().zip(&ids) {
        let f = function(&server, "alice", id);
        assert_eq!(f["status"], "failed", "{f}");
        let log = f["build_log"].as_str().unwrap();
        assert!(
            log.contains(&format!("==> build stopped: {stopped}\n")),
            "{}: {log}",
            package.name
        );
        assert_eq!(
            hostile_index::survivors(package.comm),
            Vec::<u32>::new(),
            "{} left processes running",
            package.name
        );
    }
    // Nothing of the hostile builds stayed in the data directory.
    let artifacts = dir.path().join("artifacts");
    for id in &ids {
        assert!(hostile_index::tree_bytes(&artifacts.join(id)) == 0);
    }
    serves_others(round);
}
