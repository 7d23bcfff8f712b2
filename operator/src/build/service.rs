//! The Service in front of the serving variant.

use k8s_openapi::{
    api::core::v1::{Service, ServicePort, ServiceSpec},
    apimachinery::pkg::util::intstr::IntOrString,
};

use bitscale_api::telemetry::ENGINE_PORT_NAME;

use super::{Owner, deployment::ENGINE_PORT, labels::*};

/// The Service named after the InferenceService, selecting the pods of `serving_variant`.
pub fn service(owner: &Owner, serving_variant: &str) -> Service {
    Service {
        metadata: owner.child_meta(owner.name.clone(), common_labels(&owner.name)),
        spec: Some(ServiceSpec {
            selector: Some(variant_selector(&owner.name, serving_variant)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: ENGINE_PORT,
                target_port: Some(IntOrString::String(ENGINE_PORT_NAME.into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}
