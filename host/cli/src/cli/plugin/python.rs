//! Python steps: the scaffold, and the build with componentize-py.
//!
//! The WIT (`hoist:step` and the Python SDK's world, which adds `wasi:http`) and the
//! Python SDK (`sdk/python/hoist_sdk`) ship inside the `hoist` binary, so building a
//! step needs only componentize-py: they are written to a temporary directory for the
//! build, the same files for every build with this `hoist`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The componentize-py release the SDK is built and tested with.
pub(crate) const COMPONENTIZE_PY: &str = "0.25.1";

macro_rules! embed {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_str!(concat!("../../../../../", $path)))),*]
    };
}

/// Every file a build needs, by its path in this repository.
pub(crate) const FILES: &[(&str, &str)] = embed!(
    "wit/step.wit",
    "sdk/python/wit/world.wit",
    "sdk/python/wit/deps/cli.wit",
    "sdk/python/wit/deps/clocks.wit",
    "sdk/python/wit/deps/filesystem.wit",
    "sdk/python/wit/deps/http.wit",
    "sdk/python/wit/deps/io.wit",
    "sdk/python/wit/deps/random.wit",
    "sdk/python/wit/deps/sockets.wit",
    "sdk/python/hoist_sdk/__init__.py",
    "sdk/python/hoist_sdk/_step.py",
    "sdk/python/hoist_sdk/_wit.py",
    "sdk/python/hoist_sdk/capability.py",
    "sdk/python/hoist_sdk/context.py",
    "sdk/python/hoist_sdk/docker.py",
    "sdk/python/hoist_sdk/errors.py",
    "sdk/python/hoist_sdk/git.py",
    "sdk/python/hoist_sdk/http.py",
    "sdk/python/hoist_sdk/log.py",
    "sdk/python/hoist_sdk/process.py",
    "sdk/python/hoist_sdk/schema.py",
);

/// The world Python steps are built for.
const WORLD: &str = "hoist:python-step/step";

/// `app.py`, `requirements.txt` and `.gitignore` of a new Python step.
pub(super) fn scaffold(name: &str, dir: &Path) -> anyhow::Result<()> {
    let files = [
        ("app.py", APP_PY.replace("{name}", name)),
        (
            "requirements.txt",
            format!(
                "# Builds the step: `hoist plugin build` runs it.\ncomponentize-py=={COMPONENTIZE_PY}\n"
            ),
        ),
        (".gitignore", "__pycache__/\n*.wasm\n".to_string()),
    ];
    super::write_files(dir, &files)
}

/// componentize-py: the one asked for, else `$HOIST_COMPONENTIZE_PY`, else on PATH.
fn componentize_py(asked: Option<&Path>) -> anyhow::Result<PathBuf> {
    let chosen = asked
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("HOIST_COMPONENTIZE_PY").map(PathBuf::from));
    if let Some(p) = chosen {
        return Ok(p);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("componentize-py"))
            .find(|p| p.is_file())
    });
    on_path.ok_or_else(|| {
        anyhow::anyhow!(
            "componentize-py is not installed (it builds Python steps): \
             `pip install componentize-py=={COMPONENTIZE_PY}` (in a venv), then run again, \
             or say where it is with --componentize-py or HOIST_COMPONENTIZE_PY"
        )
    })
}

/// Build `dir/app.py` with the SDK into `output`.
pub(super) fn build(dir: &Path, output: &Path, asked: Option<&Path>) -> anyhow::Result<()> {
    let tool = componentize_py(asked)?;
    let kit = tempfile::Builder::new()
        .prefix("hoist-python-sdk-")
        .tempdir()
        .context("cannot create a temporary directory for the SDK")?;
    for (rel, text) in FILES {
        let path = kit.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap())?;
        std::fs::write(&path, text)?;
    }
    eprintln!(
        "building {} with componentize-py (the interpreter and the SDK go in: ~10 s)…",
        dir.join("app.py").display()
    );
    let out = std::process::Command::new(&tool)
        .arg("-d")
        .arg(kit.path().join("wit"))
        .arg("-d")
        .arg(kit.path().join("sdk/python/wit"))
        .args(["-w", WORLD, "componentize", "app", "-p"])
        .arg(dir)
        .arg("-p")
        .arg(kit.path().join("sdk/python"))
        .arg("-o")
        .arg(output)
        // No __pycache__ left in the step's directory.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .with_context(|| format!("cannot run {}", tool.display()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!(
            "componentize-py failed ({}):\n{}",
            out.status,
            stderr.trim_end()
        );
    }
    Ok(())
}

const APP_PY: &str = r#""""The `{name}` step."""

from dataclasses import dataclass

from hoist_sdk import log, step


@dataclass
class Inputs:
    """Attributes:
        name: Who to greet.
    """

    name: str


@dataclass
class Outputs:
    greeting: str


@step(name="{name}", version="0.1.0", summary="Greets someone", capabilities=[])
def run(inputs: Inputs) -> Outputs:
    log.info(f"greeting {inputs.name}")
    return Outputs(greeting=f"hello {inputs.name}")
"#;

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file of the SDK and its WIT is embedded: a new module cannot be forgotten.
    #[test]
    fn every_sdk_file_is_embedded() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut on_disk = Vec::new();
        for dir in [
            "sdk/python/wit",
            "sdk/python/wit/deps",
            "sdk/python/hoist_sdk",
        ] {
            for e in std::fs::read_dir(root.join(dir)).unwrap().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with(".py") || name.ends_with(".wit") {
                    on_disk.push(format!("{dir}/{name}"));
                }
            }
        }
        on_disk.push("wit/step.wit".into());
        on_disk.sort();
        let mut embedded: Vec<String> = FILES.iter().map(|(p, _)| p.to_string()).collect();
        embedded.sort();
        assert_eq!(embedded, on_disk);
    }
}
