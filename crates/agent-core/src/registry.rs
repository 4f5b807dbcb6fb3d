//! The agents a binary serves, keyed by task category. Built once at start-up;
//! duplicate categories are rejected there rather than discovered at run time.

use std::collections::HashMap;
use std::sync::Arc;

use crate::agent::{AsyncAgent, SyncAgent, TaskCategory};
use crate::erased::{DynAsyncAgent, DynSyncAgent};
use crate::error::AgentError;

/// A registered agent, as the dispatcher sees it.
#[derive(Clone)]
pub(crate) enum Entry {
    Async(Arc<dyn DynAsyncAgent>),
    Sync(Arc<dyn DynSyncAgent>),
}

/// What `ListAgents` says about one agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentInfo {
    /// Display name.
    pub name: String,
    /// Categories served.
    pub categories: Vec<TaskCategory>,
    /// Whether Propeller should call `ExecuteTaskSync`.
    pub is_sync: bool,
}

/// A start-up error in the set of agents.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    /// Two agents claim the same category.
    #[error("duplicate agent for task category {category}: '{first}' and '{second}' both serve it")]
    Duplicate {
        /// The contested category.
        category: TaskCategory,
        /// The agent registered first.
        first: String,
        /// The agent registered second.
        second: String,
    },
    /// An agent serves no category.
    #[error("agent '{0}' serves no task category")]
    NoCategories(String),
    /// An agent has an empty name or category name.
    #[error("agent names and task category names must not be empty (agent '{0}')")]
    EmptyName(String),
}

/// The agents of one binary.
#[derive(Clone, Default)]
pub struct Registry {
    entries: HashMap<TaskCategory, (Entry, String)>,
    agents: Vec<AgentInfo>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("agents", &self.agents).finish()
    }
}

impl Registry {
    /// An empty registry, to add agents to.
    pub fn builder() -> Self {
        Self::default()
    }

    /// Adds an async agent under every category it serves.
    pub fn async_agent<A: AsyncAgent>(self, agent: A) -> Result<Self, RegistryError> {
        let name = agent.name().to_owned();
        let categories = agent.task_categories();
        self.add(Entry::Async(Arc::new(agent)), name, categories, false)
    }

    /// Adds a sync agent under every category it serves.
    pub fn sync_agent<S: SyncAgent>(self, agent: S) -> Result<Self, RegistryError> {
        let name = agent.name().to_owned();
        let categories = agent.task_categories();
        self.add(Entry::Sync(Arc::new(agent)), name, categories, true)
    }

    fn add(
        mut self,
        entry: Entry,
        name: String,
        categories: Vec<TaskCategory>,
        is_sync: bool,
    ) -> Result<Self, RegistryError> {
        if categories.is_empty() {
            return Err(RegistryError::NoCategories(name));
        }
        if name.is_empty() || categories.iter().any(|c| c.name.is_empty()) {
            return Err(RegistryError::EmptyName(name));
        }
        for c in &categories {
            if let Some((_, first)) = self.entries.get(c) {
                return Err(RegistryError::Duplicate { category: c.clone(), first: first.clone(), second: name });
            }
        }
        for c in &categories {
            self.entries.insert(c.clone(), (entry.clone(), name.clone()));
        }
        // Like flytekit, agents that share a display name (and kind) are listed as one,
        // with all their categories.
        match self.agents.iter_mut().find(|a| a.name == name && a.is_sync == is_sync) {
            Some(info) => info.categories.extend(categories),
            None => self.agents.push(AgentInfo { name, categories, is_sync }),
        }
        Ok(self)
    }

    /// Every agent, in registration order.
    pub fn agents(&self) -> &[AgentInfo] {
        &self.agents
    }

    /// Whether nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    /// Whether `category` is served by a sync agent; `None` when it is not served.
    pub fn is_sync(&self, category: &TaskCategory) -> Option<bool> {
        self.entries.get(category).map(|(e, _)| matches!(e, Entry::Sync(_)))
    }

    pub(crate) fn lookup(&self, category: &TaskCategory) -> Result<&Entry, AgentError> {
        self.entries.get(category).map(|(e, _)| e).ok_or_else(|| {
            let mut served: Vec<String> = self.entries.keys().map(ToString::to_string).collect();
            served.sort();
            AgentError::not_found(format!(
                "no agent serves task category {category}; this deployment serves: {}. Check the task's type and \
                 version, and Propeller's routing of task types to agents",
                if served.is_empty() { "nothing".to_owned() } else { served.join(", ") }
            ))
        })
    }
}

/// The category a request is about: `task_category` when set, else the deprecated
/// `task_type` with version 0 (what older Propellers send).
pub fn resolve_category(category: Option<(&str, i32)>, task_type: &str) -> Result<TaskCategory, AgentError> {
    match category {
        Some((name, version)) if !name.is_empty() => Ok(TaskCategory::new(name, version)),
        _ if !task_type.is_empty() => Ok(TaskCategory::new(task_type, 0)),
        _ => Err(AgentError::invalid_argument(
            "the request names no task category: set task_category (or the deprecated task_type)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{Context, TaskRequest};
    use crate::resource::Resource;

    struct Echo(&'static str, Vec<TaskCategory>);
    impl SyncAgent for Echo {
        fn name(&self) -> &str {
            self.0
        }
        fn task_categories(&self) -> Vec<TaskCategory> {
            self.1.clone()
        }
        async fn execute(&self, _: &Context, _: TaskRequest) -> Result<Resource, AgentError> {
            Ok(Resource::succeeded())
        }
    }

    #[test]
    fn duplicates_are_rejected_and_same_names_are_listed_once() {
        let r = Registry::builder()
            .sync_agent(Echo("A", vec![TaskCategory::new("a", 0)]))
            .unwrap()
            .sync_agent(Echo("A", vec![TaskCategory::new("b", 0)]))
            .unwrap();
        assert_eq!(r.agents().len(), 1);
        assert_eq!(r.agents()[0].categories.len(), 2);
        let err = r.clone().sync_agent(Echo("B", vec![TaskCategory::new("a", 0)])).unwrap_err();
        assert_eq!(err.to_string(), "duplicate agent for task category a_v0: 'A' and 'B' both serve it");
        // Another version of the same type is a different category.
        assert!(r.sync_agent(Echo("B", vec![TaskCategory::new("a", 1)])).is_ok());
        assert!(Registry::builder().sync_agent(Echo("C", vec![])).is_err());
        assert!(Registry::builder().sync_agent(Echo("", vec![TaskCategory::new("x", 0)])).is_err());
    }

    #[test]
    fn lookup_names_what_is_served() {
        let r = Registry::builder().sync_agent(Echo("A", vec![TaskCategory::new("a", 0)])).unwrap();
        let err = r.lookup(&TaskCategory::new("zzz", 0)).err().unwrap();
        assert!(matches!(&err, AgentError::NotFound(m) if m.contains("zzz_v0") && m.contains("a_v0")), "{err}");
        assert_eq!(r.is_sync(&TaskCategory::new("a", 0)), Some(true));
    }

    #[test]
    fn category_falls_back_to_the_deprecated_task_type() {
        assert_eq!(resolve_category(Some(("x", 2)), "y").unwrap(), TaskCategory::new("x", 2));
        assert_eq!(resolve_category(Some(("", 0)), "y").unwrap(), TaskCategory::new("y", 0));
        assert_eq!(resolve_category(None, "y").unwrap(), TaskCategory::new("y", 0));
        assert!(matches!(resolve_category(None, ""), Err(AgentError::InvalidArgument(_))));
    }
}
