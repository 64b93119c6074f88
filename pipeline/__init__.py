"""The export job (config, plan, runner options, job, progress, CLI), the operator tools
(``pipeline.tools``) and the demo (``pipeline.demo``); imports transforms and twml."""
