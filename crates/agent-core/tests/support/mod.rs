//! Shared test code.

#[allow(dead_code)]
pub(crate) mod test_agent;
