//! Registering a deployment on a Prefect server as `prefect deploy` does (protocol:
//! `prefect-worker-protocol.md` §1): the work pool must exist, the flow is upserted by
//! name, then the deployment is created, or patched when it exists.

use serde_json::{Map, Value, json};

use crate::{Method, PrefectClient, PrefectError, StatusCode, segment};

/// What registering one deployment did.
#[derive(Debug)]
pub struct Deployed {
    /// The deployment's id.
    pub id: String,
    /// The flow's id.
    pub flow_id: String,
    /// Created now (false: an existing one was updated).
    pub created: bool,
}

/// Why a deployment could not be registered.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The declaration cannot be sent as it is.
    #[error("{0}")]
    Invalid(String),
    /// The work pool does not exist on the server.
    #[error(
        "work pool `{pool}` does not exist on {url}: create it (`prefect work-pool create {pool} --type process`) or name another with --pool"
    )]
    NoPool {
        /// The pool's name.
        pool: String,
        /// The server.
        url: String,
    },
    /// The server refused or could not be reached.
    #[error(transparent)]
    Server(#[from] PrefectError),
}

/// A `schedules` entry of the declaration as the API takes it.
fn schedule(s: &Value) -> Result<Value, DeployError> {
    let Value::Object(m) = s else {
        return Err(DeployError::Invalid(format!(
            "a schedule must be a mapping, got {s}"
        )));
    };
    let tz = m.get("timezone").cloned().unwrap_or(Value::Null);
    let inner = if let Some(cron) = m.get("cron") {
        json!({"cron": cron, "timezone": tz, "day_or": m.get("day_or").cloned().unwrap_or(json!(true))})
    } else if let Some(interval) = m.get("interval") {
        let mut i = json!({"interval": interval, "timezone": tz});
        if let Some(a) = m.get("anchor_date") {
            i["anchor_date"] = a.clone();
        }
        i
    } else if let Some(rrule) = m.get("rrule") {
        json!({"rrule": rrule, "timezone": tz})
    } else {
        return Err(DeployError::Invalid(format!(
            "a schedule needs `cron`, `interval` or `rrule`, got {s}"
        )));
    };
    Ok(json!({
        "schedule": inner,
        "active": m.get("active").cloned().unwrap_or(json!(true)),
        "max_scheduled_runs": m.get("max_scheduled_runs").cloned().unwrap_or(Value::Null),
        "parameters": m.get("parameters").cloned().unwrap_or(json!({})),
        "slug": m.get("slug").cloned().unwrap_or(Value::Null),
        "replaces": m.get("replaces").cloned().unwrap_or(Value::Null),
    }))
}

/// The `POST /deployments/` body for a templated declaration (`spec`, as
/// `hoist_project::spec::resolve` makes it), the flow's id and parameter schema, and
/// what the flow's source says: its docstring (the default description) and the md5 of
/// its file (the default version, as Prefect's `Flow.version`). As Prefect does, a flow
/// without a docstring and a deployment without a description store the text "None".
pub fn deployment_body(
    spec: &Value,
    flow_id: &str,
    parameter_schema: Value,
    docstring: Option<&str>,
    file_hash: &str,
) -> Result<Map<String, Value>, DeployError> {
    let get = |k: &str| spec.get(k).filter(|v| !v.is_null());
    let name = get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| DeployError::Invalid("the deployment has no `name`".into()))?;
    let entrypoint = get("entrypoint").and_then(Value::as_str).ok_or_else(|| {
        DeployError::Invalid(format!(
            "deployment `{name}` has no `entrypoint` (path/to/file.py:function): add one or pass ENTRYPOINT"
        ))
    })?;
    let pool = spec.get("work_pool").cloned().unwrap_or(json!({}));
    let pool_name = pool
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            DeployError::Invalid(format!(
                "deployment `{name}` names no work pool: add `work_pool: {{name: ...}}` or pass --pool"
            ))
        })?;
    let schedules = match get("schedules") {
        Some(Value::Array(items)) => items.iter().map(schedule).collect::<Result<Vec<_>, _>>()?,
        _ => Vec::new(),
    };
    let (limit, options) = match get("concurrency_limit") {
        Some(Value::Object(c)) => {
            let mut opts = Map::new();
            for k in ["collision_strategy", "grace_period_seconds"] {
                if let Some(v) = c.get(k) {
                    opts.insert(k.into(), v.clone());
                }
            }
            (
                c.get("limit").cloned().unwrap_or(Value::Null),
                (!opts.is_empty()).then_some(Value::Object(opts)),
            )
        }
        Some(v) => (v.clone(), None),
        None => (Value::Null, None),
    };
    let version = get("version")
        .cloned()
        .or_else(|| (!file_hash.is_empty()).then(|| json!(file_hash)));
    let mut body = json!({
        "name": name,
        "flow_id": flow_id,
        "paused": get("paused").cloned().unwrap_or(json!(false)),
        "schedules": schedules,
        "concurrency_limit": limit,
        "concurrency_options": options,
        "enforce_parameter_schema": get("enforce_parameter_schema").cloned().unwrap_or(json!(true)),
        "parameter_openapi_schema": parameter_schema,
        "parameters": get("parameters").cloned().unwrap_or(json!({})),
        "tags": get("tags").cloned().unwrap_or(json!([])),
        "labels": {},
        "pull_steps": get("pull_steps").cloned().unwrap_or(json!([])),
        "work_queue_name": pool.get("work_queue_name").cloned().unwrap_or(Value::Null),
        "work_pool_name": pool_name,
        "storage_document_id": null,
        "infrastructure_document_id": null,
        "path": null,
        "description": get("description").cloned().or_else(|| docstring.map(|d| json!(d))).unwrap_or(json!("None")),
        "entrypoint": entrypoint,
        "job_variables": pool.get("job_variables").filter(|j| !j.is_null()).cloned().unwrap_or(json!({})),
        "version": version.clone().unwrap_or(Value::Null),
    });
    if let Some(v) = version {
        body["version_info"] = json!({"type": "prefect:simple", "version": v});
    }
    match body {
        Value::Object(m) => Ok(m),
        _ => unreachable!("a JSON object literal"),
    }
}

