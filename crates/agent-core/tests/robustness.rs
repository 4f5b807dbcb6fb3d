//! Property tests over hostile input (proptest; cargo-fuzz needs a nightly toolchain):
//! literal conversion, Struct/JSON conversion and protobuf request decoding never panic,
//! and what converts converts back unchanged.

use agent_core::AgentError;
use agent_core::json::{json_to_struct, struct_to_json};
use agent_core::literals::{Value, literal_map_to_json};
use agent_core::pb::{admin, core};
use agent_core::testing::arbitrary;
use proptest::prelude::*;
use prost::Message;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_literal_converts_or_is_refused_and_round_trips(lit in arbitrary::literal()) {
        match Value::from_literal(&lit, "inputs.x") {
            Ok(v) => {
                let back = Value::from_literal(&v.to_literal(), "inputs.x").expect("a converted value converts back");
                // Debug, not ==, so NaN compares equal to itself.
                prop_assert_eq!(format!("{back:?}"), format!("{v:?}"));
            }
            Err(e) => {
                prop_assert!(matches!(e, AgentError::InvalidArgument(_)), "{:?}", e);
                prop_assert!(e.to_string().contains("inputs.x"), "the error names the input: {}", e);
            }
        }
        let map = core::LiteralMap { literals: [("x".to_owned(), lit)].into() };
        let _ = literal_map_to_json(&map);
    }

    #[test]
    fn any_json_object_survives_the_struct_round_trip(m in arbitrary::json_object(3)) {
        let back = struct_to_json(&json_to_struct(&m));
        prop_assert_eq!(back.keys().collect::<Vec<_>>(), m.keys().collect::<Vec<_>>());
    }

    #[test]
    fn any_bytes_decode_as_requests_or_fail_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = admin::CreateTaskRequest::decode(bytes.as_slice());
        let _ = admin::GetTaskRequest::decode(bytes.as_slice());
        let _ = admin::DeleteTaskRequest::decode(bytes.as_slice());
        let _ = admin::ExecuteTaskSyncRequest::decode(bytes.as_slice());
        let _ = core::TaskTemplate::decode(bytes.as_slice());
        if let Ok(map) = core::LiteralMap::decode(bytes.as_slice()) {
            let _ = literal_map_to_json(&map);
        }
    }

    #[test]
    fn any_resource_from_an_agent_reads_back(phase in any::<i32>(), message in any::<String>(), outputs in arbitrary::literal_map()) {
        let proto = admin::Resource { phase, message: message.clone(), outputs: Some(outputs), ..Default::default() };
        let resource = agent_core::Resource::from_proto(&proto);
        prop_assert_eq!(resource.message, message);
        // Unknown phase numbers never pass for success.
        if agent_core::Phase::from_proto(phase).is_none() {
            prop_assert_ne!(resource.phase, agent_core::Phase::Succeeded);
        }
    }
}
