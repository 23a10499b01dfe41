"""What the tests share: one module per server harness (each starts a real engine on free
loopback ports in a temporary directory and stops it by pid), and the client helpers
(``api``, ``metrics``, ``images``, ``waiting``) that test modules use instead of importing
one another."""
