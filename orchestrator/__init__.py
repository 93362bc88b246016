"""labelprop orchestrator: campaign store, search policy, crowd backends and the CLI."""
