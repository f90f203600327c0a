"""The streaming service behind ``mlfs serve-stream``."""
