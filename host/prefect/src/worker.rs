//! The calls a worker makes (protocol: `prefect-worker-protocol.md` §2–§4): the pool
//! made when missing, heartbeats, scheduled runs polled with a look-ahead, claims
//! proposed as PENDING with a transition id (so a retried claim is recognised), states,
//! the process id, and logs.

use serde_json::{Value, json};

use crate::{Method, PrefectClient, PrefectError, StatusCode, segment};

/// The job template of a pool Hoist creates: the process worker's variables (so the UI
/// shows them and deployments' job variables are validated) plus Hoist's own.
pub fn base_job_template() -> Value {
    json!({
        "job_configuration": {
            "command": "{{ command }}",
            "env": "{{ env }}",
            "labels": "{{ labels }}",
            "name": "{{ name }}",
            "stream_output": "{{ stream_output }}",
            "working_dir": "{{ working_dir }}",
            "allow": "{{ allow }}",
            "python": "{{ python }}",
            "timeout": "{{ timeout }}",
            "memory_limit": "{{ memory_limit }}",
        },
        "variables": {
            "type": "object",
            "properties": {
                "name": {"title": "Name", "type": "string", "description": "Name given to infrastructure created by a worker."},
                "env": {"title": "Environment Variables", "type": "object", "additionalProperties": {"type": "string"}, "description": "Environment variables to set when starting a flow run."},
                "labels": {"title": "Labels", "type": "object", "additionalProperties": {"type": "string"}},
                "command": {"title": "Command", "type": "string", "description": "The command to start the flow run (default: the Python of the worker, `-m prefect.engine`)."},
                "stream_output": {"title": "Stream Output", "type": "boolean", "default": true, "description": "Copy the flow's output to the worker's."},
                "working_dir": {"title": "Working Directory", "type": "string", "format": "path", "description": "Where the pull steps start (default: a new temporary directory per run)."},
                "allow": {"title": "Hoist grants", "type": "array", "items": {"type": "string"}, "description": "Capabilities granted to the pull steps' installed plugins (e.g. net:https://*.github.com)."},
                "python": {"title": "Python", "type": "string", "description": "The Python that runs the flow (a venv with prefect and the flow's dependencies)."},
                "timeout": {"title": "Step timeout", "type": "string", "description": "Stop any one pull step after this long (e.g. 30s, 5m, 1h)."},
                "memory_limit": {"title": "Step memory limit", "type": "string", "description": "Memory any one pull step may use (e.g. 64M, 1G)."}
            }
        }
    })
}

