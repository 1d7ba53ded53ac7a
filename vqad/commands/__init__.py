"""The `vqad` command groups, one module each: data, model (train and evaluate), export, line, tools.
Each has `add_commands(sub)`; sub-commands import what they need when they run."""
