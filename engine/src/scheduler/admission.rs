//! Admission rules: what is rejected at once, and why.

/// Why a request was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    /// The prompt plus `max_tokens` exceeds the model's context.
    #[error(
        "prompt ({prompt} tokens) plus max_tokens ({max_tokens}) exceeds the model's context length of {context_length} tokens"
    )]
    ContextTooLong {
        prompt: usize,
        max_tokens: usize,
        context_length: usize,
    },
    /// The request's KV reservation exceeds the whole pool, so it could never run.
    #[error(
        "prompt plus max_tokens needs {needed} bytes of KV cache but the pool holds only {pool} bytes; lower max_tokens or shorten the prompt"
    )]
    NeverFits { needed: u64, pool: u64 },
    /// The empty prompt: the model needs at least one token.
    #[error("the prompt is empty")]
    EmptyPrompt,
    /// Too many requests are waiting.
    #[error("the server is overloaded: {max_waiting} requests are already waiting")]
    QueueFull { max_waiting: usize },
    /// The waiting requests' prompts hold too many tokens.
    #[error("the server is overloaded: waiting prompts exceed {max_waiting_tokens} tokens")]
    QueueTokensFull { max_waiting_tokens: usize },
    /// The scheduler has stopped.
    #[error("the engine is shutting down")]
    Stopped,
}

impl AdmissionError {
    /// Whether retrying later may succeed (overload) rather than never (bad request).
    pub fn is_overload(&self) -> bool {
        matches!(self, Self::QueueFull { .. } | Self::QueueTokensFull { .. })
    }

    /// The `reason` label of `request_rejected_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::ContextTooLong { .. } => "context_length",
            Self::NeverFits { .. } => "kv_never_fits",
            Self::EmptyPrompt => "empty_prompt",
            Self::QueueFull { .. } => "queue_full",
            Self::QueueTokensFull { .. } => "queue_tokens_full",
            Self::Stopped => "stopped",
        }
    }
}

/// KV bytes a request reserves while running.
pub(crate) fn reservation(prompt: usize, max_tokens: usize, kv_bytes_per_token: u64) -> u64 {
    ((prompt + max_tokens) as u64).saturating_mul(kv_bytes_per_token)
}

/// Rejects a request that could never run, whatever the load.
pub(crate) fn check_fits(
    prompt: usize,
    max_tokens: usize,
    context_length: usize,
    kv_bytes_per_token: u64,
    pool: u64,
) -> Result<(), AdmissionError> {
    if prompt == 0 {
        return Err(AdmissionError::EmptyPrompt);
    }
    if prompt.saturating_add(max_tokens) > context_length {
        return Err(AdmissionError::ContextTooLong {
            prompt,
            max_tokens,
            context_length,
        });
    }
    let needed = reservation(prompt, max_tokens, kv_bytes_per_token);
    if needed > pool {
        return Err(AdmissionError::NeverFits { needed, pool });
    }
    Ok(())
}
