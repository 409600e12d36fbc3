"""Framework-neutral HTTP handlers shared by the Functions blueprints and the local host."""
