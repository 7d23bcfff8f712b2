//! Version `v1alpha1` of the `bitscale.dev` API.

mod hardware_class;
mod inference_service;
mod schema;

pub use crate::quantization::*;
pub use hardware_class::*;
pub use inference_service::*;
