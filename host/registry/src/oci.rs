//! The OCI pieces a package travels in: the Wasm OCI artifact layout (config
//! `application/vnd.wasm.config.v0+json`, one `application/wasm` layer), image manifests
//! and content digests.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// An OCI image manifest.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// The config of a Wasm component artifact.
pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// A Wasm component layer.
pub const WASM_LAYER_MEDIA_TYPE: &str = "application/wasm";
/// The annotation carrying a package's version.
pub const VERSION_ANNOTATION: &str = "org.opencontainers.image.version";
/// The annotation carrying a package's summary.
pub const DESCRIPTION_ANNOTATION: &str = "org.opencontainers.image.description";

/// A content descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Its media type.
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Its length in bytes.
    pub size: u64,
}

/// An OCI image manifest (the fields Hoist reads and writes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// [`MANIFEST_MEDIA_TYPE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The config blob.
    pub config: Descriptor,
    /// The layers: one component.
    pub layers: Vec<Descriptor>,
    /// Annotations (version, summary).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Manifest {
    /// The component layer of a Wasm artifact: exactly one `application/wasm` layer and
    /// a Wasm config, or why not.
    pub fn component(&self) -> Result<&Descriptor, String> {
        if self.schema_version != 2 {
            return Err(format!("schemaVersion is {}, not 2", self.schema_version));
        }
        if self.config.media_type != WASM_CONFIG_MEDIA_TYPE {
            return Err(format!(
                "the config's media type is `{}`, not `{WASM_CONFIG_MEDIA_TYPE}` (a Wasm component artifact)",
                self.config.media_type
            ));
        }
        match self.layers.as_slice() {
            [layer] if layer.media_type == WASM_LAYER_MEDIA_TYPE => Ok(layer),
            [layer] => Err(format!(
                "the layer's media type is `{}`, not `{WASM_LAYER_MEDIA_TYPE}`",
                layer.media_type
            )),
            layers => Err(format!(
                "a package has exactly one layer (the component), this manifest has {}",
                layers.len()
            )),
        }
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

/// Lowercase hex.
pub use hoist_policy::encoding::hex;

/// Whether `s` is a `sha256:` digest in canonical form (64 lowercase hex digits): the
/// only form the registry accepts, so a digest is also a safe file name.
pub fn is_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The config blob of a package: the Wasm OCI artifact config (`architecture` wasm, `os`
/// wasip2, the layer's digest). Deterministic: the same component gives the same config,
/// so republishing identical bytes gives the same manifest digest.
pub fn wasm_config(component_digest: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": "wasm",
        "os": "wasip2",
        "layerDigests": [component_digest],
    }))
    .expect("a JSON value serialises")
}

/// The manifest of a package: its config and its component, with version and summary
/// annotations.
pub fn package_manifest(config: &[u8], component: &[u8], version: &str, summary: &str) -> Manifest {
    let mut annotations = BTreeMap::new();
    annotations.insert(VERSION_ANNOTATION.to_string(), version.to_string());
    if !summary.is_empty() {
        annotations.insert(DESCRIPTION_ANNOTATION.to_string(), summary.to_string());
    }
    Manifest {
        schema_version: 2,
        media_type: Some(MANIFEST_MEDIA_TYPE.into()),
        config: Descriptor {
            media_type: WASM_CONFIG_MEDIA_TYPE.into(),
            digest: digest_of(config),
            size: config.len() as u64,
        },
        layers: vec![Descriptor {
            media_type: WASM_LAYER_MEDIA_TYPE.into(),
            digest: digest_of(component),
            size: component.len() as u64,
        }],
        annotations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_canonical_only() {
        let d = digest_of(b"x");
        assert!(is_digest(&d));
        assert!(!is_digest(&d.to_uppercase()));
        assert!(!is_digest("sha256:../../etc/passwd"));
        assert!(!is_digest(&format!("sha512:{}", &d[7..])));
        assert!(!is_digest(&d[..d.len() - 1]));
    }

    #[test]
    fn a_package_manifest_names_its_component() {
        let config = wasm_config(&digest_of(b"wasm"));
        let m = package_manifest(&config, b"wasm", "1.0.0", "s");
        assert_eq!(m.component().unwrap().digest, digest_of(b"wasm"));
        let mut two = m.clone();
        two.layers.push(two.layers[0].clone());
        assert!(two.component().unwrap_err().contains("exactly one layer"));
        let mut image = m;
        image.config.media_type = "application/vnd.oci.image.config.v1+json".into();
        assert!(
            image
                .component()
                .unwrap_err()
                .contains("config's media type")
        );
    }
}
