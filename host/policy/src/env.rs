//! The host environment a runtime works with: the variables steps may be granted
//! (`env:` grants), the `PATH` programs are found on, the proxy settings. Given to the
//! runtime in its configuration, never read from the process by a library constructor:
//! the `hoist` program passes its own environment ([`HostEnv::from_process`]), a worker
//! can pass a job's.

use std::collections::BTreeMap;
use std::sync::Arc;

/// Host environment variables, by name (cheap to clone).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostEnv(Arc<BTreeMap<String, String>>);

impl HostEnv {
    /// No variables at all (no `PATH`: no program is found).
    pub fn empty() -> Self {
        Self::default()
    }

    /// This process's environment. Variables whose name or value is not UTF-8 are left
    /// out (they could not be granted by name, nor passed through a WIT string).
    pub fn from_process() -> Self {
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect()
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// The first of `names` that is set and not blank.
    pub fn first_set(&self, names: &[&str]) -> Option<&str> {
        names
            .iter()
            .find_map(|n| self.get(n).filter(|v| !v.trim().is_empty()))
    }

    /// Every variable, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for HostEnv {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self(Arc::new(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups() {
        let env: HostEnv = [("PATH", "/bin"), ("HTTPS_PROXY", " "), ("https_proxy", "p")]
            .into_iter()
            .collect();
        assert_eq!(env.get("PATH"), Some("/bin"));
        assert_eq!(env.get("HOME"), None);
        assert_eq!(env.first_set(&["HTTPS_PROXY", "https_proxy"]), Some("p"));
        assert_eq!(env.iter().count(), 3);
        assert_eq!(HostEnv::empty().iter().count(), 0);
    }
}