/// A fresh UUIDv4 (a claim's transition id).
pub fn uuid4() -> String {
    let mut b = [0u8; 16];
    use std::io::Read;
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_err()
    {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
            .to_le_bytes();
        b.copy_from_slice(&t);
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = hoist_policy::encoding::hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// How a claim went.
#[derive(Debug, PartialEq)]
pub enum Claim {
    /// This worker holds the run now (also when a retried proposal finds its own
    /// transition already made), with the deployment-concurrency lease the claim took,
    /// if the deployment has a concurrency limit.
    Ours {
        /// `state_details.deployment_concurrency_lease_id` of the PENDING state.
        lease: Option<String>,
    },
    /// Another worker won, or the run moved on.
    Lost(String),
    /// The server asks to wait this many seconds and propose again.
    Wait(f64),
}

impl PrefectClient {
    /// The pool, created with `pool_type` and Hoist's job template when missing.
    pub async fn ensure_pool(&self, pool: &str, pool_type: &str) -> Result<Value, PrefectError> {
        let path = format!("/work_pools/{}", segment(pool));
        let (status, v) = self.request(Method::GET, &path, None).await?;
        if status != StatusCode::NOT_FOUND {
            return Ok(v);
        }
        let (status, v) = self
            .request(
                Method::POST,
                "/work_pools/",
                Some(&json!({"name": pool, "type": pool_type, "base_job_template": base_job_template()})),
            )
            .await
            .or_else(|e| match e {
                // Another worker created it first.
                PrefectError::Api { status: 409, .. } => Ok((StatusCode::CONFLICT, Value::Null)),
                e => Err(e),
            })?;
        if status == StatusCode::CONFLICT {
            return Ok(self.request(Method::GET, &path, None).await?.1);
        }
        Ok(v)
    }

    /// `POST /work_pools/{pool}/workers/heartbeat`, promising the next within
    /// `interval` seconds (the server marks the worker OFFLINE after three missed).
    pub async fn heartbeat(
        &self,
        pool: &str,
        worker: &str,
        interval: u64,
    ) -> Result<(), PrefectError> {
        self.request(
            Method::POST,
            &format!("/work_pools/{}/workers/heartbeat", segment(pool)),
            Some(&json!({"name": worker, "heartbeat_interval_seconds": interval})),
        )
        .await?;
        Ok(())
    }

    /// The pool's workers, by name, with the status the server gives them (`ONLINE`,
    /// or `OFFLINE` after three missed heartbeats).
    pub async fn worker_statuses(
        &self,
        pool: &str,
    ) -> Result<std::collections::HashMap<String, String>, PrefectError> {
        let (_, v) = self
            .request(
                Method::POST,
                &format!("/work_pools/{}/workers/filter", segment(pool)),
                Some(&json!({})),
            )
            .await?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|w| {
                Some((
                    w["name"].as_str()?.to_string(),
                    w["status"].as_str().unwrap_or("").to_string(),
                ))
            })
            .collect())
    }

    /// The pool's runs that some worker holds (`PENDING` or `RUNNING`).
    pub async fn active_runs(&self, pool: &str) -> Result<Vec<Value>, PrefectError> {
        let mut out = Vec::new();
        loop {
            let (_, v) = self
                .request(
                    Method::POST,
                    "/flow_runs/filter",
                    Some(&json!({
                        "flow_runs": {"state": {"type": {"any_": ["PENDING", "RUNNING"]}}},
                        "work_pools": {"name": {"any_": [pool]}},
                        "limit": 200,
                        "offset": out.len(),
                    })),
                )
                .await?;
            let page = v.as_array().cloned().unwrap_or_default();
            let full = page.len() == 200;
            out.extend(page);
            if !full {
                return Ok(out);
            }
        }
    }

    /// Label a run (`PATCH /flow_runs/{id}/labels`; existing labels are kept).
    pub async fn set_labels(&self, run_id: &str, labels: &Value) -> Result<(), PrefectError> {
        self.request(
            Method::PATCH,
            &format!("/flow_runs/{}/labels", segment(run_id)),
            Some(labels),
        )
        .await?;
        Ok(())
    }

    /// Renew a deployment-concurrency lease for `seconds` (at least 60); `false` when
    /// the server no longer has it (expired or released: 410).
    pub async fn renew_lease(&self, lease_id: &str, seconds: u64) -> Result<bool, PrefectError> {
        match self
            .request(
                Method::POST,
                &format!("/v2/concurrency_limits/leases/{}/renew", segment(lease_id)),
                Some(&json!({"lease_duration": seconds.max(60)})),
            )
            .await
        {
            Ok((status, _)) => Ok(status != StatusCode::NOT_FOUND),
            Err(PrefectError::Api { status: 410, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Runs scheduled to start before `before` (ISO 8601), in `queues` (all when empty).
    pub async fn scheduled_runs(
        &self,
        pool: &str,
        queues: &[String],
        before: &str,
    ) -> Result<Vec<Value>, PrefectError> {
        let mut body = json!({"scheduled_before": before});
        if !queues.is_empty() {
            body["work_queue_names"] = json!(queues);
        }
        let (_, v) = self
            .request(
                Method::POST,
                &format!("/work_pools/{}/get_scheduled_flow_runs", segment(pool)),
                Some(&body),
            )
            .await?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r.get("flow_run").cloned())
            .collect())
    }

    /// Propose PENDING for a run, as the claim.
    pub async fn claim(&self, run_id: &str) -> Result<Claim, PrefectError> {
        let transition = uuid4();
        let body = json!({
            "state": {"type": "PENDING", "name": "Pending", "state_details": {"transition_id": transition}},
            "force": false,
        });
        let path = format!("/flow_runs/{}/set_state", segment(run_id));
        // The proposal is retried with the same transition id when the answer is lost.
        let mut last = None;
        for _ in 0..3 {
            match self.request(Method::POST, &path, Some(&body)).await {
                Ok((_, v)) => {
                    let status = v["status"].as_str().unwrap_or("");
                    let reason = v["details"]["reason"].as_str().unwrap_or("").to_string();
                    let lease = v["state"]["state_details"]["deployment_concurrency_lease_id"]
                        .as_str()
                        .map(str::to_string);
                    return Ok(match status {
                        "ACCEPT" if v["state"]["type"] == "PENDING" => Claim::Ours { lease },
                        "REJECT" if reason.contains("already made this state transition") => {
                            Claim::Ours { lease }
                        }
                        "WAIT" => {
                            Claim::Wait(v["details"]["delay_seconds"].as_f64().unwrap_or(1.0))
                        }
                        // The server's words, printed by the worker: scrubbed.
                        _ => Claim::Lost(self.scrub(if reason.is_empty() {
                            status
                        } else {
                            &reason
                        })),
                    });
                }
                Err(e @ PrefectError::Unreachable { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(PrefectError::BadUrl(self.url.clone())))
    }

    /// Propose a state (`force` skips the server's rules); the answer's `status`.
    pub async fn set_state(
        &self,
        run_id: &str,
        state_type: &str,
        name: &str,
        message: &str,
        force: bool,
    ) -> Result<String, PrefectError> {
        let (_, v) = self
            .request(
                Method::POST,
                &format!("/flow_runs/{}/set_state", segment(run_id)),
                Some(&json!({"state": {"type": state_type, "name": name, "message": message}, "force": force})),
            )
            .await?;
        Ok(v["status"].as_str().unwrap_or("").to_string())
    }

    /// Which of these runs were asked to cancel (`CANCELLING`, or `CANCELLED` named
    /// `Cancelling`, §4.3's polling fallback).
    pub async fn cancelling(&self, ids: &[String]) -> Result<Vec<String>, PrefectError> {
        let mut out = Vec::new();
        for state in [
            json!({"type": {"any_": ["CANCELLING"]}}),
            json!({"type": {"any_": ["CANCELLED"]}, "name": {"any_": ["Cancelling"]}}),
        ] {
            let (_, v) = self
                .request(
                    Method::POST,
                    "/flow_runs/filter",
                    Some(&json!({"flow_runs": {"id": {"any_": ids}, "state": state}})),
                )
                .await?;
            out.extend(
                v.as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r["id"].as_str().map(str::to_string)),
            );
        }
        Ok(out)
    }

    /// Emit one event (`POST /events`), as Prefect's pull steps do: `event` about
    /// `resource`, related to the deployment when given.
    pub async fn emit_event(
        &self,
        event: &str,
        resource: &str,
        deployment: Option<&str>,
        payload: &Value,
    ) -> Result<(), PrefectError> {
        let related: Vec<Value> = deployment
            .map(|d| json!({"prefect.resource.id": format!("prefect.deployment.{d}"), "prefect.resource.role": "deployment"}))
            .into_iter()
            .collect();
        let body = json!([{
            "id": uuid4(),
            "occurred": hoist_policy::time::now_rfc3339(),
            "event": event,
            "resource": {"prefect.resource.id": resource},
            "related": related,
            "payload": payload,
        }]);
        self.request(Method::POST, "/events", Some(&body)).await?;
        Ok(())
    }

    /// A flow run.
    pub async fn flow_run(&self, run_id: &str) -> Result<Value, PrefectError> {
        Ok(self
            .request(
                Method::GET,
                &format!("/flow_runs/{}", segment(run_id)),
                None,
            )
            .await?
            .1)
    }

    /// A deployment, `None` when it was deleted.
    pub async fn deployment(&self, id: &str) -> Result<Option<Value>, PrefectError> {
        let (status, v) = self
            .request(Method::GET, &format!("/deployments/{}", segment(id)), None)
            .await?;
        Ok((status != StatusCode::NOT_FOUND).then_some(v))
    }

    /// Record the flow process's id on the run.
    pub async fn set_pid(&self, run_id: &str, pid: u32) -> Result<(), PrefectError> {
        self.request(
            Method::PATCH,
            &format!("/flow_runs/{}", segment(run_id)),
            Some(&json!({"infrastructure_pid": pid.to_string()})),
        )
        .await?;
        Ok(())
    }

    /// Ship log lines to a run's logs (`(level, message, ISO timestamp)`), as the UI
    /// shows them.
    pub async fn ship_logs(
        &self,
        run_id: &str,
        logger: &str,
        lines: &[(u8, String, String)],
    ) -> Result<(), PrefectError> {
        if lines.is_empty() {
            return Ok(());
        }
        let body: Vec<Value> = lines
            .iter()
            .map(|(level, message, ts)| {
                json!({"name": logger, "level": level, "message": message, "timestamp": ts, "flow_run_id": run_id})
            })
            .collect();
        self.request(Method::POST, "/logs/", Some(&Value::Array(body)))
            .await?;
        Ok(())
    }
}

/// Pull-step events sent to a Prefect server (`POST /events`), which shows them in the
/// run's UI, related to the run's deployment when known.
pub struct PrefectEvents {
    /// The server.
    pub client: PrefectClient,
    /// The deployment's id (`prefect.deployment.<id>`), when known.
    pub deployment: Option<String>,
}

impl hoist_project::events::EventSink for PrefectEvents {
    fn record<'a>(
        &'a self,
        name: &'a str,
        resource: &'a str,
        payload: &'a Value,
    ) -> hoist_project::events::Recorded<'a> {
        Box::pin(async move {
            self.client
                .emit_event(name, resource, self.deployment.as_deref(), payload)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn uuids_are_version_4() {
        let u = super::uuid4();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"), "{u}");
        assert_ne!(u, super::uuid4());
    }
}
