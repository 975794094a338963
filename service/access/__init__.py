"""API keys for inference: who may call (``keys``), where keys are kept (``store``), how much each may use
(``quota``), and the gate every protected request passes (``gate``). Off unless ``API_KEYS_FILE`` or
``API_KEYS_DATABASE`` is set."""
