//! Keyword search over the unstructured overlay (in progress).

/// Placeholder.
#[derive(Debug)]
pub struct SearchCore;
