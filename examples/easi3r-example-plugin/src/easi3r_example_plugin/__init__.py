"""An example easi3r plug-in package (see docs/plugins.md of easi3r)."""
