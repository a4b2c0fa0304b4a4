//! Behaviours every sandbox executor must show, as async functions over a [`Subject`], so
//! each backend's tests call them (included with `#[path]` next to `process_support.rs`
//! as `support`).
#![allow(dead_code, missing_docs)]

use std::net::TcpListener;
use std::time::Duration;

use serde_json::json;
use sopm_backends::sandbox::PoolCounters;
use sopm_core::{Executor, Limits, PoolStats, Runtime};

use super::support::*;

/// An executor under test, with the pool counters every sandbox executor offers.
pub trait Subject: Sync {
    fn executor(&self) -> &dyn Executor;
    fn counters(&self) -> PoolCounters;
    fn start(&self);
}

fn fn_stats(exec: &dyn Executor, f: &TestFunction) -> PoolStats {
    exec.pool_stats()
        .into_iter()
        .find(|s| s.pool.contains(&f.version.function_id))
        .expect("the function has a pool")
}

pub async fn python_hello_world_uses_a_stem_cell(s: &dyn Subject) {
    let exec = s.executor();
    s.start();
    wait_for_stem_cells(exec, "python", 1).await;
    let f = python(HELLO_PY);
    let out = call(exec, &f, json!({"name": "sopm"})).await.unwrap();
    assert_eq!(out.value, json!({"hello": "sopm"}));
    let c = s.counters();
    assert_eq!((c.stem_cells_used, c.cold_starts), (1, 0), "{c:?}");
    call(exec, &f, json!({})).await.unwrap();
    let c = s.counters();
    assert_eq!((c.stem_cells_used, c.cold_starts), (1, 0), "{c:?}");
    let st = fn_stats(exec, &f);
    assert_eq!((st.started_total, st.idle), (1, 1));
}

pub async fn node_hello_world_with_async_handler_and_logs(s: &dyn Subject) {
    let exec = s.executor();
    let f = function(
        Runtime::Node,
        "index.handle",
        &[(
            "index.js",
            b"exports.handle = async (event, context) => {\n  console.log('hi from node');\n  process.stdout.write('raw write\\n');\n  await new Promise(r => setTimeout(r, 5));\n  return { hello: event.name, remaining: context.getRemainingTimeInMillis() > 0 };\n};\n",
        )],
    );
    let out = call(exec, &f, json!({"name": "node"})).await.unwrap();
    assert_eq!(out.value, json!({"hello": "node", "remaining": true}));
    let logs = out.logs.unwrap();
    assert!(logs.contains("hi from node"), "{logs}");
    assert!(logs.contains("raw write"), "{logs}");
    let out = call(exec, &f, json!({"name": "again"})).await.unwrap();
    assert_eq!(out.value["hello"], json!("again"));

    let err = function(
        Runtime::Node,
        "index.handle",
        &[(
            "index.js",
            b"exports.handle = () => { console.log('about to fail'); throw new TypeError('bad thing'); };\n",
        )],
    );
    let e = call(exec, &err, json!({})).await.unwrap_err();
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
}

pub async fn shell_hello_world_and_failure(s: &dyn Subject) {
    let exec = s.executor();
    let f = function(
        Runtime::Shell,
        "run.sh",
        &[(
            "run.sh",
            b"#!/bin/sh\nread -r input\necho \"shell says hi\" >&2\nprintf '{\"got\": %s, \"shell\": true}\\n' \"$input\"\n",
        )],
    );
    let out = call(exec, &f, json!({"n": 7})).await.unwrap();
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
    let e = call(exec, &failing, json!(null)).await.unwrap_err();
    assert_eq!(e.code(), "function_error");
    assert!(e.to_string().contains("exit status 3"), "{e}");
    assert!(e.to_string().contains("it broke here"), "{e}");
}

/// A static hello-world binary, or `None` (with the reason printed) if `cc -static`
/// cannot make one here.
pub fn static_hello() -> Option<Vec<u8>> {
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
        .output();
    match built {
        Ok(b) if b.status.success() => Some(std::fs::read(&exe).unwrap()),
        Ok(b) => {
            eprintln!(
                "no static binary: {}",
                String::from_utf8_lossy(&b.stderr).trim()
            );
            None
        }
        Err(e) => {
            eprintln!("no static binary: cannot run cc: {e}");
            None
        }
    }
}

