//! `hoist:step/docker`: images built, tagged, pushed and inspected through the host's
//! Docker Engine API (`DOCKER_HOST`, a unix socket), on the step's terms.
//!
//! - Typed calls only: a step chooses a context, a Dockerfile, tags, build args, labels,
//!   a target, a platform, `pull` and `no-cache`; never the network mode, privileges,
//!   extra hosts, mounts or any other engine call. The socket is root on the host.
//! - `docker:build` covers build, tag and inspect; a push needs a `docker:push:<pattern>`
//!   grant covering the repository as Docker normalises it. Both are checked before the
//!   engine is contacted.
//! - Every reference is parsed against Docker's grammar before it reaches a URL.
//! - The context must lie in a directory the step was given, the Dockerfile inside the
//!   context; it is sent as a tar stream ([`context`]) honouring `.dockerignore`, with
//!   links as links.
//! - Offline unless the step holds `net:*`: the build runs with network mode `none`,
//!   `pull` is refused, `ADD <url>` is refused, and every base image (`FROM`, `COPY
//!   --from`) must already be on the engine (the engine would otherwise fetch it itself,
//!   from the host's network).
//! - Registry passwords go to the engine in the `X-Registry-Auth` header only, and into
//!   the step's redactor before anything is sent.

mod context;
mod engine;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hoist_policy::encoding::base64_url;
use hoist_policy::{Capability, Grants, HostEnv, docker_repository};
use http::Method;
use tokio::sync::{OnceCell, mpsc};
use wasmtime::component::{HasData, Linker};

use crate::bindings::hoist::step::docker::{self, BuildOptions, Host, Image, RegistryCredentials};
use crate::bindings::{Failure, Level, StepError};
use crate::capability::log::{Source, StepLog};
use crate::capability::setup::{Root, StepInfo, StepSetup};
use engine::{Engine, EngineError, ReqBody, encode, path_name};

pub use context::Ignore;

/// The state of `hoist:step/docker`.
pub struct DockerCtx {
    info: Arc<StepInfo>,
    grants: Arc<Grants>,
    roots: Arc<[Root]>,
    log: StepLog,
    env: HostEnv,
    engine: OnceCell<Engine>,
}

impl DockerCtx {
    /// The docker capability of a step.
    pub fn prepare(setup: &StepSetup) -> Self {
        Self {
            info: setup.info.clone(),
            grants: setup.grants.clone(),
            roots: setup.roots.clone(),
            log: setup.log.clone(),
            env: setup.env.clone(),
            engine: OnceCell::new(),
        }
    }

    /// The view the host calls run on: this state and the step's working directory.
    pub fn view<'a>(&'a self, cwd: &'a Path) -> DockerView<'a> {
        DockerView { ctx: self, cwd }
    }
}

/// What `hoist:step/docker` sees of a step's store.
pub struct DockerView<'a> {
    ctx: &'a DockerCtx,
    cwd: &'a Path,
}

struct HasDocker;

impl HasData for HasDocker {
    type Data<'a> = DockerView<'a>;
}

/// Link `hoist:step/docker` to the [`DockerView`] that `get` makes of the store.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> DockerView<'_>,
) -> wasmtime::Result<()> {
    docker::add_to_linker::<T, HasDocker>(linker, get)
}

fn failure(message: String, hint: Option<String>) -> StepError {
    StepError::Failed(Failure {
        message,
        exit_code: None,
        hint,
    })
}

/// A name component of a repository: `[a-z0-9]+` joined by `.`, `_`, `__` or `-`s.
fn name_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    let mut prev_sep = false;
    for (i, &x) in b.iter().enumerate() {
        let sep = matches!(x, b'.' | b'_' | b'-');
        if !(x.is_ascii_lowercase() || x.is_ascii_digit() || sep) {
            return false;
        }
        if sep && prev_sep && !(x == b'_' && b[i - 1] == b'_' || x == b'-') {
            return false;
        }
        prev_sep = sep;
    }
    true
}

/// A registry host: labels of `[A-Za-z0-9-]`, dots between, an optional `:port`.
fn domain(c: &str) -> bool {
    let (host, port) = match c.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (c, None),
    };
    let host_ok = !host.is_empty()
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
        });
    host_ok
        && port
            .is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

