//! In-flight batching scheduler.
