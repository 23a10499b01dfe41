"""Plain domain services: no web framework, no driver imports beyond the tier ports."""
