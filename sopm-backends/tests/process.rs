//! The process executor, for real under bubblewrap: every runtime, payloads, errors,
//! logs, concurrency, isolation between functions, replacement, reaping, stem cells.
#![cfg(feature = "process")]

#[path = "process_support.rs"]
mod support;

use std::time::Duration;

use serde_json::json;
use sopm_backends::sandbox::RunnerKind;
use sopm_core::{Executor, Limits, Runtime};
use support::*;

const PY_TOOLS: &[&str] = &["bwrap", "prlimit", "python3"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_hello_world_uses_a_stem_cell() {
    if !integration_ready("python_hello_world_uses_a_stem_cell", PY_TOOLS) {
        return;
    }
    let exec = executor(&[RunnerKind::Python]);
    exec.start();
    wait_for_stem_cells(&exec, "python", 1).await;
    let f = python(HELLO_PY);
    let out = call(&exec, &f, json!({"name": "sopm"})).await.unwrap();
    assert_eq!(out.value, json!({"hello": "sopm"}));
    let c = exec.counters();
    assert_eq!(c.stem_cells_used, 1, "{c:?}");
    assert_eq!(c.cold_starts, 0, "{c:?}");
    // The second call reuses the now-specialised instance.
    call(&exec, &f, json!({})).await.unwrap();
    let c = exec.counters();
    assert_eq!((c.stem_cells_used, c.cold_starts), (1, 0), "{c:?}");
    let fn_pool = exec
        .pool_stats()
        .into_iter()
        .find(|s| s.pool.contains(&f.version.function_id))
        .unwrap();
    assert_eq!((fn_pool.started_total, fn_pool.idle), (1, 1));
    exec.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_hello_world_with_async_handler_and_logs() {
    if !integration_ready("node_hello_world", &["bwrap", "prlimit", "python3", "node"]) {
        return;
    }
    let exec = executor(&[RunnerKind::Node]);
    let f = function(
        Runtime::Node,
        "index.handle",
        &[(
            "index.js",
            b"exports.handle = async (event, context) => {\n  console.log('hi from node');\n  process.stdout.write('raw write\\n');\n  await new Promise(r => setTimeout(r, 5));\n  return { hello: event.name, remaining: context.getRemainingTimeInMillis() > 0 };\n};\n",
        )],
    );
    let out = call(&exec, &f, json!({"name": "node"})).await.unwrap();
    assert_eq!(out.value, json!({"hello": "node", "remaining": true}));
    let logs = out.logs.unwrap();
    assert!(logs.contains("hi from node"), "{logs}");
    assert!(logs.contains("raw write"), "{logs}");
    let out = call(&exec, &f, json!({"name": "again"})).await.unwrap();
    assert_eq!(out.value["hello"], json!("again"));

    let err = function(
        Runtime::Node,
        "index.handle",
        &[(
            "index.js",
            b"exports.handle = () => { console.log('about to fail'); throw new TypeError('bad thing'); };\n",
        )],
    );
    let e = call(&exec, &err, json!({})).await.unwrap_err();
    assert_eq!(e.code(), "function_error");
    assert!(e.to_string().contains("TypeError: bad thing"), "{e}");
    let sopm_core::Error::Function {
        traceback, logs, ..
    } = e
    else {
        unreachable!()
    };
    assert!(traceback.unwrap().contains("index.js"));
    let logs = logs.unwrap_or_default();
    assert!(
        logs.contains("about to fail"),
        "a failed call keeps its logs: {logs}"
    );
    exec.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_hello_world_and_failure() {
    if !integration_ready("shell_hello_world", PY_TOOLS) {
        return;
    }
    let exec = executor(&[RunnerKind::Python]);
    let f = function(
        Runtime::Shell,
        "run.sh",
        &[(
            "run.sh",
            b"#!/bin/sh\nread -r input\necho \"shell says hi\" >&2\nprintf '{\"got\": %s, \"shell\": true}\\n' \"$input\"\n",
        )],
    );
    let out = call(&exec, &f, json!({"n": 7})).await.unwrap();
    assert_eq!(out.value, json!({"got": {"n": 7}, "shell": true}));
    assert!(out.logs.unwrap().contains("shell says hi"));

    let failing = function(
        Runtime::Shell,
        "run.sh",
        &[(
            "run.sh",
            b"echo 'first line' >&2\necho 'it broke here' >&2\nexit 3\n",
        )],
    );
    let e = call(&exec, &failing, json!(null)).await.unwrap_err();
    assert_eq!(e.code(), "function_error");
    assert!(e.to_string().contains("exit status 3"), "{e}");
    assert!(e.to_string().contains("it broke here"), "{e}");
    exec.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_hello_world() {
    if !integration_ready("binary_hello_world", &["bwrap", "prlimit", "python3", "cc"]) {
        return;
    }
    let src = tempfile::tempdir().unwrap();
    let c = src.path().join("hello.c");
    std::fs::write(
        &c,
        b"#include <stdio.h>\nint main(void){size_t n=0;int ch;while((ch=getchar())!=EOF)n++;\nfprintf(stderr,\"binary log\\n\");printf(\"{\\\"binary\\\":true,\\\"input_bytes\\\":%zu}\\n\",n);return 0;}\n",
    )
    .unwrap();
    let exe = src.path().join("hello");
    let built = std::process::Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(&exe)
        .arg(&c)
        .output()
        .unwrap();
    if !built.status.success() {
        eprintln!(
            "skipping binary_hello_world: static linking is not possible here: {}",
            String::from_utf8_lossy(&built.stderr)
        );
        return;
    }
    let exec = executor(&[RunnerKind::Python]);
    let body = std::fs::read(&exe).unwrap();
    let f = function(Runtime::Binary, "bin/hello", &[("bin/hello", &body)]);
    let out = call(&exec, &f, json!({"k": "v"})).await.unwrap();
    assert_eq!(out.value, json!({"binary": true, "input_bytes": 9}));
    assert!(out.logs.unwrap().contains("binary log"));
    exec.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_and_unicode_payloads_round_trip() {
    if !integration_ready("large_and_unicode_payloads_round_trip", PY_TOOLS) {
        return;
    }
    let exec = executor(&[RunnerKind::Python]);
    let limits = Limits {
        max_output_bytes: 16 << 20,
        ..Limits::default()
    };
    let f = python_limited("def handle(event, context):\n    return event\n", limits);
    let text: String = "héllo wörld ✓ 日本語 🦀 \u{0} \"quoted\" \\ \n".repeat(40_000);
    let input = json!({
        "text": text,
        "numbers": (0..20_000).collect::<Vec<u32>>(),
        "nested": {"a": [{"b": [1.5, -2, null, true]}]},
        "emoji": "👩‍👩‍👧‍👦",
    });
    let out = call(&exec, &f, input.clone()).await.unwrap();
    assert_eq!(out.value, input);
    // And again on the same warm instance.
    let out = call(&exec, &f, json!("ünïcödé")).await.unwrap();
    assert_eq!(out.value, json!("ünïcödé"));
    exec.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_errors_carry_tracebacks_and_keep_the_instance() {
    if !integration_ready("function_errors", PY_TOOLS) {
        return;
    }
    let exec = executor(&[RunnerKind::Python]);
    let f = python(
        "def helper(x):\n    raise ValueError('no good: %s' % x)\n\ndef handle(event, context):\n    if event.get('fail'):\n        helper(event['fail'])\n    return 'fine'\n",
    );
    let e = call(&exec, &f, json!({"fail": "abc"})).await.unwrap_err();
    assert_eq!(e.code(), "function_error");
    assert_eq!(e.to_string(), "ValueError: no good: abc");
    let sopm_core::Error::Function { traceback, .. } = e else {
        unreachable!()
    };
    let tb = traceback.unwrap();
    assert!(tb.contains("main.py") && tb.contains("helper"), "{tb}");
    assert_eq!(
        call(&exec, &f, json!({})).await.unwrap().value,
        json!("fine")
    );
    assert_eq!(exec.counters().replaced, 0);

    let broken = python("def handle(event, context)\n    return 1\n");
    let e = call(&exec, &broken, json!({})).await.unwrap_err();
    assert_eq!(e.code(), "function_error");
    assert!(e.to_string().contains("failed to load"), "{e}");
    assert!(e.to_string().contains("SyntaxError"), "{e}");

    let not_json = python("def handle(event, context):\n    return {1, 2}\n");
    let e = call(&exec, &not_json, json!({})).await.unwrap_err();
    assert_eq!(e.code(), "function_error");
    assert!(e.to_string().contains("not JSON"), "{e}");
    exec.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_captured_and_kept_out_of_the_output() {
    if !integration_ready("logs_are_captured", PY_TOOLS) {
        return;
    }
    let exec = executor(&[RunnerKind::Python]);
    let f = python(concat!(
        "import os, sys, subprocess\n",
        "def handle(event, context):\n",
        "    print('via print')\n",
        "    print('via stderr', file=sys.stderr)\n",
        "    os.write(1, b'via fd 1\\n')\n",
        "    os.write(2, b'via fd 2\\n')\n",
        "    subprocess.run(['/bin/sh', '-c', 'echo from a child; echo child err >&2'])\n",
        "    sys.stdout.write('no newline at the end')\n",
        "    return {'n': event['n']}\n",
    ));
    for n in 0..3 {
        let out = call(&exec, &f, json!({"n": n})).await.unwrap();
        assert_eq!(out.value, json!({"n": n}));
        let logs = out.logs.unwrap();
        for part in [
            "via print",
            "via stderr",
            "via fd 1",
            "via fd 2",
            "from a child",
            "child err",
        ] {
            assert!(logs.contains(part), "missing {part:?} in {logs:?}");
        }
        assert!(logs.ends_with("no newline at the end"), "{logs:?}");
        assert_eq!(
            logs.matches("via print").count(),
            1,
            "logs leak across calls"
        );
    }
    exec.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_too_large_is_reported_and_the_instance_kept() {
    if !integration_ready("output_too_large", PY_TOOLS) {
        return;
    }
    let exec = executor(&[RunnerKind::Python]);
    let limits = Limits {
        max_output_bytes: 1000,
        ..Limits::default()
    };
    let f = python_limited(
        "def handle(event, context):\n    return 'x' * event['n']\n",
        limits,
    );
    let e = call(&exec, &f, json!({"n": 5000})).await.unwrap_err();
    assert_eq!(e.code(), "output_too_large");
    assert_eq!(
        call(&exec, &f, json!({"n": 3})).await.unwrap().value,
        json!("xxx")
    );
    assert_eq!(exec.counters().replaced, 0);
    exec.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_grow_the_pool_up_to_the_cap() {
    if !integration_ready("concurrent_calls", PY_TOOLS) {
        return;
    }
    let exec = config(&[RunnerKind::Python])
        .with_max_instances_per_function(3)
        .build()
        .unwrap();
    let f = python(
        "import os, time\ndef handle(event, context):\n    time.sleep(0.2)\n    return {'i': event['i'], 'pid': os.getpid()}\n",
    );
    let calls = (0..8).map(|i| {
        let exec = exec.clone();
        let version = &f;
        async move { call_within(&exec, version, json!({"i": i}), Duration::from_secs(20)).await }
    });
    let results = futures::future::join_all(calls).await;
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.unwrap().value["i"], json!(i));
    }
    let stats = exec
        .pool_stats()
        .into_iter()
        .find(|s| s.pool.contains(&f.version.function_id))
        .unwrap();
    assert!(stats.started_total >= 2, "{stats:?}");
    assert!(stats.started_total <= 3, "{stats:?}");
    assert_eq!(stats.busy, 0);
    assert_eq!(stats.idle, stats.started_total);
    exec.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_functions_never_share_an_instance() {
    if !integration_ready("two_functions_never_share", PY_TOOLS) {
        return;
    }
    let exec = executor(&[RunnerKind::Python]);
    let body = |name: &str| {
        format!(
            "import os\nSEEN = []\ndef handle(event, context):\n    SEEN.append('{name}')\n    prev = open('/tmp/owner').read() if os.path.exists('/tmp/owner') else None\n    open('/tmp/owner', 'w').write('{name}')\n    return {{'seen': sorted(set(SEEN)), 'prev': prev, 'files': sorted(os.listdir('/fn'))}}\n"
        )
    };
    let a = function(
        Runtime::Python,
        "main.handle",
        &[("main.py", body("a").as_bytes()), ("a.txt", b"a")],
    );
    let b = function(
        Runtime::Python,
        "main.handle",
        &[("main.py", body("b").as_bytes()), ("b.txt", b"b")],
    );
    for _ in 0..3 {
        for (f, name, file) in [(&a, "a", "a.txt"), (&b, "b", "b.txt")] {
            let out = call(&exec, f, json!({})).await.unwrap().value;
            assert_eq!(out["seen"], json!([name]));
            assert!(out["prev"].is_null() || out["prev"] == json!(name), "{out}");
            assert_eq!(out["files"], json!([file, "main.py"]), "{out}");
        }
    }
    exec.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_instance_is_replaced() {
    if !integration_ready("a_crashed_instance_is_replaced", PY_TOOLS) {
        return;
    }
    let exec = executor(&[RunnerKind::Python]);
    let f = python(
        "import os\ndef handle(event, context):\n    if event.get('crash'):\n        os._exit(3)\n    return os.getpid()\n",
    );
    call(&exec, &f, json!({})).await.unwrap();
    let e = call(&exec, &f, json!({"crash": true})).await.unwrap_err();
    assert_eq!(e.code(), "sandbox_crashed", "{e}");
    call(&exec, &f, json!({})).await.unwrap();
    let stats = exec
        .pool_stats()
        .into_iter()
        .find(|s| s.pool.contains(&f.version.function_id))
        .unwrap();
    assert_eq!(stats.replaced_total, 1);
    assert_eq!(stats.started_total, 2);
    exec.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_instances_are_reaped() {
    if !integration_ready("idle_instances_are_reaped", PY_TOOLS) {
        return;
    }
    let exec = config(&[RunnerKind::Python])
        .with_idle_ttl(Duration::from_millis(200))
        .build()
        .unwrap();
    let f = python(HELLO_PY);
    call(&exec, &f, json!({})).await.unwrap();
    let mut reaped = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let s = exec
            .pool_stats()
            .into_iter()
            .find(|s| s.pool.contains(&f.version.function_id))
            .unwrap();
        if s.reaped_total == 1 && s.idle == 0 {
            reaped = true;
            break;
        }
    }
    assert!(reaped, "the idle instance was not reaped");
    assert_eq!(
        call(&exec, &f, json!({"name": "back"}))
            .await
            .unwrap()
            .value["hello"],
        json!("back")
    );
    exec.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retire_stops_a_functions_instances() {
    if !integration_ready("retire", PY_TOOLS) {
        return;
    }
    let exec = executor(&[RunnerKind::Python]);
    let f = python(HELLO_PY);
    exec.prepare(&f.version).await.unwrap();
    let has = |exec: &sopm_backends::process::ProcessExecutor| {
        exec.pool_stats()
            .into_iter()
            .any(|s| s.pool.contains(&f.version.function_id))
    };
    assert!(has(&exec));
    exec.retire(&f.version.function_id).await.unwrap();
    assert!(!has(&exec));
    call(&exec, &f, json!({})).await.unwrap();
    exec.shutdown().await;
    let e = call(&exec, &f, json!({})).await.unwrap_err();
    assert_eq!(e.code(), "unavailable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_artifacts_are_mounted_and_deps_are_importable() {
    if !integration_ready("big_artifacts_are_mounted", PY_TOOLS) {
        return;
    }
    let exec = config(&[RunnerKind::Python])
        .with_max_inline_bytes(4096)
        .build()
        .unwrap();
    let blob = vec![b'z'; 64 * 1024];
    let f = function(
        Runtime::Python,
        "main.handle",
        &[
            (
                "main.py",
                b"import helperlib\ndef handle(event, context):\n    return {'dep': helperlib.VALUE, 'blob': len(open('data.bin','rb').read())}\n",
            ),
            ("deps/helperlib/__init__.py", b"VALUE = 'from deps'\n"),
            ("data.bin", &blob),
        ],
    );
    let out = call(&exec, &f, json!({})).await.unwrap();
    assert_eq!(out.value, json!({"dep": "from deps", "blob": 65536}));
    assert_eq!(exec.counters().mounted_starts, 1);
    exec.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_is_minimal_plus_the_functions_own() {
    if !integration_ready("environment", PY_TOOLS) {
        return;
    }
    let exec = executor(&[RunnerKind::Python]);
    let mut f = python("import os\ndef handle(event, context):\n    return dict(os.environ)\n");
    std::sync::Arc::get_mut(&mut f.version)
        .unwrap()
        .env
        .insert("GREETING".into(), "hola".into());
    let env = call(&exec, &f, json!({})).await.unwrap().value;
    assert_eq!(env["GREETING"], json!("hola"));
    assert_eq!(env["HOME"], json!("/tmp"));
    for leaked in [
        "CARGO_TARGET_DIR",
        "RUST_BACKTRACE",
        "SOPM_REQUIRE_INTEGRATION",
    ] {
        assert!(
            env.get(leaked).is_none(),
            "{leaked} leaked into the sandbox"
        );
    }
    exec.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_per_function_cap_a_call_waits_then_is_overloaded() {
    if !integration_ready("per_function_cap", PY_TOOLS) {
        return;
    }
    let exec = config(&[RunnerKind::Python])
        .with_max_instances_per_function(1)
        .build()
        .unwrap();
    let f = python(
        "import time\ndef handle(event, context):\n    time.sleep(event['s'])\n    return event['s']\n",
    );
    call(&exec, &f, json!({"s": 0})).await.unwrap();
    let slow = call_within(&exec, &f, json!({"s": 1.0}), Duration::from_secs(10));
    let quick = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        call_within(&exec, &f, json!({"s": 0}), Duration::from_millis(300)).await
    };
    let (slow, quick) = tokio::join!(slow, quick);
    assert_eq!(slow.unwrap().value, json!(1.0));
    assert_eq!(quick.unwrap_err().code(), "overloaded");
    // A waiting call gets the instance as soon as it is free.
    let slow = call_within(&exec, &f, json!({"s": 0.3}), Duration::from_secs(10));
    let waiting = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        call_within(&exec, &f, json!({"s": 0}), Duration::from_secs(5)).await
    };
    let (slow, waiting) = tokio::join!(slow, waiting);
    slow.unwrap();
    assert_eq!(waiting.unwrap().value, json!(0));
    exec.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_call_does_not_leak_its_instance() {
    if !integration_ready("cancelled_call", PY_TOOLS) {
        return;
    }
    let exec = executor(&[RunnerKind::Python]);
    let f = python(
        "import time\ndef handle(event, context):\n    time.sleep(event['s'])\n    return 'done'\n",
    );
    let cancelled = tokio::time::timeout(
        Duration::from_millis(300),
        call_within(&exec, &f, json!({"s": 5}), Duration::from_secs(10)),
    )
    .await;
    assert!(cancelled.is_err(), "the call should have been cut short");
    let s = exec
        .pool_stats()
        .into_iter()
        .find(|s| s.pool.contains(&f.version.function_id))
        .unwrap();
    assert_eq!((s.busy, s.idle), (0, 0), "{s:?}");
    assert_eq!(
        call(&exec, &f, json!({"s": 0})).await.unwrap().value,
        json!("done")
    );
    exec.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_only_when_asked_and_allowed() {
    if !integration_ready("network_when_allowed", PY_TOOLS) {
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let source = "import socket\ndef handle(event, context):\n    try:\n        socket.create_connection(('127.0.0.1', event['port']), timeout=2).close()\n        return 'connected'\n    except OSError as e:\n        return 'refused'\n";
    let exec = config(&[RunnerKind::Python])
        .with_allow_network(true)
        .build()
        .unwrap();
    let asks = python_limited(
        source,
        Limits {
            network: true,
            ..Limits::default()
        },
    );
    let does_not_ask = python(source);
    assert_eq!(
        call(&exec, &asks, json!({"port": port}))
            .await
            .unwrap()
            .value,
        json!("connected")
    );
    assert_eq!(
        call(&exec, &does_not_ask, json!({"port": port}))
            .await
            .unwrap()
            .value,
        json!("refused")
    );
    exec.shutdown().await;
}
