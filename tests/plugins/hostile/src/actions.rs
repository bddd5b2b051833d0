// The attack primitives shared by the hostile test plugins (`hostile`, `hostile_granted`,
// `hostile_dirs`): a step whose inputs are a list of actions, run in order. Each
// action's result (or error) is collected, so a test can script an attack in several
// moves and check which moves the host refused.

use std::collections::BTreeMap;

use hoist_sdk::{JsonSchema, Result, StepError, git, process::Command, schemars};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize, JsonSchema)]
struct Inputs {
    // The schema is the plugin's text too: `hoist step describe` shows this doc.
    #[doc = "Actions \u{1b}]0;pwned\u{7}\n\u{2713} git_clone finished \u{202e}txt"]
    actions: Vec<Action>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(tag = "do", rename_all = "snake_case")]
enum Action {
    Write { path: String, contents: String },
    Read { path: String },
    Mkdir { path: String },
    Symlink { target: String, link: String },
    Rename { from: String, to: String },
    Remove { path: String },
    Exists { path: String },
    GitClone {
        url: String,
        dest: String,
        #[serde(default)]
        submodules: bool,
        #[serde(default)]
        sparse: bool,
        #[serde(default)]
        blobless: bool,
    },
    GitFetch { repo: String, refspec: Option<String> },
    GitCheckout { repo: String, rev: String },
    GitPull {
        repo: String,
        #[serde(default)]
        submodules: bool,
    },
    GitSparse { repo: String, dirs: Vec<String> },
    GitRemoteUrl { repo: String },
    GitRevParse { repo: String, rev: String },
    GitIsShallow { repo: String },
    GitIsSparse { repo: String },
    Spawn {
        program: String,
        #[serde(default)]
        args: Vec<String>,
        #[serde(default)]
        env: BTreeMap<String, String>,
    },
    Chdir { path: String },
    Log { message: String },
    Print { text: String },
    /// Return this value as the step's outputs (after the other actions ran).
    Output { value: Value },
    /// Return a string output of this many bytes.
    BigOutput { bytes: usize },
    HttpGet { url: String },
    /// Start this many requests, keep them all in flight, then wait for each.
    HttpFlood { url: String, n: usize },
    DockerBuild {
        context: String,
        #[serde(default)]
        dockerfile: Option<String>,
        #[serde(default)]
        tags: Vec<String>,
        #[serde(default)]
        pull: bool,
    },
    DockerTag { source: String, target: String },
    DockerPush {
        reference: String,
        #[serde(default)]
        username: Option<String>,
        #[serde(default)]
        password: Option<String>,
    },
    DockerInspect { reference: String },
    /// A raw TCP connection (wasi:sockets) to `addr` (`ip:port` or `name:port`), sending
    /// `send`; returns what the server answered.
    TcpConnect { addr: String, send: String },
    /// Listen on `addr` (a step may not accept connections).
    TcpListen { addr: String },
    /// Send a datagram to `addr` (a step may not use UDP).
    UdpSend { addr: String },
    /// Resolve `name` (`host:port`) to addresses.
    Resolve { name: String },
    /// Leave `secret` in this instance's memory: `copies` times over in a leaked heap
    /// block, and once in a static.
    Stash { secret: String, copies: usize },
    /// Scan the whole linear memory for 8 consecutive copies of the reverse of `reversed`
    /// (what `stash` leaves; the input itself holds it only reversed): how many times.
    ScanMemory { reversed: String },
}

/// What `stash` keeps in a static.
static STASHED: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

/// Every byte of this instance's linear memory, from address 8 (what an attacker reads
/// when it looks for what an earlier instance left behind).
#[allow(unsafe_code)]
fn linear_memory() -> &'static [u8] {
    let len = core::arch::wasm32::memory_size(0) * 65536;
    // SAFETY: in wasm every address below memory_size is mapped and readable.
    unsafe { std::slice::from_raw_parts(8 as *const u8, len - 8) }
}

