//! [`Progress`]: what `up`, `stop` and the pools tell the person at the
//! terminal while they work (the CLI draws spinners; the daemon says nothing).

/// What `up` and `stop` tell the person at the terminal while they work.
pub trait Progress: Send + Sync {
    /// A finished step, one line.
    fn note(&self, line: &str);
    /// A wait begins (a spinner, say).
    fn start(&self, what: &str);
    /// The current wait ended with `outcome`.
    fn finish(&self, outcome: &str);
}

/// A [`Progress`] that says nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

impl Progress for Silent {
    fn note(&self, _: &str) {}
    fn start(&self, _: &str) {}
    fn finish(&self, _: &str) {}
}
