//! Hostile code in process sandboxes: each attack must be contained and reported with a
//! clear error code (or fail inside the sandbox, as the function sees it), and the same
//! executor must still run a normal function afterwards.
#![cfg(feature = "process")]

#[path = "process_support.rs"]
mod support;

use std::net::TcpListener;
use std::time::Duration;

use serde_json::json;
use sopm_backends::sandbox::RunnerKind;
use sopm_core::{Executor, Limits, Runtime};
use support::*;

const PY_TOOLS: &[&str] = &["bwrap", "prlimit", "python3"];

fn ready(test: &str) -> Option<sopm_backends::process::ProcessExecutor> {
    integration_ready(test, PY_TOOLS).then(|| executor(&[RunnerKind::Python]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_of_the_host_are_not_visible() {
    let Some(exec) = ready("secrets_of_the_host_are_not_visible") else {
        return;
    };
    // A stand-in for the server's data directory, outside /tmp like a real one.
    let data = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
    std::fs::write(data.path().join("secret.db"), b"TOP SECRET").unwrap();
    let secret = data.path().join("secret.db");
    let f = python_limited(
        concat!(
            "import os\n",
            "def attempt(path):\n",
            "    try:\n",
            "        with open(path, 'rb') as fh:\n",
            "            return fh.read(64).decode('latin-1')\n",
            "    except Exception as e:\n",
            "        return 'denied: ' + type(e).__name__\n",
            "def handle(event, context):\n",
            "    out = {p: attempt(p) for p in event['paths']}\n",
            "    out['root'] = sorted(os.listdir('/'))\n",
            "    out['etc'] = sorted(os.listdir('/etc')) if os.path.isdir('/etc') else []\n",
            "    return out\n",
        ),
        tight(),
    );
    let paths = [
        "/etc/shadow".to_string(),
        "/root/.bash_history".to_string(),
        "/proc/1/environ".to_string(),
        secret.to_string_lossy().into_owned(),
    ];
    let out = call(&exec, &f, json!({"paths": paths}))
        .await
        .unwrap()
        .value;
    for p in &paths[..2] {
        assert!(out[p].as_str().unwrap().starts_with("denied"), "{p}: {out}");
    }
    assert!(
        out[&paths[3]].as_str().unwrap().starts_with("denied"),
        "the data dir is visible: {out}"
    );
    assert!(!out.to_string().contains("TOP SECRET"));
    let etc = out["etc"].as_array().unwrap();
    assert!(
        !etc.contains(&json!("shadow")) && !etc.contains(&json!("passwd")),
        "{out}"
    );
    let root = out["root"].as_array().unwrap();
    assert!(
        !root.contains(&json!("root")) || !root.contains(&json!("work")),
        "{out}"
    );
    still_serves(&exec).await;
    exec.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_outside_tmp_fail() {
    let Some(exec) = ready("writes_outside_tmp_fail") else {
        return;
    };
    let f = python_limited(
        "def handle(event, context):\n    out = {}\n    for p in event['paths']:\n        try:\n            open(p, 'w').write('x')\n            out[p] = 'written'\n        except Exception as e:\n            out[p] = type(e).__name__\n    return out\n",
        tight(),
    );
    let out = call(
        &exec,
        &f,
        json!({"paths": ["/x", "/usr/x", "/etc/x", "/run/sopm/runner.py", "/tmp/ok"]}),
    )
    .await
    .unwrap()
    .value;
    assert_eq!(out["/tmp/ok"], json!("written"));
    for p in ["/x", "/usr/x", "/etc/x", "/run/sopm/runner.py"] {
        assert_ne!(out[p], json!("written"), "{p}: {out}");
    }
    // /tmp is capped: filling it fails inside the sandbox, not on the host.
    let fill = python_limited(
        "def handle(event, context):\n    try:\n        with open('/tmp/big', 'wb') as f:\n            for _ in range(200):\n                f.write(b'x' * (1 << 20))\n        return 'filled'\n    except OSError as e:\n        return 'stopped: ' + type(e).__name__\n",
        Limits {
            tmpfs_mb: 8,
            ..tight()
        },
    );
    let r = call(&exec, &fill, json!({})).await;
    match r {
        Ok(v) => assert!(v.value.as_str().unwrap().starts_with("stopped"), "{v:?}"),
        Err(e) => assert!(
            ["function_error", "sandbox_crashed"].contains(&e.code()),
            "{e:?}"
        ),
    }
    still_serves(&exec).await;
    exec.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_network_to_the_host() {
    let Some(exec) = ready("no_network_to_the_host") else {
        return;
    };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    // Even a function asking for network gets none unless the operator allows it.
    let f = python_limited(
        "import socket\ndef handle(event, context):\n    try:\n        s = socket.create_connection(('127.0.0.1', event['port']), timeout=1)\n        s.sendall(b'escaped')\n        return 'connected'\n    except OSError as e:\n        return 'refused: ' + type(e).__name__\n",
        Limits {
            network: true,
            ..tight()
        },
    );
    let out = call(&exec, &f, json!({"port": port})).await.unwrap().value;
    assert!(out.as_str().unwrap().starts_with("refused"), "{out}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(listener.accept().is_err(), "the sandbox reached the host");
    still_serves(&exec).await;
    exec.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_is_contained() {
    let Some(exec) = ready("a_fork_bomb_is_contained") else {
        return;
    };
    let f = python_limited(
        "import os\ndef handle(event, context):\n    while True:\n        try:\n            os.fork()\n        except OSError:\n            pass\n",
        tight(),
    );
    // Counting forks until the kernel refuses shows where the limit sits.
    let counter = python_limited(
        concat!(
            "import os, time\n",
            "def handle(event, context):\n",
            "    n = 0\n",
            "    try:\n",
            "        while n < 5000:\n",
            "            if os.fork() == 0:\n",
            "                time.sleep(30)\n",
            "                os._exit(0)\n",
            "            n += 1\n",
            "    except OSError as e:\n",
            "        return {'forked': n, 'stopped_by': type(e).__name__}\n",
            "    return {'forked': n}\n",
        ),
        tight(),
    );
    let out = call(&exec, &counter, json!({})).await.unwrap().value;
    eprintln!("fork counter: {out}");
    if exec.cgroups_enabled() == Some(true) {
        assert!(
            out["forked"].as_u64().unwrap() <= tight().max_processes,
            "{out}"
        );
        assert_eq!(out["stopped_by"], json!("BlockingIOError"), "{out}");
        // The sleeping children make the instance unfit for reuse.
        assert!(exec.counters().replaced >= 1);
    }
    let e = call(&exec, &f, json!({})).await.unwrap_err();
    eprintln!("fork bomb: {e:?}");
    assert!(
        ["timeout", "sandbox_crashed", "function_error"].contains(&e.code()),
        "{e:?}"
    );
    // The sandbox is gone with every process it forked.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let left = std::process::Command::new("pgrep")
        .args(["-f", "/run/sopm/runner.py"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
        .unwrap_or(0);
    assert!(
        left < 20,
        "{left} runner processes left after the fork bomb"
    );
    still_serves(&exec).await;
    exec.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_allocation_is_out_of_memory() {
    let Some(exec) = ready("unbounded_allocation_is_out_of_memory") else {
        return;
    };
    let f = python_limited(
        "def handle(event, context):\n    hoard = []\n    while True:\n        hoard.append(b'x' * (8 << 20))\n",
        Limits {
            memory_mb: 64,
            ..tight()
        },
    );
    let e = call(&exec, &f, json!({})).await.unwrap_err();
    eprintln!("python memory hog: {e:?}");
    assert_eq!(e.code(), "out_of_memory", "{e:?}");
    // Also when the kernel has to kill a child of the runner (no MemoryError to catch).
    let g = function_with(
        Runtime::Shell,
        "run.sh",
        &[("run.sh", b"x=a; while :; do x=$x$x; done\n")],
        Limits {
            memory_mb: 64,
            ..tight()
        },
    );
    let e = call(&exec, &g, json!({})).await.unwrap_err();
    eprintln!("shell memory hog: {e:?}");
    if exec.cgroups_enabled() == Some(true) {
        assert_eq!(e.code(), "out_of_memory", "{e:?}");
    } else {
        assert!(
            ["out_of_memory", "function_error"].contains(&e.code()),
            "{e:?}"
        );
    }
    still_serves(&exec).await;
    exec.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spinning_and_sleeping_past_the_deadline_time_out() {
    let Some(exec) = ready("spinning_and_sleeping_time_out") else {
        return;
    };
    let limits = Limits {
        timeout_ms: 1_000,
        ..tight()
    };
    let spin = python_limited(
        "def handle(event, context):\n    while True:\n        pass\n",
        limits.clone(),
    );
    let e = call(&exec, &spin, json!({})).await.unwrap_err();
    assert_eq!(e.code(), "timeout", "{e:?}");
    let sleep = python_limited(
        "import time\ndef handle(event, context):\n    time.sleep(30)\n    return 'woke'\n",
        limits,
    );
    let e = call(&exec, &sleep, json!({})).await.unwrap_err();
    assert_eq!(e.code(), "timeout", "{e:?}");
    assert!(exec.counters().replaced >= 2);
    still_serves(&exec).await;
    exec.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn printing_100_mb_is_capped() {
    let Some(exec) = ready("printing_100_mb_is_capped") else {
        return;
    };
    let limits = Limits {
        timeout_ms: 20_000,
        max_output_bytes: 64 * 1024,
        ..tight()
    };
    let f = python_limited(
        "import sys\ndef handle(event, context):\n    chunk = 'y' * (1 << 20)\n    for _ in range(100):\n        sys.stdout.write(chunk)\n    return 'printed'\n",
        limits.clone(),
    );
    let out = call(&exec, &f, json!({})).await.unwrap();
    assert_eq!(out.value, json!("printed"));
    let logs = out.logs.unwrap();
    assert!(
        logs.len() < 64 * 1024 + 200,
        "{} bytes of logs kept",
        logs.len()
    );
    assert!(
        logs.contains("[sopm: logs truncated"),
        "no truncation marker"
    );
    // 100 MB without a newline straight onto the frame channel.
    let g = python_limited(
        "import os\ndef handle(event, context):\n    chunk = b'z' * (1 << 20)\n    for _ in range(100):\n        os.write(4, chunk)\n    return 'done'\n",
        limits,
    );
    let e = call(&exec, &g, json!({})).await.unwrap_err();
    assert_eq!(e.code(), "output_too_large", "{e:?}");
    still_serves(&exec).await;
    exec.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_frame_pipes() {
    let Some(exec) = ready("closing_the_frame_pipes") else {
        return;
    };
    let f = python_limited(
        "import os\ndef handle(event, context):\n    os.close(4)\n    return 'closed'\n",
        tight(),
    );
    let e = call(&exec, &f, json!({})).await.unwrap_err();
    assert_eq!(e.code(), "sandbox_crashed", "{e:?}");
    // Closing sys.stdout only loses the function's own prints.
    let g = python_limited(
        "import sys\ndef handle(event, context):\n    sys.stdout.close()\n    return 'fine'\n",
        tight(),
    );
    assert_eq!(
        call(&exec, &g, json!({})).await.unwrap().value,
        json!("fine")
    );
    // Closing the frame input answers once; the instance is then dead and replaced.
    let h = python_limited(
        "import os\ndef handle(event, context):\n    os.close(3)\n    return 'half'\n",
        tight(),
    );
    let first = call(&exec, &h, json!({})).await;
    eprintln!("closed frame input: {first:?}");
    assert!(
        matches!(&first, Ok(o) if o.value == json!("half"))
            || first.as_ref().is_err_and(|e| e.code() == "sandbox_crashed"),
        "{first:?}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = call(&exec, &h, json!({})).await;
    assert!(
        matches!(&second, Ok(o) if o.value == json!("half"))
            || second
                .as_ref()
                .is_err_and(|e| e.code() == "sandbox_crashed"),
        "{second:?}"
    );
    still_serves(&exec).await;
    exec.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_parent_and_everything() {
    let Some(exec) = ready("killing_the_parent_and_everything") else {
        return;
    };
    let f = python_limited(
        "import os\ndef handle(event, context):\n    os.kill(os.getppid(), 9)\n    return 'still here'\n",
        tight(),
    );
    let r = call(&exec, &f, json!({})).await;
    eprintln!("kill parent: {r:?}");
    assert!(
        matches!(&r, Ok(o) if o.value == json!("still here"))
            || r.as_ref().is_err_and(|e| e.code() == "sandbox_crashed"),
        "{r:?}"
    );
    let g = function_with(
        Runtime::Shell,
        "run.sh",
        &[("run.sh", b"kill -9 -1\necho '\"unreachable?\"'\n")],
        tight(),
    );
    let r = call(&exec, &g, json!({})).await;
    assert!(
        r.as_ref().is_err_and(|e| e.code() == "sandbox_crashed"),
        "{r:?}"
    );
    still_serves(&exec).await;
    exec.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_cgroups_memory_is_still_bounded() {
    if !integration_ready("without_cgroups_memory_is_still_bounded", PY_TOOLS) {
        return;
    }
    let exec = config(&[RunnerKind::Python])
        .with_cgroups(false)
        .build()
        .unwrap();
    let f = python_limited(
        "def handle(event, context):\n    hoard = []\n    while True:\n        hoard.append(b'x' * (8 << 20))\n",
        Limits {
            memory_mb: 64,
            ..tight()
        },
    );
    let e = call(&exec, &f, json!({})).await.unwrap_err();
    assert_eq!(e.code(), "out_of_memory", "{e:?}");
    assert_eq!(exec.cgroups_enabled(), Some(false));
    still_serves(&exec).await;
    exec.shutdown().await;
}
