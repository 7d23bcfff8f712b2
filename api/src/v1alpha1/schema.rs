// Patterns shared by the schemas. Kept as consts so the CRD and the docs agree.

/// A Go-style duration ("500ms", "2s", "1m30s"), the syntax CEL's `duration()` accepts.
pub(crate) const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$";

/// The model sources the operator can mount or fetch.
pub(crate) const SOURCE_PATTERN: &str = r"^(file:///.+|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?/.+|https://[^\s]+|hf://[^/@\s]+/[^/@\s]+(@[^/\s]+)?/[^\s]+)$";
