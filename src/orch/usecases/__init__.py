"""The operation behind each CLI command and API method, returning data for them to print or wrap.

Nothing here prints or exits; errors are OrchError subclasses that `orch.cli`
maps to exit codes. One module per kind of use case: `inspect`, `blueprints`, `run`, `accept`.
"""
