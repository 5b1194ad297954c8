"""Runnable examples: `hypercorn examples.app:app`, `hypercorn examples.mounts:app`."""
