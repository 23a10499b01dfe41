"""One module per engine the lab runs: its components (command, ports, health check and
status figure), the configuration it writes, and what it adds to the app's settings."""
