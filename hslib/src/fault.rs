//! Failure injection for hslib's own tests: compiled to nothing unless the `fault-injection`
//! feature is on (hslib's tests turn it on through a dev-dependency on hslib itself; an
//! adopter's build never has it). A test arms one [`Step`] on its thread; the next
//! [`crate::Context::checkpoint`] on that thread that reaches the step fails there with
//! `HsError::Injected`, as a real failure of that step would.

/// A step of a checkpoint that can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The dirty-page scan, failing after the tracker started a new interval (as a scan that
    /// fails on its second region does for the first).
    Scan,
    /// Refreshing the registered descriptors (`FdRegistry::capture`).
    Capture,
    /// Encoding the metadata record.
    Encode,
    /// `fork()` of a fork snapshot.
    Fork,
    /// Getting a staging buffer for a copy snapshot.
    Staging,
    /// Handing the snapshot to the link's sender.
    Submit,
}

#[cfg(feature = "fault-injection")]
thread_local! {
    static ARMED: std::cell::Cell<Option<Step>> = const { std::cell::Cell::new(None) };
}

/// Makes the next checkpoint on this thread that reaches `step` fail there (once).
#[cfg(feature = "fault-injection")]
pub fn fail_next(step: Step) {
    ARMED.with(|a| a.set(Some(step)));
}

/// Whether a step is armed on this thread (checkpoints then take the path with every step).
#[cfg(feature = "fault-injection")]
pub(crate) fn armed() -> bool {
    ARMED.with(|a| a.get().is_some())
}

/// Whether `step` is armed on this thread; disarms it.
#[cfg(feature = "fault-injection")]
pub(crate) fn hit(step: Step) -> bool {
    ARMED.with(|a| {
        let armed = a.get() == Some(step);
        if armed {
            a.set(None);
        }
        armed
    })
}
