//! Kubeconfig files for the admin and for each component, pointing at the generated certificates.

use std::path::{Path, PathBuf};

use crate::{Error, pki::CertFiles};

/// The cluster, context and user name in every generated kubeconfig.
pub const CONTEXT: &str = "bitscale-e2e";

/// Writes a kubeconfig for `server` authenticating with `client`, trusting `ca`.
pub fn write(path: &Path, server: &str, ca: &Path, client: &CertFiles) -> Result<PathBuf, Error> {
    let user = serde_json::json!({ "client-certificate": client.cert, "client-key": client.key });
    write_for(path, server, ca, "default", user)
}

/// Writes a kubeconfig for `server` trusting `ca`, as `user` (a kubeconfig user entry: client
/// certificates, a token file, …), in `namespace`.
pub fn write_for(
    path: &Path,
    server: &str,
    ca: &Path,
    namespace: &str,
    user: serde_json::Value,
) -> Result<PathBuf, Error> {
    // JSON is YAML; serde_json keeps paths with odd characters correctly quoted.
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": CONTEXT,
            "cluster": { "server": server, "certificate-authority": ca },
        }],
        "users": [{ "name": CONTEXT, "user": user }],
        "contexts": [{
            "name": CONTEXT,
            "context": { "cluster": CONTEXT, "user": CONTEXT, "namespace": namespace },
        }],
        "current-context": CONTEXT,
    });
    let text = serde_json::to_string_pretty(&config).map_err(|source| Error::Encode {
        what: "kubeconfig",
        source,
    })?;
    std::fs::write(path, text).map_err(Error::io("writing", path))?;
    Ok(path.to_owned())
}