impl PrefectClient {
    /// Register a deployment of flow `flow_name`: the pool checked, the flow upserted,
    /// the deployment created or patched. `body` is [`deployment_body`]'s, whose
    /// `flow_id` is replaced by the upserted flow's.
    pub async fn deploy(
        &self,
        flow_name: &str,
        mut body: Map<String, Value>,
    ) -> Result<Deployed, DeployError> {
        let pool = body
            .get("work_pool_name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let (status, _) = self
            .request(
                Method::GET,
                &format!("/work_pools/{}", segment(&pool)),
                None,
            )
            .await?;
        if status == StatusCode::NOT_FOUND {
            return Err(DeployError::NoPool {
                pool,
                url: self.url.clone(),
            });
        }
        let flow_id = self.upsert_flow(flow_name).await?;
        body.insert("flow_id".into(), json!(flow_id));
        let name = body["name"].as_str().unwrap_or("").to_string();
        let (status, existing) = self
            .request(
                Method::GET,
                &format!(
                    "/deployments/name/{}/{}",
                    segment(flow_name),
                    segment(&name)
                ),
                None,
            )
            .await?;
        if status != StatusCode::NOT_FOUND
            && let Some(id) = existing["id"].as_str()
        {
            self.patch_deployment(id, &body).await?;
            return Ok(Deployed {
                id: id.to_string(),
                flow_id,
                created: false,
            });
        }
        let (_, created) = self
            .request(Method::POST, "/deployments/", Some(&Value::Object(body)))
            .await?;
        let id = created["id"]
            .as_str()
            .ok_or_else(|| {
                let created = self.scrub(&created.to_string());
                DeployError::Invalid(format!("the server answered no deployment id: {created}"))
            })?
            .to_string();
        Ok(Deployed {
            id,
            flow_id,
            created: true,
        })
    }

    /// The flow named `flow_name` (`POST /flows/` creates it or answers the existing
    /// one); its id.
    async fn upsert_flow(&self, flow_name: &str) -> Result<String, DeployError> {
        let (_, flow) = self
            .request(
                Method::POST,
                "/flows/",
                Some(&json!({"name": flow_name, "tags": [], "labels": {}})),
            )
            .await?;
        // The answer is the server's text: quoted scrubbed (no credentials, one line).
        Ok(flow["id"]
            .as_str()
            .ok_or_else(|| {
                let flow = self.scrub(&flow.to_string());
                DeployError::Invalid(format!("the server answered no flow id: {flow}"))
            })?
            .to_string())
    }

    /// Update an existing deployment with what `prefect deploy` sends on a redeploy (the
    /// fields the server refuses on PATCH left out).
    async fn patch_deployment(
        &self,
        id: &str,
        body: &Map<String, Value>,
    ) -> Result<(), DeployError> {
        let mut patch = body.clone();
        for k in [
            "name",
            "flow_id",
            "enforce_parameter_schema",
            "labels",
            "path",
            "storage_document_id",
            "infrastructure_document_id",
        ] {
            patch.remove(k);
        }
        self.request(
            Method::PATCH,
            &format!("/deployments/{}", segment(id)),
            Some(&Value::Object(patch)),
        )
        .await?;
        Ok(())
    }
}