fn tag_ok(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && t.as_bytes()[0] != b'.'
        && t.as_bytes()[0] != b'-'
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// A reference checked against Docker's grammar: `(name, tag)`; ids (`sha256:<hex>` or
/// hex) are `(id, None)`. Nothing else reaches a URL.
fn reference(what: &str, r: &str) -> Result<(String, Option<String>), StepError> {
    let bad = |why: &str| {
        StepError::InvalidInput(format!(
            "{what} `{}` is not an image reference ({why}); write `[registry/]name[:tag]`, lower case",
            hoist_policy::text::sanitize(r)
        ))
    };
    if let Some(hex) = r.strip_prefix("sha256:")
        && hex.len() == 64
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Ok((r.to_string(), None));
    }
    if r.contains('@') {
        return Err(bad("digests are not accepted here"));
    }
    let (name, tag) = match r.rsplit_once('/') {
        Some((head, last)) => match last.split_once(':') {
            Some((repo, tag)) => (format!("{head}/{repo}"), Some(tag.to_string())),
            None => (r.to_string(), None),
        },
        None => match r.split_once(':') {
            Some((repo, tag)) => (repo.to_string(), Some(tag.to_string())),
            None => (r.to_string(), None),
        },
    };
    if name.len() > 255 {
        return Err(bad("too long"));
    }
    let parts: Vec<&str> = name.split('/').collect();
    let (first, rest) = parts.split_first().ok_or_else(|| bad("empty"))?;
    let registry = !rest.is_empty() && (first.contains(['.', ':']) || *first == "localhost");
    let ok = if registry {
        domain(first) && rest.iter().all(|c| name_component(c))
    } else {
        parts.iter().all(|c| name_component(c))
    };
    if !ok {
        return Err(bad(
            "each part is lower-case letters and digits, separated by `.`, `_` or `-`",
        ));
    }
    if let Some(t) = &tag
        && !tag_ok(t)
    {
        return Err(bad("a tag is up to 128 letters, digits, `_`, `.` and `-`"));
    }
    Ok((name, tag))
}

/// `name:tag` (a missing tag is `latest`).
fn full(name: &str, tag: &Option<String>) -> String {
    if name.starts_with("sha256:") {
        return name.to_string();
    }
    format!("{name}:{}", tag.as_deref().unwrap_or("latest"))
}

fn plain(what: &str, v: &str) -> Result<(), StepError> {
    if v.chars().any(|c| c.is_control()) {
        return Err(StepError::InvalidInput(format!(
            "{what} contains control characters"
        )));
    }
    Ok(())
}

