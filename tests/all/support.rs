//! Shared helpers: a runtime with a test cache, a recording log sink, the binary, a free
//! port and servers killed on drop, venvs, the test's git, writing a project then running
//! `hoist` on it, and the BLESS switch of the fixture harnesses.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use hoist::capability::log::{LogRecord, LogSink};
use hoist::runtime::{ComponentCache, HostEnv, Runtime, RuntimeConfig};

/// The test components' paths (built by `hoist-builtins`' build script).
pub use hoist::builtin::test_plugins as plugins;

/// A cache directory shared by the tests of one target dir (compiles once per run).
pub fn test_cache() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-cache");
    std::fs::create_dir_all(&dir).unwrap();
    let mut perms = std::fs::metadata(&dir).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o700);
    std::fs::set_permissions(&dir, perms).unwrap();
    dir
}

pub fn runtime() -> Runtime {
    Runtime::new(RuntimeConfig {
        cache: ComponentCache::at(test_cache()),
        env: HostEnv::from_process(),
        ..RuntimeConfig::default()
    })
    .unwrap()
}

/// Keeps every record as `step|message`.
#[derive(Default)]
pub struct Recorder(pub Mutex<Vec<String>>);

impl LogSink for Recorder {
    fn record(&self, r: &LogRecord<'_>) {
        let mut line = format!("{}|{}", r.step, r.message);
        for (k, v) in r.fields {
            line.push_str(&format!(" {k}={v}"));
        }
        self.0.lock().unwrap().push(line);
    }
}

impl Recorder {
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

pub fn recorder() -> Arc<Recorder> {
    Arc::new(Recorder::default())
}

/// A temporary directory, canonicalised (so it equals what the host reports). It lies
/// inside the returned guard's directory, beside the Hoist home [`hoist`] gives it.
pub fn tempdir() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let p = std::fs::canonicalize(t.path()).unwrap().join("w");
    std::fs::create_dir(&p).unwrap();
    (t, p)
}

/// The Hoist home [`hoist`] uses for `dir`: beside it, never inside (plugins are never
/// given a directory that holds Hoist's home).
pub fn home_of(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap().to_os_string();
    name.push(".hoist-home");
    dir.with_file_name(name)
}

/// The real `hoist` binary with a test cache and a private HOIST_HOME for `dir`
/// ([`home_of`]).
pub fn hoist(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hoist"));
    c.env("HOIST_CACHE_DIR", test_cache())
        .env("HOIST_HOME", home_of(dir))
        // Progress marks depend on the locale: the tests expect UTF-8's.
        .env_remove("LC_ALL")
        .env_remove("LC_CTYPE")
        .env("LANG", "C.UTF-8");
    c
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Run and return (exit code, stdout, stderr).
pub fn run(cmd: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().unwrap();
    (status.code().unwrap_or(-1), text(&stdout), text(&stderr))
}

/// A server process started by a test, killed when dropped.
pub struct Server(pub std::process::Child, pub u16);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Server {
    /// Spawn `cmd` (which listens on 127.0.0.1:`port`) and wait until it accepts.
    pub fn start(mut cmd: Command, port: u16, what: &str) -> Server {
        let mut child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what}: {e}"));
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Server(child, port);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("{what} did not start listening on 127.0.0.1:{port}");
    }
}

/// A certificate for `localhost` signed by a private CA, written into `dir`: `ca.pem`
/// (what `SSL_CERT_FILE` names to trust it), `srv.pem` and `srv.key` (the server's).
pub fn private_ca(dir: &Path) {
    let sh = |script: &str| {
        let ok = Command::new("sh")
            .args(["-c", script])
            .current_dir(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "{script}");
    };
    sh(
        "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 -subj '/CN=Hoist test CA'",
    );
    sh("openssl req -newkey rsa:2048 -nodes -keyout srv.key -out srv.csr -subj /CN=localhost");
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost\n").unwrap();
    sh(
        "openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem -days 1 -extfile san.ext",
    );
}

/// An HTTPS server on 127.0.0.1 whose certificate (for `localhost`) is signed by a
/// private CA written to `dir/ca.pem`; it serves `dir`.
pub fn private_ca_server(dir: &Path) -> Server {
    private_ca(dir);
    let port = free_port();
    let mut cmd = Command::new("python3");
    cmd.current_dir(dir).arg("-c").arg(format!(
        "import http.server as h, ssl\n\
         s = h.HTTPServer(('127.0.0.1', {port}), h.SimpleHTTPRequestHandler)\n\
         c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); c.load_cert_chain('srv.pem', 'srv.key')\n\
         s.socket = c.wrap_socket(s.socket, server_side=True)\n\
         s.serve_forever()\n"
    ));
    Server::start(cmd, port, "an HTTPS server with a private CA")
}

