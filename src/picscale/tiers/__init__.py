"""The tiers: each a Protocol and its backends, chosen by the scheme of one URL."""
