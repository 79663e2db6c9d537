//! The conversation as the brain hands it to a model: alternating user and
//! assistant messages made of content blocks.

/// Who wrote a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    User,
    Assistant,
}

impl Role {
    /// The lower-case wire name both APIs use.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One message of the conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub role: Role,
    pub content: Vec<Block>,
}

impl Message {
    /// A user message with a single text block.
    pub fn user_text(text: impl Into<String>) -> Message {
        Message { role: Role::User, content: vec![Block::Text { text: text.into() }] }
    }

    /// An assistant message with a single text block.
    pub fn assistant_text(text: impl Into<String>) -> Message {
        Message { role: Role::Assistant, content: vec![Block::Text { text: text.into() }] }
    }

    /// The text blocks of this message, in order.
    pub fn texts(&self) -> impl Iterator<Item = &str> {
        self.content.iter().filter_map(|block| match block {
            Block::Text { text } => Some(text.as_str()),
            _ => None,
        })
    }
}

/// One content block of a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Block {
    Text {
        text: String,
    },
    /// A tool call the model asked for. `input_json` is a JSON object as text.
    ToolUse {
        id: String,
        name: String,
        input_json: String,
    },
    /// The answer to a `ToolUse`, sent back in a user message.
    ToolResult {
        tool_use_id: String,
        content: String,
        is_error: bool,
    },
}