/// Python for the relays below: copy one socket to another until it closes.
const PIPE: &str = "def pipe(a, b):
    try:
        while True:
            d = a.recv(65536)
            if not d: break
            b.sendall(d)
    except Exception: pass
    try: b.shutdown(socket.SHUT_WR)
    except Exception: pass
";

/// Python that accepts on 127.0.0.1:`port`, a thread per connection running `handle`.
fn serve_py(port: u16) -> String {
    format!(
        "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', {port})); s.listen(16)
while True:
    c, _ = s.accept(); threading.Thread(target=handle, args=(c,), daemon=True).start()
"
    )
}

/// TLS in front of a plain server on 127.0.0.1:`to` (its certificate for `localhost`
/// from [`private_ca`] in `dir`): `https://localhost:PORT` reaches it.
pub fn tls_in_front_of(dir: &Path, to: u16) -> Server {
    private_ca(dir);
    let port = free_port();
    let mut cmd = Command::new("python3");
    cmd.current_dir(dir).arg("-c").arg(format!(
        r#"
import socket, ssl, threading
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain('srv.pem', 'srv.key')
{PIPE}def handle(c):
    try: t = ctx.wrap_socket(c, server_side=True)
    except Exception: c.close(); return
    u = socket.create_connection(('127.0.0.1', {to}))
    threading.Thread(target=pipe, args=(t, u), daemon=True).start()
    pipe(u, t)
{SERVE}"#,
        PIPE = PIPE,
        SERVE = serve_py(port)
    ));
    Server::start(cmd, port, "a TLS terminator")
}

/// `component` with every `hoist:step/...@0.1.0` name it imports or exports moved to
/// `version` (same length, so the binary stays valid): a step built for another WIT.
pub fn built_for_wit(component: &[u8], version: &str) -> Vec<u8> {
    assert_eq!(version.len(), "0.1.0".len());
    let mut out = component.to_vec();
    let prefix = b"hoist:step/";
    let mut i = 0;
    let mut moved = 0;
    while i + prefix.len() < out.len() {
        if out[i..].starts_with(prefix)
            && let Some(at) = out[i..out.len().min(i + 48)]
                .iter()
                .position(|&b| b == b'@')
            && out[i + at + 1..].starts_with(b"0.1.0")
        {
            out[i + at + 1..i + at + 6].copy_from_slice(version.as_bytes());
            moved += 1;
        }
        i += 1;
    }
    assert!(moved > 0, "no hoist:step names in the component");
    out
}

/// The program `name` on PATH (or in `~/.cargo/bin`), or `None` with the skip said
/// aloud; a failure when the environment variable `require` is set (`.ci/run` sets it
/// and installs the program as `install` says).
/// Say that (part of) the running test was skipped: on stderr, and as one line in the
/// file `HOIST_SKIP_LOG` names, so `.ci/run` can count the skips libtest's capture hides
/// and fail on any it did not expect.
pub fn skip(why: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("<unnamed test>")
        .to_string();
    eprintln!("skipped: {why}");
    if let Some(log) = std::env::var_os("HOIST_SKIP_LOG") {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("HOIST_SKIP_LOG names a file that cannot be opened");
        writeln!(f, "{test}: {}", why.replace('\n', " ")).unwrap();
    }
}

pub fn tool(name: &str, require: &str, install: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    let found = dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os(require).is_none(),
            "{require} is set but {name} is not installed ({install})"
        );
        skip(&format!("{name} is not installed ({install})"));
    }
    found
}

/// Debian's `tinyproxy` on loopback (absolute-form HTTP and `CONNECT`), logging every
/// request to `dir/proxy.log`, with `extra` configuration lines (`ConnectPort 443`
/// refuses tunnels to any other port); `None` when it is not installed (a failure under
/// `HOIST_REQUIRE_PREFECT`, as `.ci/run` installs it).
pub fn tinyproxy(dir: &Path, extra: &str) -> Option<(Server, String, PathBuf)> {
    let bin = tool(
        "tinyproxy",
        "HOIST_REQUIRE_PREFECT",
        "apt-get install tinyproxy",
    )?;
    let port = free_port();
    let log = dir.join("proxy.log");
    let conf = dir.join("tinyproxy.conf");
    std::fs::write(
        &conf,
        format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 60\nLogFile \"{}\"\nLogLevel Connect\nMaxClients 20\nAllow 127.0.0.1\n{extra}",
            log.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(bin);
    cmd.arg("-d").arg("-c").arg(&conf);
    let server = Server::start(cmd, port, "tinyproxy");
    Some((server, format!("http://127.0.0.1:{port}"), log))
}

/// The request lines tinyproxy logged (`CONNECT host:port HTTP/1.1`,
/// `GET http://... HTTP/1.1`), oldest first.
pub fn proxy_requests(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once("]: Request (file descriptor "))
        .filter_map(|(_, rest)| rest.split_once("): "))
        .map(|(_, line)| line.to_string())
        .collect()
}

