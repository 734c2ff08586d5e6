"""The request contract: what a client may ask for and what it gets back.

Everything here imports no torch, diffusers or transformers, so the API process, the webhook
worker and the client commands stay light. The engine (``core.models``, ``core.caching``,
``core.generation``) imports this package, never the reverse.
"""