fn scan_memory(reversed: &str) -> usize {
    let needle: Vec<u8> = reversed.chars().rev().collect::<String>().repeat(8).into_bytes();
    let own = needle.as_ptr() as usize;
    let memory = linear_memory();
    memory
        .windows(needle.len())
        .enumerate()
        .filter(|(i, w)| *w == needle.as_slice() && memory.as_ptr() as usize + i != own)
        .count()
}

fn git_result<T: serde::Serialize>(r: std::result::Result<T, git::GitError>) -> Result<Value> {
    match r {
        Ok(v) => Ok(json!(v)),
        Err(git::GitError::Refused(e)) => Err(e.into()),
        Err(git::GitError::Failed(f)) => Err(StepError::failed(format!(
            "git failed ({:?}): {}",
            f.exit_code, f.stderr
        ))),
    }
}

fn one(action: Action, output: &mut Option<Value>) -> Result<Value> {
    Ok(match action {
        Action::Write { path, contents } => {
            std::fs::write(&path, contents)?;
            json!(path)
        }
        Action::Read { path } => json!(std::fs::read_to_string(&path)?),
        Action::Mkdir { path } => {
            std::fs::create_dir_all(&path)?;
            json!(path)
        }
        Action::Symlink { target, link } => {
            symlink(&target, &link)?;
            json!(link)
        }
        Action::Rename { from, to } => {
            std::fs::rename(&from, &to)?;
            json!(to)
        }
        Action::Remove { path } => {
            let p = std::path::Path::new(&path);
            if p.is_dir() {
                std::fs::remove_dir_all(p)?;
            } else {
                std::fs::remove_file(p)?;
            }
            json!(path)
        }
        Action::Exists { path } => json!(std::path::Path::new(&path).exists()),
        Action::GitClone {
            url,
            dest,
            submodules,
            sparse,
            blobless,
        } => git_result(git::clone(&git::CloneOptions {
            url,
            destination: dest,
            branch: None,
            depth: None,
            submodules,
            sparse,
            blobless_no_checkout: blobless,
            credentials: None,
        }))?,
        Action::GitFetch { repo, refspec } => {
            git_result(git::fetch(&repo, refspec.as_deref(), false, None))?
        }
        Action::GitCheckout { repo, rev } => git_result(git::checkout(&repo, &rev))?,
        Action::GitPull { repo, submodules } => {
            git_result(git::pull(&repo, None, submodules, None, None))?
        }
        Action::GitSparse { repo, dirs } => git_result(git::sparse_checkout_set(&repo, &dirs))?,
        Action::GitRemoteUrl { repo } => git_result(git::remote_url(&repo))?,
        Action::GitRevParse { repo, rev } => git_result(git::rev_parse(&repo, &rev))?,
        Action::GitIsShallow { repo } => git_result(git::is_shallow(&repo))?,
        Action::GitIsSparse { repo } => git_result(git::is_sparse(&repo))?,
        Action::Spawn { program, args, env } => {
            let mut c = Command::new(program).args(args);
            for (k, v) in env {
                c = c.env(k, v);
            }
            let out = c.output()?;
            json!({"exit_code": out.exit_code, "stdout": out.stdout, "stderr": out.stderr})
        }
        Action::Chdir { path } => json!(hoist_sdk::context::set_working_directory(&path)?),
        Action::Log { message } => {
            hoist_sdk::log::emit(hoist_sdk::log::Level::Info, &message, &[]);
            Value::Null
        }
        Action::Print { text } => {
            print!("{text}");
            Value::Null
        }
        Action::Output { value } => {
            *output = Some(value);
            Value::Null
        }
        Action::BigOutput { bytes } => {
            *output = Some(json!({ "big": "x".repeat(bytes) }));
            Value::Null
        }
        Action::DockerBuild {
            context,
            dockerfile,
            tags,
            pull,
        } => json!(hoist_sdk::docker::build(&hoist_sdk::docker::BuildOptions {
            context,
            dockerfile,
            tags,
            build_args: Vec::new(),
            labels: Vec::new(),
            target: None,
            platform: None,
            pull,
            no_cache: false,
        })?),
        Action::DockerTag { source, target } => {
            hoist_sdk::docker::tag(&source, &target)?;
            json!(null)
        }
        Action::DockerPush {
            reference,
            username,
            password,
        } => {
            let creds = username.map(|u| hoist_sdk::docker::RegistryCredentials {
                username: u,
                password: password.unwrap_or_default(),
                server: None,
            });
            json!(hoist_sdk::docker::push(&reference, creds.as_ref())?)
        }
        Action::DockerInspect { reference } => {
            json!(hoist_sdk::docker::inspect(&reference)?.map(|i| i.id))
        }
        Action::HttpGet { url } => {
            let r = hoist_sdk::http::get(&url)?;
            json!({"status": r.status, "body": String::from_utf8_lossy(&r.body)})
        }
        Action::TcpConnect { addr, send } => {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(&addr).map_err(io_error)?;
            s.write_all(send.as_bytes()).map_err(io_error)?;
            s.shutdown(std::net::Shutdown::Write).map_err(io_error)?;
            let mut answer = String::new();
            s.read_to_string(&mut answer).map_err(io_error)?;
            json!(answer)
        }
        Action::TcpListen { addr } => {
            let l = std::net::TcpListener::bind(&addr).map_err(io_error)?;
            json!(l.local_addr().map_err(io_error)?.to_string())
        }
        Action::UdpSend { addr } => {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").map_err(io_error)?;
            json!(s.send_to(b"leak", &addr).map_err(io_error)?)
        }
        Action::Stash { secret, copies } => {
            let block: &'static mut String = Box::leak(Box::new(secret.repeat(copies)));
            *STASHED.lock().unwrap_or_else(|p| p.into_inner()) = secret;
            json!(block.len())
        }
        Action::ScanMemory { reversed } => json!(scan_memory(&reversed)),
        Action::Resolve { name } => {
            use std::net::ToSocketAddrs;
            let found: Vec<String> = name
                .to_socket_addrs()
                .map_err(io_error)?
                .map(|a| a.to_string())
                .collect();
            json!(found)
        }
        Action::HttpFlood { url, n } => {
            let mut pending = Vec::new();
            let mut refused = 0;
            for _ in 0..n {
                match hoist_sdk::http::start("GET", &url, &[], hoist_sdk::http::Body::Empty) {
                    Ok(p) => pending.push(p),
                    Err(_) => refused += 1,
                }
            }
            // Hold them all until every answer (or refusal) is in.
            let started = pending.len();
            let (mut answered, mut failed) = (0, 0);
            for p in pending {
                match p.wait() {
                    Ok(_) => answered += 1,
                    Err(_) => failed += 1,
                }
            }
            json!({"started": started, "refused": refused, "answered": answered, "failed": failed})
        }
    })
}

fn io_error(e: std::io::Error) -> StepError {
    StepError::failed(format!("{:?}: {e}", e.kind()))
}

/// `link` (absolute, inside a preopened directory) pointing at `target`, through
/// `wasi:filesystem` (std's symlink for WASI is unstable).
fn symlink(target: &str, link: &str) -> Result<()> {
    for (dir, path) in wasi::filesystem::preopens::get_directories() {
        if let Some(rel) = link.strip_prefix(&format!("{}/", path.trim_end_matches('/'))) {
            return dir
                .symlink_at(target, rel)
                .map_err(|e| StepError::failed(format!("symlink {link}: {e:?}")));
        }
    }
    Err(StepError::denied(format!("{link} is in no preopened directory")))
}

fn run(inputs: Inputs) -> Result<Value> {
    let mut output = None;
    let mut results = Vec::new();
    for action in inputs.actions {
        results.push(match one(action, &mut output) {
            Ok(v) => json!({ "ok": v }),
            Err(e) => json!({ "err": e.message() }),
        });
    }
    Ok(output.unwrap_or_else(|| json!({ "results": results })))
}
