//! Whether an engine keeps a build sent with `networkmode=none` off the network:
//! checked, not trusted (Podman's build endpoints ignore the setting).
//!
//! The probe is a build of its own, on the engine, from a base image the step's build
//! uses (already on the engine: offline builds need that), whose `RUN` tries to
//! connect to a listener Hoist holds on every address of this machine (loopback and
//! its own interfaces', where a container's bridge reaches the host), after listing
//! its network interfaces. A connection that arrives, or any interface besides
//! loopback, means the engine does not isolate offline builds; only loopback, and no
//! connection, means it does (a client that failed to connect proves nothing alone: it
//! may have crashed). The verdict is remembered per engine for the life of the
//! process; a probe that could not tell (the build failed, no interfaces listed) is not
//! remembered, and the caller refuses `RUN`.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::Full;

use super::engine::{Engine, ReqBody};

/// What the probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A client in the build tried every address and reached none.
    Isolated,
    /// The build connected to this machine (at that address).
    Reaches(String),
    /// The probe could not tell (why).
    Unknown(String),
}

/// Remembered verdicts, by engine (`DOCKER_HOST`).
static VERDICTS: Mutex<Option<HashMap<String, Verdict>>> = Mutex::new(None);

/// How long a probe build may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);

/// What the probe build prints before each of its network interfaces.
const IFACE: &str = "hoist-probe-if ";

/// The engine's verdict, probing with `base` (an image on the engine) when there is
/// none yet.
pub async fn offline_isolation(engine: &Engine, base: &str) -> Verdict {
    let known = lock().as_ref().and_then(|m| m.get(&engine.host).cloned());
    if let Some(v) = known {
        return v;
    }
    let verdict = tokio::time::timeout(PROBE_TIMEOUT, probe(engine, base))
        .await
        .unwrap_or_else(|_| Verdict::Unknown("the probe build did not finish within 60 s".into()));
    if !matches!(verdict, Verdict::Unknown(_)) {
        lock()
            .get_or_insert_with(HashMap::new)
            .insert(engine.host.clone(), verdict.clone());
    }
    verdict
}

fn lock() -> std::sync::MutexGuard<'static, Option<HashMap<String, Verdict>>> {
    VERDICTS.lock().unwrap_or_else(|p| p.into_inner())
}

async fn probe(engine: &Engine, base: &str) -> Verdict {
    let listener = match tokio::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).await {
        Ok(l) => l,
        Err(e) => return Verdict::Unknown(format!("no listener for the probe: {e}")),
    };
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let reached: Arc<Mutex<Option<String>>> = Arc::default();
    let seen = reached.clone();
    let accepter = tokio::spawn(async move {
        while let Ok((_, peer)) = listener.accept().await {
            lock_seen(&seen).get_or_insert_with(|| peer.to_string());
        }
    });
    let targets: Vec<String> = own_addresses()
        .into_iter()
        .map(|a| format!("{a}:{port}"))
        .collect();
    let built = build(engine, base, &targets).await;
    accepter.abort();
    let from = lock_seen(&reached).clone();
    let output = match (from, built) {
        (Some(peer), _) => {
            return Verdict::Reaches(format!(
                "a probe build's `RUN` connected to this machine (from {peer})"
            ));
        }
        (None, Err(e)) => return Verdict::Unknown(format!("the probe build failed: {e}")),
        (None, Ok(output)) => output,
    };
    let interfaces: Vec<&str> = output
        .lines()
        .filter_map(|l| l.trim().strip_prefix(IFACE))
        .map(str::trim)
        .filter(|i| !i.is_empty() && !i.contains('|'))
        .collect();
    let outside: Vec<&str> = interfaces.iter().copied().filter(|i| *i != "lo").collect();
    if interfaces.is_empty() {
        Verdict::Unknown("the probe build could not list its network interfaces".into())
    } else if outside.is_empty() {
        Verdict::Isolated
    } else {
        Verdict::Reaches(format!(
            "a probe build's `RUN` has network interfaces besides loopback ({})",
            hoist_policy::text::sanitize(&outside.join(", "))
        ))
    }
}

fn lock_seen(m: &Mutex<Option<String>>) -> std::sync::MutexGuard<'_, Option<String>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The probe's Dockerfile: list the build's network interfaces (shell built-ins only,
/// from `/proc/net/dev`), then try every target with whichever client the image has.
fn dockerfile(base: &str, targets: &[String]) -> String {
    let list = targets.join(" ");
    format!(
        "FROM {base}\nRUN while read -r l; do echo \"{IFACE}${{l%%:*}}\"; done < /proc/net/dev; \
         for a in {list}; do \
         if command -v wget >/dev/null 2>&1; then wget -q -T 2 -O /dev/null \"http://$a/\"; \
         elif command -v curl >/dev/null 2>&1; then curl -s -m 2 -o /dev/null \"http://$a/\"; \
         fi; done >/dev/null 2>&1; true\n"
    )
}

/// Build the probe (no tag; the image is removed after); everything the build printed.
async fn build(engine: &Engine, base: &str, targets: &[String]) -> Result<String, String> {
    let text = dockerfile(base, targets);
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(text.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "Dockerfile", text.as_bytes())
        .map_err(|e| e.to_string())?;
    let context = tar.into_inner().map_err(|e| e.to_string())?;
    let (mut output, mut error, mut id) = (String::new(), None, None);
    let streamed = engine
        .stream(
            Method::POST,
            "/build?dockerfile=Dockerfile&rm=1&forcerm=1&networkmode=none",
            &[("content-type", "application/x-tar".to_string())],
            ReqBody::Full(Full::new(Bytes::from(context))),
            |msg| {
                if let Some(s) = msg.get("stream").and_then(|s| s.as_str()) {
                    output.push_str(s);
                    if let Some(short) = s.trim().strip_prefix("Successfully built ") {
                        id.get_or_insert_with(|| short.trim().to_string());
                    }
                }
                if let Some(i) = msg.pointer("/aux/ID").and_then(|s| s.as_str()) {
                    id = Some(i.to_string());
                }
                if let Some(e) = msg.get("error").and_then(|s| s.as_str()) {
                    error = Some(hoist_policy::text::sanitize(e.trim()).into_owned());
                }
            },
        )
        .await;
    if let Some(id) = id {
        let _ = engine
            .call(Method::DELETE, &format!("/images/{id}?force=1"), None)
            .await;
    }
    if let Some(e) = error {
        return Err(e);
    }
    streamed.map_err(|e| e.to_string())?;
    Ok(output)
}

/// This machine's IPv4 addresses, loopback first (from the kernel's local routing
/// table: every address of every interface, a container bridge's included).
fn own_addresses() -> Vec<Ipv4Addr> {
    let mut found = vec![Ipv4Addr::LOCALHOST];
    let table = std::fs::read_to_string("/proc/net/fib_trie").unwrap_or_default();
    let mut last: Option<Ipv4Addr> = None;
    for line in table.lines() {
        let line = line.trim_start_matches([' ', '|', '-', '+']).trim();
        if let Ok(a) = line.parse::<Ipv4Addr>() {
            last = Some(a);
        } else if line.contains("/32 host LOCAL")
            && let Some(a) = last
            && !a.is_loopback()
            && !found.contains(&a)
        {
            found.push(a);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_addresses_start_with_loopback_and_hold_no_duplicates() {
        let a = own_addresses();
        assert_eq!(a[0], Ipv4Addr::LOCALHOST);
        let mut unique = a.clone();
        unique.dedup();
        assert_eq!(unique.len(), a.len());
    }
}