impl DockerView<'_> {
    fn require(&self, cap: Capability, what: &str) -> Result<(), StepError> {
        if self.ctx.grants.allows(&cap) {
            Ok(())
        } else {
            Err(StepError::Denied(self.ctx.info.denial(&cap, what)))
        }
    }

    fn online(&self) -> bool {
        self.ctx.grants.allows(&Capability::Net("*".into()))
    }

    async fn engine(&self) -> Result<&Engine, StepError> {
        self.ctx
            .engine
            .get_or_try_init(|| Engine::connect(&self.ctx.env))
            .await
            .map_err(|e| self.engine_error(e, "reach the Docker engine"))
    }

    fn engine_error(&self, e: EngineError, doing: &str) -> StepError {
        let redact = |s: &str| self.ctx.log.redactor().redact(s).into_owned();
        match e {
            EngineError::Unreachable(m) => failure(
                format!("cannot {doing}: {}", redact(&m)),
                Some(
                    "start a Docker engine (dockerd, or Podman's `podman system service`), or point \
                     DOCKER_HOST at its socket, e.g. DOCKER_HOST=unix:///run/podman/podman.sock"
                        .into(),
                ),
            ),
            EngineError::Unsupported(m) => StepError::InvalidInput(redact(&m)),
            EngineError::Api(status, m) if status == http::StatusCode::NOT_FOUND => {
                StepError::NotFound(format!("cannot {doing}: {}", redact(&m)))
            }
            other => failure(format!("cannot {doing}: {}", redact(&other.to_string())), None),
        }
    }

    /// The context directory, canonical, inside a directory the step was given.
    fn context_dir(&self, dir: &str) -> Result<PathBuf, StepError> {
        plain("the build context", dir)?;
        let joined = self.cwd.join(dir);
        let canon = std::fs::canonicalize(&joined).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => StepError::NotFound(format!(
                "build context `{dir}` does not exist (looked for {})",
                joined.display()
            )),
            _ => failure(
                format!("cannot use build context {}: {e}", joined.display()),
                None,
            ),
        })?;
        if !canon.is_dir() {
            return Err(StepError::InvalidInput(format!(
                "build context `{}` is not a directory",
                canon.display()
            )));
        }
        if !self.ctx.roots.iter().any(|(r, _)| canon.starts_with(r)) {
            return Err(StepError::Denied(format!(
                "step `{}` ({}) may not build from {}: a build context must lie in a directory \
                 the step was given (its working directory, or a `read:`/`write:` grant)",
                self.ctx.info.name,
                self.ctx.info.plugin,
                canon.display()
            )));
        }
        Ok(canon)
    }

    /// The Dockerfile, relative to the context and inside it: `(relative, canonical)`.
    fn dockerfile(&self, context: &Path, file: &str) -> Result<(String, PathBuf), StepError> {
        plain("the Dockerfile", file)?;
        let path = Path::new(file);
        if path.is_absolute()
            || path
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(StepError::InvalidInput(format!(
                "Dockerfile `{file}` must be a path inside the build context, relative to it"
            )));
        }
        let canon = std::fs::canonicalize(context.join(path)).map_err(|_| {
            StepError::NotFound(format!(
                "Dockerfile `{file}` does not exist in the build context {}",
                context.display()
            ))
        })?;
        if !canon.starts_with(context) || !canon.is_file() {
            return Err(StepError::Denied(format!(
                "Dockerfile `{file}` must be a file inside the build context {}",
                context.display()
            )));
        }
        let rel = canon
            .strip_prefix(context)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|_| file.to_string());
        Ok((rel, canon))
    }

    /// What no build may hold, online or not ([`forbidden_run_option`]).
    fn check_dockerfile(
        &self,
        dockerfile: &Path,
        instructions: &[String],
    ) -> Result<(), StepError> {
        for instruction in instructions {
            if let Some(option) = forbidden_run_option(instruction) {
                return Err(StepError::Denied(format!(
                    "step `{}` ({}) may not build {}: `RUN {}` can reach host paths, the host's \
                     network or disable the build's sandbox; Hoist refuses `RUN --mount`, \
                     `--network` and `--security` in every build",
                    self.ctx.info.name,
                    self.ctx.info.plugin,
                    dockerfile.display(),
                    hoist_policy::text::sanitize(option)
                )));
            }
        }
        Ok(())
    }

    /// Offline builds: nothing in the Dockerfile may make the engine fetch from the
    /// network. `ADD <url>` is refused; every base image must already be there.
    async fn check_offline(&self, instructions: &[String]) -> Result<(), StepError> {
        let refuse = |what: String| {
            StepError::Denied(format!(
                "step `{}` ({}) may not build this Dockerfile offline: {what}. Builds reach the \
                 network only with `net:*` (grant it to the step, or make the image available \
                 on the engine first)",
                self.ctx.info.name, self.ctx.info.plugin
            ))
        };
        let images = images_needed(instructions).map_err(refuse)?;
        let engine = self.engine().await?;
        for image in images {
            let (name, tag) = reference("base image", &image)?;
            let found = engine
                .call(
                    Method::GET,
                    &format!("/images/{}/json", path_name(&full(&name, &tag))),
                    None,
                )
                .await;
            match found {
                Ok(_) => {}
                Err(EngineError::Api(status, _)) if status == http::StatusCode::NOT_FOUND => {
                    return Err(refuse(format!(
                        "base image `{image}` is not on the engine, which would pull it"
                    )));
                }
                Err(e) => return Err(self.engine_error(e, "look up a base image")),
            }
        }
        Ok(())
    }

    /// What the build may fetch: with `net:*`, `pull` as asked; without it, offline
    /// (`networkmode=none`, no `pull`, no `platform`, base images already on the engine).
    async fn network_query(
        &mut self,
        opts: &BuildOptions,
        parsed: &[String],
        query: &mut Vec<String>,
    ) -> Result<(), StepError> {
        if self.online() {
            if opts.pull {
                query.push("pull=1".into());
            }
            return Ok(());
        }
        if opts.platform.is_some() {
            return Err(StepError::Denied(self.ctx.info.denial(
                &Capability::Net("*".into()),
                "choose a `platform` (the engine may pull base images for it)",
            )));
        }
        if opts.pull {
            return Err(StepError::Denied(
                self.ctx
                    .info
                    .denial(&Capability::Net("*".into()), "pull base images (`pull`)"),
            ));
        }
        self.check_offline(parsed).await?;
        query.push("networkmode=none".into());
        Ok(())
    }

    /// Stream the context to `POST /build`, logging the engine's progress; the image id
    /// the engine reports.
    async fn send_build(
        &self,
        engine: &Engine,
        context: &std::path::Path,
        dockerfile: &str,
        query: &[String],
    ) -> Result<String, StepError> {
        let (tx, rx) = mpsc::channel(4);
        let keep = vec![dockerfile.to_string(), ".dockerignore".to_string()];
        let producer = context::stream(context.to_path_buf(), keep, tx);
        let mut id: Option<String> = None;
        let mut error: Option<String> = None;
        let result = engine
            .stream(
                Method::POST,
                &format!("/build?{}", query.join("&")),
                &[("content-type", "application/x-tar".to_string())],
                ReqBody::Stream(rx),
                |msg| {
                    if let Some(s) = msg.get("stream").and_then(|s| s.as_str()) {
                        self.log_line(s);
                        if let Some(short) = s.trim().strip_prefix("Successfully built ") {
                            id.get_or_insert_with(|| short.trim().to_string());
                        }
                    }
                    if let Some(s) = msg.get("status").and_then(|s| s.as_str()) {
                        self.log_line(s);
                    }
                    if let Some(i) = msg.pointer("/aux/ID").and_then(|s| s.as_str()) {
                        id = Some(i.to_string());
                    }
                    if let Some(e) = msg.get("error").and_then(|s| s.as_str()) {
                        self.log_line(e);
                        error = Some(e.trim().to_string());
                    }
                },
            )
            .await;
        let sent = producer.await;
        let redact = |s: &str| self.ctx.log.redactor().redact(s).into_owned();
        if let Some(e) = error {
            return Err(failure(
                format!("the image build failed: {}", redact(&e)),
                Some(format!(
                    "{dockerfile} in {} is built by the engine at {}",
                    context.display(),
                    engine.host
                )),
            ));
        }
        result.map_err(|e| self.engine_error(e, "build the image"))?;
        match sent {
            Ok(Ok(s)) => self.ctx.log.emit(
                Level::Debug,
                Source::Step,
                &format!(
                    "sent a build context of {} entries, {} bytes",
                    s.entries, s.bytes
                ),
                &[],
            ),
            Ok(Err(e)) => {
                return Err(failure(
                    format!("cannot send the build context {}: {e}", context.display()),
                    None,
                ));
            }
            Err(e) => return Err(failure(format!("cannot send the build context: {e}"), None)),
        }
        id.ok_or_else(|| {
            failure(
                "the engine did not return an image id for the build".into(),
                None,
            )
        })
    }

    /// The `X-Registry-Auth` header: the credentials (put in the redactor first), or
    /// none.
    fn registry_auth(
        &self,
        credentials: Option<&RegistryCredentials>,
        registry: &str,
    ) -> Result<String, StepError> {
        let Some(c) = credentials else {
            return Ok(base64_url(b"{}"));
        };
        let redactor = self.ctx.log.redactor();
        redactor.add(&c.password);
        let server = c.server.clone().unwrap_or_else(|| registry.to_string());
        plain("the registry", &server)?;
        plain("the user name", &c.username)?;
        let body = serde_json::json!({
            "username": c.username,
            "password": c.password,
            "serveraddress": server,
        });
        let header = base64_url(body.to_string().as_bytes());
        redactor.add(&header);
        // No separate `/auth` call: Podman's ignores the registry's `insecure` setting,
        // and the push authenticates with the same credentials anyway.
        Ok(header)
    }

    /// The digest of a pushed image, from the image's `RepoDigests` (some engines only
    /// report it there).
    async fn pushed_digest(
        &self,
        engine: &Engine,
        name: &str,
        tag: &str,
    ) -> Result<String, StepError> {
        let v = engine
            .call(
                Method::GET,
                &format!("/images/{}/json", path_name(&format!("{name}:{tag}"))),
                None,
            )
            .await
            .map_err(|e| self.engine_error(e, "look up the pushed image"))?;
        v.get("RepoDigests")
            .and_then(|d| d.as_array())
            .into_iter()
            .flatten()
            .filter_map(|d| d.as_str())
            .find_map(|d| d.strip_prefix(&format!("{name}@")).map(str::to_string))
            .ok_or_else(|| {
                failure(
                    format!("the engine did not report the digest of {name}:{tag}"),
                    None,
                )
            })
    }

    fn log_line(&self, line: &str) {
        for l in line.lines() {
            let l = l.trim_end();
            if !l.is_empty() {
                self.ctx
                    .log
                    .emit(Level::Info, Source::ProcessStdout, l, &[]);
            }
        }
    }
}

