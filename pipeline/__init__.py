"""The export job: config, CLI, assembly and the built-in demo (imports transforms and twml)."""
