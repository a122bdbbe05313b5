//! MCP method names as one typed enum, parsed once per request. Which era
//! serves which method, and what each one names, is decided by the server's
//! dispatch table, not here.

/// Every request method tessera knows, in both spec eras.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Initialize,
    Ping,
    Discover,
    LoggingSetLevel,
    ToolsList,
    ToolsCall,
    PromptsList,
    PromptsGet,
    ResourcesList,
    ResourcesTemplatesList,
    ResourcesRead,
    ResourcesSubscribe,
    ResourcesUnsubscribe,
    ResourcesDirectoryRead,
    CompletionComplete,
    SubscriptionsListen,
    TasksGet,
    TasksResult,
    TasksList,
    TasksCancel,
    TasksUpdate,
    SkillsList,
    SkillsGet,
}

impl Method {
    /// How many methods there are (the dispatch table has one row each).
    pub const COUNT: usize = 23;

    #[cfg(test)]
    /// Every method, in declaration order (`ALL[m as usize] == m`).
    pub const ALL: [Method; Self::COUNT] = [
        Method::Initialize,
        Method::Ping,
        Method::Discover,
        Method::LoggingSetLevel,
        Method::ToolsList,
        Method::ToolsCall,
        Method::PromptsList,
        Method::PromptsGet,
        Method::ResourcesList,
        Method::ResourcesTemplatesList,
        Method::ResourcesRead,
        Method::ResourcesSubscribe,
        Method::ResourcesUnsubscribe,
        Method::ResourcesDirectoryRead,
        Method::CompletionComplete,
        Method::SubscriptionsListen,
        Method::TasksGet,
        Method::TasksResult,
        Method::TasksList,
        Method::TasksCancel,
        Method::TasksUpdate,
        Method::SkillsList,
        Method::SkillsGet,
    ];

    /// The method a request names; `None` for names tessera does not serve.
    pub fn parse(name: &str) -> Option<Method> {
        Some(match name {
            "initialize" => Method::Initialize,
            "ping" => Method::Ping,
            "server/discover" => Method::Discover,
            "logging/setLevel" => Method::LoggingSetLevel,
            "tools/list" => Method::ToolsList,
            "tools/call" => Method::ToolsCall,
            "prompts/list" => Method::PromptsList,
            "prompts/get" => Method::PromptsGet,
            "resources/list" => Method::ResourcesList,
            "resources/templates/list" => Method::ResourcesTemplatesList,
            "resources/read" => Method::ResourcesRead,
            "resources/subscribe" => Method::ResourcesSubscribe,
            "resources/unsubscribe" => Method::ResourcesUnsubscribe,
            "resources/directory/read" => Method::ResourcesDirectoryRead,
            "completion/complete" => Method::CompletionComplete,
            "subscriptions/listen" => Method::SubscriptionsListen,
            "tasks/get" => Method::TasksGet,
            "tasks/result" => Method::TasksResult,
            "tasks/list" => Method::TasksList,
            "tasks/cancel" => Method::TasksCancel,
            "tasks/update" => Method::TasksUpdate,
            "skills/list" => Method::SkillsList,
            "skills/get" => Method::SkillsGet,
            _ => return None,
        })
    }

    /// The method's name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Method::Initialize => "initialize",
            Method::Ping => "ping",
            Method::Discover => "server/discover",
            Method::LoggingSetLevel => "logging/setLevel",
            Method::ToolsList => "tools/list",
            Method::ToolsCall => "tools/call",
            Method::PromptsList => "prompts/list",
            Method::PromptsGet => "prompts/get",
            Method::ResourcesList => "resources/list",
            Method::ResourcesTemplatesList => "resources/templates/list",
            Method::ResourcesRead => "resources/read",
            Method::ResourcesSubscribe => "resources/subscribe",
            Method::ResourcesUnsubscribe => "resources/unsubscribe",
            Method::ResourcesDirectoryRead => "resources/directory/read",
            Method::CompletionComplete => "completion/complete",
            Method::SubscriptionsListen => "subscriptions/listen",
            Method::TasksGet => "tasks/get",
            Method::TasksResult => "tasks/result",
            Method::TasksList => "tasks/list",
            Method::TasksCancel => "tasks/cancel",
            Method::TasksUpdate => "tasks/update",
            Method::SkillsList => "skills/list",
            Method::SkillsGet => "skills/get",
        }
    }
}

/// Client notifications tessera acts on; every other one is ignored, as
/// JSON-RPC requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notification {
    Initialized,
    Cancelled,
}

impl Notification {
    pub fn parse(name: &str) -> Option<Notification> {
        match name {
            "notifications/initialized" => Some(Notification::Initialized),
            "notifications/cancelled" => Some(Notification::Cancelled),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_the_table_is_in_order() {
        for (i, m) in Method::ALL.iter().enumerate() {
            assert_eq!(*m as usize, i);
            assert_eq!(Method::parse(m.name()), Some(*m));
        }
        assert_eq!(Method::parse("tools/Call"), None);
        assert_eq!(Method::parse(""), None);
        assert_eq!(
            Notification::parse("notifications/cancelled"),
            Some(Notification::Cancelled)
        );
        assert_eq!(Notification::parse("notifications/progress"), None);
    }
}
