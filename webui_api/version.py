"""Our version, and the Open WebUI API version whose shapes we speak."""
__version__ = "0.1.0"
API_COMPAT_VERSION = "0.12.4"
