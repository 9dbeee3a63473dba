"""`bt-peft serve`: an HTTP reward server for RL loops in other processes or hosts (OpenRLHF's `/get_reward` API).

Modules: `settings` (the flags, light to import), `requests` (parsing and tokenizing a request body), `batching`
(dynamic micro-batching across concurrent requests), `model` (loading every MODEL form), `app` (the Starlette app
and the uvicorn process). Needs the `serve` extra: `pip install 'bt-peft[serve]'` (starlette, uvicorn).
"""
