//! The templating half of a run (spec §3.9): a step's inputs resolved against the
//! outputs so far, the environment, and the blocks and variables a [`Values`] provider
//! holds, with every secret met on the way collected for the redactor.
//!
//! No wasmtime here: [`Runner`](crate::runner::Runner) runs steps with it and
//! `hoist plan` shows what they would receive with it. The pass order itself lives in
//! [`template::resolve_step`]; this type fetches what the user's text names and keeps
//! the secrets.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::{Map, Value};

use hoist_policy::secrets::Redactor;
use hoist_policy::secrets::{keyed_secrets, secret_env_name};
use hoist_project::StepEntry;
use hoist_project::template::{self, Blocks, Env, TemplateError, Values};

/// Templates steps' inputs for one run and remembers the secrets it resolved (no
/// `Debug`: it holds them).
pub struct Templater<V> {
    /// The environment templates see.
    pub env: Env,
    values: V,
    secrets: Mutex<Vec<String>>,
}

impl<V: Values> Templater<V> {
    /// A templater over `env` and the blocks and variables of `values`.
    pub fn new(env: Env, values: V) -> Self {
        Self {
            env,
            values,
            secrets: Mutex::new(Vec::new()),
        }
    }

    /// Use another provider (the secrets collected so far are kept).
    pub fn set_values(&mut self, values: V) {
        self.values = values;
    }

    /// The provider.
    pub fn values(&self) -> &V {
        &self.values
    }

    /// The redactor for everything resolved so far.
    pub fn redactor(&self) -> Redactor {
        Redactor::new(self.secrets())
    }

    /// Every secret resolved so far.
    pub fn secrets(&self) -> Vec<String> {
        self.secrets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Mask these strings from now on.
    pub fn add_secrets(&self, more: Vec<String>) {
        if !more.is_empty() {
            self.secrets
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(more);
        }
    }

    /// Remember the values of secret-looking environment variables `v` refers to, so
    /// they are masked from now on.
    pub fn note_env_secrets(&self, v: &Value) {
        self.add_secrets(env_secrets(v, &self.env));
    }

    /// Remember the strings `v` holds under secret-looking keys (`password`,
    /// `aws_secret_access_key`, ...), so they are masked too.
    pub fn note_keyed_secrets(&self, v: &Value) {
        self.add_secrets(keyed_secrets(v));
    }

    /// Resolve a step's inputs against the outputs so far, the environment, and the
    /// blocks and variables it refers to ([`template::resolve_step`]). Blocks and
    /// variables are fetched for what the user wrote, before any output is substituted:
    /// outputs are a plugin's text and stay opaque.
    pub async fn template(
        &self,
        step: &StepEntry,
        outputs: &Map<String, Value>,
    ) -> Result<Value, String> {
        let raw = Value::Object(step.inputs.clone());
        self.note_env_secrets(&raw);
        let sources = template::step_sources(&raw, &self.env);
        let blocks = self.fetch_blocks(&sources).await?;
        let mut fetched: Vec<Value> = blocks
            .by_name
            .values()
            .chain(blocks.by_id.values())
            .cloned()
            .collect();
        let variables = if fetched.is_empty() {
            self.fetch_variables(&sources).await?
        } else {
            fetched.push(sources);
            self.fetch_variables(&Value::Array(fetched.clone())).await?
        };
        // `{{ $NAME }}` brought in by block or variable values (the last pass) are
        // resolved too: mask the secret-looking ones.
        if !fetched.is_empty() || !variables.is_empty() {
            fetched.extend(variables.values().cloned());
            self.add_secrets(env_secrets(&Value::Array(fetched), &self.env));
        }
        let v = template::resolve_step(
            &raw,
            &Value::Object(outputs.clone()),
            &self.env,
            &blocks,
            &variables,
        )
        .map_err(|e: TemplateError| e.to_string())?;
        self.add_secrets(keyed_secrets(&v));
        Ok(v)
    }

    /// The block documents `v` refers to (by name or `$ref` id), from the provider; the
    /// values of secret ones are remembered for masking. Missing ones are left out (the
    /// block pass reports them).
    pub async fn fetch_blocks(&self, v: &Value) -> Result<Blocks, String> {
        let (names, ids) = template::block_refs(v);
        if names.is_empty() && ids.is_empty() {
            return Ok(Blocks::default());
        }
        let found = self
            .values
            .blocks(&names, &ids)
            .await
            .map_err(|e| e.to_string())?;
        self.add_secrets(found.secrets);
        Ok(found.blocks)
    }

    /// The variables `v` refers to, from the provider (missing ones are left out).
    pub async fn fetch_variables(&self, v: &Value) -> Result<BTreeMap<String, Value>, String> {
        let names = template::variable_refs(v);
        if names.is_empty() {
            return Ok(Default::default());
        }
        self.values
            .variables(&names)
            .await
            .map_err(|e| e.to_string())
    }
}

/// Values of secret-looking environment variables that a value refers to as `{{ $NAME }}`.
fn env_secrets(v: &Value, env: &Env) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(v: &Value, env: &Env, out: &mut Vec<String>) {
        match v {
            Value::String(s) => {
                for p in template::placeholders(s) {
                    if p.kind == template::Kind::Env {
                        let name = p.name.trim_start_matches('$');
                        if secret_env_name(name)
                            && let Some(val) = env
                                .get(name)
                                .filter(|v| v.len() >= hoist_policy::secrets::MIN_SECRET_LEN)
                        {
                            out.push(val.clone());
                        }
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|x| walk(x, env, out)),
            Value::Object(m) => m.values().for_each(|x| walk(x, env, out)),
            _ => {}
        }
    }
    walk(v, env, &mut out);
    out
}
