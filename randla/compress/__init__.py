"""Framework-free model compression."""
