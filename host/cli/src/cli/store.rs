//! `hoist variable ...` and `hoist block ...`: the local variables and blocks that
//! `{{ prefect.variables.* }}` and `{{ prefect.blocks.* }}` resolve from.

use std::io::{Read, Write};

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::{Map, Value};

use super::step::parse_value;
use crate::capability::log::MASK;
use crate::store::{Block, Store};

#[derive(Debug, Subcommand)]
pub(crate) enum VariableCommand {
    /// Set a variable. VALUE is read like a step input: `3`, `true`, `[a, b]`, `{k: v}` keep
    /// their types; anything else is a string.
    Set { name: String, value: String },
    /// Print a variable's value as JSON.
    Get { name: String },
    /// List variables.
    Ls,
    /// Remove a variable.
    Unset { name: String },
}

#[derive(Debug, Subcommand)]
pub(crate) enum BlockCommand {
    /// Create or replace a block document of a type (slug), e.g.
    /// `hoist block set secret gh-token --value -` (reads the value from stdin).
    Set {
        /// Type slug, e.g. `secret`, `aws-credentials`.
        slug: String,
        /// Document name.
        name: String,
        /// The block's single value (system blocks like `secret`); `-` reads stdin.
        #[arg(long, conflicts_with_all = ["data", "field"])]
        value: Option<String>,
        /// All fields as a JSON object.
        #[arg(long, value_name = "JSON", conflicts_with = "field")]
        data: Option<String>,
        /// One field as KEY=VALUE (repeatable).
        #[arg(long, value_name = "KEY=VALUE", value_parser = super::step::key_value)]
        field: Vec<String>,
        /// Treat every value of this block as a secret (always so for type `secret`).
        #[arg(long)]
        secret: bool,
    },
    /// Print a block's data as JSON (secret values masked unless --show-secrets).
    Get {
        slug: String,
        name: String,
        #[arg(long)]
        show_secrets: bool,
    },
    /// List blocks.
    Ls,
    /// Remove a block.
    Rm { slug: String, name: String },
}

pub(crate) async fn variable(cmd: &VariableCommand) -> anyhow::Result<()> {
    let store = Store::open_default().await?;
    let mut out = std::io::stdout().lock();
    match cmd {
        VariableCommand::Set { name, value } => {
            let value = parse_value(name, value)?;
            store.set_variable(name, &value).await?;
            eprintln!("variable {name} = {value} saved");
        }
        VariableCommand::Get { name } => match store.variable(name).await? {
            Some(v) => writeln!(out, "{v}")?,
            None => bail!("no variable named `{name}` in {}", store.url()),
        },
        VariableCommand::Ls => {
            let all = store.list_variables().await?;
            if all.is_empty() {
                eprintln!("no variables yet (set one with `hoist variable set NAME VALUE`)");
            }
            for (name, value) in all {
                writeln!(out, "{name} = {value}")?;
            }
        }
        VariableCommand::Unset { name } => {
            if !store.unset_variable(name).await? {
                bail!("no variable named `{name}` in {}", store.url());
            }
        }
    }
    Ok(())
}

fn masked(b: &Block) -> Value {
    fn mask(v: &Value) -> Value {
        match v {
            Value::Null => Value::Null,
            Value::Array(items) => Value::Array(items.iter().map(mask).collect()),
            Value::Object(m) => {
                Value::Object(m.iter().map(|(k, v)| (k.clone(), mask(v))).collect())
            }
            _ => Value::String(MASK.into()),
        }
    }
    if b.secret {
        mask(&b.data)
    } else {
        b.data.clone()
    }
}

/// A block's data from `--value` (`-`: stdin), `--data` (a JSON object) or `--field`s.
fn block_data(value: Option<&str>, data: Option<&str>, field: &[String]) -> anyhow::Result<Value> {
    let mut m = Map::new();
    if let Some(v) = value {
        let v = if v == "-" {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading the value from stdin")?;
            s.trim_end_matches(['\n', '\r']).to_string()
        } else {
            v.to_string()
        };
        m.insert("value".into(), Value::String(v));
    } else if let Some(d) = data {
        return match serde_json::from_str::<Value>(d).context("--data is not valid JSON")? {
            v @ Value::Object(_) => Ok(v),
            _ => bail!("--data must be a JSON object"),
        };
    } else if !field.is_empty() {
        for f in field {
            let (k, v) = f
                .split_once('=')
                .with_context(|| format!("--field `{f}` is not KEY=VALUE"))?;
            m.insert(k.to_string(), parse_value(k, v)?);
        }
    } else {
        bail!("give the block's data with --value, --data or --field");
    }
    Ok(Value::Object(m))
}

pub(crate) async fn block(cmd: &BlockCommand) -> anyhow::Result<()> {
    let store = Store::open_default().await?;
    let mut out = std::io::stdout().lock();
    match cmd {
        BlockCommand::Set {
            slug,
            name,
            value,
            data,
            field,
            secret,
        } => {
            let data = block_data(value.as_deref(), data.as_deref(), field)?;
            let id = store.set_block(slug, name, &data, *secret).await?;
            eprintln!("block {slug}/{name} saved (id {id})");
        }
        BlockCommand::Get {
            slug,
            name,
            show_secrets,
        } => match store.block(slug, name).await? {
            Some(b) => {
                let shown = if *show_secrets {
                    b.data.clone()
                } else {
                    masked(&b)
                };
                writeln!(out, "{}", serde_json::to_string_pretty(&shown)?)?;
            }
            None => bail!("no block `{name}` of type `{slug}` in {}", store.url()),
        },
        BlockCommand::Ls => {
            let all = store.list_blocks().await?;
            if all.is_empty() {
                eprintln!("no blocks yet (create one with `hoist block set TYPE NAME ...`)");
            }
            for b in all {
                let secret = if b.secret { " (secret)" } else { "" };
                writeln!(
                    out,
                    "{}/{}{secret} id={} {}",
                    b.slug,
                    b.name,
                    b.id,
                    masked(&b)
                )?;
            }
        }
        BlockCommand::Rm { slug, name } => {
            if !store.remove_block(slug, name).await? {
                bail!("no block `{name}` of type `{slug}` in {}", store.url());
            }
        }
    }
    Ok(())
}