pub async fn binary_hello_world(s: &dyn Subject, body: &[u8]) {
    let f = function(Runtime::Binary, "bin/hello", &[("bin/hello", body)]);
    let out = call(s.executor(), &f, json!({"k": "v"})).await.unwrap();
    assert_eq!(out.value, json!({"binary": true, "input_bytes": 9}));
    assert!(out.logs.unwrap().contains("binary log"));
}

pub async fn large_and_unicode_payloads_round_trip(s: &dyn Subject) {
    let exec = s.executor();
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
    let out = call(exec, &f, input.clone()).await.unwrap();
    assert_eq!(out.value, input);
    // And again on the same warm instance.
    let out = call(exec, &f, json!("ünïcödé")).await.unwrap();
    assert_eq!(out.value, json!("ünïcödé"));
}

pub async fn function_errors_carry_tracebacks_and_keep_the_instance(s: &dyn Subject) {
    let exec = s.executor();
    let f = python(
        "def helper(x):\n    raise ValueError('no good: %s' % x)\n\ndef handle(event, context):\n    if event.get('fail'):\n        helper(event['fail'])\n    return 'fine'\n",
    );
    let e = call(exec, &f, json!({"fail": "abc"})).await.unwrap_err();
    assert_eq!(e.code(), "function_error");
    assert_eq!(e.to_string(), "ValueError: no good: abc");
    let sopm_core::Error::Function { traceback, .. } = e else {
        unreachable!()
    };
    let tb = traceback.unwrap();
    assert!(tb.contains("main.py") && tb.contains("helper"), "{tb}");
    assert_eq!(
        call(exec, &f, json!({})).await.unwrap().value,
        json!("fine")
    );
    assert_eq!(s.counters().replaced, 0);

    let broken = python("def handle(event, context)\n    return 1\n");
    let e = call(exec, &broken, json!({})).await.unwrap_err();
    assert_eq!(e.code(), "function_error");
    assert!(e.to_string().contains("failed to load"), "{e}");
    assert!(e.to_string().contains("SyntaxError"), "{e}");

    let not_json = python("def handle(event, context):\n    return {1, 2}\n");
    let e = call(exec, &not_json, json!({})).await.unwrap_err();
    assert_eq!(e.code(), "function_error");
    assert!(e.to_string().contains("not JSON"), "{e}");
}

pub async fn logs_are_captured_and_kept_out_of_the_output(s: &dyn Subject) {
    let exec = s.executor();
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
        let out = call(exec, &f, json!({"n": n})).await.unwrap();
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
}

pub async fn spinning_and_sleeping_past_the_deadline_time_out(s: &dyn Subject) {
    let exec = s.executor();
    s.start();
    wait_for_stem_cells(exec, "python", 1).await;
    let limits = Limits {
        timeout_ms: 1_000,
        ..tight()
    };
    let spin = python_limited(
        "def handle(event, context):\n    while True:\n        pass\n",
        limits.clone(),
    );
    let e = call(exec, &spin, json!({})).await.unwrap_err();
    assert_eq!(e.code(), "timeout", "{e:?}");
    let sleep = python_limited(
        "import time\ndef handle(event, context):\n    time.sleep(30)\n    return 'woke'\n",
        limits,
    );
    let e = call(exec, &sleep, json!({})).await.unwrap_err();
    assert_eq!(e.code(), "timeout", "{e:?}");
    assert!(s.counters().replaced >= 2);
    still_serves(exec).await;
}

pub async fn unbounded_allocation_is_out_of_memory(s: &dyn Subject) {
    let exec = s.executor();
    let f = python_limited(
        "def handle(event, context):\n    hoard = []\n    while True:\n        hoard.append(b'x' * (8 << 20))\n",
        Limits {
            memory_mb: 64,
            ..tight()
        },
    );
    let e = call(exec, &f, json!({})).await.unwrap_err();
    assert_eq!(e.code(), "out_of_memory", "{e:?}");
    still_serves(exec).await;
}

pub async fn output_too_large_is_reported_and_the_instance_kept(s: &dyn Subject) {
    let exec = s.executor();
    let limits = Limits {
        max_output_bytes: 1000,
        ..Limits::default()
    };
    let f = python_limited(
        "def handle(event, context):\n    return 'x' * event['n']\n",
        limits,
    );
    let e = call(exec, &f, json!({"n": 5000})).await.unwrap_err();
    assert_eq!(e.code(), "output_too_large");
    assert_eq!(
        call(exec, &f, json!({"n": 3})).await.unwrap().value,
        json!("xxx")
    );
    assert_eq!(s.counters().replaced, 0);
}

