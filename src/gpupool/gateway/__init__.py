"""The gateway role: OpenAI-compatible HTTP API, provider hub, dispatch, state."""
