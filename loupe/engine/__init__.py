"""The engine: the queue, batch scheduling, the Backend protocol and stop strings. No HTTP, no torch."""
