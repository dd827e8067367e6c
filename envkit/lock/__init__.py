from envkit import _forward_calls

_forward_calls(__name__)  # `envkit.lock(...)` stays the API's function once this package is loaded
