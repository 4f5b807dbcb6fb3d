//! `agent-sensor`: the sensor agent server.

// musl's malloc serialises threads on one lock; mimalloc's per-thread heaps doubled the
// static image's throughput, for about 10 MiB more resident memory.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

agent_core::main!(
    "Flyte agent for flytekit's FileSensor (task type sensor, async)",
    agent_sensor::registry,
    agent_sensor::HELP
);