/// A push the engine reported failed (`error`, redacted), naming the login when
/// credentials (`(registry, user)`) were refused.
fn push_failure(error: &str, name: &str, tag: &str, login: Option<(&str, &str)>) -> StepError {
    let lower = error.to_ascii_lowercase();
    let refused = ["unauthorized", "authentication required", "denied"]
        .iter()
        .any(|w| lower.contains(w));
    let login = match login {
        Some((registry, user)) if refused => {
            format!(" (login to registry {registry} as `{user}` refused)")
        }
        _ => String::new(),
    };
    failure(
        format!("pushing {name}:{tag} failed{login}: {error}"),
        (error.contains("denied")
            || error.contains("unauthorized")
            || error.contains("authentication"))
        .then(|| {
            "check the registry credentials and that the repository exists and accepts pushes"
                .into()
        }),
    )
}

/// `POST /build`'s query for the step's options (each value checked: tags against
/// Docker's reference grammar, the rest plain text).
fn build_query(opts: &BuildOptions, dockerfile: &str) -> Result<Vec<String>, StepError> {
    let mut query = vec![
        format!("dockerfile={}", encode(dockerfile)),
        "rm=1".into(),
        "forcerm=1".into(),
    ];
    for t in &opts.tags {
        let (name, tag) = reference("tag", t)?;
        if name.starts_with("sha256:") {
            return Err(StepError::InvalidInput(format!("tag `{t}` is an image id")));
        }
        query.push(format!("t={}", encode(&full(&name, &tag))));
    }
    for (what, pairs) in [("build arg", &opts.build_args), ("label", &opts.labels)] {
        for (k, v) in pairs.iter() {
            plain(what, k)?;
            plain(what, v)?;
        }
    }
    if !opts.build_args.is_empty() {
        query.push(format!(
            "buildargs={}",
            encode(&json_pairs(&opts.build_args).to_string())
        ));
    }
    if !opts.labels.is_empty() {
        query.push(format!(
            "labels={}",
            encode(&json_pairs(&opts.labels).to_string())
        ));
    }
    if let Some(t) = &opts.target {
        plain("target", t)?;
        query.push(format!("target={}", encode(t)));
    }
    if let Some(p) = &opts.platform {
        plain("platform", p)?;
        query.push(format!("platform={}", encode(p)));
    }
    if opts.no_cache {
        query.push("nocache=1".into());
    }
    Ok(query)
}