pub async fn no_network_to_the_host(s: &dyn Subject) {
    let exec = s.executor();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let f = python_limited(
        "import socket\ndef handle(event, context):\n    try:\n        s = socket.create_connection(('127.0.0.1', event['port']), timeout=1)\n        s.sendall(b'escaped')\n        return 'connected'\n    except OSError as e:\n        return 'refused: ' + type(e).__name__\n",
        Limits {
            network: true,
            ..tight()
        },
    );
    let out = call(exec, &f, json!({"port": port})).await.unwrap().value;
    assert!(out.as_str().unwrap().starts_with("refused"), "{out}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(listener.accept().is_err(), "the sandbox reached the host");
}

pub async fn secrets_of_the_host_are_not_visible(s: &dyn Subject) {
    let exec = s.executor();
    let data = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
    std::fs::write(data.path().join("secret.db"), b"TOP SECRET").unwrap();
    let secret = data.path().join("secret.db");
    let f = python_limited(
        concat!(
            "def attempt(path):\n",
            "    try:\n",
            "        with open(path, 'rb') as fh:\n",
            "            return fh.read(64).decode('latin-1')\n",
            "    except Exception as e:\n",
            "        return 'denied: ' + type(e).__name__\n",
            "def handle(event, context):\n",
            "    return {p: attempt(p) for p in event['paths']}\n",
        ),
        tight(),
    );
    let paths = [
        "/etc/shadow".to_string(),
        "/root/.bash_history".to_string(),
        secret.to_string_lossy().into_owned(),
    ];
    let out = call(exec, &f, json!({"paths": paths})).await.unwrap().value;
    for p in &paths {
        assert!(out[p].as_str().unwrap().starts_with("denied"), "{p}: {out}");
    }
    assert!(!out.to_string().contains("TOP SECRET"));
}

/// Needs an executor capped at 3 instances per function.
pub async fn concurrent_calls_grow_the_pool_up_to_the_cap(s: &dyn Subject) {
    let exec = s.executor();
    let f = python(
        "import os, time\ndef handle(event, context):\n    time.sleep(0.2)\n    return {'i': event['i']}\n",
    );
    let calls = (0..8).map(|i| {
        let f = &f;
        async move { call_within(exec, f, json!({"i": i}), Duration::from_secs(30)).await }
    });
    let results = futures::future::join_all(calls).await;
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.unwrap().value["i"], json!(i));
    }
    let st = fn_stats(exec, &f);
    assert!((2..=3).contains(&st.started_total), "{st:?}");
    assert_eq!(st.busy, 0);
    assert_eq!(st.idle, st.started_total);
}

pub async fn two_functions_never_share_an_instance(s: &dyn Subject) {
    let exec = s.executor();
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
            let out = call(exec, f, json!({})).await.unwrap().value;
            assert_eq!(out["seen"], json!([name]));
            assert!(out["prev"].is_null() || out["prev"] == json!(name), "{out}");
            assert_eq!(out["files"], json!([file, "main.py"]), "{out}");
        }
    }
}

pub async fn a_crashed_instance_is_replaced(s: &dyn Subject) {
    let exec = s.executor();
    let f = python(
        "import os\ndef handle(event, context):\n    if event.get('crash'):\n        os._exit(3)\n    return os.getpid()\n",
    );
    call(exec, &f, json!({})).await.unwrap();
    let e = call(exec, &f, json!({"crash": true})).await.unwrap_err();
    assert_eq!(e.code(), "sandbox_crashed", "{e}");
    call(exec, &f, json!({})).await.unwrap();
    let st = fn_stats(exec, &f);
    assert_eq!((st.replaced_total, st.started_total), (1, 2), "{st:?}");
}

/// Needs an executor with a short idle TTL (200 ms).
pub async fn idle_instances_are_reaped(s: &dyn Subject) {
    let exec = s.executor();
    let f = python(HELLO_PY);
    call(exec, &f, json!({})).await.unwrap();
    let mut reaped = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let st = fn_stats(exec, &f);
        if st.reaped_total == 1 && st.idle == 0 {
            reaped = true;
            break;
        }
    }
    assert!(reaped, "the idle instance was not reaped");
    let out = call(exec, &f, json!({"name": "back"})).await.unwrap();
    assert_eq!(out.value["hello"], json!("back"));
}
