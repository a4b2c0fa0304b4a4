//! The newcomer path: the README's curl walk-through (built-ins, jobs, errors, and a
//! function with a dependency), run
//! against the real `sopm serve` started the README's way (no `--data-dir`: data in
//! `./sopm-data`) from a working directory whose path is over 150 characters long and
//! is not the repository. The requests are read from README.md (its `curl` lines, sent
//! as curl sends them) and the answers checked against the ones it shows, so the
//! document and the server cannot drift apart.
//!
//! Needs bubblewrap and pip, and PyPI for `six`: without them the test skips with a
//! printed reason, unless `SOPM_REQUIRE_INTEGRATION=1`, where it fails instead.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use support::http::Request;
use support::server::{Server, ServerOptions};
use support::skip::{bwrap_missing, pip_missing, skipped};

const README: &str = include_str!("../../README.md");

/// Whether bubblewrap and pip are here; if not the test skips (or fails).
fn tools_present() -> bool {
    !skipped(bwrap_missing().or_else(pip_missing))
}

/// `sopm serve` run from `cwd` with `args`, its address in `SOPM_LISTEN`, as the
/// README starts it.
fn start(cwd: &Path, args: &[&str]) -> Server {
    Server::start(ServerOptions::new().cwd(cwd).listen_via_env().args(args))
}

/// A README step: the request and the answer the README shows after it.
#[derive(Debug)]
struct Step {
    command: String,
    request: Request,
    answer: String,
}

