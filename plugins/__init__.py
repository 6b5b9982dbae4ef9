"""mgm.plugins: the hook specifications, the plugin host and the built-in plugins."""