/// The first `Some` that `check` gives, asked every 20 ms for up to 30 s (a condition
/// waited for, not a guessed sleep); panics when it never comes.
pub fn wait_until<T>(mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the condition did not hold within 30 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Python's `http.server` serving `dir` on loopback.
pub fn http_server(dir: &Path) -> Server {
    let port = free_port();
    let mut cmd = Command::new("python3");
    cmd.args(["-m", "http.server", "--bind", "127.0.0.1"])
        .arg(port.to_string())
        .current_dir(dir);
    Server::start(cmd, port, "python3 -m http.server")
}

/// Write `text` as `dir/prefect.yaml`.
pub fn write_project(dir: &Path, text: impl AsRef<[u8]>) {
    std::fs::write(dir.join("prefect.yaml"), text).unwrap();
}

/// Write `text` as `dir/prefect.yaml`, then run `hoist <args>` in `dir` (with the Hoist
/// home of [`hoist`]); returns (exit code, stdout, stderr).
pub fn run_project(dir: &Path, text: impl AsRef<[u8]>, args: &[&str]) -> (i32, String, String) {
    write_project(dir, text);
    run(hoist(dir).current_dir(dir).args(args))
}

/// A Python virtual environment at `dir/venv`; returns its `python`.
pub fn venv(dir: &Path) -> PathBuf {
    let venv = dir.join("venv");
    let ok = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .unwrap();
    assert!(ok.success(), "python3 -m venv {}", venv.display());
    venv.join("bin/python")
}

/// The test's own git in `dir`, ignoring the machine's configuration; returns stdout,
/// trimmed. Panics with git's stderr when it fails.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "init.defaultBranch=main",
            "-c",
            "protocol.file.allow=always",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Whether `BLESS` asks the fixture harnesses to rewrite their expectations. Refused
/// under CI (`CI` or `HOIST_CI` set): there, a blessed expectation would make every
/// fixture test pass whatever the code does.
pub fn bless() -> bool {
    let bless = std::env::var_os("BLESS").is_some();
    if bless {
        for ci in ["CI", "HOIST_CI"] {
            assert!(
                std::env::var_os(ci).is_none(),
                "BLESS is set together with {ci}: fixture tests rewrite their expectations \
                 instead of checking them; unset BLESS in CI"
            );
        }
    }
    bless
}

/// Run the shell `command` (its output to `dir/<name>.log`) under a watchdog that kills
/// it, then runs `cleanup`, once this test binary has exited: servers shared by a whole
/// test run (a container engine, a Prefect server) never outlive it.
pub fn supervised(dir: &Path, name: &str, command: &str, cleanup: &str) {
    let script = format!(
        "{command} > {log} 2>&1 & child=$!; while kill -0 {me} 2>/dev/null; do sleep 0.5; done; kill $child; sleep 2; kill -9 $child 2>/dev/null; {cleanup}",
        log = dir.join(format!("{name}.log")).display(),
        me = std::process::id(),
    );
    // `setsid -f` forks the watchdog off and returns at once.
    let started = Command::new("setsid")
        .args(["-f", "sh", "-c", &script])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(started.success(), "starting {name}");
}

/// The request heads a [`stand_in`] server saw (request line and headers, as sent).
pub type Heads = Arc<Mutex<Vec<String>>>;

/// A stand-in HTTP server on loopback (a small std listener, not the real service):
/// it records the head of every request and lets `reply(head, stream)` write the whole
/// answer, for what a real server will not do (redirect elsewhere, echo headers, send
/// 100 MiB). Returns `http://127.0.0.1:PORT` and the heads; it lives as long as the
/// test binary.
pub fn stand_in(
    reply: impl Fn(&str, &mut std::net::TcpStream) + Send + Sync + 'static,
) -> (String, Heads) {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let heads: Heads = Arc::default();
    let (seen, reply) = (heads.clone(), Arc::new(reply));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let (seen, reply) = (seen.clone(), reply.clone());
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let length = head
                    .lines()
                    .filter_map(|l| l.split_once(':'))
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                let mut body = vec![0u8; length.min(1 << 20)];
                let _ = stream.read_exact(&mut body);
                seen.lock().unwrap().push(head.clone());
                reply(&head, &mut stream);
            });
        }
    });
    (base, heads)
}

/// Write a complete HTTP answer (`status` like `200 OK`, `extra` header lines each
/// ending in `\r\n`) with a JSON body, closing the connection after it.
pub fn answer(stream: &mut std::net::TcpStream, status: &str, extra: &str, body: &str) {
    use std::io::Write;
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{extra}\r\n{body}",
        body.len()
    );
}

/// Every file under `dirs` (recursively) whose bytes contain `needle`: what a run
/// stored that it should not have.
pub fn files_containing(dirs: &[&Path], needle: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, needle: &[u8], out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                walk(&p, needle, out);
            } else if std::fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
            {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    for d in dirs {
        walk(d, needle.as_bytes(), &mut out);
    }
    out
}