/// Splits a shell command into words (single and double quotes, backslash-newline).
fn shell_words(command: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = command.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    word.push(c);
                }
            }
            '"' => {
                in_word = true;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => {
                            if let Some(n) = chars.next() {
                                word.push(n);
                            }
                        }
                        c => word.push(c),
                    }
                }
            }
            '\\' if chars.peek() == Some(&'\n') => {
                chars.next();
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// The request a `curl` command line makes (`-X`, `-H`, `-d`, `-s`, `-i`).
fn curl_request(command: &str) -> Request {
    let words = shell_words(command);
    assert_eq!(words[0], "curl", "{command}");
    let mut method = None;
    let mut headers = Vec::new();
    let mut body = None;
    let mut url = None;
    let mut i = 1;
    while i < words.len() {
        match words[i].as_str() {
            "-X" => {
                method = Some(words[i + 1].clone());
                i += 1;
            }
            "-H" => {
                let (name, value) = words[i + 1].split_once(':').expect("a header");
                headers.push((name.trim().to_string(), value.trim().to_string()));
                i += 1;
            }
            "-d" => {
                body = Some(words[i + 1].clone());
                i += 1;
            }
            "-s" | "-si" | "-i" => {}
            w if w.starts_with('-') => panic!("curl option {w} is not understood: {command}"),
            w => url = Some(w.to_string()),
        }
        i += 1;
    }
    let url = url.expect("a URL");
    let path = url
        .strip_prefix("localhost:8080")
        .unwrap_or_else(|| panic!("the README's URLs start with localhost:8080: {url}"))
        .to_string();
    // curl's `-d` posts as a form unless a header says otherwise.
    if body.is_some()
        && !headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
    {
        headers.push((
            "Content-Type".into(),
            "application/x-www-form-urlencoded".into(),
        ));
    }
    let method = method.unwrap_or_else(|| if body.is_some() { "POST" } else { "GET" }.into());
    // What curl sends of its own, then the command's headers.
    let mut request = Request::new(&method, &path)
        .header("User-Agent", "curl/8.0")
        .header("Accept", "*/*");
    request.headers.extend(headers);
    request.body = body.map(String::into_bytes);
    request
}

/// `first`, the answer to `request`, or while `pending` holds for the latest answer,
/// the answer to sending it again; gives up after `limit` saying `what`.
fn follow(
    server: &Server,
    request: &Request,
    first: (u16, Value),
    limit: Duration,
    pending: fn(&Value) -> bool,
    what: &str,
) -> (u16, Value) {
    let mut first = Some(first);
    support::poll(limit, Duration::from_millis(50), || {
        let answer = first.take().unwrap_or_else(|| server.request(request));
        if pending(&answer.1) {
            Err(format!("{what}: {}", answer.1))
        } else {
            Ok(answer)
        }
    })
}

/// The `curl` steps of the README between the heading `from` and the line starting
/// with `until`, with the answers shown under each (the `# ` lines after it).
fn readme_steps(from: &str, until: &str) -> Vec<Step> {
    let start = README
        .find(from)
        .unwrap_or_else(|| panic!("README has no {from}"));
    let section = &README[start..];
    let end = section
        .find(until)
        .unwrap_or_else(|| panic!("README has no {until} after {from}"));
    let section = &section[..end];
    let mut steps: Vec<Step> = Vec::new();
    let mut in_code = false;
    let mut lines = section.lines();
    while let Some(line) = lines.next() {
        if line.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if !in_code {
            continue;
        }
        if line.starts_with("curl ") {
            // A command goes on while a single quote is open or a line ends with `\`.
            let mut command = line.to_string();
            while command.matches('\'').count() % 2 == 1 || command.ends_with('\\') {
                command.push('\n');
                command.push_str(lines.next().expect("the command goes on"));
            }
            steps.push(Step {
                request: curl_request(&command),
                command,
                answer: String::new(),
            });
        } else if let Some(comment) = line.strip_prefix('#') {
            if let Some(step) = steps.last_mut() {
                step.answer.push_str(comment.trim());
            }
        }
    }
    steps
}

/// Keys whose values the README shows only as an illustration.
const ILLUSTRATIVE: &[&str] = &["id", "duration_us"];

/// The `"key":value` pairs the README's answer shows, where the value is whole JSON.
fn shown_pairs(answer: &str) -> Vec<(String, Value)> {
    let mut pairs = Vec::new();
    let mut from = 0;
    while let Some(at) = answer[from..].find("\":") {
        let colon = from + at + 1;
        let key_start = answer[..colon - 1].rfind('"').map_or(0, |q| q + 1);
        let key = answer[key_start..colon - 1].to_string();
        let rest = answer[colon + 1..].trim_start();
        let mut values = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        if let Some(Ok(value)) = values.next() {
            if !ILLUSTRATIVE.contains(&key.as_str()) {
                pairs.push((key, value));
            }
        }
        from = colon + 1;
    }
    pairs
}

/// Whether `actual` is what the README shows as `expected`: strings with `…` match
/// when their shown parts appear in order (digits and dots shown stand for any number
/// or version), objects
/// when every shown key matches, anything else when equal.
fn matches(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::String(e), Value::String(a)) if e.contains('…') => {
            let mut at = 0;
            for piece in e
                .split(['…', '\n'])
                .flat_map(|segment| segment.split(|c: char| c.is_ascii_digit() || c == '.'))
                .filter(|p| !p.is_empty())
            {
                match a[at..].find(piece) {
                    Some(i) => at += i + piece.len(),
                    None => return false,
                }
            }
            true
        }
        (Value::Object(e), Value::Object(a)) => e.iter().all(|(k, v)| {
            ILLUSTRATIVE.contains(&k.as_str()) || a.get(k).is_some_and(|av| matches(v, av))
        }),
        (e, a) => e == a,
    }
}

/// Whether some object in `tree` has `key` matching `value`.
fn holds(tree: &Value, key: &str, value: &Value) -> bool {
    match tree {
        Value::Object(map) => {
            map.get(key).is_some_and(|v| matches(value, v))
                || map.values().any(|v| holds(v, key, value))
        }
        Value::Array(items) => items.iter().any(|v| holds(v, key, value)),
        _ => false,
    }
}

