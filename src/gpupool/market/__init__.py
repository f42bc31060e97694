"""The market: what requests cost (pure pricing) and what the network offers (the /v1/market view)."""
