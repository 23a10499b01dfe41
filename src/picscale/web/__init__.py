"""The web tier: JSON API for mobile clients, pages for browsers, media, health."""
