//! The Flyte 1.x agent protocol, generated from `proto/` by `cargo xtask codegen`.
//!
//! Agent crates use the message types (`core::TaskTemplate`, `core::LiteralMap`, …);
//! the gRPC client and server modules in [`service`] are for agent-core alone.

#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic, rust_2018_idioms)]
mod generated {
    pub mod flyteidl {
        pub mod core {
            include!("gen/flyteidl.core.rs");
        }
        pub mod admin {
            include!("gen/flyteidl.admin.rs");
        }
        pub mod service {
            include!("gen/flyteidl.service.rs");
        }
    }
}

pub use generated::flyteidl::{admin, core, service};

/// Encoded `FileDescriptorSet` of every file in `proto/` and the well-known types it
/// imports; served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("gen/descriptor.bin");

#[cfg(test)]
mod tests {
    use prost::Message;

    #[test]
    fn descriptor_set_decodes_and_names_the_services() {
        let fds = prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET).unwrap();
        let service_file = fds.file.iter().find(|f| f.name() == "flyteidl/service/agent.proto").unwrap();
        let names: Vec<_> = service_file.service.iter().map(|s| s.name()).collect();
        assert_eq!(names, ["SyncAgentService", "AsyncAgentService", "AgentMetadataService"]);
    }
}
