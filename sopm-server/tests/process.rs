//! The real `sopm` binary: the CLI walk-through, durability across a kill -9, and a
//! graceful SIGTERM. Each test runs its own server on a free loopback port with
//! SQLite in a temporary directory.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{json, Value};
use support::server::{stderr, stdout, Server, ServerOptions};
use support::BIN;

/// A server with SQLite in `data` and `extra` arguments after `serve`.
fn start(data: &Path, extra: &[&str]) -> Server {
    Server::start(ServerOptions::new().data_dir(data).args(extra))
}

#[test]
fn cli_walkthrough() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);

    let out = server.cli(&["functions"]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("math.add"));
    assert!(stdout(&out).trim_end().ends_with("100 functions"));

    let out = server.cli(&["exec", "math.add", r#"{"a":2,"b":3}"#]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out).trim(), "5");

    let out = server.cli(&["exec", "text.uppercase", r#"{"text":"héllo"}"#, "--async"]);
    assert!(out.status.success(), "{out:?}");
    let answer: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let id = answer["id"].as_str().unwrap().to_string();
    server.finished_job(&id);
    let out = server.cli(&["status", &id]);
    let job: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(job["output"], "HÉLLO");

    let out = server.cli(&["exec", "math.divide", r#"{"a":1,"b":0}"#]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("domain_error"));

    let out = server.cli(&["exec", "math.add", "{oops"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid JSON"));

    let out = server.cli(&["stats"]);
    let stats: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(stats["jobs"]["succeeded"].as_u64().unwrap() >= 2);
}

#[test]
fn accepted_jobs_survive_kill_9_and_reach_a_terminal_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path(), &["--max-concurrency", "2"]);
    let mut ids = Vec::new();
    // Two long jobs take both slots (one tenant may hold only part of the slots, so
    // they are two tenants'); everything after them waits in the queue.
    for n in 0..2 {
        let (st, v) = server.post_json(
            "/api/execute",
            &json!({"function": "util.sleep", "input": {"ms": 10000}, "async": true,
                     "user_id": format!("sleeper{n}")}),
        );
        assert_eq!(st, 202, "{v}");
        let id = v["id"].as_str().unwrap();
        ids.push((format!("{id}?user_id=sleeper{n}"), "sleep"));
    }
    for i in 0..20 {
        let (st, v) = server.post_json(
            "/api/execute",
            &json!({"function": "math.add", "input": {"a": i, "b": 1}, "async": true}),
        );
        assert_eq!(st, 202, "{v}");
        ids.push((v["id"].as_str().unwrap().to_string(), "add"));
    }
    server.signal("-KILL");
    server.wait_exit();

    let server = start(dir.path(), &[]);
    for (i, (id, kind)) in ids.iter().enumerate() {
        let job = server.finished_job(id);
        match *kind {
            "sleep" => {
                assert_eq!(job["status"], "interrupted", "{job}");
                assert_eq!(job["error"]["code"], "interrupted");
            }
            _ => {
                assert_eq!(job["status"], "succeeded", "{job}");
                assert_eq!(job["output"], json!(i as i64 - 2 + 1));
                assert_eq!(job["attempts"], 1);
            }
        }
    }
}

#[test]
fn sigterm_lets_running_jobs_finish() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path(), &[]);
    let (st, v) = server.post_json(
        "/api/execute",
        &json!({"function": "util.sleep", "input": {"ms": 700}, "async": true}),
    );
    assert_eq!(st, 202);
    let id = v["id"].as_str().unwrap().to_string();
    server.signal("-TERM");
    let status = server.wait_exit();
    assert!(status.success(), "exit status {status:?}");

    let server = start(dir.path(), &[]);
    let job = server.finished_job(&id);
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["output"]["slept_ms"], 700);
}

/// The CLI's offline commands (`keys`) on the database in `data`, no server.
fn sopm(data: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("SOPM_DATA_DIR", data)
        .env_remove("SOPM_API_KEY")
        .env_remove("SOPM_URL")
        .output()
        .expect("run sopm")
}

#[test]
fn keys_then_fn_deploy_list_invoke_logs_rm_through_the_cli() {
    if support::skip::skipped(support::skip::bwrap_missing()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A key made before the server starts, straight in its database.
    let out = sopm(
        dir.path(),
        &["keys", "create", "--tenant", "alice", "--label", "ci"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let alice = stdout(&out).trim().to_string();
    assert!(alice.starts_with("sopm_") && alice.len() == 69, "{alice}");
    assert!(stderr(&out).contains("shown only once"));

    let server = start(dir.path(), &["--auth", "api_key"]);
    // A key made while the server runs works at once.
    let out = sopm(dir.path(), &["keys", "create", "--tenant", "bob"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let bob = stdout(&out).trim().to_string();

    let as_user = |key: &str, args: &[&str]| server.cli_as(key, args);

    // Alice deploys a Python directory under a name, with `extra` flags.
    let deploy = |dir: &str, name: &str, extra: &[&str]| -> Output {
        let mut args = vec!["fn", "deploy", dir, "--runtime", "python", "--name", name];
        args.extend_from_slice(extra);
        as_user(&alice, &args)
    };

    let src = tempfile::tempdir().unwrap();
    std::fs::write(
        src.path().join("main.py"),
        "def handle(event, context):\n    print('hi')\n    return {'hello': event.get('name')}\n",
    )
    .unwrap();
    std::fs::create_dir_all(src.path().join("__pycache__")).unwrap();
    std::fs::write(src.path().join("__pycache__/main.cpython-311.pyc"), "junk").unwrap();
    let src_dir = src.path().to_str().unwrap();

    let out = deploy(src_dir, "hello", &[]);
    assert!(
        out.status.success(),
        "deploy: {}\n{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("hello v1 is ready"),
        "{}",
        stdout(&out)
    );
    let progress = stderr(&out);
    assert!(
        progress.contains("building") && progress.contains("==> building hello v1"),
        "{progress}"
    );
    assert!(progress.contains("artifact ready"), "{progress}");
    let artifacts = dir.path().join("artifacts");
    let built: Vec<_> = std::fs::read_dir(&artifacts).unwrap().collect();
    assert_eq!(built.len(), 1, "one function's artifacts");
    let v1 = built[0].as_ref().unwrap().path().join("v1");
    assert!(v1.join("main.py").exists());
    assert!(!v1.join("__pycache__").exists(), "caches are not uploaded");

    let out = as_user(&alice, &["fn", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listing = stdout(&out);
    assert!(
        listing.contains("hello") && listing.contains("ready") && listing.contains("python"),
        "{listing}"
    );
    let out = as_user(&bob, &["fn", "list"]);
    assert!(out.status.success());
    assert!(
        !stdout(&out).contains("hello"),
        "bob sees only his own functions"
    );

    // The call runs in a bubblewrap sandbox; the function's print is its log.
    let out = as_user(&alice, &["fn", "invoke", "hello", r#"{"name":"Ada"}"#]);
    assert!(out.status.success(), "{}", stderr(&out));
    let answer: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(answer, serde_json::json!({"hello": "Ada"}));
    let out = as_user(&bob, &["fn", "invoke", "hello", "{}"]);
    assert!(stderr(&out).contains("not_found"), "{}", stderr(&out));

    // An executor the server does not have is refused before anything is stored.
    let out = deploy(src_dir, "elsewhere", &["--executor", "kubernetes"]);
    assert!(!out.status.success());
    let refused = stderr(&out);
    assert!(
        refused.contains("invalid_input")
            && refused.contains("'kubernetes'")
            && refused.contains("process"),
        "{refused}"
    );
    let out = deploy(src_dir, "chosen", &["--executor", "process"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("building for process"),
        "{}",
        stderr(&out)
    );
    let out = as_user(&alice, &["fn", "rm", "chosen"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // A build that fails shows its log and exits 1.
    let bad = tempfile::tempdir().unwrap();
    std::fs::write(bad.path().join("other.py"), "x = 1\n").unwrap();
    let out = deploy(bad.path().to_str().unwrap(), "broken", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("build failed"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("main.py"),
        "the log names the missing file: {}",
        stderr(&out)
    );

    let out = as_user(&alice, &["fn", "logs", "hello"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("hi"), "{}", stdout(&out));

    // Without a key, or with a wrong one: 401.
    let out = server.cli(&["fn", "list"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("unauthorized"), "{}", stderr(&out));

    let out = as_user(&alice, &["fn", "rm", "hello"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("deleted hello"));
    assert!(!v1.exists(), "the artifact went with it");
    let out = as_user(&alice, &["fn", "list"]);
    assert!(!stdout(&out).contains("hello"));

    let out = sopm(dir.path(), &["keys", "list", "--tenant", "alice"]);
    assert!(out.status.success());
    let line = stdout(&out);
    assert!(line.contains("ci") && !line.contains(&alice[5..]), "{line}");
    let key_id = line.split_whitespace().next().unwrap().to_string();
    let out = sopm(
        dir.path(),
        &["keys", "revoke", &key_id, "--tenant", "alice"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = sopm(dir.path(), &["keys", "revoke", &key_id, "--tenant", "bob"]);
    assert!(!out.status.success(), "another tenant's key is not found");
}

#[test]
fn serving_without_auth_off_loopback_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .env_remove("SOPM_AUTH")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("without authentication"),
        "{}",
        stderr(&out)
    );
}
