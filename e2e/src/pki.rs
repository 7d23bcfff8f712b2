//! The cluster's certificates and keys, generated fresh for every cluster with rcgen (ECDSA P-256, ring).
//!
//! One CA signs the API server's serving certificate and a client certificate per identity; the
//! service-account token signing key pair is separate. etcd listens on loopback without TLS.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::Error;

/// The first address of the service range; in-cluster clients reach the API server there.
pub const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);

/// A certificate and its private key on disk.
#[derive(Clone, Debug)]
pub struct CertFiles {
    /// PEM certificate.
    pub cert: PathBuf,
    /// PEM (PKCS#8) private key.
    pub key: PathBuf,
}

/// A client identity: the certificate's CN is the user, each O a group.
#[derive(Clone, Copy, Debug)]
pub struct Identity {
    /// File stem and kubeconfig name.
    pub name: &'static str,
    /// Kubernetes user name.
    pub user: &'static str,
    /// Kubernetes groups.
    pub groups: &'static [&'static str],
}

/// Prometheus's: pod discovery, allowed by a ClusterRole of its own (no group).
pub const PROMETHEUS: Identity = Identity {
    name: "prometheus",
    user: "bitscale-e2e-prometheus",
    groups: &[],
};

/// The pod runner's: like KWOK it plays every node's kubelet at once (pod status, deletion,
/// service-account tokens for any pod), which no one node identity may do.
pub const POD_RUNNER: Identity = Identity {
    name: "pod-runner",
    user: "bitscale-e2e-pod-runner",
    groups: &["system:masters"],
};

/// The identities the harness issues client certificates for.
pub const IDENTITIES: [Identity; 6] = [
    Identity {
        name: "admin",
        user: "bitscale-e2e-admin",
        groups: &["system:masters"],
    },
    Identity {
        name: "controller-manager",
        user: "system:kube-controller-manager",
        groups: &[],
    },
    Identity {
        name: "scheduler",
        user: "system:kube-scheduler",
        groups: &[],
    },
    // KWOK writes node and pod status and deletes pods; it plays every kubelet at once.
    Identity {
        name: "kwok",
        user: "bitscale-e2e-kwok",
        groups: &["system:masters"],
    },
    PROMETHEUS,
    POD_RUNNER,
];

/// Where [`generate`] wrote everything.
#[derive(Clone, Debug)]
pub struct Pki {
    /// The CA certificate (and key, kept for inspection).
    pub ca: CertFiles,
    /// The API server's serving certificate.
    pub apiserver: CertFiles,
    /// Service-account token signing key (private) and verification key (public, in `cert`).
    pub service_account: CertFiles,
    dir: PathBuf,
}

impl Pki {
    /// The client certificate of an identity from [`IDENTITIES`].
    pub fn client(&self, identity: &Identity) -> CertFiles {
        CertFiles {
            cert: self.dir.join(format!("{}.crt", identity.name)),
            key: self.dir.join(format!("{}.key", identity.name)),
        }
    }

    /// The file layout under `dir`, whether or not it has been generated.
    pub fn at(dir: &Path) -> Self {
        let pair = |stem: &str, cert_ext: &str| CertFiles {
            cert: dir.join(format!("{stem}.{cert_ext}")),
            key: dir.join(format!("{stem}.key")),
        };
        Self {
            ca: pair("ca", "crt"),
            apiserver: pair("apiserver", "crt"),
            service_account: pair("sa", "pub"),
            dir: dir.to_owned(),
        }
    }
}

/// Generates a new CA, serving and client certificates and the service-account keys into `dir`.
pub fn generate(dir: &Path) -> Result<Pki, Error> {
    std::fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
    let pki = Pki::at(dir);

    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "bitscale-e2e-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    write(&pki.ca.cert, &ca_cert.pem())?;
    write_private(&pki.ca.key, &ca_key.serialize_pem())?;
    let issuer = Issuer::new(ca_params, ca_key);

    let serving_names = [
        "localhost".to_owned(),
        "kubernetes".to_owned(),
        "kubernetes.default".to_owned(),
        "kubernetes.default.svc".to_owned(),
        "kubernetes.default.svc.cluster.local".to_owned(),
        IpAddr::V4(Ipv4Addr::LOCALHOST).to_string(),
        IpAddr::V4(KUBERNETES_SERVICE_IP).to_string(),
    ];
    let mut serving = CertificateParams::new(serving_names.to_vec())?;
    serving
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    serving.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    issue(&serving, &issuer, &pki.apiserver)?;

    for identity in &IDENTITIES {
        let mut client = CertificateParams::new(Vec::<String>::new())?;
        client.distinguished_name.push(DnType::CommonName, identity.user);
        for group in identity.groups {
            client.distinguished_name.push(DnType::OrganizationName, *group);
        }
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        client.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        issue(&client, &issuer, &pki.client(identity))?;
    }

    let sa_key = KeyPair::generate()?;
    write_private(&pki.service_account.key, &sa_key.serialize_pem())?;
    write(&pki.service_account.cert, &sa_key.public_key_pem())?;
    Ok(pki)
}

fn issue(params: &CertificateParams, issuer: &Issuer<'_, KeyPair>, files: &CertFiles) -> Result<(), Error> {
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    write(&files.cert, &cert.pem())?;
    write_private(&files.key, &key.serialize_pem())
}

fn write(path: &Path, contents: &str) -> Result<(), Error> {
    std::fs::write(path, contents).map_err(Error::io("writing", path))
}

/// Writes a private key readable by the owner only.
fn write_private(path: &Path, contents: &str) -> Result<(), Error> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut file = std::fs::File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(Error::io("creating", path))?;
    file.write_all(contents.as_bytes())
        .map_err(Error::io("writing", path))
}
