//! `sopm fn`: deploy (pack a directory, upload it, follow the build), list, invoke,
//! show logs of and remove user functions.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Subcommand;
use hyper::Method;
use serde_json::{json, Value};

use super::{parse_input, percent_encode, print_json, report_error, ClientArgs};

/// The `sopm fn` subcommands.
#[derive(Debug, Subcommand)]
pub enum FnCommand {
    /// Upload a directory as a function and follow its build:
    /// `sopm fn deploy ./hello --runtime python`.
    Deploy {
        /// The function's directory (`.git`, `__pycache__` and `node_modules` are left out).
        dir: PathBuf,
        /// python, node, shell or binary.
        #[arg(long)]
        runtime: String,
        /// The function's name [default: the directory's name].
        #[arg(long)]
        name: Option<String>,
        /// The entry point [default: main.handle (python), index.handle (node), main.sh
        /// (shell)].
        #[arg(long)]
        handler: Option<String>,
        /// An environment variable, NAME=VALUE (repeatable).
        #[arg(long = "env", value_name = "NAME=VALUE")]
        env: Vec<String>,
        /// Limits as JSON, e.g. '{"timeout_ms": 5000}'.
        #[arg(long)]
        limits: Option<String>,
        /// The sandbox executor to build for and run in (process, gvisor, ...)
        /// [default: the server's choice for this name or runtime].
        #[arg(long, value_name = "NAME")]
        executor: Option<String>,
        /// Give up following the build after this many seconds.
        #[arg(long, default_value_t = 900)]
        timeout_s: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List your functions.
    List(ClientArgs),
    /// Call a function: `sopm fn invoke hello '{"name": "Ada"}'`.
    Invoke {
        /// The function's name or id.
        name: String,
        /// Input as JSON (default `{}`).
        input: Option<String>,
        /// Answer at once with a job id instead of waiting.
        #[arg(long = "async")]
        is_async: bool,
        /// Run this version instead of the newest ready one.
        #[arg(long)]
        version: Option<u32>,
        /// How long to wait for the result before getting a job id, in ms.
        #[arg(long)]
        wait_ms: Option<u64>,
        /// Print the whole answer, not just the output.
        #[arg(long)]
        full: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show the logs of a function's recent calls, newest first.
    Logs {
        /// The function's name or id.
        name: String,
        /// How many calls [default: 20].
        #[arg(long)]
        limit: Option<usize>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a function with all its versions.
    Rm {
        /// The function's name or id.
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// A function name from a directory name: letters, digits, `_ - .`, starting with a
/// letter or digit.
fn name_from_dir(dir: &std::path::Path) -> Option<String> {
    let base = std::fs::canonicalize(dir).ok()?;
    let raw = base.file_name()?.to_str()?;
    let cleaned: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = cleaned.trim_start_matches(|c: char| !c.is_ascii_alphanumeric());
    let name: String = trimmed.chars().take(64).collect();
    (!name.is_empty()).then_some(name)
}

fn default_handler(runtime: &str) -> Option<&'static str> {
    match runtime {
        "python" => Some("main.handle"),
        "node" => Some("index.handle"),
        "shell" => Some("main.sh"),
        _ => None,
    }
}

/// Runs one `sopm fn` subcommand.
pub async fn run_fn(cmd: FnCommand) -> Result<ExitCode, String> {
    match cmd {
        FnCommand::Deploy {
            dir,
            runtime,
            name,
            handler,
            env,
            limits,
            executor,
            timeout_s,
            client,
        } => {
            deploy(
                &client,
                DeployArgs {
                    dir,
                    runtime,
                    name,
                    handler,
                    env,
                    limits,
                    executor,
                    timeout: Duration::from_secs(timeout_s),
                },
            )
            .await
        }
        FnCommand::List(c) => {
            let a = c
                .client()?
                .call(Method::GET, &c.path("/api/user-functions", &[]), None)
                .await?;
            if a.status != 200 {
                return Ok(report_error(&a));
            }
            let list = a.body["functions"].as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                eprintln!("no functions yet (sopm fn deploy DIR --runtime python)");
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<24} {:<8} {:<8} {:<9} {:<6} ID",
                "NAME", "RUNTIME", "VERSION", "STATUS", "READY"
            );
            for f in &list {
                let num = |k: &str| f[k].as_u64().map(|n| n.to_string()).unwrap_or("-".into());
                println!(
                    "{:<24} {:<8} {:<8} {:<9} {:<6} {}",
                    f["name"].as_str().unwrap_or(""),
                    f["runtime"].as_str().unwrap_or(""),
                    num("version"),
                    f["status"].as_str().unwrap_or(""),
                    num("ready_version"),
                    f["id"].as_str().unwrap_or("")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        FnCommand::Invoke {
            name,
            input,
            is_async,
            version,
            wait_ms,
            full,
            client,
        } => {
            let input = parse_input(input.as_deref())?;
            let mut body = json!({"input": input, "async": is_async});
            if let Some(v) = version {
                body["version"] = v.into();
            }
            if let Some(w) = wait_ms {
                body["wait_ms"] = w.into();
            }
            let path = client.path(
                &format!("/api/user-functions/{}/execute", percent_encode(&name)),
                &[],
            );
            let a = client
                .client()?
                .call(Method::POST, &path, Some(body))
                .await?;
            match a.status {
                200 if !full => {
                    if let Some(logs) = a.body["logs"].as_str().filter(|l| !l.is_empty()) {
                        eprint!("{logs}");
                        if !logs.ends_with('\n') {
                            eprintln!();
                        }
                    }
                    print_json(&a.body["output"]);
                }
                200 | 202 => print_json(&a.body),
                _ => {
                    if let Some(logs) = a.body["logs"].as_str().filter(|l| !l.is_empty()) {
                        eprint!("{logs}");
                    }
                    if let Some(tb) = a.body["error"]["traceback"].as_str() {
                        eprintln!("{tb}");
                    }
                    return Ok(report_error(&a));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        FnCommand::Logs {
            name,
            limit,
            client,
        } => {
            let extra: Vec<(&str, String)> = limit
                .map(|l| ("limit", l.to_string()))
                .into_iter()
                .collect();
            let path = client.path(
                &format!("/api/user-functions/{}/logs", percent_encode(&name)),
                &extra,
            );
            let a = client.client()?.call(Method::GET, &path, None).await?;
            if a.status != 200 {
                return Ok(report_error(&a));
            }
            let jobs = a.body["jobs"].as_array().cloned().unwrap_or_default();
            if jobs.is_empty() {
                eprintln!("no calls of {name} yet");
            }
            for j in &jobs {
                let version = j["version"]
                    .as_u64()
                    .map(|v| format!(" v{v}"))
                    .unwrap_or_default();
                let took = j["duration_us"]
                    .as_u64()
                    .map(|us| format!(" {:.1} ms", us as f64 / 1000.0))
                    .unwrap_or_default();
                println!(
                    "== {} {}{}{} (created_ms {})",
                    j["id"].as_str().unwrap_or(""),
                    j["status"].as_str().unwrap_or(""),
                    version,
                    took,
                    j["created_ms"]
                );
                let logs = j["logs"].as_str().unwrap_or("");
                print!("{logs}");
                if !logs.is_empty() && !logs.ends_with('\n') {
                    println!();
                }
                if let Some(msg) = j["error"]["message"].as_str() {
                    println!(
                        "error: {}: {msg}",
                        j["error"]["code"].as_str().unwrap_or("error")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        FnCommand::Rm { name, client } => {
            let path = client.path(
                &format!("/api/user-functions/{}", percent_encode(&name)),
                &[],
            );
            let a = client.client()?.call(Method::DELETE, &path, None).await?;
            if a.status != 200 {
                return Ok(report_error(&a));
            }
            println!(
                "deleted {} ({} version{})",
                a.body["name"].as_str().unwrap_or(&name),
                a.body["versions"],
                if a.body["versions"] == 1 { "" } else { "s" }
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

struct DeployArgs {
    dir: PathBuf,
    runtime: String,
    name: Option<String>,
    handler: Option<String>,
    env: Vec<String>,
    limits: Option<String>,
    executor: Option<String>,
    timeout: Duration,
}

async fn deploy(client: &ClientArgs, args: DeployArgs) -> Result<ExitCode, String> {
    if !args.dir.is_dir() {
        return Err(format!("{} is not a directory", args.dir.display()));
    }
    let name = match args.name {
        Some(n) => n,
        None => name_from_dir(&args.dir).ok_or_else(|| {
            format!(
                "cannot make a function name from {}; pass --name",
                args.dir.display()
            )
        })?,
    };
    let handler = match args.handler {
        Some(h) => h,
        None => default_handler(&args.runtime)
            .ok_or_else(|| format!("pass --handler for the {} runtime", args.runtime))?
            .to_string(),
    };
    let mut env = serde_json::Map::new();
    for pair in &args.env {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("--env {pair}: expected NAME=VALUE"))?;
        env.insert(k.to_string(), Value::String(v.to_string()));
    }
    let dir = args.dir.clone();
    let packed = tokio::task::spawn_blocking(move || super::pack::pack_dir(&dir))
        .await
        .map_err(|e| format!("packing failed: {e}"))?
        .map_err(|e| format!("cannot pack {}: {e}", args.dir.display()))?;
    for s in &packed.skipped {
        eprintln!("sopm: left out {s} (not a regular file)");
    }
    if packed.files == 0 {
        return Err(format!("{} has no files to deploy", args.dir.display()));
    }
    eprintln!(
        "sopm: uploading {name} ({} file{}, {:.1} KiB packed)",
        packed.files,
        if packed.files == 1 { "" } else { "s" },
        packed.archive.len() as f64 / 1024.0
    );
    let mut metadata = json!({"name": name, "runtime": args.runtime, "handler": handler});
    if !env.is_empty() {
        metadata["env"] = Value::Object(env);
    }
    if let Some(l) = &args.limits {
        metadata["limits"] =
            serde_json::from_str(l).map_err(|e| format!("--limits is not valid JSON: {e}"))?;
    }
    if let Some(executor) = &args.executor {
        metadata["executor"] = json!(executor);
    }
    let (content_type, body) =
        super::pack::multipart_body(&metadata, &packed.archive, "function.tar.gz");
    let http = client.client()?;
    let a = http
        .send(
            Method::POST,
            &client.path("/api/user-functions", &[]),
            &content_type,
            body.into(),
        )
        .await?;
    if a.status != 202 {
        return Ok(report_error(&a));
    }
    let id = a.body["id"].as_str().unwrap_or_default().to_string();
    let version = a.body["version"].as_u64().unwrap_or(0);
    match a.body["executor"].as_str() {
        Some(executor) => eprintln!("sopm: {name} v{version} ({id}): building for {executor}"),
        None => eprintln!("sopm: {name} v{version} ({id}): building"),
    }
    let status_path = client.path(
        &format!("/api/user-functions/{id}"),
        &[("version", version.to_string())],
    );
    let until = Instant::now() + args.timeout;
    let mut shown = 0usize;
    loop {
        let a = http.call(Method::GET, &status_path, None).await?;
        if a.status != 200 {
            return Ok(report_error(&a));
        }
        let log = a.body["build_log"].as_str().unwrap_or("");
        if log.len() < shown {
            // The log was cut at its front (it is capped): show it from its start.
            shown = 0;
        }
        if log.len() > shown {
            eprint!("{}", &log[shown..]);
            shown = log.len();
        }
        match a.body["status"].as_str() {
            Some("ready") => {
                println!("{name} v{version} is ready ({id})");
                if let Some(note) = a.body["executor_note"].as_str() {
                    eprintln!("sopm: note: {note}");
                }
                return Ok(ExitCode::SUCCESS);
            }
            Some("failed") => {
                eprintln!("sopm: the build of {name} v{version} failed (build log above)");
                return Ok(ExitCode::FAILURE);
            }
            _ => {}
        }
        if Instant::now() >= until {
            return Err(format!(
                "{name} v{version} is still building after {} s; follow it with GET /api/user-functions/{id}",
                args.timeout.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
