//! An agent binary hosting the test agents (`test_async`, `test_sync`), for the
//! end-to-end tests, the demo and the benchmark. Not shipped.

use std::process::ExitCode;

// The allocator of the agent binaries, so the benchmark measures what ships.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let info = agent_core::server::BinaryInfo {
        name: "test-agent",
        about: "Flyte agent server hosting the test agents (test_async, test_sync)",
        version: env!("CARGO_PKG_VERSION"),
        // The test agents have no settings section of their own.
        description: None,
    };
    agent_core::server::run(info, async |_settings| Ok(testbed::test_agent::registry()))
}
