//! `hoist init` (also `hoist project init`): start a `prefect.yaml` from a recipe, as
//! `prefect init` does, non-interactively; `hoist init --list-recipes` (also
//! `hoist project recipe ls`) lists them.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use crate::project::recipes::{self, PREFECTIGNORE, RECIPES};

#[derive(Debug, Args)]
pub(crate) struct InitArgs {
    /// The recipe (see --list-recipes); default: `docker-git`, `git`, `docker` or `local`,
    /// from whether the directory has a git remote and a Dockerfile.
    #[arg(long, value_name = "RECIPE")]
    recipe: Option<String>,
    /// A recipe field, KEY=VALUE (repeatable; the value may contain `=`).
    #[arg(long = "field", value_name = "KEY=VALUE")]
    fields: Vec<String>,
    /// The project's name (default: the directory's name).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// List the recipes and their fields, and write nothing.
    #[arg(long)]
    list_recipes: bool,
    /// The directory to start the project in.
    #[arg(long, value_name = "DIR", default_value = ".")]
    dir: PathBuf,
}

/// `hoist project ...`: the 2.10-era spellings.
#[derive(Debug, Subcommand)]
pub(crate) enum ProjectCommand {
    /// Start a prefect.yaml from a recipe (the same as `hoist init`).
    Init(InitArgs),
    /// Recipes.
    #[command(subcommand)]
    Recipe(RecipeCommand),
}

#[derive(Debug, Subcommand)]
pub(crate) enum RecipeCommand {
    /// List the recipes and their fields.
    Ls,
}

pub(crate) fn project(cmd: &ProjectCommand) -> anyhow::Result<()> {
    match cmd {
        ProjectCommand::Init(args) => init(args),
        ProjectCommand::Recipe(RecipeCommand::Ls) => {
            list();
            Ok(())
        }
    }
}

fn list() {
    for r in RECIPES {
        let fields: Vec<String> = r
            .required
            .iter()
            .map(|(k, _)| format!("--field {k}=..."))
            .collect();
        println!("{:<14} {}", r.name, r.description);
        if !fields.is_empty() {
            println!("{:<14} needs {}", "", fields.join(" "));
        }
    }
}

/// `git` in `dir`: the remote's URL and the branch (`main` when HEAD has none).
fn git_facts(dir: &Path) -> Option<(String, String)> {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let remote = git(&["config", "--get", "remote.origin.url"])?;
    let branch = git(&["rev-parse", "--abbrev-ref", "HEAD"]).unwrap_or_else(|| "main".into());
    Some((remote, branch))
}

/// The `--field KEY=VALUE`s, checked against the recipe's required fields as Prefect
/// checks them (all missing: the recipe's prompts would ask; some missing: refused;
/// extra ones: a warning).
fn checked_fields(
    args: &InitArgs,
    meta: &recipes::Recipe,
) -> anyhow::Result<Vec<(String, String)>> {
    let recipe = meta.name;
    let mut fields = Vec::new();
    for f in &args.fields {
        let (k, v) = f
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--field `{f}`: write KEY=VALUE"))?;
        fields.push((k.to_string(), v.to_string()));
    }
    let given: std::collections::BTreeSet<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
    let required: std::collections::BTreeSet<&str> =
        meta.required.iter().map(|(k, _)| *k).collect();
    if !required.is_empty() {
        if given.is_superset(&required) && given.len() > required.len() {
            let extra: Vec<&str> = given.difference(&required).copied().collect();
            eprintln!(
                "warning: extra fields provided for '{recipe}' recipe: '{}'",
                extra.join(", ")
            );
        } else if required.is_superset(&given) && required.len() > given.len() {
            let missing: Vec<String> = meta
                .required
                .iter()
                .filter(|(k, _)| !given.contains(k))
                .map(|(k, what)| format!("--field {k}=... ({what})"))
                .collect();
            anyhow::bail!("recipe `{recipe}` needs {}", missing.join(", "));
        }
    }
    Ok(fields)
}

/// Write `prefect.yaml` (`text`) and `.prefectignore` into `dir`, never over an existing
/// file; the names written.
fn write_new(dir: &std::path::Path, text: &str) -> anyhow::Result<Vec<&'static str>> {
    let mut created = Vec::new();
    for (file, content) in [("prefect.yaml", text), (".prefectignore", PREFECTIGNORE)] {
        let path = dir.join(file);
        // Never overwrite: `create_new` fails if the file exists, even if it appeared
        // since we looked.
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut f) => {
                use std::io::Write;
                f.write_all(content.as_bytes())?;
                created.push(file);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => anyhow::bail!("cannot write {}: {e}", path.display()),
        }
    }
    Ok(created)
}

pub(crate) fn init(args: &InitArgs) -> anyhow::Result<()> {
    if args.list_recipes {
        list();
        return Ok(());
    }
    let dir = &args.dir;
    let git = git_facts(dir);
    let recipe = match &args.recipe {
        Some(r) => r.clone(),
        None => recipes::infer(git.is_some(), dir.join("Dockerfile").exists()).to_string(),
    };
    let Some(meta) = RECIPES.iter().find(|r| r.name == recipe) else {
        anyhow::bail!(
            "Unknown recipe '{recipe}' provided - run `hoist init --list-recipes` to see all available recipes."
        );
    };
    let fields = checked_fields(args, meta)?;
    let values = recipes::values(dir, &recipe, git, &fields);
    let name = match &args.name {
        Some(n) => n.clone(),
        None => values["name"].as_str().unwrap_or("").to_string(),
    };
    let text = recipes::render(&recipe, &name, &values)
        .ok_or_else(|| anyhow::anyhow!("unknown recipe `{recipe}`"))?;
    let created = write_new(dir, &text)?;
    std::fs::create_dir_all(dir.join(".prefect"))?;
    let shown = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
    if created.is_empty() {
        println!(
            "Created project in {}; no new files created.",
            shown.display()
        );
    } else {
        println!(
            "Created project in {} with the following new files:\n{}",
            shown.display(),
            created
                .iter()
                .map(|f| format!("  {f}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        eprintln!("recipe: {recipe}");
    }
    Ok(())
}
