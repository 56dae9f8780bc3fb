//! Small synchronisation helpers shared by the whole crate (a leaf module).

use std::sync::{Mutex, MutexGuard};

/// Locks `m`; a poisoned mutex (a thread panicked while holding it) is used as is.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