/// The images an offline build needs on the engine (base images and `COPY --from`
/// images, not the Dockerfile's own stages), or why the Dockerfile cannot be built
/// offline (`ADD <url>`, `ONBUILD`, images named by variables).
fn images_needed(instructions: &[String]) -> Result<Vec<String>, String> {
    let mut stages: Vec<String> = Vec::new();
    let mut images: Vec<String> = Vec::new();
    for instruction in instructions {
        let mut words = instruction.split_whitespace();
        let Some(op) = words.next() else { continue };
        let args: Vec<&str> = words.collect();
        match op.to_ascii_uppercase().as_str() {
            "FROM" => {
                let mut rest = args.iter().filter(|a| !a.starts_with("--"));
                let Some(image) = rest.next() else { continue };
                if image.contains('$') {
                    return Err(format!(
                        "base image `{image}` uses a variable, so it cannot be checked"
                    ));
                }
                if image != &"scratch" && !stages.iter().any(|s| s.eq_ignore_ascii_case(image)) {
                    images.push(image.to_string());
                }
                if let (Some(as_), Some(name)) = (rest.next(), rest.next())
                    && as_.eq_ignore_ascii_case("as")
                {
                    stages.push(name.to_string());
                }
            }
            "COPY" => {
                for a in &args {
                    if let Some(from) = a.strip_prefix("--from=")
                        && !stages.iter().any(|s| s.eq_ignore_ascii_case(from))
                        && !from.bytes().all(|b| b.is_ascii_digit())
                    {
                        if from.contains('$') {
                            return Err(format!(
                                "`COPY --from={from}` uses a variable, so it cannot be checked"
                            ));
                        }
                        images.push(from.to_string());
                    }
                }
            }
            "ADD" => {
                let joined = args.join(" ");
                if joined.contains("://") || joined.contains("git@") {
                    return Err(format!(
                        "`ADD` from a URL ({})",
                        hoist_policy::text::sanitize(instruction)
                    ));
                }
            }
            "ONBUILD" => {
                return Err("`ONBUILD` instructions cannot be checked".into());
            }
            _ => {}
        }
    }
    Ok(images)
}