/// Checks an answer against what the README shows (`shown`, its placeholders for ids
/// replaced): every whole pair it shows, and the status it names (`HTTP/1.1 400 ...` or
/// `(422)`), else an error status for an error and a success for the rest.
fn check(step: &Step, shown: &str, status: u16, answer: &Value) {
    if shown.is_empty() {
        // A step the README shows no answer for (it goes on to the next one).
        assert!(
            (200..300).contains(&status),
            "{}\n-> {status} {answer}",
            step.command
        );
        return;
    }
    let shown_status = shown
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .or_else(|| {
            shown
                .trim_end()
                .strip_suffix(')')
                .and_then(|s| s.rsplit_once('('))
                .map(|(_, code)| code)
        })
        .and_then(|code| code.parse::<u16>().ok());
    match shown_status {
        Some(code) => assert_eq!(status, code, "{}\n-> {answer}", step.command),
        None if shown.starts_with("{\"error\"") => {
            assert!(status >= 400, "{}\n-> {status} {answer}", step.command)
        }
        None => assert!(
            (200..300).contains(&status),
            "{}\n-> {status} {answer}",
            step.command
        ),
    }
    let pairs = shown_pairs(shown);
    assert!(
        !pairs.is_empty(),
        "the README shows no answer for {}",
        step.command
    );
    for (key, value) in pairs {
        assert!(
            holds(answer, &key, &value),
            "{}\nthe README shows \"{key}\":{value}, the server answered {answer}",
            step.command
        );
    }
}

/// A directory whose path is over 150 characters long, like a clone under a deep
/// source tree.
fn long_dir(base: &Path) -> PathBuf {
    let dir = base
        .join("home/someone/src/github.com/example-organisation-with-a-long-name")
        .join("a-checkout-of-the-serverless-operating-system-process-manager-for-testing");
    std::fs::create_dir_all(&dir).unwrap();
    assert!(dir.as_os_str().len() > 150, "{}", dir.display());
    dir
}

/// Runs the README's steps against `server`; a step that asks for the function waits
/// while it builds, as the README says. `false` (after printing why) if the build
/// failed and integration is not required.
fn walk(server: &Server, steps: &[Step]) -> bool {
    // The README's ids (`6f759e11-…`) stand for the ids the server gave.
    let mut ids: Vec<(String, String)> = Vec::new();
    let mut last_id = String::new();
    let with_ids = |text: &str, ids: &[(String, String)]| {
        ids.iter()
            .fold(text.to_string(), |t, (shown, real)| t.replace(shown, real))
    };
    for step in steps {
        let mut request = step.request.clone();
        request.path = with_ids(&request.path, &ids);
        if let Some(at) = request.path.find('…') {
            // An id the README did not show an answer for: the previous call's.
            let start = request.path[..at].rfind('/').map_or(0, |i| i + 1);
            let end = at + '…'.len_utf8();
            ids.push((request.path[start..end].to_string(), last_id.clone()));
            request.path = with_ids(&request.path, &ids);
        }
        let mut answer = server.request(&request);
        if request.method == "GET" && request.path.starts_with("/api/status/") {
            // "then follow the job": until it has finished.
            answer = follow(
                server,
                &request,
                answer,
                Duration::from_secs(60),
                |job| matches!(job["status"].as_str(), Some("queued" | "running")),
                "the job did not finish",
            );
        }
        if let Some(id) = answer.1["id"].as_str() {
            last_id = id.to_string();
            if let Some(shown) = step
                .answer
                .split_once("\"id\":\"")
                .and_then(|(_, rest)| rest.split_once('"'))
                .map(|(shown, _)| shown)
                .filter(|shown| shown.contains('…') && shown.len() > '…'.len_utf8())
            {
                ids.push((shown.to_string(), id.to_string()));
            }
        }
        if request.method == "GET" && request.path == "/api/user-functions/greet" {
            answer = follow(
                server,
                &step.request,
                answer,
                Duration::from_secs(300),
                |function| function["status"] == "building",
                "the build did not finish",
            );
            if answer.1["status"] == "failed" {
                let log = answer.1["build_log"].as_str().unwrap_or_default();
                skipped(Some(&format!(
                    "the README's build failed (is PyPI reachable?):\n{log}"
                )));
                return false;
            }
        }
        check(step, &with_ids(&step.answer, &ids), answer.0, &answer.1);
    }
    true
}

