//! The sandbox policy lives in its own crate, `hoist-policy` (`host/policy`): this
//! module re-exports it and converts a plugin's declarations from the WIT types.

pub use hoist_policy::*;

use crate::bindings::WitCapability;

/// A plugin's declaration as a [`Capability`]; directory paths must be absolute and
/// plain.
pub fn from_wit(c: WitCapability) -> Result<Capability, BadDir> {
    let dir =
        |kind: &str, d: String| plain_dir(&d).map_err(|why| BadDir(format!("{kind}:{d}"), why));
    Ok(match c {
        WitCapability::Process(p) => Capability::Process(p),
        WitCapability::Env(e) => Capability::Env(e),
        WitCapability::SetCwd => Capability::SetCwd,
        WitCapability::ReadDir(d) => Capability::ReadDir(dir("read", d)?),
        WitCapability::WriteDir(d) => Capability::WriteDir(dir("write", d)?),
        WitCapability::Net(n) => Capability::Net(n),
        WitCapability::DockerBuild => Capability::DockerBuild,
        WitCapability::DockerPush(p) => Capability::DockerPush(p),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_directories_are_absolute_and_plain() {
        for wit in [
            WitCapability::WriteDir("/tmp/granted/../../..".into()),
            WitCapability::ReadDir("relative".into()),
        ] {
            assert!(from_wit(wit).is_err());
        }
        assert_eq!(
            from_wit(WitCapability::WriteDir("/srv/out".into())).unwrap(),
            Capability::WriteDir("/srv/out".into())
        );
    }
}