/// The instructions of a Dockerfile: comments dropped, continuations joined with the
/// escape character its `# escape=` parser directive names (`\` by default), as the
/// engine reads them.
fn instructions(text: &str) -> Vec<String> {
    let mut escape = '\\';
    let mut directives = true;
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if directives {
            // Parser directives: `# name=value` lines before anything else.
            if let Some((name, value)) = t.strip_prefix('#').and_then(|d| d.split_once('='))
                && name.trim().eq_ignore_ascii_case("escape")
            {
                if let Some(c) = value.trim().chars().next() {
                    escape = c;
                }
                continue;
            }
            directives = false;
        }
        if current.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if let Some(head) = t.strip_suffix(escape) {
            current.push_str(head);
            current.push(' ');
        } else if !t.starts_with('#') {
            current.push_str(t);
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// `RUN` options reach what a build must not: `--mount` binds host paths or secrets,
/// `--network` picks the host's network, `--security` drops the sandbox. Refused in
/// every build, whoever wrote the Dockerfile (a plugin may have written it for a
/// built-in step to build).
fn forbidden_run_option(instruction: &str) -> Option<&str> {
    let mut words = instruction.split_whitespace();
    if !words.next()?.eq_ignore_ascii_case("RUN") {
        return None;
    }
    words.take_while(|w| w.starts_with("--")).find(|w| {
        let w = w.to_ascii_lowercase();
        w.starts_with("--mount")
            || w.starts_with("--security")
            || w == "--network"
            || w.starts_with("--network=")
    })
}

fn json_pairs(pairs: &[(String, String)]) -> serde_json::Value {
    serde_json::Value::Object(
        pairs
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect(),
    )
}

impl Host for DockerView<'_> {
    async fn build(&mut self, opts: BuildOptions) -> Result<String, StepError> {
        self.require(Capability::DockerBuild, "build images")?;
        let context = self.context_dir(&opts.context)?;
        let (dockerfile, dockerfile_path) =
            self.dockerfile(&context, opts.dockerfile.as_deref().unwrap_or("Dockerfile"))?;
        let mut query = build_query(&opts, &dockerfile)?;
        // Read and parsed once, for both checks.
        let text = std::fs::read_to_string(&dockerfile_path).map_err(|e| {
            failure(
                format!("cannot read {}: {e}", dockerfile_path.display()),
                None,
            )
        })?;
        let parsed = instructions(&text);
        self.check_dockerfile(&dockerfile_path, &parsed)?;
        self.network_query(&opts, &parsed, &mut query).await?;
        let engine = self.engine().await?.clone();
        let id = self
            .send_build(&engine, &context, &dockerfile, &query)
            .await?;
        if id.starts_with("sha256:") {
            return Ok(id);
        }
        // A short id ("Successfully built 1a2b..."): ask for the whole one.
        let (short, _) = reference("image id", &id).unwrap_or((id.clone(), None));
        let v = engine
            .call(
                Method::GET,
                &format!("/images/{}/json", path_name(&short)),
                None,
            )
            .await
            .map_err(|e| self.engine_error(e, "look up the built image"))?;
        Ok(v.get("Id")
            .and_then(|i| i.as_str())
            .unwrap_or(&id)
            .to_string())
    }

    async fn tag(&mut self, source: String, target: String) -> Result<(), StepError> {
        self.require(Capability::DockerBuild, "tag images")?;
        let (src_name, src_tag) = reference("image", &source)?;
        let (name, tag) = reference("tag", &target)?;
        if name.starts_with("sha256:") {
            return Err(StepError::InvalidInput(format!(
                "tag `{target}` is an image id"
            )));
        }
        let engine = self.engine().await?;
        engine
            .call(
                Method::POST,
                &format!(
                    "/images/{}/tag?repo={}&tag={}",
                    path_name(&full(&src_name, &src_tag)),
                    encode(&name),
                    encode(tag.as_deref().unwrap_or("latest"))
                ),
                None,
            )
            .await
            .map_err(|e| self.engine_error(e, &format!("tag {source} as {target}")))?;
        Ok(())
    }

    async fn push(
        &mut self,
        reference_: String,
        credentials: Option<RegistryCredentials>,
    ) -> Result<String, StepError> {
        let (name, tag) = reference("image", &reference_)?;
        if name.starts_with("sha256:") {
            return Err(StepError::InvalidInput(format!(
                "`{reference_}` is an image id; push a reference (`registry/name:tag`)"
            )));
        }
        let repo = docker_repository(&name).unwrap_or_else(|| name.clone());
        self.require(
            Capability::DockerPush(repo.clone()),
            &format!("push to `{repo}`"),
        )?;
        let registry = repo.split('/').next().unwrap_or("docker.io").to_string();
        let auth = self.registry_auth(credentials.as_ref(), &registry)?;
        let engine = self.engine().await?.clone();
        let tag = tag.unwrap_or_else(|| "latest".into());
        let mut digest: Option<String> = None;
        let mut error: Option<String> = None;
        let mut last_status = String::new();
        let result = engine
            .stream(
                Method::POST,
                &format!("/images/{}/push?tag={}", path_name(&name), encode(&tag)),
                &[("x-registry-auth", auth)],
                ReqBody::empty(),
                |msg| {
                    if let Some(d) = msg.pointer("/aux/Digest").and_then(|s| s.as_str()) {
                        digest = Some(d.to_string());
                    }
                    if let Some(e) = msg.get("error").and_then(|s| s.as_str()) {
                        error = Some(e.trim().to_string());
                        return;
                    }
                    if let Some(s) = msg.get("status").and_then(|s| s.as_str()) {
                        // Progress bars repeat: one line per layer and state.
                        let id = msg.get("id").and_then(|s| s.as_str()).unwrap_or("");
                        let line = if id.is_empty() {
                            s.to_string()
                        } else {
                            format!("{id}: {s}")
                        };
                        if msg
                            .get("progressDetail")
                            .is_none_or(|p| p.as_object().is_none_or(|o| o.is_empty()))
                            && line != last_status
                        {
                            self.log_line(&line);
                            last_status = line;
                        }
                        if digest.is_none()
                            && let Some(i) = s.find("digest: sha256:")
                        {
                            digest = s[i + 8..].split_whitespace().next().map(str::to_string);
                        }
                    }
                    if let Some(s) = msg.get("stream").and_then(|s| s.as_str()) {
                        self.log_line(s);
                    }
                },
            )
            .await;
        let redact = |s: &str| self.ctx.log.redactor().redact(s).into_owned();
        if let Some(e) = error {
            let login = credentials
                .as_ref()
                .map(|c| (registry.as_str(), c.username.as_str()));
            return Err(push_failure(&redact(&e), &name, &tag, login));
        }
        result.map_err(|e| self.engine_error(e, &format!("push {name}:{tag}")))?;
        if let Some(d) = digest {
            return Ok(d);
        }
        self.pushed_digest(&engine, &name, &tag).await
    }

    async fn inspect(&mut self, reference_: String) -> Result<Option<Image>, StepError> {
        self.require(Capability::DockerBuild, "inspect images")?;
        let (name, tag) = reference("image", &reference_)?;
        let engine = self.engine().await?;
        let v = match engine
            .call(
                Method::GET,
                &format!("/images/{}/json", path_name(&full(&name, &tag))),
                None,
            )
            .await
        {
            Ok(v) => v,
            Err(EngineError::Api(status, _)) if status == http::StatusCode::NOT_FOUND => {
                return Ok(None);
            }
            Err(e) => return Err(self.engine_error(e, &format!("inspect {reference_}"))),
        };
        let strings = |p: &str| -> Vec<String> {
            v.pointer(p)
                .and_then(|a| a.as_array())
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        };
        Ok(Some(Image {
            id: v
                .get("Id")
                .and_then(|s| s.as_str())
                .unwrap_or("")
                .to_string(),
            tags: strings("/RepoTags"),
            digests: strings("/RepoDigests"),
            labels: v
                .pointer("/Config/Labels")
                .and_then(|l| l.as_object())
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect(),
            size: v.get("Size").and_then(|s| s.as_u64()).unwrap_or(0),
            created: v
                .get("Created")
                .and_then(|s| s.as_str())
                .unwrap_or("")
                .to_string(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_follow_dockers_grammar() {
        let ok = |r: &str| reference("x", r).unwrap();
        assert_eq!(ok("app"), ("app".into(), None));
        assert_eq!(ok("app:1.0"), ("app".into(), Some("1.0".into())));
        assert_eq!(
            ok("127.0.0.1:5000/team/app:v1"),
            ("127.0.0.1:5000/team/app".into(), Some("v1".into()))
        );
        assert_eq!(
            ok("localhost/a_b__c-d.e"),
            ("localhost/a_b__c-d.e".into(), None)
        );
        let id = format!("sha256:{}", "a".repeat(64));
        assert_eq!(ok(&id), (id.clone(), None));
        for bad in [
            "",
            "../../containers/x/exec",
            "app/../../x",
            "App",
            "app:",
            "app:-x",
            "a b",
            "app?x=1",
            "app#x",
            "/app",
            "app/",
            "a//b",
            "app@sha256:00",
            "evil.com:99999999/x",
            ".hidden/x",
            "app:\n",
        ] {
            assert!(reference("x", bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn dockerfile_instructions_join_continuations() {
        let text = "# c\nFROM a AS b\nRUN x \\\n  y\n\nADD https://x/y /z\n";
        assert_eq!(
            instructions(text),
            ["FROM a AS b", "RUN x  y", "ADD https://x/y /z"]
        );
        // The escape directive changes the continuation character, as the engine reads it.
        let text = "# escape=`\nFROM a\nADD `\n  http://x/y /z\nRUN `\n--mount=type=bind,source=/,target=/h cat /h/etc/shadow\n";
        let got = instructions(text);
        assert_eq!(got[1], "ADD  http://x/y /z");
        assert_eq!(
            forbidden_run_option(&got[2]),
            Some("--mount=type=bind,source=/,target=/h")
        );
        assert_eq!(
            forbidden_run_option("RUN --network=host curl x"),
            Some("--network=host")
        );
        assert_eq!(
            forbidden_run_option("run --security=insecure x"),
            Some("--security=insecure")
        );
        assert_eq!(
            forbidden_run_option("RUN yarn install --network-timeout 1000"),
            None
        );
        assert_eq!(forbidden_run_option("RUN echo --mount"), None);
    }
}