#[test]
fn the_readme_reads_as_requests_and_answers() {
    let steps = readme_steps("## Your own functions", "The same from a directory");
    let shown: Vec<(&str, &str)> = steps
        .iter()
        .map(|s| (s.request.method.as_str(), s.request.path.as_str()))
        .collect();
    assert_eq!(
        shown,
        vec![
            ("POST", "/api/user-functions"),
            ("GET", "/api/user-functions/greet"),
            ("POST", "/api/user-functions/greet/execute"),
            ("GET", "/api/user-functions/greet/logs?limit=2"),
            ("POST", "/api/user-functions/greet/execute"),
        ]
    );
    let upload: Value = serde_json::from_slice(steps[0].request.body.as_deref().unwrap()).unwrap();
    assert_eq!(upload["requirements"], "six==1.16.0\n");
    assert!(shown_pairs(&steps[2].answer)
        .iter()
        .any(|(k, v)| k == "output" && v["six"] == "1.16.0"));
    // The loose match of shown strings: digits stand for any number, the rest must be
    // there in order.
    let shown = Value::from(
        "==> installing 1 requirement with pip 23.2.1\n…\n==> artifact ready (83 KiB)\n",
    );
    assert!(matches(
        &shown,
        &Value::from(
            "==> installing 1 requirement with pip 24.0\nmore\n==> artifact ready (91 KiB)\n"
        )
    ));
    assert!(!matches(
        &shown,
        &Value::from("==> installing 1 requirement with pip 24.0\n==> build failed\n")
    ));
}

/// A server started with `args` from a [`long_dir`] in a new temporary directory
/// (returned first, to outlive the server); `None` when the tools are missing.
fn from_a_long_path(args: &[&str]) -> Option<(tempfile::TempDir, PathBuf, Server)> {
    if !tools_present() {
        return None;
    }
    let base = tempfile::tempdir().unwrap();
    let cwd = long_dir(base.path());
    let server = start(&cwd, args);
    Some((base, cwd, server))
}

#[test]
fn the_readme_walk_through_works_from_a_long_path() {
    // The README's way: `serve` with no data directory, so data goes to ./sopm-data.
    let Some((_base, clone, server)) = from_a_long_path(&[]) else {
        return;
    };
    let data = clone.join("sopm-data");
    assert!(
        data.join("sopm.db").is_file(),
        "no database in {}",
        data.display()
    );
    assert!(data.as_os_str().len() > 150);

    let mut steps = readme_steps("## Walk-through with curl", "List the catalog");
    steps.extend(readme_steps("Run a function and wait", "Figures:"));
    steps.extend(readme_steps(
        "## Your own functions",
        "The same from a directory",
    ));
    assert_eq!(steps.len(), 19, "{steps:#?}");
    walk(&server, &steps);
}

#[test]
fn a_relative_data_dir_works_from_any_working_directory() {
    let Some((_base, cwd, server)) = from_a_long_path(&["--data-dir", "relative/../data"]) else {
        return;
    };
    assert!(cwd.join("data/sopm.db").is_file());
    let steps = readme_steps("## Your own functions", "The same from a directory");
    if !walk(&server, &steps[..3]) {
        return;
    }
    // The artifact is under the data directory, whatever the working directory.
    let artifacts = cwd.join("data/artifacts");
    let functions: Vec<_> = std::fs::read_dir(&artifacts).unwrap().flatten().collect();
    assert_eq!(functions.len(), 1, "{}", artifacts.display());
    assert!(functions[0].path().join("v1/deps/six.py").is_file());
}

/// A package index proxy that cannot start (here: `TMPDIR` names a directory that does
/// not exist) fails the build with a message that says so in the build log, never
/// `internal error`.
#[test]
fn a_proxy_that_cannot_start_says_so_in_the_build_log() {
    if !tools_present() {
        return;
    }
    let base = tempfile::tempdir().unwrap();
    let missing = base.path().join("no-such-temp-dir");
    let server = Server::start(
        ServerOptions::new()
            .data_dir(base.path().join("data"))
            .listen_via_env()
            .log("error")
            .env("TMPDIR", &missing)
            .quiet(),
    );
    let steps = readme_steps("## Your own functions", "The same from a directory");
    let (status, _) = server.request(&steps[0].request);
    assert_eq!(status, 202);
    let f = server.built_function("/api/user-functions/greet");
    assert_eq!(f["status"], "failed", "{f}");
    let log = f["build_log"].as_str().unwrap();
    assert!(
        log.contains("==> cannot start the package index proxy: "),
        "{log}"
    );
    assert!(
        log.contains("==> build failed: cannot start the package index proxy"),
        "{log}"
    );
    assert!(!log.contains("internal error"), "{log}");
}
