//! `sopm`: run the SOPM server, or talk to one (the client commands are in [`cli`]).

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hyper::Method;
use serde_json::json;
use sopm_server::config::{ServeArgs, ServerConfig};

use cli::functions::{run_fn, FnCommand};
use cli::keys::{run_keys, KeysCommand};
use cli::{parse_input, percent_encode, print_json, report_error, simple, ClientArgs};

// mimalloc: markedly less time in allocation than the system allocator on the
// execute path, where every request allocates its input, record and answer.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// SOPM, the Serverless Operating-system Process Manager.
#[derive(Debug, Parser)]
#[command(name = "sopm", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (API on 127.0.0.1:8080, SQLite in ./sopm-data by default).
    Serve(Box<ServeArgs>),
    /// List the built-in functions.
    Functions(ClientArgs),
    /// Run a function: `sopm exec math.add '{"a":2,"b":3}'`.
    Exec {
        /// Function name.
        function: String,
        /// Input as JSON (default `{}`).
        input: Option<String>,
        /// Answer at once with a job id instead of waiting.
        #[arg(long = "async")]
        is_async: bool,
        /// How long to wait for the result before getting a job id, in ms.
        #[arg(long)]
        wait_ms: Option<u64>,
        /// Print the whole answer, not just the output.
        #[arg(long)]
        full: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a job.
    Status {
        /// Job id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel a queued or running job.
    Cancel {
        /// Job id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show the server's figures.
    Stats(ClientArgs),
    /// Deploy, list, call and remove user functions.
    #[command(subcommand)]
    Fn(FnCommand),
    /// Create, list and revoke API keys (opens the database in --data-dir directly).
    #[command(subcommand)]
    Keys(KeysCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(*args),
        other => client_command(other),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SOPM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let config = match ServerConfig::resolve(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sopm: {e}");
            return ExitCode::from(2);
        }
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if config.worker_threads > 0 {
        rt.worker_threads(config.worker_threads);
    }
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sopm: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(sopm_server::serve::serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sopm: {e}");
            ExitCode::FAILURE
        }
    }
}

fn client_command(cmd: Command) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sopm: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run_client(cmd)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sopm: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run_client(cmd: Command) -> Result<ExitCode, String> {
    match cmd {
        Command::Serve(_) => unreachable!("handled in main"),
        Command::Fn(f) => run_fn(f).await,
        Command::Keys(k) => run_keys(k).await,
        Command::Functions(c) => {
            let a = c
                .client()?
                .call(Method::GET, "/api/functions", None)
                .await?;
            if a.status != 200 {
                return Ok(report_error(&a));
            }
            let list = a.body["functions"].as_array().cloned().unwrap_or_default();
            for f in &list {
                println!(
                    "{:<28} {}",
                    f["name"].as_str().unwrap_or(""),
                    f["description"].as_str().unwrap_or("")
                );
            }
            println!("{} functions", list.len());
            Ok(ExitCode::SUCCESS)
        }
        Command::Exec {
            function,
            input,
            is_async,
            wait_ms,
            full,
            client,
        } => {
            let input = parse_input(input.as_deref())?;
            let mut body = json!({"function": function, "input": input, "async": is_async});
            if let Some(w) = wait_ms {
                body["wait_ms"] = w.into();
            }
            let path = client.path("/api/execute", &[]);
            let a = client
                .client()?
                .call(Method::POST, &path, Some(body))
                .await?;
            match a.status {
                200 if !full => print_json(&a.body["output"]),
                200 | 202 => print_json(&a.body),
                _ => return Ok(report_error(&a)),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { id, client } => {
            let path = client.path(&format!("/api/status/{}", percent_encode(&id)), &[]);
            simple(&client, Method::GET, &path).await
        }
        Command::Cancel { id, client } => {
            let path = client.path(&format!("/api/jobs/{}/cancel", percent_encode(&id)), &[]);
            simple(&client, Method::POST, &path).await
        }
        Command::Stats(c) => simple(&c, Method::GET, &c.path("/api/stats", &[])).await,
    }
}
