//! `agent-snowflake`: the Snowflake agent server.

// musl's malloc serialises threads on one lock; mimalloc's per-thread heaps doubled the
// static image's throughput, for about 10 MiB more resident memory.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

agent_core::main!(
    "Flyte agent for Snowflake queries (task type snowflake) over the SQL API",
    agent_snowflake::registry,
    agent_snowflake::HELP
);
