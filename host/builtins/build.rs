//! Builds every plugin crate (built-in steps in `plugins/`, test plugins in
//! `tests/plugins/`) to a `wasm32-wasip2` component, so nobody builds them by hand.
//!
//! Writes two files to `OUT_DIR`:
//! - `builtins.rs`: `BUILTINS`, the built-in components embedded in the binary;
//! - `test_plugins.rs`: one `pub const <NAME>: &str` path per test plugin, for tests.
//!
//! The components get their own target directory (`target/wasm`), shared by every
//! profile of the host, so a debug and a release build of `hoist` reuse one build.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::Digest as _;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    // host/builtins → the workspace root.
    let root = manifest_dir.ancestors().nth(2).unwrap().to_path_buf();
    for watched in ["wit", "sdk", "plugins", "tests/plugins"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        root.join("Cargo.toml").display()
    );

    let builtins = crates_in(&root.join("plugins"));
    let test_plugins = crates_in(&root.join("tests/plugins"));

    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("wasm");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .args([
            "--target",
            "wasm32-wasip2",
            "--profile",
            "plugin",
            "--quiet",
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    for name in builtins.iter().chain(&test_plugins) {
        cmd.args(["-p", name]);
    }
    // Settings meant for the host build must not leak into the component build
    // (clippy's wrapper, host rustflags, a target selected for the host).
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_PROFILE_RELEASE_DEBUG",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd
        .output()
        .expect("failed to run cargo to build the plugins");
    if !out.status.success() {
        panic!(
            "building the plugin components failed (is the target installed? \
             `rustup target add wasm32-wasip2`):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let artifact = |name: &str| {
        let path = target_dir
            .join("wasm32-wasip2/plugin")
            .join(format!("{}.wasm", name.replace('-', "_")));
        assert!(path.exists(), "missing component {}", path.display());
        path
    };
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let mut src = String::from(
        "/// Built-in steps: (name, component bytes, sha256 of the bytes).\npub static BUILTINS: &[(&str, &[u8], &str)] = &[\n",
    );
    for name in &builtins {
        let path = artifact(name);
        let digest: String = sha2::Sha256::digest(std::fs::read(&path).unwrap())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        src += &format!("    ({name:?}, include_bytes!({path:?}), {digest:?}),\n");
    }
    src += "];\n";
    std::fs::write(out_dir.join("builtins.rs"), src).unwrap();

    let mut src = String::new();
    for name in &test_plugins {
        src += &format!(
            "/// Path of the `{name}` test component.\npub const {}: &str = {:?};\n",
            name.to_uppercase().replace('-', "_"),
            artifact(name)
        );
    }
    std::fs::write(out_dir.join("test_plugins.rs"), src).unwrap();
}

/// Package names of the crates directly under `dir` (the directory name is the name).
fn crates_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().join("Cargo.toml").exists())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}
