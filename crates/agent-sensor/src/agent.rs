//! The agent: a `sensor` task waits, poll after poll, until its condition holds. Only
//! flytekit's `FileSensor` can run here; any other sensor class is the user's Python code,
//! which only a Python connector can run, so `create` refuses it and says where to route
//! the task type instead.
//!
//! The resource meta is flytekit's `SensorMetadata` as JSON, with the task's inputs as
//! plain values (what flytekit's sensor engine writes), so a meta either implementation
//! wrote is read by the other.

use agent_core::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

use crate::client::{Client, Found};
use crate::config::Config;

/// The task type flytekit's sensors declare.
pub const TASK_TYPE: &str = "sensor";

/// The module and class of flytekit's FileSensor, as its templates name them.
const FILE_SENSOR: (&str, &str) = ("flytekit.sensor.file_sensor", "FileSensor");

/// flytekit's `SensorMetadata`: the template's `custom`, and the meta.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SensorMeta {
    /// The sensor class's module.
    pub sensor_module: String,
    /// The sensor class's name.
    pub sensor_name: String,
    /// The sensor's configuration (`to_dict()`), if any.
    #[serde(default)]
    pub sensor_config: Option<Json>,
    /// The task's inputs as plain values; none in a template.
    #[serde(default)]
    pub inputs: Option<Map<String, Json>>,
}

/// The agent.
#[derive(Debug)]
pub struct SensorAgent {
    client: Client,
}

impl SensorAgent {
    /// An agent with `config`; fails only on an unusable configuration.
    pub fn new(config: Config) -> Result<Self, String> {
        Ok(Self { client: Client::new(config)? })
    }

    /// The meta's `path`, checked.
    fn path(meta: &SensorMeta) -> Result<&str, AgentError> {
        let inputs = meta.inputs.as_ref();
        match inputs.and_then(|i| i.get("path")) {
            Some(Json::String(p)) if !p.is_empty() => Ok(p),
            Some(other) => {
                Err(AgentError::invalid_argument(format!("inputs.path: a FileSensor path is a string, not {other}")))
            }
            None => {
                Err(AgentError::invalid_argument("inputs.path: missing; FileSensor waits for the path it is given"))
            }
        }
    }
}

/// Refuses a sensor this agent cannot run, naming it.
fn file_sensor_only(meta: &SensorMeta) -> Result<(), AgentError> {
    if (meta.sensor_module.as_str(), meta.sensor_name.as_str()) == FILE_SENSOR {
        return Ok(());
    }
    Err(AgentError::invalid_argument(format!(
        "sensor {}.{} is custom Python code, which this agent cannot run: it runs flytekit's {}.{} only. Route task \
         type 'sensor' to a Python connector deployment (flytekit's) instead of agent-sensor if your workflows use \
         other sensors",
        meta.sensor_module, meta.sensor_name, FILE_SENSOR.0, FILE_SENSOR.1
    )))
}

impl AsyncAgent for SensorAgent {
    type Meta = SensorMeta;

    const NAME: &str = "Sensor";
    const TASK_TYPES: &[&str] = &[TASK_TYPE];

    async fn create(&self, _ctx: &Context, task: TaskRequest) -> Result<Self::Meta, AgentError> {
        let mut meta: SensorMeta = task.custom_as()?;
        file_sensor_only(&meta)?;
        let inputs = task.input_values()?.into_iter().map(|(k, v)| (k, v.to_json())).collect();
        meta.inputs = Some(inputs);
        // Refused now rather than at every poll: a path the agent will never check.
        self.client.locate(Self::path(&meta)?)?;
        Ok(meta)
    }

    async fn get(&self, _ctx: &Context, meta: Self::Meta) -> Result<Resource, AgentError> {
        file_sensor_only(&meta)?;
        let path = Self::path(&meta)?;
        let location = self.client.locate(path)?;
        Ok(match self.client.exists(&location).await {
            Found::Yes => Resource::succeeded().with_message(format!("{path} exists")),
            Found::No => Resource::running().with_message(format!("waiting for {path} to exist")),
            Found::Unsure(why) => {
                Resource::running().with_message(format!("waiting for {path}; the last check could not tell: {why}"))
            }
            Found::Never(why) => Resource::failed(format!("FileSensor cannot watch {path}: {why}")),
        })
    }

    async fn delete(&self, _ctx: &Context, _meta: Self::Meta) -> Result<(), AgentError> {
        // A sensor holds nothing to cancel.
        Ok(())
    }
}
