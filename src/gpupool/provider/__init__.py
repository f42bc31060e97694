"""The provider role: hardware probe, model backends, admission, the agent that dials gateways."""
