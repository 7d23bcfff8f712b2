//! The Bitscale operator: reconciles `InferenceService`s into engine Deployments.
