//! Version `v1alpha1` of the `bitscale.dev` API.

mod hardware_class;
mod inference_service;
mod quantization;
mod schema;

pub use hardware_class::*;
pub use inference_service::*;
pub use quantization::*;
