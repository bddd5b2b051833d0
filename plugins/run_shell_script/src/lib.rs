//! `run_shell_script`: run each line of a script as its own process.
//!
//! Prefect semantics (spec §4.5): lines run one after the other and share nothing (no
//! `cd`, no variables); without `shell` a line is split with POSIX quoting rules and run
//! directly (no pipes, globs or `$VAR`); with `shell` the trimmed line goes to `sh -c`.
//! The first non-zero exit stops the script with the exit code and all stderr so far.
//!
//! The script is the project author's own code, so this step asks for any program and
//! the whole environment (see the trust model in docs/architecture.md).

use std::collections::BTreeMap;

use hoist_sdk::{Capability, JsonSchema, Result, StepError, process::Command, schemars};
use serde::{Deserialize, Serialize};

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Inputs {
    /// The script; every line runs as a separate process.
    script: String,
    /// Working directory for the commands (default: the current one).
    #[serde(default)]
    directory: Option<String>,
    /// Extra environment variables, merged over the current environment.
    #[serde(default)]
    env: Option<BTreeMap<String, String>>,
    /// Copy the output live to the log.
    #[serde(default = "yes")]
    stream_output: bool,
    /// Replace `$NAME` and `${NAME}` from the environment before running a line.
    #[serde(default)]
    expand_env_vars: bool,
    /// Run each line with `sh -c` (pipes, redirects, `&&` work).
    #[serde(default)]
    shell: bool,
}

fn yes() -> bool {
    true
}

#[derive(Serialize)]
struct Outputs {
    stdout: String,
    stderr: String,
}

fn run(inputs: Inputs) -> Result<Outputs> {
    let extra_env = inputs.env.unwrap_or_default();
    let merged_env: BTreeMap<String, String> = if inputs.expand_env_vars {
        let mut env: BTreeMap<String, String> = std::env::vars().collect();
        env.extend(extra_env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env
    } else {
        BTreeMap::new()
    };

    let mut stdout = String::new();
    let mut stderr = String::new();
    for line in inputs.script.lines() {
        let line = if inputs.expand_env_vars {
            safe_substitute(line, &merged_env)
        } else {
            line.to_string()
        };
        let argv: Vec<String> = if inputs.shell {
            let trimmed = line.trim();
            if trimmed.is_empty() {
                continue;
            }
            vec!["sh".into(), "-c".into(), trimmed.into()]
        } else {
            match shlex::split(&line) {
                Some(argv) if argv.is_empty() => continue,
                Some(argv) => argv,
                None => {
                    return Err(StepError::invalid_input(format!(
                        "input `script`: cannot split line {line:?}: unbalanced quotes"
                    )));
                }
            }
        };
        let mut cmd = Command::new(&argv[0])
            .args(&argv[1..])
            .stream_output(inputs.stream_output);
        for (k, v) in &extra_env {
            cmd = cmd.env(k, v);
        }
        if let Some(dir) = &inputs.directory {
            cmd = cmd.current_dir(dir);
        }
        let out = cmd.output()?;
        stdout.push_str(&out.stdout);
        stderr.push_str(&out.stderr);
        if !out.success() {
            let code = out.exit_code.unwrap_or(-1);
            return Err(StepError::failure(
                format!("`run_shell_script` failed with error code {code}: {stderr}"),
                out.exit_code,
                None,
            ));
        }
    }
    Ok(Outputs {
        stdout: stdout.trim().to_string(),
        stderr: stderr.trim().to_string(),
    })
}

/// Python's `string.Template.safe_substitute`: `$$` → `$`, `$name` / `${name}` replaced
/// when known, everything else left as written.
fn safe_substitute(line: &str, env: &BTreeMap<String, String>) -> String {
    fn ident_len(s: &str) -> usize {
        let mut n = 0;
        for (i, c) in s.char_indices() {
            let ok = c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit());
            if !ok {
                break;
            }
            n = i + c.len_utf8();
        }
        n
    }
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(braced) = after.strip_prefix('{') {
            let n = ident_len(braced);
            match braced[n..]
                .starts_with('}')
                .then(|| env.get(&braced[..n]))
                .flatten()
            {
                Some(v) if n > 0 => {
                    out.push_str(v);
                    rest = &braced[n + 1..];
                }
                _ => {
                    out.push('$');
                    rest = after;
                }
            }
        } else {
            let n = ident_len(after);
            match env.get(&after[..n]) {
                Some(v) if n > 0 => {
                    out.push_str(v);
                    rest = &after[n..];
                }
                _ => {
                    out.push('$');
                    rest = after;
                }
            }
        }
    }
    out.push_str(rest);
    out
}

hoist_sdk::step! {
    name: "run_shell_script",
    version: env!("CARGO_PKG_VERSION"),
    summary: "Run each line of a script as a process, Prefect-style",
    capabilities: [Capability::Process("*".into()), Capability::Env("*".into())],
    run: run,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitution_follows_python_template() {
        let env: BTreeMap<String, String> = [
            ("A".to_string(), "x".to_string()),
            ("B_1".to_string(), "y".to_string()),
        ]
        .into();
        assert_eq!(
            safe_substitute("$A ${B_1} $$A $C ${C} $ ${", &env),
            "x y $A $C ${C} $ ${"
        );
        assert_eq!(safe_substitute("$A1", &env), "$A1");
    }
}
