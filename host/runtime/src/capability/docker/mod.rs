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
//!   links as links; a link that is absolute or leads outside the context (following the
//!   context's own links) is refused, since some engines follow links from the host's
//!   side (CVE-2024-1753).
//! - The engine builds exactly the text that was checked: the Dockerfile is read as the
//!   engine's parser reads it ([`dockerfile`]), written back one instruction a line and
//!   sent in the tar stream in place of the file; no option on `RUN` passes.
//! - Offline unless the step holds `net:*`: the build runs with network mode `none`,
//!   `pull` is refused, `ADD <url>` and `ADD $VAR` are refused, flags on `FROM` are
//!   refused, every base image (`FROM`, `COPY --from`) must already be on the engine
//!   (the engine would otherwise fetch it itself, from the host's network), and on an
//!   engine that ignores network mode `none` (Podman) `RUN` is refused.
//! - Build args are stored in the image's history: they must not carry secrets (there
//!   is no secret mount; `RUN --mount=type=secret` is refused like every `RUN` option).
//! - Registry passwords go to the engine in the `X-Registry-Auth` header only, and into
//!   the step's redactor before anything is sent.

mod context;
mod dockerfile;
mod engine;
mod offline;
mod probe;
mod reference;

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
use dockerfile::{Dockerfile, Heredocs, Instruction};
use engine::{Engine, EngineError, ReqBody, encode, path_name};
use reference::{full, plain, reference};

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

    /// The Dockerfile the engine will build: `text` read as the engine reads it and
    /// written back ([`dockerfile`]), then that text read both with and without heredocs
    /// and checked ([`forbidden_run_option`]): `(text to send, both readings)`.
    fn checked_dockerfile(
        &self,
        dockerfile: &Path,
        text: &str,
    ) -> Result<(String, Vec<Instruction>), StepError> {
        let unreadable = |e: String| {
            StepError::InvalidInput(format!(
                "{} cannot be read as a Dockerfile: {}",
                dockerfile.display(),
                hoist_policy::text::sanitize(&e)
            ))
        };
        let parsed = Dockerfile::parse(text, Heredocs::Read).map_err(unreadable)?;
        for d in &parsed.dropped_directives {
            self.log_line(&format!(
                "not sent to the engine: parser directive `# {}` (Hoist sends the Dockerfile it \
                 checked to the engine's own parser)",
                hoist_policy::text::sanitize(d)
            ));
        }
        let sent = parsed.serialize();
        let mut all = Vec::new();
        for mode in [Heredocs::Read, Heredocs::Ignored] {
            all.extend(
                Dockerfile::parse(&sent, mode)
                    .map_err(unreadable)?
                    .instructions,
            );
        }
        for instruction in &all {
            if let Some(option) = forbidden_run_option(instruction) {
                return Err(StepError::Denied(format!(
                    "step `{}` ({}) may not build {} (line {}): `RUN {}` can reach host paths, the \
                     host's network or disable the build's sandbox; Hoist refuses options on \
                     `RUN` (`--mount`, `--network`, `--security`, ...) in every build",
                    self.ctx.info.name,
                    self.ctx.info.plugin,
                    dockerfile.display(),
                    instruction.line,
                    hoist_policy::text::sanitize(&option)
                )));
            }
        }
        Ok((sent, all))
    }

    /// Stream the context to `POST /build`, logging the engine's progress; the image id
    /// the engine reports.
    async fn send_build(
        &self,
        engine: &Engine,
        (context, scan): (&Path, context::Scan),
        (dockerfile, text): (&str, String),
        query: &[String],
    ) -> Result<String, StepError> {
        let (tx, rx) = mpsc::channel(4);
        let producer = context::stream(scan, (dockerfile.to_string(), text.into_bytes()), tx);
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

/// `RUN` options reach what a build must not: `--mount` binds host paths or secrets,
/// `--network` picks the host's network, `--security` drops the sandbox, and engines add
/// more. Every option on `RUN` (or on a `RUN` an `ONBUILD` carries) is refused in every
/// build, whoever wrote the Dockerfile (a plugin may have written it for a built-in step
/// to build): the first, as the parser extracted it.
fn forbidden_run_option(ins: &Instruction) -> Option<String> {
    if let Some(inner) = ins.onbuild_inner() {
        return forbidden_run_option(&inner);
    }
    if ins.cmd != "run" {
        return None;
    }
    ins.flags.first().cloned()
}

fn json_pairs(pairs: &[(String, String)]) -> serde_json::Value {
    serde_json::Value::Object(
        pairs
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect(),
    )
}

impl DockerView<'_> {
    /// Refuse a build arg or label that holds a secret the run resolved (a secret
    /// block's value, a registry password): both are kept in the image (build args in
    /// its history, `docker history --no-trunc`), for anyone who can pull it to read.
    fn no_secret_in_image(&self, opts: &BuildOptions) -> Result<(), StepError> {
        let redactor = self.ctx.log.redactor();
        for (what, pairs) in [("build arg", &opts.build_args), ("label", &opts.labels)] {
            if let Some((k, _)) = pairs.iter().find(|(_, v)| redactor.finds_in(v)) {
                return Err(StepError::Denied(format!(
                    "step `{}` ({}) may not build with {what} `{}`: it holds a secret (a \
                     secret block's value, or a value under a key named like a secret), and \
                     an image keeps its {what}s (`docker history`) for anyone who can pull \
                     it; give the secret to the container when it runs (its environment) \
                     instead",
                    self.ctx.info.name,
                    self.ctx.info.plugin,
                    hoist_policy::text::sanitize(k)
                )));
            }
        }
        Ok(())
    }
}

