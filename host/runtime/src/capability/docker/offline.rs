//! Offline builds (a step without `net:*`): nothing in the Dockerfile may make the
//! engine fetch, every base image must already be on it, and `RUN` only on an engine a
//! probe showed to keep builds offline; and the engines Hoist builds on at all.

use hoist_policy::Capability;
use http::Method;

use super::dockerfile::Instruction;
use super::engine::{EngineError, path_name};
use super::reference::{full, reference};
use super::{DockerView, probe};
use crate::bindings::StepError;
use crate::bindings::hoist::step::docker::BuildOptions;

impl DockerView<'_> {
    /// Offline builds: nothing in the Dockerfile may make the engine fetch from the
    /// network. `ADD <url>` is refused; every base image must already be there.
    pub(super) async fn check_offline(
        &self,
        instructions: &[Instruction],
    ) -> Result<Vec<String>, StepError> {
        let refuse = |what: String| {
            StepError::Denied(format!(
                "step `{}` ({}) may not build this Dockerfile offline: {what}. Builds reach the \
                 network only with `net:*` (grant it to the step, or make the image available \
                 on the engine first)",
                self.ctx.info.name, self.ctx.info.plugin
            ))
        };
        let mut images = images_needed(instructions).map_err(refuse)?;
        // Both readings of the Dockerfile name the same images: each is looked up once.
        let mut seen = std::collections::HashSet::new();
        images.retain(|i| seen.insert(i.clone()));
        let engine = self.engine().await?;
        for image in &images {
            let (name, tag) = reference("base image", image)?;
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
        Ok(images)
    }

    /// What the build may fetch: with `net:*`, `pull` as asked; without it, offline
    /// (`networkmode=none`, no `pull`, no `platform`, base images already on the engine).
    pub(super) async fn network_query(
        &mut self,
        opts: &BuildOptions,
        parsed: &[Instruction],
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
        let images = self.check_offline(parsed).await?;
        if let Some(run) = parsed.iter().find(|i| i.cmd == "run") {
            self.run_stays_offline(images.first().map(String::as_str), run.line)
                .await?;
        }
        query.push("networkmode=none".into());
        Ok(())
    }

    /// Refuse to build on an engine known to follow a build context's links from the
    /// host's side on `RUN --mount` (buildah before 1.35.3: CVE-2024-1753), unless the
    /// host's operator accepts it (`HOIST_ALLOW_OLD_BUILDAH=1`). Hoist refuses every
    /// `RUN` option and every link out of the context anyway; this is the third wall.
    pub(super) async fn engine_builds_safely(&self) -> Result<(), StepError> {
        let engine = self.engine().await?;
        let Some(version) = engine.podman_buildah.as_deref() else {
            return Ok(());
        };
        let fixed = semver::Version::new(1, 35, 3);
        let known = semver::Version::parse(version.trim_start_matches('v')).ok();
        if known.is_some_and(|v| v >= fixed)
            || self
                .ctx
                .env
                .get("HOIST_ALLOW_OLD_BUILDAH")
                .is_some_and(|v| v == "1")
        {
            return Ok(());
        }
        Err(StepError::Denied(format!(
            "step `{}` ({}) may not build on {}: it is Podman with buildah {version}, which \
             follows links in a build context from the host's side on `RUN --mount` \
             (CVE-2024-1753, fixed in buildah 1.35.3); upgrade Podman, or set \
             HOIST_ALLOW_OLD_BUILDAH=1 where Hoist runs to build on it anyway (Hoist refuses \
             `RUN --mount` and links leading out of the context in every build)",
            self.ctx.info.name, self.ctx.info.plugin, engine.host
        )))
    }

    /// An offline build may `RUN` only on an engine a probe showed to keep it offline
    /// (`probe.rs`; the verdict is remembered per engine).
    /// `base`: the first base image the build needs (checked on the engine already).
    pub(super) async fn run_stays_offline(
        &self,
        base: Option<&str>,
        line: usize,
    ) -> Result<(), StepError> {
        let engine = self.engine().await?;
        let verdict = match base {
            Some(b) => probe::offline_isolation(engine, b).await,
            None => probe::Verdict::Unknown(
                "every stage is `FROM scratch`: nothing to probe with".into(),
            ),
        };
        let kind = match &engine.podman_buildah {
            Some(b) => format!("Podman (buildah {b}) at {}", engine.host),
            None => format!("the engine at {}", engine.host),
        };
        let why = match verdict {
            probe::Verdict::Isolated => return Ok(()),
            probe::Verdict::Reaches(what) => {
                format!("{kind} ignores the build's network mode `none`: {what}")
            }
            probe::Verdict::Unknown(what) => {
                format!(
                    "whether {kind} keeps an offline build offline could not be checked: {what}"
                )
            }
        };
        Err(StepError::Denied(format!(
            "step `{}` ({}) may not `RUN` (line {line}) in an offline build on this engine: \
             {why}, so `RUN` could reach the network. Builds reach the network only with \
             `net:*` (grant it to the step), or use an engine that isolates builds (dockerd)",
            self.ctx.info.name, self.ctx.info.plugin
        )))
    }
}

/// The images an offline build needs on the engine (base images and `COPY --from`
/// images, not the Dockerfile's own stages), or why the Dockerfile cannot be built
/// offline: `ADD` from a URL or from a variable (the engine expands it, from a build arg,
/// an `ARG` default or `ENV`, before fetching), flags on `FROM` (`--platform` makes the
/// engine pull), `ONBUILD`, images named by variables.
pub(super) fn images_needed(instructions: &[Instruction]) -> Result<Vec<String>, String> {
    let mut stages: Vec<String> = Vec::new();
    let mut images: Vec<String> = Vec::new();
    for ins in instructions {
        let args: Vec<&str> = ins.args.split_whitespace().collect();
        match ins.cmd.as_str() {
            "from" => {
                if let Some(flag) = ins.flags.first() {
                    return Err(format!(
                        "`FROM {}` (line {}): flags on `FROM` can make the engine pull",
                        hoist_policy::text::sanitize(flag),
                        ins.line
                    ));
                }
                let mut rest = args.iter();
                let Some(image) = rest.next() else { continue };
                if image.contains('$') {
                    return Err(format!(
                        "base image `{}` uses a variable, so it cannot be checked",
                        hoist_policy::text::sanitize(image)
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
            "copy" => {
                if let Some(from) = ins.flag("from")
                    && !stages.iter().any(|s| s.eq_ignore_ascii_case(from))
                    && !from.bytes().all(|b| b.is_ascii_digit())
                {
                    if from.contains('$') {
                        return Err(format!(
                            "`COPY --from={}` uses a variable, so it cannot be checked",
                            hoist_policy::text::sanitize(from)
                        ));
                    }
                    images.push(from.to_string());
                }
            }
            "add" => {
                let joined = ins.args.as_str();
                if joined.contains("://") || joined.contains("git@") {
                    return Err(format!(
                        "`ADD` from a URL (line {}: {})",
                        ins.line,
                        hoist_policy::text::sanitize(&ins.text)
                    ));
                }
                if joined.contains('$') || ins.flags.iter().any(|f| f.contains('$')) {
                    return Err(format!(
                        "`ADD` with a variable (line {}: {}) may name a URL the engine fetches",
                        ins.line,
                        hoist_policy::text::sanitize(&ins.text)
                    ));
                }
            }
            "onbuild" => {
                return Err("`ONBUILD` instructions cannot be checked".into());
            }
            _ => {}
        }
    }
    Ok(images)
}