impl Host for DockerView<'_> {
    async fn build(&mut self, opts: BuildOptions) -> Result<String, StepError> {
        self.require(Capability::DockerBuild, "build images")?;
        let context = self.context_dir(&opts.context)?;
        let (dockerfile, dockerfile_path) =
            self.dockerfile(&context, opts.dockerfile.as_deref().unwrap_or("Dockerfile"))?;
        self.no_secret_in_image(&opts)?;
        let mut query = build_query(&opts, &dockerfile)?;
        let text = std::fs::read_to_string(&dockerfile_path).map_err(|e| {
            failure(
                format!("cannot read {}: {e}", dockerfile_path.display()),
                None,
            )
        })?;
        let (sent, readings) = self.checked_dockerfile(&dockerfile_path, &text)?;
        let keep = [dockerfile.clone(), ".dockerignore".to_string()];
        let scan = context::Scan::new(context.clone(), &keep).map_err(|e| match e {
            context::ScanError::Link(path, target) => StepError::Denied(format!(
                "step `{}` ({}) may not build from {}: `{}` is a link to `{}`, which is absolute \
                 or leads outside the build context (an engine may follow it from the host's \
                 side); make it a relative link inside the context, or exclude it in \
                 .dockerignore",
                self.ctx.info.name,
                self.ctx.info.plugin,
                context.display(),
                hoist_policy::text::sanitize(&path),
                hoist_policy::text::sanitize(&target)
            )),
            context::ScanError::Io(e) => failure(
                format!("cannot read the build context {}: {e}", context.display()),
                None,
            ),
        })?;
        self.engine_builds_safely().await?;
        self.network_query(&opts, &readings, &mut query).await?;
        let engine = self.engine().await?.clone();
        let id = self
            .send_build(&engine, (&context, scan), (&dockerfile, sent), &query)
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
    use super::offline::images_needed;
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

    /// Both readings of the text that would be sent.
    fn sent(text: &str) -> Vec<Instruction> {
        let sent = Dockerfile::parse(text, Heredocs::Read).unwrap().serialize();
        let mut all = Vec::new();
        for mode in [Heredocs::Read, Heredocs::Ignored] {
            all.extend(Dockerfile::parse(&sent, mode).unwrap().instructions);
        }
        all
    }

    #[test]
    fn run_options_are_found_in_what_is_sent() {
        let option = |text: &str| sent(text).iter().find_map(forbidden_run_option);
        // Hidden behind an empty line and a comment ending in the escape character.
        assert_eq!(
            option("FROM a\nRUN \\\n\n# x \\\n--mount=type=bind,source=/,target=/h id\n"),
            Some("--mount=type=bind,source=/,target=/h".into())
        );
        // The escape directive changes the continuation character.
        assert!(
            option("# escape=`\nFROM a\nRUN `\n--mount=type=bind,source=/,target=/h x\n").is_some()
        );
        // Quoted flag names, any option, ONBUILD, a heredoc body an engine without
        // heredocs reads as an instruction.
        assert!(option("RUN --\"mount\"=type=bind,source=/,target=/h x").is_some());
        assert!(option("RUN --device=/dev/sda x").is_some());
        assert!(option("ONBUILD RUN --network=host x").is_some());
        assert!(option("RUN <<EOF\nRUN --mount=type=bind,source=/,target=/h x\nEOF\n").is_some());
        assert_eq!(option("RUN yarn install --network-timeout 1000"), None);
        assert_eq!(option("RUN echo --mount"), None);
    }

    #[test]
    fn offline_builds_refuse_what_makes_the_engine_fetch() {
        for text in [
            "FROM a\nARG U=http://127.0.0.1:1/x\nADD $U /x\n",
            "FROM a\nADD ${U} /x\n",
            "FROM a\nADD [\"$U\", \"/x\"]\n",
            "FROM --platform=linux/arm64 a\n",
            "FROM a\nADD \\\n http://x/y /z\n",
            "FROM a\nONBUILD ADD f /g\n",
            "FROM $B\n",
        ] {
            assert!(
                images_needed(&sent(text)).is_err(),
                "{text:?} was accepted offline"
            );
        }
        assert_eq!(
            images_needed(&sent(
                "FROM a AS b\nCOPY --from=b /x /y\nCOPY --from=c /x /y\nADD f /g\n"
            ))
            .unwrap(),
            // Each reading names its images: both are checked.
            ["a", "c", "a", "c"]
        );
    }
}
